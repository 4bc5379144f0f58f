"""Atomic writes: the target is the old file or the new one, never partial; no temp file is left."""

from __future__ import annotations

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
