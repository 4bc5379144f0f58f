"""New study/series folders are durable before any instance stored in them is acknowledged.

The association that creates a series folder fsyncs its parents with its own commit; another
association storing into the same series meanwhile, whose commit comes first, must not be
acknowledged before those parents are synced (a power cut would lose the folder and the
acknowledged file in it). And the store checks a folder it knows once, not for every instance,
yet still makes again (and syncs) one removed behind its back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

import kit.dicom.store as store_module
from kit.dicom.store import InstanceStore
from tests.integration.pacs_scp.conftest import make_instance
from tests.integration.pacs_scp.test_robustness import leftovers


@pytest.mark.parametrize("series", [1, 2], ids=["same series", "sibling series of the new study"])
def test_a_store_into_a_folder_another_is_creating_syncs_its_parents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, series: int) -> None:
    """The second store goes into the folder the first made, or into a sibling series folder of
    the study folder the first made (its own make then changes only the study folder's entries:
    the study folder's own entry is the first store's to sync)."""
    store = InstanceStore(tmp_path / "store")
    real_need, real_sync = store._folders.need, store_module._fsync_dir
    made, go = threading.Event(), threading.Event()
    synced: list[str] = []
    creator: list[frozenset[str]] = []

    def need_then_pause(folder: str, make: Callable[[str], frozenset[str]]) -> None:
        real_need(folder, make)
        if not creator:  # the first association: folder made, then slow to submit
            creator.append(store._folders.parents(folder))
            made.set()
            go.wait(10)

    monkeypatch.setattr(store._folders, "need", need_then_pause)
    monkeypatch.setattr(store_module, "_fsync_dir", lambda path: (synced.append(os.fspath(path)),
                                                                  real_sync(path))[1])
    first, second = make_instance("MRN1001", 0, 1, 1), make_instance("MRN1001", 0, series, 2)
    slow = threading.Thread(target=store.store_dataset, args=(first,))
    try:
        slow.start()
        assert made.wait(10)
        held = store.store_dataset(second)  # committed (and acknowledged) while the creator waits
        synced_by_then = set(synced)
        go.set()
        slow.join(10)
        assert len(creator[0]) == 2, "the first store created the study and series folders"
        assert held.path.parent.is_dir()
        assert creator[0] <= synced_by_then, "acknowledged before its new folder's entry was durable"
        assert {i.sop_instance_uid for i in store} == {str(first.SOPInstanceUID),
                                                       str(second.SOPInstanceUID)}
        assert leftovers(store) == []
    finally:
        go.set()
        slow.join(10)
        store.close()


def test_a_known_folder_is_not_checked_again_but_a_removed_one_is_made_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = InstanceStore(tmp_path / "store")
    checks: list[str] = []
    real_make = store_module._make_dirs
    monkeypatch.setattr(store_module, "_make_dirs", lambda folder: (checks.append(folder),
                                                                    real_make(folder))[1])
    try:
        stored = [store.store_dataset(make_instance("MRN1001", 0, 1, n)) for n in (1, 2, 3)]
        folder = stored[0].path.parent
        assert checks == [os.fspath(folder)]  # once for the series, not per instance
        for item in stored:
            item.path.unlink()
        folder.rmdir()  # an operator removes the series folder while the store runs
        fourth = make_instance("MRN1001", 0, 1, 4)
        again = store.store_dataset(fourth)
        assert again.path.parent == folder and folder.is_dir()
        assert str(dcmread(again.path).SOPInstanceUID) == str(fourth.SOPInstanceUID)
        assert leftovers(store) == []
    finally:
        store.close()
