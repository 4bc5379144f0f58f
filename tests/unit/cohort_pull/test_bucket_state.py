"""A token bucket carried between processes (the Dask limiter's state on the scheduler), and a
task's plain outcome (kit.cohort.retrieve.Attempt) that crosses to the client."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.cohort.limiter import Stopped, TokenBucket
from kit.cohort.retrieve import Attempt, attempt
from kit.dicom.web import ResponseTooLargeError
from kit.errors import DicomError, DicomWebError, DimseStatusError, KitError, PeerUnreachableError, StoreError


@settings(max_examples=150, deadline=None)
@given(st.floats(0.5, 1000), st.floats(1, 50),
       st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 5)), min_size=1, max_size=40))
def test_a_bucket_carried_through_its_state_waits_as_the_one_bucket(
        rate: float, burst: float, steps: list[tuple[float, int]]) -> None:
    """Fast path == slow path: one bucket in memory, and one rebuilt from its state before every call."""
    kept = TokenBucket(rate, burst=burst, now=0.0)
    carried = kept.state()
    now = 0.0
    for gap, n in steps:
        now += gap
        rebuilt = TokenBucket.from_state(rate, burst, *carried)
        assert rebuilt.reserve(now, n) == pytest.approx(kept.reserve(now, n), abs=1e-9)
        carried = rebuilt.state()
        assert carried == pytest.approx(kept.state())


def test_a_lagging_clock_slows_the_bucket_never_speeds_it() -> None:
    # worker A's clock reads 10.0, worker B's lags at 9.0: B's call adds no tokens
    bucket = TokenBucket(10.0, burst=1.0, now=0.0)
    assert bucket.reserve(10.0) == 0.0
    b = TokenBucket.from_state(10.0, 1.0, *bucket.state())
    assert b.reserve(9.0) == pytest.approx(0.1)  # waits as if no time had passed
    assert b.state() == (-1.0, 10.0)  # the latest reading is kept


@pytest.mark.parametrize(("tokens", "at"), [(math.nan, 0.0), (1.0, math.inf), (-math.inf, 0.0)])
def test_a_broken_state_is_refused(tokens: float, at: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket.from_state(10.0, 2.0, tokens, at)


def test_a_stored_state_gives_no_more_than_the_burst() -> None:
    bucket = TokenBucket.from_state(10.0, 2.0, 1000.0, 0.0)
    assert [bucket.reserve(0.0) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def _raise(exc: BaseException) -> None:
    raise exc


def test_an_attempt_is_plain_data_and_raises_its_error_again() -> None:
    ok = attempt(lambda: 42)
    assert ok.value == 42 and ok.failure is None
    cases = [
        (PeerUnreachableError("cannot connect", peer="dicom://X@h:1"), PeerUnreachableError, True),
        (DimseStatusError("C-GET failed", status=0xA702), DicomError, True),  # needs status: its parent
        (ValueError("a surprise"), KitError, False),
        (ResponseTooLargeError("the answer is larger", status_code=200), DicomWebError, False),  # web.py's
    ]
    for exc, raised, transient in cases:
        outcome = pickle.loads(pickle.dumps(attempt(_raise, exc)))
        assert isinstance(outcome, Attempt) and outcome.failure is not None
        assert outcome.failure.transient is transient
        assert outcome.internal is (not isinstance(exc, KitError))
        with pytest.raises(raised, match=str(exc).split()[0]) as info:
            outcome.raise_error()
        assert isinstance(info.value, KitError)
    stopped = pickle.loads(pickle.dumps(attempt(_raise, Stopped("stop"))))
    assert stopped.stopped == "stop" and stopped.failure is None
    with pytest.raises(Stopped):
        stopped.raise_error()
    disk = pickle.loads(pickle.dumps(attempt(_raise, StoreError("disk full"))))
    with pytest.raises(StoreError, match="disk full"):
        disk.raise_error()
