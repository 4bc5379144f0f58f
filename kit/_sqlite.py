"""One SQLite write transaction under a lock, failures as StoreError (shared by the services' stores)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from kit.errors import StoreError

__all__ = ["immediate_tx"]


@contextmanager
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
