"""Politeness limits toward a clinical system: concurrent associations and images per second.

Two pieces:

- :class:`TokenBucket`: the arithmetic of a token bucket (``rate`` tokens a
  second, at most ``burst`` saved up), on a clock the caller passes in. No
  threads, no sleeping: :meth:`TokenBucket.reserve` says how long to wait.
- :class:`LocalLimiter`: the bucket plus a semaphore for one process (threads).

A job asks the :class:`Limiter` protocol, not a class: ``with
limiter.association():`` around every association (or HTTP request) it opens,
``limiter.images(1)`` as each instance arrives (the PACS waits for our answer
before it sends the next one, so waiting here slows the PACS, not only us).
:class:`Stopped` raised there cancels the retrieve under way (C-CANCEL, see
:mod:`kit.dicom._cancel`) and reaches the job, which leaves the study to resume. A
limiter shared by several processes (e.g. Dask workers holding a
``distributed.Semaphore`` and a bucket on the scheduler) implements the same
two calls: :class:`kit.cohort.dask.DaskLimiter` keeps this bucket's state
(:meth:`TokenBucket.state`, :meth:`TokenBucket.from_state`) on the Dask scheduler.

Written by hand: a token bucket is a dozen lines; no dependency for it.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

__all__ = ["Limiter", "LocalLimiter", "Stopped", "TokenBucket"]


class Stopped(Exception):
    """Raised inside a wait when the job was asked to stop (not a failure of the peer)."""


class TokenBucket:
    """Token bucket arithmetic: ``rate`` tokens per second, at most ``burst`` saved.

    Parameters
    ----------
    rate : float
        Tokens added per second (> 0).
    burst : float
        Bucket size: how many may go at once after a quiet spell (>= 1).
    now : float
        The clock's reading at creation (the bucket starts full).

    Examples
    --------
    >>> bucket = TokenBucket(10.0, burst=1.0, now=0.0)
    >>> bucket.reserve(0.0), bucket.reserve(0.0)
    (0.0, 0.1)
    """

    def __init__(self, rate: float, *, burst: float = 1.0, now: float = 0.0) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._at = float(now)

    def reserve(self, now: float, n: float = 1.0) -> float:
        """Take ``n`` tokens at time ``now``; seconds the caller must wait before going.

        Tokens may go negative: a reservation is a promise of future tokens,
        so callers that reserve at once are spaced ``n / rate`` apart.
        """
        if n < 0 or not math.isfinite(n):
            raise ValueError(f"cannot reserve {n!r} tokens")
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def state(self) -> tuple[float, float]:
        """``(tokens, at)``: what another process needs to continue this bucket (:meth:`from_state`).

        Examples
        --------
        >>> bucket = TokenBucket(10.0, burst=2.0, now=5.0)
        >>> _ = bucket.reserve(5.0, 3)
        >>> bucket.state()
        (-1.0, 5.0)
        """
        return self._tokens, self._at

    @classmethod
    def from_state(cls, rate: float, burst: float, tokens: float, at: float) -> TokenBucket:
        """The bucket that :meth:`state` described (``rate`` and ``burst`` as at creation).

        ``tokens`` is clamped to ``burst`` (a stored value from a larger bucket
        gives no extra burst); a non-finite ``tokens`` or ``at`` is refused.

        Raises
        ------
        ValueError
            ``rate``, ``burst``, ``tokens`` or ``at`` is not usable.
        """
        if not (math.isfinite(tokens) and math.isfinite(at)):
            raise ValueError(f"not a token bucket state: tokens={tokens!r}, at={at!r}")
        bucket = cls(rate, burst=burst, now=at)
        bucket._tokens = min(bucket.burst, float(tokens))
        return bucket


@runtime_checkable
class Limiter(Protocol):
    """What a retrieval asks before it talks to the PACS."""

    def association(self) -> contextlib.AbstractContextManager[None]:
        """Hold one of the allowed concurrent associations for the block."""

    def images(self, n: int = 1) -> None:
        """Wait until ``n`` more instances may arrive (raises :class:`Stopped` on stop)."""


class LocalLimiter:
    """The limits for one process: a semaphore of ``max_associations`` and a token bucket.

    Parameters
    ----------
    max_associations : int
        Associations open at once (>= 1).
    images_per_second : float
        Instances per second over all associations (> 0).
    burst : float, optional
        Instances that may arrive at once after a pause (default: a tenth of a
        second's worth, at least 1: the PACS sees a steady rate, not bursts).
    stop : threading.Event, optional
        Set to end every wait early with :class:`Stopped`.
    clock, sleep : callable
        For tests; default :func:`time.monotonic` and the stop event's wait.
    """

    def __init__(self, max_associations: int, images_per_second: float, *,
                 burst: float | None = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] | None = None) -> None:
        if max_associations < 1:
            raise ValueError(f"max_associations must be at least 1, got {max_associations}")
        self.max_associations = int(max_associations)
        self.images_per_second = float(images_per_second)
        self.stop = stop if stop is not None else threading.Event()
        self._clock = clock
        self._sleep = sleep if sleep is not None else self.stop.wait
        size = burst if burst is not None else max(1.0, self.images_per_second / 10)
        self._bucket = TokenBucket(self.images_per_second, burst=size, now=clock())
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_associations)
        self._open = 0
        #: the most associations held at once so far (what the PACS saw from us)
        self.peak = 0

    @contextlib.contextmanager
    def association(self) -> Iterator[None]:
        """Hold one association slot for the block (waits for a free one; :class:`Stopped` on stop)."""
        if self.stop.is_set():
            raise Stopped("stopped: no new association")
        while not self._slots.acquire(timeout=0.2):
            if self.stop.is_set():
                raise Stopped("stopped while waiting for an association slot")
        try:
            with self._lock:
                self._open += 1
                self.peak = max(self.peak, self._open)
            yield
        finally:
            with self._lock:
                self._open -= 1
            self._slots.release()

    def images(self, n: int = 1) -> None:
        """Wait until ``n`` more instances may arrive."""
        if self.stop.is_set():
            raise Stopped("stopped")
        with self._lock:
            wait = self._bucket.reserve(self._clock(), n)
        if wait > 0:
            self._sleep(wait)
            if self.stop.is_set():
                raise Stopped("stopped")
