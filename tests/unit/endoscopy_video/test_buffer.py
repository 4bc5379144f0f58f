"""The drop-oldest frame buffer and the rate meter (pure; threads only where waiting is the point)."""

from __future__ import annotations

import collections
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.endoscopy.buffer import DropOldestBuffer, RateMeter

#: an operation: ("put", value) or ("get", None) or ("drain", None)
ops = st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 10_000)),
                         st.tuples(st.just("get"), st.none()),
                         st.tuples(st.just("drain"), st.none())), max_size=200)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), ops)
def test_buffer_matches_a_bounded_deque(capacity: int, batch: int,
                                        operations: list[tuple[str, int | None]]) -> None:
    """Fast path == slow path: the buffer behaves as deque(maxlen=capacity), and counts its evictions."""
    buf: DropOldestBuffer[int] = DropOldestBuffer(capacity, batch=min(batch, capacity))
    model: collections.deque[int] = collections.deque(maxlen=capacity)
    dropped = pushed = 0
    for op, value in operations:
        if op == "put":
            assert value is not None
            expected_evicted = model[0] if len(model) == capacity else None
            dropped += expected_evicted is not None
            pushed += 1
            model.append(value)
            assert buf.put(value) == expected_evicted
        elif op == "get":
            assert buf.get(timeout=0) == (model.popleft() if model else None)
        else:
            assert buf.drain() == list(model)
            model.clear()
        assert len(buf) == len(model) <= capacity
        assert (buf.dropped, buf.pushed) == (dropped, pushed)
    # what was put and not dropped comes out, in order
    assert [buf.get(timeout=0) for _ in range(len(model))] == list(model)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(), max_size=60))
def test_closed_buffer_hands_out_what_it_holds_then_none(capacity: int, values: list[int]) -> None:
    buf: DropOldestBuffer[int] = DropOldestBuffer(capacity)
    for v in values:
        buf.put(v)
    buf.close()
    assert buf.put(12345) == 12345          # refused: handed back
    kept = values[-capacity:] if values else []
    assert [buf.get() for _ in kept] == kept  # no wait: closed
    assert buf.get() is None and buf.closed
    assert buf.dropped == max(0, len(values) - capacity)


def test_capacity_and_batch_must_be_sane() -> None:
    for capacity, batch in ((0, 1), (4, 0), (4, 5)):
        with pytest.raises(ValueError):
            DropOldestBuffer(capacity, batch=batch)


@pytest.mark.timeout(20)
def test_get_times_out_and_close_wakes_a_waiting_reader() -> None:
    buf: DropOldestBuffer[int] = DropOldestBuffer(2)
    start = time.monotonic()
    assert buf.get(timeout=0.2) is None and not buf.closed
    assert 0.15 <= time.monotonic() - start < 5
    got: list[int | None] = []
    reader = threading.Thread(target=lambda: got.append(buf.get()))
    reader.start()
    time.sleep(0.1)
    buf.close()
    reader.join(5)
    assert not reader.is_alive() and got == [None]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("capacity", "batch"), [(2, 1), (2, 2), (8, 4), (8, 8)])
def test_blocking_put_waits_for_room_instead_of_dropping(capacity: int, batch: int) -> None:
    """A file source's mode: a slow consumer loses nothing, whatever the batch (and nothing deadlocks)."""
    buf: DropOldestBuffer[int] = DropOldestBuffer(capacity, batch=batch)
    produced = threading.Event()

    def producer() -> None:
        for i in range(50):
            assert buf.put(i, block=True) is None
        produced.set()

    thread = threading.Thread(target=producer)
    thread.start()
    out = []
    while len(out) < 50:
        item = buf.get(timeout=5)
        assert item is not None
        out.append(item)
        time.sleep(0.001)
    thread.join(5)
    buf.close()
    assert produced.is_set() and out == list(range(50)) and buf.dropped == 0


@pytest.mark.timeout(20)
def test_blocking_put_gives_up_on_close_and_after_its_timeout() -> None:
    buf: DropOldestBuffer[int] = DropOldestBuffer(1)
    buf.put(1)
    start = time.monotonic()
    assert buf.put(2, block=True, timeout=0.2) == 1     # waited, then evicted after all
    assert time.monotonic() - start >= 0.15 and buf.dropped == 1
    result: list[int | None] = []
    t = threading.Thread(target=lambda: result.append(buf.put(3, block=True)))
    t.start()
    time.sleep(0.1)
    buf.close()
    t.join(5)
    assert result == [3] and buf.get() == 2 and buf.get() is None


def test_rate_meter() -> None:
    meter = RateMeter(window=5)
    assert meter.rate == 0.0
    meter.tick(10.0)
    assert meter.rate == 0.0
    for i in range(1, 10):
        meter.tick(10.0 + i * 0.25)        # 4 per second
    assert meter.rate == pytest.approx(4.0)
    meter.reset()
    meter.tick(1.0)
    meter.tick(1.0)
    assert meter.rate == 0.0               # no time between them: no rate, no division by zero
    with pytest.raises(ValueError):
        RateMeter(window=1)
