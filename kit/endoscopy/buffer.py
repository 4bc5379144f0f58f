"""The frame buffer between a capture thread and its consumer, and a frame-rate meter (pure).

A live source must never stall capture: when the consumer falls behind, the
oldest frame goes, not the newest (:class:`DropOldestBuffer`). A file source can
wait instead (``put(..., block=True)``), so a slow consumer loses nothing.
Written by hand: :class:`collections.deque` with ``maxlen`` drops the oldest but
cannot wait or count, and :class:`queue.Queue` waits but cannot drop the oldest.
No I/O here: only a lock and a condition.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, TypeVar

__all__ = ["DropOldestBuffer", "RateMeter"]

T = TypeVar("T")


class DropOldestBuffer(Generic[T]):
    """A bounded, thread-safe FIFO whose ``put`` evicts the oldest item when full.

    Parameters
    ----------
    capacity : int
        Most items held at once (>= 1).
    batch : int
        A reader waiting on an empty buffer is woken once this many items are
        held (or on close), and a writer waiting for room once there is room
        for this many: fewer thread switches when latency does not matter (a
        file). 1 (the default) wakes on every item (a live stream).

    Attributes
    ----------
    pushed : int
        Items accepted by :meth:`put` so far.
    dropped : int
        Items evicted unread because the buffer was full.
    """

    def __init__(self, capacity: int, *, batch: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 1 <= batch <= capacity:
            raise ValueError(f"batch must be 1..{capacity}, got {batch}")
        self.capacity = capacity
        self.batch = batch
        self.pushed = 0
        self.dropped = 0
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (items already in it can still be read)."""
        return self._closed

    def put(self, item: T, *, block: bool = False, timeout: float | None = None) -> T | None:
        """Append ``item``.

        Parameters
        ----------
        item
            What to append.
        block : bool
            When full: False (live) evicts the oldest item; True (file) waits for room.
        timeout : float or None
            With ``block``, the longest wait; then the oldest item is evicted after all.

        Returns
        -------
        The evicted item, or None. On a closed buffer nothing is appended and
        ``item`` itself is returned (the caller should stop producing).
        """
        with self._cond:
            if block and len(self._items) >= self.capacity and not self._closed:
                deadline = None if timeout is None else time.monotonic() + timeout
                while len(self._items) >= self.capacity and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            if self._closed:
                return item
            evicted = None
            if len(self._items) >= self.capacity:
                evicted = self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self.pushed += 1
            if len(self._items) >= self.batch:
                self._cond.notify_all()
            return evicted

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, waiting up to ``timeout`` seconds (None: until one arrives or close).

        Returns None when the wait timed out or the buffer is closed and empty
        (tell the two apart with :attr:`closed`).
        """
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if not self._items:
                return None
            item = self._items.popleft()
            if len(self._items) <= self.capacity - self.batch:
                self._cond.notify_all()
            return item

    def drain(self) -> list[T]:
        """Remove and return every item held, oldest first."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items

    def close(self) -> None:
        """Accept nothing more and wake every waiter; items held stay readable (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RateMeter:
    """Events per second over the last ``window`` events (a measured frame rate).

    Parameters
    ----------
    window : int
        How many recent event times to keep (>= 2).
    """

    def __init__(self, window: int = 30) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        self._times: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self, at: float) -> None:
        """Record one event at time ``at`` (seconds, e.g. ``time.monotonic()``)."""
        self._times.append(at)

    def reset(self) -> None:
        """Forget every event (after a gap, so the gap does not drag the rate down)."""
        self._times.clear()

    @property
    def rate(self) -> float:
        """Events per second over the window; 0.0 with fewer than two events or no time between them."""
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
