"""The receive path creates each instance's temporary file ahead (InstanceStore.prepare), while the
sender is still sending it, so no file creation (a journal operation, up to ~1 ms on a busy disk) lies
between receiving an instance and acknowledging it; unused files never stay behind (issue 9, target 3)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kit.dicom.store as store_module
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.store import InstanceStore
from tests.integration.pacs_scp.conftest import make_instance
from tests.integration.pacs_scp.test_robustness import echo_ok, leftovers


def _files(root: Path, n: int) -> list[Path]:
    out = []
    for number in range(1, n + 1):
        path = root / f"{number}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_instance("MRN1001", 0, 1, number).save_as(path, enforce_file_format=True)
        out.append(path)
    return out


@pytest.fixture
def creations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Files created (O_CREAT) while a store call is committing an instance, by its thread."""
    made: list[str] = []
    inside = threading.local()
    real_open, real_commit = os.open, InstanceStore._commit

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and getattr(inside, "on", False):
            made.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    def commit(self: InstanceStore, *args: Any, **kwargs: Any) -> Any:
        inside.on = True
        try:
            return real_commit(self, *args, **kwargs)
        finally:
            inside.on = False

    monkeypatch.setattr(store_module.os, "open", counting_open)
    monkeypatch.setattr(InstanceStore, "_commit", commit)
    yield made


def test_only_the_first_instance_of_an_association_creates_its_file_on_the_ack_path(
        tmp_path: Path, creations: list[str]) -> None:
    files = _files(tmp_path / "src", 5)
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=30).store(files)
        assert len(pacs.store) == 5
        assert len(creations) == 1  # the four others were written into files made ahead
        assert leftovers(pacs.store.root) == []  # the association's unused spare removed at its end
        assert echo_ok(pacs)


def test_prepare_is_used_once_and_discarded(tmp_path: Path, creations: list[str]) -> None:
    store = InstanceStore(tmp_path / "store")
    ds = make_instance("MRN1001", 0, 1, 1)
    store.prepare()
    store.prepare()  # idempotent: one file
    assert len(list(store.tmp_dir.iterdir())) == 1
    store.store_dataset(ds)
    assert creations == [] and list(store.tmp_dir.iterdir()) == []
    store.prepare()
    store.discard_prepared()
    store.discard_prepared()
    assert list(store.tmp_dir.iterdir()) == []
    store.store_dataset(ds)  # without a prepared file: made on the way, as before
    assert len(creations) == 1 and len(store) == 1


def test_a_thread_ending_with_a_prepared_file_leaves_nothing(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    worker = threading.Thread(target=store.prepare)
    worker.start()
    worker.join()
    del worker
    import gc

    gc.collect()
    assert list(store.tmp_dir.iterdir()) == []


def test_a_prepared_file_whose_write_fails_is_removed_and_reported(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from kit.errors import StoreError

    store = InstanceStore(tmp_path / "store")
    store.prepare()

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module, "_fdatasync", failing)
    with pytest.raises(StoreError):
        store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    assert list(store.tmp_dir.iterdir()) == [] and len(store) == 0


def test_prepare_failing_leaves_the_write_to_report(tmp_path: Path) -> None:
    from kit.errors import StoreError

    store = InstanceStore(tmp_path / "store")
    store.tmp_dir.rmdir()
    store.prepare()  # cannot create: nothing raised here
    with pytest.raises(StoreError):
        store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    store.tmp_dir.mkdir()
    store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    assert len(store) == 1
