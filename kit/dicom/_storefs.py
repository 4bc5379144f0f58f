"""File-system steps of :class:`kit.dicom.store.InstanceStore`'s writes, and its folder state.

:class:`Folders` remembers the series folders the store has made or found, so an
instance going into a known folder costs no ``stat``, and which directories the store
made whose entries (in their parents) are not durable yet: an instance is acknowledged
only after its commit has fsync'ed the parent of every such directory on its folder's
path. Which association made them does not matter: another one storing into the same
new series, or into a sibling series of the same new study, may commit first, and then
syncs them itself. A folder removed behind the store's back is met by the rename, which
makes it again (:func:`make_dirs`) and records what it made here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Folders", "fdatasync", "fsync_dir", "make_dirs", "unlink", "write_all"]

#: Series folders remembered at most (forgetting one costs a ``stat`` when it is next used), and
#: new directories not yet synced at most (beyond it they are synced at once).
FOLDER_LIMIT = 4096


class Folders:
    """Known folders of a store and the directories it made whose entries are not yet durable.
    Thread-safe."""

    def __init__(self, limit: int = FOLDER_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._fresh: set[str] = set()  # made by the store; the entry in the parent not yet fsync'ed

    def need(self, folder: str, make: Callable[[str], frozenset[str]]) -> None:
        """Have ``folder`` exist: made (``make`` returns the directories it created) unless
        known. Raises what ``make`` raises."""
        if folder in self._known:
            return
        with self._lock:  # one thread makes it; another waits and finds it recorded
            if folder not in self._known:
                self._made(make(folder))
                if len(self._known) >= self._limit:
                    self._known.clear()
                self._known.add(folder)

    def remade(self, folder: str, made: frozenset[str]) -> None:
        """``folder`` was made again (removed behind our back), creating the directories ``made``."""
        with self._lock:
            self._made(made)
            self._known.add(folder)

    def _made(self, made: frozenset[str]) -> None:
        self._fresh |= made
        if len(self._fresh) > self._limit:  # bounded: sync them now rather than keep them
            for parent in sorted({os.path.dirname(d) for d in self._fresh}):
                fsync_dir(parent)
            self._fresh.clear()

    def parents(self, folder: str) -> frozenset[str]:
        """The directories to fsync, besides ``folder``, before an instance in it is acknowledged:
        the parent of ``folder`` and of each of its ancestors that the store made and no
        commit has synced yet."""
        with self._lock:
            if not self._fresh:
                return frozenset()
            out: list[str] = []
            path = folder
            while True:
                parent = os.path.dirname(path)
                if parent == path:
                    return frozenset(out)
                if path in self._fresh:
                    out.append(parent)
                path = parent

    def synced(self, dirs: Iterable[str]) -> None:
        """A commit fsync'ed ``dirs``: the entries of the directories in them are durable."""
        done = set(dirs)
        with self._lock:
            self._fresh = {d for d in self._fresh if os.path.dirname(d) not in done}


def write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Write ``parts`` in order: one ``writev`` (no concatenation), continued if it is short."""
    done = os.writev(fd, parts)
    if done == sum(len(p) for p in parts):
        return
    for part in parts:
        view = memoryview(part)
        if done >= len(view):
            done -= len(view)
            continue
        view, done = view[done:], 0
        while view:
            view = view[os.write(fd, view):]


def fdatasync(fd: int) -> None:
    """Make a file's data (and the metadata needed to read it) durable."""
    os.fdatasync(fd)


def unlink(path: str) -> None:
    """Remove a file if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def make_dirs(folder: str) -> frozenset[str]:
    """Create ``folder`` (and missing parents); the directories created (their parents are
    fsync'ed with the commit, so the new folders survive a power cut too)."""
    if os.path.isdir(folder):
        return frozenset()
    created: list[str] = []
    probe = folder
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return frozenset(created)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
