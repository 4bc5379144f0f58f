"""The durable journal of a cohort pull (SQLite: WAL, ``synchronous=FULL``).

One row per requested item (its state, the reason it failed, its attempts),
one per study it resolved to (state, reason, attempts, instances, bytes,
seconds) and the links between them. Every state change is one committed
transaction, so a job killed at any moment (``kill -9``, a power cut after
the commit) finds on restart exactly what was finished:

- a study marked ``done`` is on disk (its files and folder fsync'ed before the
  commit) and is never fetched again;
- a study left ``retrieving`` was cut off mid-transfer: :meth:`Journal.recover`
  puts it back to ``pending`` and the job fetches it again into a clean folder;
- an item left ``resolving`` is asked again.

Only one job may use a journal at a time (an exclusive ``flock`` on a file
beside it, released by the kernel if the job dies), and a journal remembers
which PACS it pulls from: resuming it against another one is refused.

The states and their allowed changes are :mod:`kit.cohort.plan`'s; this module
only stores them. Written by hand: the schema and queries; the storage is sqlite3's.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from kit.cohort.plan import CohortItem, FoundStudy, ItemState, Outcome, StudyState, check_transition
from kit.errors import CohortError, StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["SCHEMA_VERSION", "Journal"]

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    key TEXT PRIMARY KEY, row INTEGER NOT NULL,
    accession_number TEXT, study_instance_uid TEXT, patient_id TEXT, study_date TEXT,
    state TEXT NOT NULL, reason TEXT, transient INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY, accession_number TEXT, patient_id TEXT, study_date TEXT,
    expected INTEGER, state TEXT NOT NULL, reason TEXT, transient INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0,
    instances INTEGER, bytes INTEGER, seconds REAL, path TEXT, finished REAL);
CREATE TABLE IF NOT EXISTS links (
    item_key TEXT NOT NULL, study_instance_uid TEXT NOT NULL,
    PRIMARY KEY (item_key, study_instance_uid));
CREATE INDEX IF NOT EXISTS items_due ON items (state, next_at);
CREATE INDEX IF NOT EXISTS studies_due ON studies (state, next_at);
"""


class Journal:
    """The journal at ``path`` (created if missing), held exclusively until :meth:`close`.

    Parameters
    ----------
    path : path-like
        The SQLite file.
    source : str
        What the job pulls from (e.g. ``dicom://ORTHANC@pacs:104``); a journal
        started against another source is refused.

    Raises
    ------
    CohortError
        Another job holds the journal, or it belongs to another source.
    StoreError
        The file cannot be opened or is not a journal.
    """

    def __init__(self, path: str | os.PathLike[str], *, source: str) -> None:
        self.path = Path(path)
        self.source = source
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._tx() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                meta = {r["key"]: r["value"] for r in db.execute("SELECT key, value FROM meta")}
                if not meta:
                    db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                   [("version", SCHEMA_VERSION), ("source", source),
                                    ("created", str(time.time()))])
                elif meta.get("version") != SCHEMA_VERSION:
                    raise StoreError(f"{self.path} is a cohort journal of version {meta.get('version')!r}, "
                                     f"this kit writes {SCHEMA_VERSION}")
                elif meta.get("source") != source:
                    raise CohortError(f"{self.path} belongs to a pull from {meta.get('source')}, not "
                                      f"{source}: use another --out-dir, or remove the journal to start over")
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open the cohort journal {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _lock(self) -> int | None:
        if fcntl is None:  # pragma: no cover
            return None
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CohortError(f"another cohort job is using {self.path.parent} (its lock {lock_path.name} "
                              f"is held); wait for it or use another --out-dir") from None
        return fd

    def close(self) -> None:
        """Close the database and release the lock (idempotent)."""
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None  # type: ignore[assignment]
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._lock_fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; sqlite errors become StoreError."""
        if self._db is None:
            raise StoreError(f"the cohort journal {self.path} is closed")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cohort journal {self.path}: {exc}") from exc
        try:
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreError(f"cohort journal {self.path}: {exc}") from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._db is None:
            raise StoreError(f"the cohort journal {self.path} is closed")
        try:
            return list(self._db.execute(sql, args))
        except sqlite3.Error as exc:
            raise StoreError(f"cohort journal {self.path}: {exc}") from exc

    # -- setting up a run ---------------------------------------------------------------------

    def add_items(self, items: Iterable[CohortItem]) -> int:
        """Record requested items not in the journal yet; how many were new."""
        rows = [(i.key, i.row, i.accession_number, i.study_instance_uid, i.patient_id, i.study_date,
                 ItemState.PENDING.value) for i in items]
        with self._tx() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO items (key, row, accession_number, study_instance_uid, "
                           "patient_id, study_date, state) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def recover(self, *, retry_failed: bool = True) -> dict[str, int]:
        """Put work cut off by a crash back in line; optionally retry transient failures.

        Returns
        -------
        dict
            ``{"studies": n, "items": n, "retried": n}``: studies that were
            ``retrieving``, items that were ``resolving``, failures put back.
        """
        with self._tx() as db:
            studies = db.execute("UPDATE studies SET state = ?, next_at = 0 WHERE state = ?",
                                 (StudyState.PENDING.value, StudyState.RETRIEVING.value)).rowcount
            items = db.execute("UPDATE items SET state = ?, next_at = 0 WHERE state = ?",
                               (ItemState.PENDING.value, ItemState.RESOLVING.value)).rowcount
            retried = 0
            if retry_failed:
                retried += db.execute(
                    "UPDATE studies SET state = ?, attempts = 0, next_at = 0, reason = NULL, transient = 0 "
                    "WHERE state = ? AND transient = 1",
                    (StudyState.PENDING.value, StudyState.FAILED.value)).rowcount
                retried += db.execute(
                    "UPDATE items SET state = ?, attempts = 0, next_at = 0, reason = NULL, transient = 0 "
                    "WHERE state = ? AND transient = 1",
                    (ItemState.PENDING.value, ItemState.FAILED.value)).rowcount
        return {"studies": studies, "items": items, "retried": retried}

    # -- items ----------------------------------------------------------------------------------

    def claim_item(self, now: float) -> tuple[CohortItem, int] | None:
        """The next pending item due at ``now`` (and its attempts so far), marked ``resolving``."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM items WHERE state = ? AND next_at <= ? ORDER BY next_at, rowid "
                             "LIMIT 1", (ItemState.PENDING.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE items SET state = ? WHERE key = ?", (ItemState.RESOLVING.value, row["key"]))
        return CohortItem(row["accession_number"], row["study_instance_uid"], row["patient_id"],
                          row["study_date"], row=row["row"]), int(row["attempts"])

    def _item_state(self, db: sqlite3.Connection, key: str, new: ItemState) -> sqlite3.Row:
        row = db.execute("SELECT state, attempts FROM items WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"cohort journal: no item {key!r}")
        check_transition(ItemState(row["state"]), new)
        return row

    def resolved(self, key: str, studies: Sequence[FoundStudy]) -> None:
        """The item's studies are known: record them (new ones ``pending``) and link them."""
        with self._tx() as db:
            row = self._item_state(db, key, ItemState.RESOLVED)
            db.execute("UPDATE items SET state = ?, attempts = ?, reason = NULL, transient = 0 WHERE key = ?",
                       (ItemState.RESOLVED.value, row["attempts"] + 1, key))
            db.executemany(
                "INSERT OR IGNORE INTO studies (study_instance_uid, accession_number, patient_id, "
                "study_date, expected, state) VALUES (?, ?, ?, ?, ?, ?)",
                [(s.study_instance_uid, s.accession_number, s.patient_id, s.study_date, s.instances,
                  StudyState.PENDING.value) for s in studies])
            db.executemany("INSERT OR IGNORE INTO links (item_key, study_instance_uid) VALUES (?, ?)",
                           [(key, s.study_instance_uid) for s in studies])

    def item_failed(self, key: str, outcome: Outcome) -> None:
        """An attempt to resolve the item failed: back to ``pending`` at ``next_at`` or ``failed``."""
        new = ItemState.PENDING if outcome.retry else ItemState.FAILED
        with self._tx() as db:
            row = self._item_state(db, key, new)
            db.execute("UPDATE items SET state = ?, attempts = ?, reason = ?, transient = ?, next_at = ? "
                       "WHERE key = ?", (new.value, row["attempts"] + 1, outcome.reason,
                                         int(outcome.transient), outcome.next_at, key))

    # -- studies --------------------------------------------------------------------------------

    def claim_study(self, now: float) -> tuple[str, int] | None:
        """The next pending study due at ``now`` (UID, attempts so far), marked ``retrieving``."""
        with self._tx() as db:
            row = db.execute("SELECT study_instance_uid, attempts FROM studies WHERE state = ? "
                             "AND next_at <= ? ORDER BY next_at, rowid LIMIT 1",
                             (StudyState.PENDING.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE studies SET state = ? WHERE study_instance_uid = ?",
                       (StudyState.RETRIEVING.value, row["study_instance_uid"]))
        return str(row["study_instance_uid"]), int(row["attempts"])

    def _study_state(self, db: sqlite3.Connection, uid: str, new: StudyState) -> sqlite3.Row:
        row = db.execute("SELECT state, attempts FROM studies WHERE study_instance_uid = ?",
                         (uid,)).fetchone()
        if row is None:
            raise StoreError(f"cohort journal: no study {uid}")
        check_transition(StudyState(row["state"]), new)
        return row

    def study_done(self, uid: str, *, instances: int, size: int, seconds: float, path: str) -> None:
        """The study is on disk, durably: ``done`` (never fetched again)."""
        with self._tx() as db:
            row = self._study_state(db, uid, StudyState.DONE)
            db.execute("UPDATE studies SET state = ?, attempts = ?, reason = NULL, transient = 0, "
                       "instances = ?, bytes = ?, seconds = ?, path = ?, finished = ? "
                       "WHERE study_instance_uid = ?",
                       (StudyState.DONE.value, row["attempts"] + 1, instances, size, seconds, path,
                        time.time(), uid))

    def study_failed(self, uid: str, outcome: Outcome) -> None:
        """An attempt to fetch the study failed: back to ``pending`` at ``next_at`` or ``failed``."""
        new = StudyState.PENDING if outcome.retry else StudyState.FAILED
        with self._tx() as db:
            row = self._study_state(db, uid, new)
            db.execute("UPDATE studies SET state = ?, attempts = ?, reason = ?, transient = ?, next_at = ? "
                       "WHERE study_instance_uid = ?", (new.value, row["attempts"] + 1, outcome.reason,
                                                        int(outcome.transient), outcome.next_at, uid))

    def release_study(self, uid: str) -> None:
        """Give a claimed study back untried (the job stopped before it ran)."""
        with self._tx() as db:
            self._study_state(db, uid, StudyState.PENDING)
            db.execute("UPDATE studies SET state = ? WHERE study_instance_uid = ?",
                       (StudyState.PENDING.value, uid))

    # -- looking --------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the earliest pending item or study is due; None when nothing is pending."""
        row = self._rows("SELECT MIN(t) AS t FROM (SELECT MIN(next_at) AS t FROM items WHERE state = ? "
                         "UNION ALL SELECT MIN(next_at) FROM studies WHERE state = ?)",
                         (ItemState.PENDING.value, StudyState.PENDING.value))[0]
        return None if row["t"] is None else float(row["t"])

    def counts(self) -> dict[str, int]:
        """``{"items_<state>": n, "studies_<state>": n, "instances": n, "bytes": n}``."""
        out: dict[str, int] = {f"items_{s.value}": 0 for s in ItemState}
        out.update({f"studies_{s.value}": 0 for s in StudyState})
        for r in self._rows("SELECT state, COUNT(*) AS n FROM items GROUP BY state"):
            out[f"items_{r['state']}"] = int(r["n"])
        for r in self._rows("SELECT state, COUNT(*) AS n FROM studies GROUP BY state"):
            out[f"studies_{r['state']}"] = int(r["n"])
        done = self._rows("SELECT COALESCE(SUM(instances), 0) AS i, COALESCE(SUM(bytes), 0) AS b "
                          "FROM studies WHERE state = ?", (StudyState.DONE.value,))[0]
        out["instances"], out["bytes"] = int(done["i"]), int(done["b"])
        return out

    def done_studies(self) -> set[str]:
        """UIDs of the studies on disk."""
        rows = self._rows("SELECT study_instance_uid FROM studies WHERE state = ?", (StudyState.DONE.value,))
        return {str(r["study_instance_uid"]) for r in rows}

    def report_rows(self, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One row per item (``keys``, default all, in input order) and linked study, for
        :func:`kit.cohort.plan.report_frame`."""
        rows = self._rows(
            "SELECT i.key AS item, i.row AS row, i.state AS item_state, i.reason AS item_reason, "
            "i.attempts AS item_attempts, s.study_instance_uid, s.accession_number, s.patient_id, "
            "s.study_date, s.state, s.reason, s.attempts, s.instances, s.bytes, s.seconds, s.path "
            "FROM items i LEFT JOIN links l ON l.item_key = i.key "
            "LEFT JOIN studies s ON s.study_instance_uid = l.study_instance_uid "
            "ORDER BY i.row, i.rowid, s.study_date IS NULL, s.study_date, s.study_instance_uid")
        out = [dict(r) for r in rows]
        if keys is not None:
            order = {k: n for n, k in enumerate(keys)}
            out = sorted((r for r in out if r["item"] in order), key=lambda r: order[r["item"]])
        return out
