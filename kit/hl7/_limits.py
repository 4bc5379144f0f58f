"""The MLLP listener's limits on its peers: one connection's time, all connections' bytes.

:class:`Watch` bounds the time of a connection's reads and writes with one timer per
connection; :class:`FrameBudget` bounds the bytes of unfinished frames that all
connections hold together (each alone is bounded by ``max_message_bytes``; 256 connections
of 16 MiB frames would be 4 GiB).
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["FrameBudget", "Watch"]


class Watch:
    """The time limit of one connection's read or write: one timer per connection, not one per read.

    ``asyncio.timeout`` around every read and drain schedules and cancels a timer each time;
    here a read sets a deadline (a float) and the timer, armed once, re-arms itself when it fires
    early. When the deadline has passed, the connection's task is cancelled, and
    :meth:`expired` tells that cancellation from any other (shutdown, eviction).
    """

    __slots__ = ("_handle", "_loop", "_task", "deadline", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> None:
        self._loop, self._task = loop, task
        self._handle: asyncio.TimerHandle | None = None
        self.deadline = math.inf
        self.fired = False

    def expect(self, deadline: float) -> None:
        """The next read or write must end by ``deadline`` (loop time); ``math.inf``: no limit now."""
        self.deadline = deadline
        handle = self._handle
        if deadline < math.inf and (handle is None or deadline < handle.when()):
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self.deadline == math.inf:
            return
        if self._loop.time() + 0.001 >= self.deadline:
            self.fired = True
            self.deadline = math.inf
            self._task.cancel()
        else:  # the deadline moved on since the timer was armed
            self._handle = self._loop.call_at(self.deadline, self._fire)

    def expired(self) -> bool:
        """For a CancelledError just caught: True if it was this time limit alone (then it is spent)."""
        if not self.fired:
            return False
        self.fired = False
        return self._task.uncancel() == 0

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class FrameBudget:
    """The bytes of unfinished frames all connections hold, kept within ``limit``.

    Each connection reports its unfinished frame after every read (:meth:`hold`); past the
    limit, the frames that started the longest ago are given up until the rest fits: a slow peer
    holds its frame the longest, and a frame given up was never acknowledged, so its sender resends it.

    Parameters
    ----------
    limit : int
        Bytes all unfinished frames may hold together.
    """

    __slots__ = ("_frames", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: per connection with an unfinished frame: (when the frame started, bytes it holds)
        self._frames: dict[asyncio.Task[None], tuple[float, int]] = {}
        #: bytes they hold in all
        self.held = 0

    def hold(self, task: asyncio.Task[None], started: float | None, held: int) -> list[asyncio.Task[None]]:
        """``task``'s unfinished frame, started at ``started`` (loop time), now holds ``held`` bytes
        (0: none, or the connection ended); returns the connections whose frames are given up to
        stay within the limit, oldest first (perhaps ``task`` itself), usually none."""
        before = self._frames.pop(task, None)
        if before is None and not held:
            return []  # the usual case: whole frames only, before and after
        self.held += held - (before[1] if before else 0)
        if held:
            self._frames[task] = (started or 0.0, held)
        cut = []
        while self.held > self.limit:
            oldest = min(self._frames, key=self._frames.__getitem__)
            self.held -= self._frames.pop(oldest)[1]
            cut.append(oldest)
        return cut
