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
from kit.dicom._spares import SparePool
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
        assert leftovers(pacs.store) == []  # the association's unused spare removed at its end
        assert echo_ok(pacs)


def test_prepare_is_used_once_and_discarded(tmp_path: Path, creations: list[str]) -> None:
    store = InstanceStore(tmp_path / "store")
    ds = make_instance("MRN1001", 0, 1, 1)
    store.prepare()
    prepared = store._spares.file.path
    store.prepare()  # idempotent: the same file
    assert store._spares.file.path == prepared and os.path.exists(prepared)
    store.store_dataset(ds)
    assert creations == [] and not os.path.exists(prepared)  # written and renamed into place
    store.prepare()
    prepared = store._spares.file.path
    store.discard_prepared()
    store.discard_prepared()
    assert not os.path.exists(prepared)
    store.store_dataset(ds)  # without a prepared file: made on the way, as before
    assert len(creations) == 1 and len(store) == 1
    assert leftovers(store) == []  # the pool's ready files released: nothing else in tmp/


def test_a_thread_ending_with_a_prepared_file_leaves_nothing(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    made: list[str] = []
    worker = threading.Thread(target=lambda: (store.prepare(), made.append(store._spares.file.path)))
    worker.start()
    worker.join()
    del worker
    import gc

    gc.collect()
    assert made and not os.path.exists(made[0])
    assert leftovers(store) == []


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
    assert leftovers(store) == [] and len(store) == 0


def test_prepare_failing_leaves_the_write_to_report(tmp_path: Path) -> None:
    from kit.errors import StoreError

    store = InstanceStore(tmp_path / "store")
    store.tmp_dir.rmdir()
    store.prepare()  # cannot create: nothing raised here
    assert getattr(store._spares, "file", None) is None
    with pytest.raises(StoreError):
        store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    store.tmp_dir.mkdir()
    store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    assert len(store) == 1


def _wait(condition: Any, timeout: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_the_pool_keeps_files_ready_off_the_receivers_threads(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    store.prepare()  # starts the pool; this first file may be made here
    store.discard_prepared()
    assert _wait(lambda: len(list(store.tmp_dir.iterdir())) >= 8)
    assert store._pool is not None
    thread = store._pool._thread
    store.prepare()  # taken from the pool
    store.store_dataset(make_instance("MRN1001", 0, 1, 1))
    store.release_spares()
    assert thread is not None and not thread.is_alive()
    assert list(store.tmp_dir.iterdir()) == []
    store.prepare()  # a new pool after release
    store.store_dataset(make_instance("MRN1001", 0, 1, 2))
    store.close()
    assert list(store.tmp_dir.iterdir()) == [] and len(InstanceStore(tmp_path / "store")) == 2


def test_a_dead_pool_thread_only_slows_writes_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    import kit.dicom._spares as spares

    def broken(path: str) -> spares.Spare:
        raise RuntimeError("pool bug")

    monkeypatch.setattr(spares, "create", broken)  # the pool thread's creation only
    store = InstanceStore(tmp_path / "store")
    store.prepare()
    assert store._pool is not None
    pool = store._pool
    assert _wait(lambda: pool.failure is not None)
    assert pool._thread is not None
    pool._thread.join(5)
    assert "spare-file thread died" in caplog.text
    for number in range(1, 4):  # files made by the writers themselves, as before
        store.prepare()
        store.store_dataset(make_instance("MRN1001", 0, 1, number))
    assert len(store) == 3 and leftovers(store) == []


def test_an_unclosed_store_ends_its_pool(tmp_path: Path) -> None:
    import gc

    store = InstanceStore(tmp_path / "store")
    store.prepare()
    store.discard_prepared()
    tmp_dir = store.tmp_dir
    assert store._pool is not None and store._pool._thread is not None
    thread = store._pool._thread
    assert _wait(lambda: len(list(tmp_dir.iterdir())) >= 8)
    store._db.close()
    store._checkpointer.close()
    del store
    gc.collect()
    thread.join(5)
    assert not thread.is_alive() and list(tmp_dir.iterdir()) == []


def test_the_pool_is_refilled_in_bursts_not_woken_for_each_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each top-up that grants files wakes the pool's thread: once half the pool is taken, not
    after every take; the receivers still find files ready and nothing is left behind."""
    store = InstanceStore(tmp_path / "store")
    grants: list[int] = []
    real = SparePool.top_up

    def counting(pool: SparePool, ahead: int | None = None) -> None:
        before = pool.outstanding
        real(pool, ahead)
        if pool.outstanding > before:
            grants.append(pool.outstanding - before)

    monkeypatch.setattr(SparePool, "top_up", counting)
    try:
        store.prepare()
        assert store._pool is not None
        assert _wait(lambda: len(list(store.tmp_dir.iterdir())) >= store._pool.size)
        for n in range(1, 17):
            store.prepare()
            store.store_dataset(make_instance("MRN1001", 0, 1, n))
        size = store._pool.size
        assert len(grants) <= 1 + 16 // (size - size // 2) + 1  # a burst per size/2 taken
        assert all(g >= size - size // 2 for g in grants[1:])
        assert len(store) == 16
    finally:
        store.close()
    assert list(store.tmp_dir.iterdir()) == []
