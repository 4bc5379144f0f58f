"""kit.dicom._storefs.Folders: which directories a commit must fsync for a folder's instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kit.dicom._storefs as storefs
from kit.dicom._storefs import Folders, make_dirs


def test_the_parents_of_every_new_directory_on_the_path_until_synced(tmp_path: Path) -> None:
    folders = Folders()
    root = tmp_path / "files"
    root.mkdir()
    first, sibling = os.fspath(root / "study" / "s1"), os.fspath(root / "study" / "s2")
    folders.need(first, make_dirs)  # makes study and s1
    folders.need(sibling, make_dirs)  # makes s2 only: study is the first's, still not synced
    study = os.fspath(root / "study")
    assert folders.parents(first) == {os.fspath(root), study}
    assert folders.parents(sibling) == {os.fspath(root), study}
    folders.synced([os.fspath(root)])  # a commit synced files/ but failed before the study folder
    assert folders.parents(sibling) == {study}
    folders.synced([study, sibling])
    assert folders.parents(first) == frozenset() and folders.parents(sibling) == frozenset()


def test_a_known_folder_is_not_made_again() -> None:
    folders = Folders()
    calls: list[str] = []
    for _ in range(3):
        folders.need("/x/y", lambda f: (calls.append(f), frozenset())[1])
    assert calls == ["/x/y"]


def test_new_directories_beyond_the_limit_are_synced_at_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    monkeypatch.setattr(storefs, "fsync_dir", lambda path: synced.append(os.fspath(path)))
    folders = Folders(limit=3)
    for n in range(3):  # two new directories each: the second folder's make goes over 3
        folders.need(os.fspath(tmp_path / f"study{n}" / "series"), make_dirs)
    studies = [os.fspath(tmp_path / f"study{n}") for n in range(2)]
    assert sorted(synced) == sorted([os.fspath(tmp_path), *studies])
    assert all(folders.parents(os.fspath(tmp_path / f"study{n}" / "series")) == frozenset()
               for n in range(2))
    assert folders.parents(os.fspath(tmp_path / "study2" / "series")) == {
        os.fspath(tmp_path), os.fspath(tmp_path / "study2")}
