"""The politeness limits: token bucket arithmetic (fake clock) and the local limiter."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.cohort.limiter import Limiter, LocalLimiter, Stopped, TokenBucket


def test_bucket_spaces_reservations_after_the_burst() -> None:
    bucket = TokenBucket(10.0, burst=2.0, now=0.0)
    waits = [bucket.reserve(0.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3])
    assert bucket.reserve(10.0) == 0.0  # refilled, never above the burst
    assert bucket.reserve(10.0) == 0.0
    assert bucket.reserve(10.0) == pytest.approx(0.1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (1, 0.5), (1, float("inf"))])
def test_bucket_refuses_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst=burst)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.5, 1000), st.floats(1, 50),
       st.lists(st.floats(0, 0.5), min_size=1, max_size=60))
def test_bucket_never_grants_more_than_burst_plus_rate_times_time(rate: float, burst: float,
                                                                  gaps: list[float]) -> None:
    """One instance at a time (as the job asks): any window holds at most burst + rate * its length."""
    bucket = TokenBucket(rate, burst=burst, now=0.0)
    now, grants = 0.0, []
    for gap in gaps:
        now += gap
        grants.append((now + bucket.reserve(now, 1), 1))
    # over any window ending at a grant, granted <= burst + rate * window (+ float slack)
    for i, (end, _) in enumerate(grants):
        for start, _ in grants[: i + 1]:
            total = sum(n for t, n in grants if start <= t <= end)
            assert total <= burst + rate * (end - start) + 1e-6 * (1 + total)


def test_local_limiter_holds_the_association_cap() -> None:
    limiter = LocalLimiter(2, 1000.0)
    assert isinstance(limiter, Limiter)
    inside, peak, lock = [0], [0], threading.Lock()

    def work() -> None:
        with limiter.association():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 2 and limiter.peak == 2


def test_local_limiter_paces_images_and_stops_waiting_when_stopped() -> None:
    clock = [0.0]
    slept: list[float] = []
    limiter = LocalLimiter(1, 10.0, burst=1.0, clock=lambda: clock[0], sleep=slept.append)
    for _ in range(4):
        limiter.images()
    assert slept == pytest.approx([0.1, 0.2, 0.3])
    stop = threading.Event()
    slow = LocalLimiter(1, 0.5, burst=1.0, stop=stop)
    slow.images()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        slow.images()  # would wait 2 s
    assert time.monotonic() - started < 1.5
    with pytest.raises(Stopped), slow.association():
        pass
