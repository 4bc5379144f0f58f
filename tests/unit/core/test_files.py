"""Atomic writes: the target is the old file or the new one, never partial; no temp file is left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kit._files import atomic_path, atomic_write_bytes


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new", fsync=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".parquet") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.parquet"]


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
def test_no_clobber_writes_a_new_file_keeps_the_same_bytes_and_refuses_other_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, links: bool) -> None:
    if not links:  # a file system without hard links (the fault a local disk cannot be made to give)
        def no_link(*args: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "a.dcm"
    with atomic_path(target, no_clobber=True) as tmp:
        tmp.write_bytes(b"first")
    with atomic_path(target, no_clobber=True) as tmp:  # a re-run: the same bytes
        tmp.write_bytes(b"first")
    with pytest.raises(FileExistsError), atomic_path(target, no_clobber=True) as tmp:
        tmp.write_bytes(b"other")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]
