"""File-system steps of :class:`kit.dicom.store.InstanceStore`'s writes, and its folder state.

:class:`Folders` remembers the series folders the store has made or found, so an
instance going into a known folder costs no ``stat``, and which parents of a new
folder still need an fsync: every instance stored into that folder syncs them with
its own commit until one commit has, so none is acknowledged before the folder's
entry is durable (the association that created the folder is not necessarily the
first to commit into it). A folder removed behind the store's back is met by the
rename, which makes it again (:func:`make_dirs`) and records its parents here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence

__all__ = ["Folders", "fdatasync", "fsync_dir", "make_dirs", "unlink", "write_all"]

#: Folders remembered at most (the durable ones are forgotten first; pending ones are kept).
FOLDER_LIMIT = 4096


class Folders:
    """Known folders of a store and, for new ones, the parents still to fsync. Thread-safe."""

    def __init__(self, limit: int = FOLDER_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._pending: dict[str, frozenset[str]] = {}  # folder -> parents to fsync (empty: durable)

    def need(self, folder: str, make: Callable[[str], frozenset[str]]) -> None:
        """Have ``folder`` exist: made (``make`` returns the parents whose entries changed)
        unless known. Raises what ``make`` raises."""
        if folder in self._pending:
            return
        with self._lock:  # one thread makes it; another waits and finds its parents recorded
            if folder not in self._pending:
                made = make(folder)
                if len(self._pending) >= self._limit:
                    self._pending = {f: p for f, p in self._pending.items() if p}
                self._pending[folder] = made

    def remade(self, folder: str, parents: frozenset[str]) -> None:
        """``folder`` was made again (removed behind our back): its ``parents`` need an fsync."""
        with self._lock:
            self._pending[folder] = self._pending.get(folder, frozenset()) | parents

    def parents(self, folder: str) -> frozenset[str]:
        """The parents of ``folder`` to fsync before an instance in it is acknowledged."""
        return self._pending.get(folder, frozenset())

    def synced(self, folders: Iterable[str], dirs: set[str]) -> None:
        """A commit fsynced ``dirs``: the ``folders`` whose parents are all among them are durable."""
        with self._lock:
            for folder in folders:
                parents = self._pending.get(folder)
                if parents and parents <= dirs:
                    self._pending[folder] = frozenset()


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
    """Create ``folder`` (and missing parents); the directories whose entries changed
    (to fsync with the commit, so the new folders survive a power cut too)."""
    if os.path.isdir(folder):
        return frozenset()
    created: list[str] = []
    probe = folder
    while not os.path.exists(probe):
        created.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return frozenset(os.path.dirname(c) for c in created)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory (its entries)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
