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
