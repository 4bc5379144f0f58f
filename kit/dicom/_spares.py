"""Temporary files made ahead by a background thread, off the receivers' answer paths.

Creating a file is a journalled metadata operation: on a busy disk it waits for the
journal or for the inode allocator (~1 ms measured under load), longer than a peer
takes to send the next instance. :class:`SparePool` keeps a few empty files ready,
made by a thread of its own (``os.open`` releases the GIL), so a receiver takes one
instead of creating it. Its two users:

- the embedded PACS's :class:`~kit.dicom.store.InstanceStore` (named files in its
  ``tmp/``, renamed into place): :meth:`SparePool.top_up` after each take keeps
  ``size`` ready;
- the C-GET answer path (:class:`kit.dicom._getphase.PooledReceiver`: unnamed
  ``O_TMPFILE`` files where the system has them, path ``""``), once making files
  there proves slow; it tops up to the PACS's remaining count of instances.

The guarantees: at most ``size`` files ready or being made; the thread starts on
the first top-up and holds the pool weakly (an owner dropped without
:meth:`SparePool.close` ends it, and it removes its files); :meth:`SparePool.take`
returns None when no file is ready, the pool is closed or its thread failed, and
the caller then makes its own file: the pool only ever saves time, it never holds
a write up. A file the thread cannot make (full disk, folder gone) is logged and
the thread waits for the next top-up; the thread's death by any other error is
logged CRITICAL and kept in :attr:`SparePool.failure`. :meth:`SparePool.close` is
idempotent, removes every unused file and waits a bounded time for the thread
(a file it makes after that it removes itself).

Written by hand: the standard library has no file-creation pool.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["CLOSE_WAIT", "POOL_LIMIT", "Spare", "SparePool", "create", "maker", "names"]

LOGGER = logging.getLogger(__name__)

#: Most files a pool keeps ready or being made (each an open descriptor), by default.
POOL_LIMIT = 8
#: Seconds :meth:`SparePool.close` waits for the thread (a file system that hangs in
#: ``open``): past it the thread removes what it still makes itself.
CLOSE_WAIT = 5.0
#: Seconds between the idle thread's checks that its pool still exists (a pool dropped
#: unclosed cannot wake it: its ``__del__`` takes no lock).
_POLL = 1.0
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: A temporary file: its path (``""`` if unnamed) and an open descriptor.
Made = tuple[str, int]


class _Shared:
    """The state the pool and its thread share (the thread holds this, not the pool)."""

    __slots__ = ("closed", "cond", "granted", "pending", "ready")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.ready: collections.deque[Made] = collections.deque()
        self.granted = 0  # files ready, being made or still to make
        self.pending = 0  # of those, still to make (the thread's work)
        self.closed = False


class SparePool:
    """Up to ``size`` empty temporary files kept ready by a background thread.

    Thread-safe: any thread may :meth:`take`, :meth:`top_up` and :meth:`close`.

    Parameters
    ----------
    make : callable
        Makes one file: ``(path, descriptor)``, path ``""`` for an unnamed file. An
        OSError means "cannot now" (logged; retried on the next :meth:`top_up`).
    size : int
        Most files ready or being made at any time.
    name : str
        The thread's name.

    Attributes
    ----------
    failure : BaseException or None
        Why the thread died, if it did (then :meth:`take` returns None).
    """

    def __init__(self, make: Callable[[], Made], size: int = POOL_LIMIT, *,
                 name: str = "kit-spares") -> None:
        self._make = make
        self.size = size
        self.name = name
        self._shared = _Shared()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def take(self) -> Made | None:
        """A ready file ``(path, descriptor)``, now the caller's to close (and remove), or
        None: none ready yet, closed or failed (the caller makes its own file)."""
        shared = self._shared
        with shared.cond:
            if not shared.ready:
                return None
            shared.granted -= 1
            return shared.ready.popleft()

    @property
    def outstanding(self) -> int:
        """Files ready or being made (or still to make) now: a hint, read without the lock."""
        return self._shared.granted

    def top_up(self, ahead: int | None = None) -> None:
        """Have the thread make files until ``ahead`` (at most ``size``; default ``size``)
        are ready or being made; starts the thread on first use. Never lowers a grant."""
        want = self.size if ahead is None else min(ahead, self.size)
        shared = self._shared
        with shared.cond:
            if shared.closed or want <= shared.granted:
                return
            shared.pending += want - shared.granted
            shared.granted = want
            if self._thread is None:
                # the thread holds the pool weakly: a pool nobody closed ends it once collected
                self._thread = threading.Thread(target=_run, args=(weakref.ref(self), shared),
                                                name=self.name, daemon=True)
                self._thread.start()
            else:
                shared.cond.notify()

    def close(self) -> None:
        """Stop the thread and remove every unused file (idempotent; waits at most
        :data:`CLOSE_WAIT` seconds for the thread)."""
        shared = self._shared
        with shared.cond:
            shared.closed = True
            left = list(shared.ready)
            shared.ready.clear()
            shared.cond.notify_all()
        for made in left:
            _remove(made)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)

    def __del__(self) -> None:
        # no lock here (the collector may run on the pool's thread while it holds it): the
        # thread sees the flag, or its dead weak reference, within _POLL and removes the files
        self._shared.closed = True


def _run(ref: weakref.ref[SparePool], shared: _Shared) -> None:
    """The pool's thread: make the granted files until the pool is closed or gone."""
    cond = shared.cond
    try:
        while True:
            with cond:
                while not shared.pending and not shared.closed:
                    if not cond.wait(_POLL) and ref() is None:
                        return
                if shared.closed:
                    return
                shared.pending -= 1
            pool = ref()
            if pool is None:
                return
            make = pool._make
            del pool  # not kept alive by this thread while it waits (nor by make, below)
            try:
                made = make()
            except OSError as exc:  # e.g. folder gone, disk full: callers make (and report) their own
                with cond:  # nothing more until the next top-up (no retry loop)
                    shared.granted -= 1 + shared.pending
                    shared.pending = 0
                LOGGER.debug("cannot make a temporary file ahead: %s", exc)
                continue
            finally:
                del make  # may be the owner's bound method: it holds the pool
            with cond:  # close() drains under the same lock: nothing appended after it
                if not shared.closed:
                    shared.ready.append(made)
                    continue
            _remove(made)
            return
    except BaseException as exc:  # noqa: BLE001 - the pool stops; callers make their own files
        LOGGER.critical("the spare-file thread died (callers now make their own files): %r", exc)
        pool = ref()
        if pool is not None:  # after the log: who sees the failure finds it logged
            pool.failure = exc
        del pool
    finally:
        with cond:
            shared.closed = True
            left = list(shared.ready)
            shared.ready.clear()
        for made in left:
            _remove(made)


def _remove(made: Made) -> None:
    """Close a file made ahead and remove it if named (an unnamed one is gone once closed)."""
    with contextlib.suppress(OSError):
        os.close(made[1])
    if made[0]:
        with contextlib.suppress(OSError):
            os.unlink(made[0])


class Spare:
    """An empty temporary file made ahead; removed if never used (also when dropped)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def take(self) -> Made:
        """Its path and descriptor, now the caller's to close (and remove on failure)."""
        fd, self.fd = self.fd, -1
        return self.path, fd

    def discard(self) -> None:
        """Close and remove it (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            _remove((self.path, fd))

    def __del__(self) -> None:
        self.discard()


def create(path: str) -> Made:
    """A new empty named file at ``path``: ``(path, descriptor)`` (OSError if it cannot be
    made; O_EXCL guards)."""
    return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)


def maker(name: Callable[[], str]) -> Callable[[], Made]:
    """A ``make`` for :class:`SparePool`: a new named file at each ``name()``."""
    return lambda: create(name())


def names(prefix: str) -> Callable[[], str]:
    """Unique ``{prefix}{n}.part`` paths (thread-safe: itertools.count under the GIL)."""
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter)}.part"
