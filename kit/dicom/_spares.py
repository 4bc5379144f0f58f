"""Temporary files created ahead for the instance store's writes, off the receivers' paths.

Creating a file is a journalled metadata operation: on a busy disk it waits for the
journal (~1 ms measured under load), longer than a sender takes to send the next
instance. :class:`SparePool` keeps a few empty temporary files ready, made by a
thread of its own (started on first use), so a receiver takes one instead of
creating it. If the pool is empty, or its thread cannot create files or has died,
:meth:`SparePool.take` returns None and the caller creates the file itself, as
before: the pool only ever saves time, it never holds a write up (its thread's
death is logged, and the store keeps working). Unused files are removed on
:meth:`SparePool.close`, when the store that owns the pool is garbage-collected,
and by the store on its next open (its ``tmp/`` is emptied).

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

__all__ = ["Spare", "SparePool", "create", "names"]

LOGGER = logging.getLogger(__name__)


class Spare:
    """An empty temporary file made ahead; removed if never used (also when dropped)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def take(self) -> tuple[str, int]:
        """Its path and descriptor, now the caller's to close (and remove on failure)."""
        fd, self.fd = self.fd, -1
        return self.path, fd

    def discard(self) -> None:
        """Close and remove it (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __del__(self) -> None:
        self.discard()


def create(path: str) -> Spare:
    """A new empty temporary file at ``path`` (OSError if it cannot be made; O_EXCL guards)."""
    return Spare(path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SparePool:
    """Up to ``size`` temporary files kept ready by a background thread.

    Parameters
    ----------
    name : callable
        Returns a new unique path for each file.
    size : int
        Files kept ready.
    """

    def __init__(self, name: Callable[[], str], size: int = 8) -> None:
        self._name = name
        self.size = size
        self._ready: collections.deque[Spare] = collections.deque()
        self._wanted = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Why the pool's thread stopped making files, if it did (None while it runs).
        self.failure: BaseException | None = None

    def take(self) -> Spare | None:
        """A ready file, or None (empty, closed or failed: the caller creates one)."""
        if self._thread is None:
            self._start()
        try:
            spare = self._ready.popleft()
        except IndexError:
            spare = None
        self._wanted.set()
        return spare

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            # the thread holds the pool weakly: a pool nobody closed ends it once collected
            self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._ready, self._wanted),
                                            name="kit-store-spares", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and remove the unused files (idempotent)."""
        self._closed = True
        self._wanted.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        _drain(self._ready)

    def __del__(self) -> None:
        self._closed = True
        self._wanted.set()


def _run(ref: weakref.ref[SparePool], ready: collections.deque[Spare], wanted: threading.Event) -> None:
    """The pool's thread: top the pool up whenever a file was taken, until it is closed or gone."""
    try:
        while True:
            wanted.wait(1.0)
            wanted.clear()
            pool = ref()
            if pool is None or pool._closed:
                return
            name, size = pool._name, pool.size
            del pool  # not kept alive by this thread while it waits
            while len(ready) < size:
                try:
                    ready.append(create(name()))
                except OSError as exc:  # e.g. tmp/ removed: callers create (and report) their own
                    LOGGER.debug("cannot make a spare temporary file: %s", exc)
                    break
    except BaseException as exc:  # noqa: BLE001 - the pool stops; writes create their own files
        pool = ref()
        if pool is not None:
            pool.failure = exc
        LOGGER.critical("the store's spare-file thread died (writes now create their own files): %r", exc)
    finally:
        _drain(ready)


def _drain(ready: collections.deque[Spare]) -> None:
    while True:
        try:
            ready.popleft().discard()
        except IndexError:
            return


def names(prefix: str) -> Callable[[], str]:
    """Unique ``{prefix}{n}.part`` paths (thread-safe: itertools.count under the GIL)."""
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter)}.part"
