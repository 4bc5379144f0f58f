"""kit.dicom._groupcommit: batches from concurrent callers, per-item errors, no item lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dicom._groupcommit import GroupCommit, Pending


def test_concurrent_callers_share_batches_and_each_returns_after_its_commit() -> None:
    committed: list[int] = []
    lock = threading.Lock()

    def commit(batch: Sequence[Pending[int]]) -> None:
        time.sleep(0.01)  # a slow fsync: callers pile up behind it
        with lock:
            committed.extend(p.item for p in batch)

    group: GroupCommit[int] = GroupCommit(commit)
    returned: list[int] = []

    def caller(i: int) -> None:
        group.submit(i)
        with lock:
            assert i in committed  # never before its own commit
            returned.append(i)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(committed) == sorted(returned) == list(range(40))
    assert max(group.batch_sizes) > 1 and sum(group.batch_sizes) == 40


def test_errors_reach_exactly_the_failed_items() -> None:
    def commit(batch: Sequence[Pending[int]]) -> None:
        for p in batch:
            if p.item % 2:
                p.error = OSError(f"item {p.item}")

    group: GroupCommit[int] = GroupCommit(commit)
    group.submit(2)
    with pytest.raises(OSError, match="item 3"):
        group.submit(3)


def test_a_commit_that_raises_fails_its_whole_batch_and_the_next_still_works() -> None:
    calls = {"n": 0}

    def commit(batch: Sequence[Pending[int]]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk gone")

    group: GroupCommit[int] = GroupCommit(commit)
    with pytest.raises(RuntimeError, match="disk gone"):
        group.submit(1)
    group.submit(2)


@settings(max_examples=15, deadline=None)
@given(callers=st.integers(1, 24), max_batch=st.integers(1, 5))
def test_no_item_lost_or_committed_twice_whatever_the_batch_limit(callers: int, max_batch: int) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def commit(batch: Sequence[Pending[int]]) -> None:
        assert len(batch) <= max_batch
        with lock:
            seen.extend(p.item for p in batch)

    group: GroupCommit[int] = GroupCommit(commit, max_batch=max_batch)
    threads = [threading.Thread(target=group.submit, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == list(range(callers))


def test_a_leader_lingers_for_an_announced_item_so_both_share_one_commit() -> None:
    batches: list[list[str]] = []

    def commit(batch: Sequence[Pending[str]]) -> None:
        batches.append([p.item for p in batch])

    group: GroupCommit[str] = GroupCommit(commit, linger=10.0)
    ready = threading.Event()

    def late() -> None:
        with group.coming() as submit:
            ready.set()
            time.sleep(0.05)  # still writing its file when the leader takes over
            submit("late")

    t = threading.Thread(target=late)
    t.start()
    ready.wait(10)
    group.submit("first")  # leads, and waits for the announced item instead of committing alone
    t.join(10)
    assert batches == [["first", "late"]]


def test_a_withdrawn_announcement_does_not_hold_the_leader() -> None:
    group: GroupCommit[str] = GroupCommit(lambda batch: None, linger=30.0)
    with pytest.raises(OSError), group.coming():
        raise OSError("the write failed before submitting")
    started = time.monotonic()
    group.submit("alone")  # nobody is coming: no linger
    assert time.monotonic() - started < 10.0


def test_a_lingering_leader_is_woken_once_everyone_announced_has_arrived_not_per_arrival() -> None:
    """Three announced items arrive one by one while the leader lingers: it takes them in one
    batch, and is woken when the last arrives (each wake-up of a thread is a context switch;
    one per arrival woke it for nothing while others were still coming)."""
    batches: list[list[str]] = []
    group: GroupCommit[str] = GroupCommit(lambda batch: batches.append([p.item for p in batch]),
                                          linger=10.0)
    wakes = [0]
    notify = group._arrived.notify

    def counting(n: int = 1) -> None:
        wakes[0] += 1
        notify(n)

    group._arrived.notify = counting  # type: ignore[method-assign]
    announced = threading.Barrier(4)

    def late(name: str, delay: float) -> None:
        with group.coming() as submit:
            announced.wait(10)
            time.sleep(delay)  # still writing its file when the leader takes over
            submit(name)

    threads = [threading.Thread(target=late, args=(f"late{i}", 0.05 * (i + 1))) for i in range(3)]
    for t in threads:
        t.start()
    announced.wait(10)
    started = time.monotonic()
    group.submit("first")  # leads, and lingers for the three announced items
    for t in threads:
        t.join(10)
    assert batches == [["first", "late0", "late1", "late2"]]
    assert time.monotonic() - started < 5.0
    assert wakes[0] == 1
