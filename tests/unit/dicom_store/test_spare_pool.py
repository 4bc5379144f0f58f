"""kit.dicom._spares.SparePool: the one pool of temporary files made ahead (the embedded PACS's
store and the C-GET answer path), each guarantee once: a bound on files ready or being made,
named and unnamed files, lazy start, a weak reference from its thread, take() None when it has
nothing, a failing make or a dead thread never holding a write up, close() idempotent, bounded
and leaving nothing, top-ups from many threads."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.dicom import _spares
from kit.dicom._spares import POOL_LIMIT, Spare, SparePool, create, maker, names
from tests.conftest import open_fds


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


class Counting:
    """A make that counts files made and the most ready-or-being-made at once."""

    def __init__(self, folder: Path, delay: float = 0.0) -> None:
        self.name = names(str(folder / "f"))
        self.delay = delay
        self.lock = threading.Lock()
        self.made = 0
        self.taken = 0
        self.most = 0
        self.making = 0

    def __call__(self) -> tuple[str, int]:
        with self.lock:
            self.making += 1
            self.most = max(self.most, self.made - self.taken + self.making)
        time.sleep(self.delay)
        made = create(self.name())
        with self.lock:
            self.making -= 1
            self.made += 1
        return made

    def took(self) -> None:
        with self.lock:
            self.taken += 1


def test_lazy_start_and_take_none_when_nothing_is_ready(tmp_path: Path) -> None:
    pool = SparePool(maker(names(str(tmp_path / "f"))), 4)
    assert pool.take() is None and pool._thread is None  # nothing asked for: no thread
    pool.top_up(0)
    assert pool._thread is None
    pool.top_up(2)
    assert pool._thread is not None and pool._thread.name == "kit-spares"
    assert _wait(lambda: len(list(tmp_path.iterdir())) == 2)
    taken = [pool.take(), pool.take()]
    assert pool.take() is None  # empty: the caller makes its own
    for made in taken:
        assert made is not None
        os.close(made[1])
    pool.close()
    assert pool.take() is None  # closed
    assert len(list(tmp_path.iterdir())) == 2  # taken files are the caller's


def test_files_ready_or_being_made_never_exceed_the_bound(tmp_path: Path) -> None:
    make = Counting(tmp_path, delay=0.002)
    pool = SparePool(make, 5)
    pool.top_up(1000)  # capped at size
    assert _wait(lambda: make.made == 5)
    time.sleep(0.05)
    assert make.made == 5 and make.most == 5
    for _ in range(40):  # take and top up: the thread refills, never past the bound
        made = pool.take()
        if made is not None:
            make.took()
            os.close(made[1])
        pool.top_up()
    pool.top_up(2)  # a lower grant does not cancel files already granted
    assert _wait(lambda: len(pool._shared.ready) == 5)
    assert make.most <= 5
    pool.close()
    assert make.made - make.taken == 5  # those five removed by close()
    left = {p.name for p in tmp_path.iterdir()}
    assert len(left) == make.taken


@pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="no unnamed files on this system")
def test_unnamed_files_are_closed_and_nothing_stays_open(tmp_path: Path) -> None:
    before = open_fds(collect=True)

    def unnamed() -> tuple[str, int]:
        return "", os.open(tmp_path, os.O_WRONLY | os.O_TMPFILE, 0o600)

    pool = SparePool(unnamed, 3)
    pool.top_up()
    assert _wait(lambda: len(pool._shared.ready) == 3)
    made = pool.take()
    assert made is not None and made[0] == ""
    os.write(made[1], b"x")
    os.close(made[1])
    pool.close()
    pool.close()  # idempotent
    assert _wait(lambda: open_fds() == before)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_make_is_retried_once_per_top_up_and_never_blocks(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    calls: list[int] = []
    name = names(str(folder / "f"))

    def make() -> tuple[str, int]:
        calls.append(1)
        return create(name())

    pool = SparePool(make, 4)
    pool.top_up()  # the folder does not exist: the first file fails, the rest not tried
    assert _wait(lambda: len(calls) == 1)
    time.sleep(0.05)
    assert len(calls) == 1 and pool.take() is None and pool.failure is None
    folder.mkdir()
    pool.top_up()  # a later top-up tries again, and the pool fills
    assert _wait(lambda: len(pool._shared.ready) == 4)
    assert len(calls) == 5
    pool.close()
    assert list(folder.iterdir()) == []


def test_a_dead_thread_is_logged_kept_and_only_slows_callers_down(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ok = maker(names(str(tmp_path / "f")))
    broken = threading.Event()

    def make() -> tuple[str, int]:
        if broken.is_set():
            raise RuntimeError("pool bug")
        return ok()

    pool = SparePool(make, 3)
    pool.top_up(2)
    assert _wait(lambda: len(pool._shared.ready) == 2)
    broken.set()
    with caplog.at_level(logging.CRITICAL, logger="kit.dicom._spares"):
        pool.top_up(3)
        assert _wait(lambda: pool.failure is not None)
        assert pool._thread is not None
        pool._thread.join(5)
    assert isinstance(pool.failure, RuntimeError)
    assert any(r.levelno == logging.CRITICAL and "spare-file thread died" in r.getMessage()
               for r in caplog.records)
    assert pool.take() is None  # its ready files removed: callers make their own
    assert list(tmp_path.iterdir()) == []
    pool.top_up()  # a no-op: no new thread
    assert not pool._thread.is_alive()
    pool.close()


def test_close_while_the_thread_makes_a_file_is_bounded_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_spares, "CLOSE_WAIT", 0.1)
    made: list[str] = []
    gate = threading.Event()

    def make() -> tuple[str, int]:  # a file system that hangs in open()
        gate.wait(5)
        path = str(tmp_path / f"f{len(made)}")
        made.append(path)
        return create(path)

    pool = SparePool(make, 3)
    pool.top_up()
    time.sleep(0.02)
    started = time.monotonic()
    pool.close()  # waits at most CLOSE_WAIT for the hung thread
    assert time.monotonic() - started < 2.0
    gate.set()
    assert pool._thread is not None
    pool._thread.join(5)
    assert not pool._thread.is_alive()
    assert made and list(tmp_path.iterdir()) == []  # what it made after close() it removed itself
    assert pool.take() is None
    pool.close()


def test_a_pool_dropped_unclosed_ends_its_thread_and_removes_its_files(tmp_path: Path) -> None:
    class Owner:  # an owner whose make is a bound method: the thread must not keep it alive
        def __init__(self) -> None:
            self.name = names(str(tmp_path / "f"))
            self.pool = SparePool(self.make, 4)

        def make(self) -> tuple[str, int]:
            return create(self.name())

    owner = Owner()
    owner.pool.top_up()
    thread = owner.pool._thread
    assert thread is not None
    assert _wait(lambda: len(list(tmp_path.iterdir())) == 4)
    del owner
    gc.collect()
    thread.join(5)
    assert not thread.is_alive() and list(tmp_path.iterdir()) == []


def test_take_and_top_up_from_many_threads(tmp_path: Path) -> None:
    make = Counting(tmp_path)
    pool = SparePool(make, POOL_LIMIT)
    taken: list[str] = []
    lock = threading.Lock()

    def receiver() -> None:
        for _ in range(50):
            made = pool.take()
            pool.top_up()
            if made is None:
                continue
            make.took()
            os.close(made[1])
            with lock:
                taken.append(made[0])

    workers = [threading.Thread(target=receiver) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(taken) == len(set(taken))  # each file given to one caller
    assert _wait(lambda: len(pool._shared.ready) == POOL_LIMIT)  # refilled to size, no further
    time.sleep(0.05)
    assert make.made - len(taken) == POOL_LIMIT
    assert (pool._shared.granted, pool._shared.pending) == (POOL_LIMIT, 0)
    pool.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(t) for t in taken)


def test_a_spare_dropped_unused_is_removed(tmp_path: Path) -> None:
    spare = Spare(*create(str(tmp_path / "a.part")))
    path, fd = spare.take()
    os.close(fd)
    del spare
    assert os.path.exists(path)  # taken: the caller's
    spare = Spare(*create(str(tmp_path / "b.part")))
    spare.discard()
    spare.discard()
    unused = Spare(*create(str(tmp_path / "c.part")))
    del unused
    gc.collect()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.part"]
