"""SQLite helpers shared by the stores: one write transaction under a lock (failures as
StoreError), and WAL checkpoints off the writers' commit path (:class:`WalCheckpointer`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator

from kit.errors import StoreError

__all__ = ["WalCheckpointer", "immediate_tx"]


@contextlib.contextmanager
def immediate_tx(db: sqlite3.Connection, lock: threading.Lock | threading.RLock,
                 what: str) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under ``lock``; rolled back on any exception.

    An SQLite error becomes :class:`~kit.errors.StoreError` ``f"{what}: {error}"``.
    """
    with lock:
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: {exc}") from exc


class WalCheckpointer:
    """Checkpoints a WAL-mode database from a connection of its own, off the writers' commits.

    SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses its threshold (two
    fsyncs, milliseconds, with every writer waiting behind it). The writer connection
    disables it (``PRAGMA wal_autocheckpoint=0``) and reports its commits here
    (:meth:`committed`); whoever is idle calls :meth:`run` (e.g. a receiver once it has
    answered), which checkpoints (PASSIVE: never blocks a writer) once ``every`` rows were
    committed since the last one. The WAL stays bounded all the same: past ``hard`` rows,
    :meth:`committed` says so, and the writer checkpoints at once. Durability is SQLite's
    either way (a checkpoint only copies committed pages into the database file).

    Parameters
    ----------
    path : path-like
        The database file.
    every, hard : int
        Rows committed after which a checkpoint is due, and after which it is overdue.
    """

    def __init__(self, path: str | os.PathLike[str], *, every: int = 400, hard: int = 4000) -> None:
        if not 0 < every <= hard:
            raise ValueError("need 0 < every <= hard")
        self.every, self.hard = every, hard
        self._rows = 0
        self._count_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._db: sqlite3.Connection | None = sqlite3.connect(path, check_same_thread=False,
                                                              isolation_level=None)
        #: Checkpoints run so far (for tests and tuning).
        self.runs = 0

    def committed(self, rows: int) -> bool:
        """Count ``rows`` just committed; True if a checkpoint is overdue (run it now)."""
        with self._count_lock:
            self._rows += rows
            return self._rows >= self.hard

    @property
    def due(self) -> bool:
        """Whether ``every`` rows were committed since the last checkpoint."""
        return self._rows >= self.every

    def run(self, *, force: bool = False, wait: bool = False) -> bool:
        """Checkpoint if due (or ``force``); returns whether one ran. Without ``wait``, returns
        at once if another thread is checkpointing.

        Raises
        ------
        StoreError
            The checkpoint failed (the rows stay counted: the next call tries again).
        """
        if not (force or self.due) or not self._run_lock.acquire(blocking=wait):
            return False
        try:
            with self._count_lock:
                rows = self._rows
            db = self._db
            if db is None:
                return False
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"index checkpoint failed: {exc}") from exc
            with self._count_lock:
                self._rows -= rows
            self.runs += 1
            return True
        finally:
            self._run_lock.release()

    def close(self) -> None:
        """Close its connection (idempotent)."""
        with self._run_lock:
            db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
