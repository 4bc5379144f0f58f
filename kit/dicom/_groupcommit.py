"""Group commit: callers on many threads hand in work; one of them commits a whole batch.

Used by :class:`kit.dicom.store.InstanceStore` so that instances arriving on
several associations at once share one directory fsync and one index
transaction, while each caller still returns only once *its* item is durable
(or raises its failure). Leader/follower, no thread of its own: the first caller
to find no commit running becomes the leader, takes everything queued (its own
item included) and commits it; callers arriving meanwhile queue up and wait, and
one of them leads the next batch. A batch therefore grows with the load and is a
single item when there is no contention (no added latency). Callers may announce
an item before they have it ready (:meth:`GroupCommit.coming`); a new leader then
lingers briefly for announced items, so concurrent callers share one commit.

Written by hand: the standard library has no group-commit primitive.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit", "Pending"]

T = TypeVar("T")


class Pending(Generic[T]):
    """One item waiting for its batch; ``error`` is set by the commit function if it failed."""

    __slots__ = ("done", "error", "item")

    def __init__(self, item: T) -> None:
        self.item = item
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[T]):
    """Batch items from concurrent callers into calls of ``commit(batch)``.

    Parameters
    ----------
    commit : callable
        Called with a list of :class:`Pending` (at most ``max_batch``) on the
        leader's thread; sets ``error`` on each item that is not durable. If it
        raises, every item of the batch gets that exception.
    max_batch : int
        Largest batch handed to ``commit``.
    linger : float
        Seconds a new leader waits, at most, for callers that announced an item
        (:meth:`coming`) but have not submitted it yet: they are writing and
        fsync'ing their file, and joining this batch saves them a commit of their own.
        Never waits when nobody is coming (a lone caller commits at once).
    """

    def __init__(self, commit: Callable[[Sequence[Pending[T]]], None], *, max_batch: int = 256,
                 linger: float = 0.003) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self._commit = commit
        self._max_batch = max_batch
        self._linger = linger
        self._coming = 0
        lock = threading.Lock()
        # Two conditions on one lock: the last arrival wakes a lingering leader, a finished batch
        # wakes the callers waiting for theirs (one notify_all for both woke every waiting
        # caller on every arrival: threads woken for nothing, each needing a CPU and the GIL).
        self._arrived = threading.Condition(lock)
        self._finished = threading.Condition(lock)
        self._lingering = False
        self._queue: list[Pending[T]] = []
        self._leading = False
        #: Sizes of the batches committed so far (the last 1,000), for tests and tuning.
        self.batch_sizes: list[int] = []

    @contextlib.contextmanager
    def coming(self) -> Iterator[Callable[[T], None]]:
        """Announce an item that is being prepared; yields the function that submits it.

        While announced, a leader may linger for it (see ``linger``). Leaving the block
        without submitting (e.g. the write failed) withdraws the announcement.
        """
        with self._arrived:
            self._coming += 1
        announced = [True]

        def submit(item: T) -> None:
            self.submit(item, _announced=announced)

        try:
            yield submit
        finally:
            if announced[0]:
                with self._arrived:
                    self._coming -= 1
                    if self._lingering and self._coming == 0:  # it lingered for this one last
                        self._arrived.notify()

    def submit(self, item: T, *, _announced: list[bool] | None = None) -> None:
        """Queue ``item`` and return once its batch is committed.

        Raises
        ------
        BaseException
            Whatever ``commit`` recorded for this item (or raised for its batch).
        """
        pending = Pending(item)
        with self._arrived:
            if _announced is not None and _announced[0]:
                _announced[0] = False
                self._coming -= 1
            self._queue.append(pending)
            if self._lingering and (self._coming == 0 or len(self._queue) >= self._max_batch):
                # the lingering leader takes the batch: woken once, when nobody else is coming
                # (it cannot proceed before, so a wake-up per arrival was a context switch for nothing)
                self._arrived.notify()
        while True:
            with self._finished:
                while self._leading and not pending.done:
                    self._finished.wait()
                if pending.done:
                    break
                self._leading = True  # lead the next batch (ours is in it unless the queue is long)
                deadline = time.monotonic() + self._linger
                while self._coming > 0 and len(self._queue) < self._max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lingering = True
                    self._arrived.wait(left)
                    self._lingering = False
                batch = self._queue[:self._max_batch]
                del self._queue[:len(batch)]
            self._lead(batch)
        if pending.error is not None:
            raise pending.error

    def _lead(self, batch: list[Pending[T]]) -> None:
        try:
            self._commit(batch)
        except BaseException as exc:  # every item of the batch fails with it; the leader re-raises
            for p in batch:
                if p.error is None:
                    p.error = exc
        finally:
            with self._finished:
                for p in batch:
                    p.done = True
                self.batch_sizes.append(len(batch))
                del self.batch_sizes[:-1000]
                self._leading = False
                self._finished.notify_all()  # its callers return; a queued one leads next
