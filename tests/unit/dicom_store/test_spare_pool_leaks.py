"""SparePool under the C-GET's use, checked for leaks of threads, descriptors and files:
one pool per retrieve (many), pools dropped unclosed, the folder deleted under files made
ahead, close() racing take() from several threads."""

from __future__ import annotations

import gc
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.dicom._getphase import PooledReceiver
from kit.dicom._spares import POOL_LIMIT, SparePool, create, names
from tests.conftest import open_fds

CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAX = "1.2.840.10008.1.2.1"
DATA = b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"




def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in {"kit-get-files", "kit-spares"}]


def _settle(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_one_pool_per_retrieve_leaks_nothing(tmp_path: Path, unnamed: bool) -> None:
    assert _settle(lambda: not _pool_threads())
    fds, threads = open_fds(collect=True), threading.active_count()
    for n in range(40):  # as PacsClient.get: a receiver per retrieve, prepared, used, discarded
        dest = tmp_path / f"r{n}"
        dest.mkdir()
        receiver = PooledReceiver(dest, None, None)
        receiver.unnamed = unnamed and receiver.unnamed
        receiver.pooled = True
        receiver.prepare()
        receiver.pool.top_up(POOL_LIMIT)
        for i in range(3):
            status, size, final = receiver.place(f"1.2.{i}", CT, SYNTAX, DATA)
            assert status == 0
            receiver.record(f"1.2.{i}", CT, SYNTAX, size, final)
        receiver.discard()
        assert sorted(p.name for p in dest.iterdir()) == [f"1.2.{i}.dcm" for i in range(3)]
    assert _settle(lambda: threading.active_count() == threads and not _pool_threads())
    assert open_fds() == fds


def test_pools_dropped_unclosed_end_and_close_their_files(tmp_path: Path) -> None:
    assert _settle(lambda: not _pool_threads())
    fds = open_fds(collect=True)
    receivers = [PooledReceiver(tmp_path, None, None) for _ in range(10)]
    for receiver in receivers:
        receiver.pool.top_up(POOL_LIMIT)
    assert _settle(lambda: open_fds() == fds + 10 * POOL_LIMIT)
    del receivers, receiver
    gc.collect()
    assert _settle(lambda: not _pool_threads())  # each thread sees its pool gone within _POLL
    assert open_fds() == fds
    assert [p.name for p in tmp_path.iterdir()] == []  # named or unnamed: nothing left


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_the_folder_deleted_under_files_made_ahead(tmp_path: Path, unnamed: bool) -> None:
    fds = open_fds(collect=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    receiver = PooledReceiver(dest, None, None)
    receiver.unnamed = unnamed and receiver.unnamed
    receiver.pooled = True
    receiver.pool.top_up(4)
    assert _settle(lambda: len(receiver.pool._shared.ready) == 4)
    shutil.rmtree(dest)
    receiver.pool.top_up(POOL_LIMIT)  # cannot make more: logged, no retry loop, no thread death
    statuses = [receiver.place(f"1.2.{i}", CT, SYNTAX, DATA)[0] for i in range(6)]
    assert statuses == [0xA700] * 6 and len(receiver.errors) == 6
    assert receiver.pool.failure is None
    thread = receiver.pool._thread
    receiver.discard()
    assert thread is not None and not thread.is_alive()
    assert open_fds() == fds and not tmp_path.joinpath("dest").exists()


def _race_close_and_take(folder: Path) -> None:
    """Four threads take and top up while close() runs: each file given once, the rest removed."""
    name = names(str(folder / "f"))
    pool = SparePool(lambda: create(name()), POOL_LIMIT)
    taken: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def taker() -> None:
        start.wait(5)
        for _ in range(200):
            made = pool.take()
            pool.top_up()
            if made is not None:
                os.close(made[1])
                with lock:
                    taken.append(made[0])

    workers = [threading.Thread(target=taker) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.wait(5)
    pool.close()  # while they take and top up
    for worker in workers:
        worker.join(10)
    assert pool.take() is None
    assert len(taken) == len(set(taken))  # no file given twice
    assert sorted(str(p) for p in folder.iterdir()) == sorted(taken)  # unused ones removed by close()
    for path in taken:
        os.unlink(path)
    assert pool._thread is None or not pool._thread.is_alive()


def test_close_racing_take_from_many_threads(tmp_path: Path) -> None:
    fds = open_fds(collect=True)
    for _ in range(20):
        _race_close_and_take(tmp_path)
    assert open_fds() == fds
