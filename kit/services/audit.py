"""The durable audit log: an append-only, hash-chained SQLite file in the workspace.

:class:`AuditLog` is a :mod:`kit.audit` sink. Each event becomes one row of the
``audit`` table holding the event as canonical JSON (``record``), the SHA-256
of the previous row (``prev``) and its own (``hash`` = SHA-256 of ``prev``, the
row number and ``record``), so a row changed, removed or inserted behind the
log's back breaks the chain, which :meth:`AuditLog.verify` (``kit audit
--verify``) finds. The identifiers are also in ``audit_ids`` (indexed) so "who
accessed this patient" is one index lookup.

Why SQLite and not JSON lines: appends from several threads and processes
(``kit serve``, ``kit api serve``, the CLI) must each read the chain's head and
add a row atomically. ``BEGIN IMMEDIATE`` gives that across processes; with
WAL and ``synchronous=FULL`` a committed row survives a crash or power loss,
and a torn write never leaves a half row, which an appended text line can.
Triggers abort every ``UPDATE`` and ``DELETE`` on both tables, so the log
cannot be edited through SQL by mistake; deliberate edits of the file are
what the hash chain is for. The head hash :meth:`AuditLog.verify` reports can
be copied elsewhere to anchor the chain (truncating the tail, or rewriting the
whole chain, is only visible against such an anchor).

Writes are group-committed: concurrent callers queue their events and
whichever holds the writer lock commits everything queued in one transaction;
each caller returns once its own events are on disk.

Written by hand: a small table over :mod:`sqlite3`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl

from kit import audit
from kit.audit import AuditEvent
from kit.config import Settings
from kit.errors import InvalidInputError, StoreError

__all__ = [
    "AUDIT_SCHEMA",
    "AuditLog",
    "Verification",
    "configured_path",
    "disable",
    "enable",
    "enable_configured",
    "read_frame",
    "release",
    "verify",
]

#: columns of :meth:`AuditLog.frame`
AUDIT_SCHEMA: Final[dict[str, pl.DataType]] = {
    "seq": pl.Int64(), "when": pl.Datetime("us", "UTC"), "action": pl.String(), "who": pl.String(),
    "side": pl.String(), "target": pl.String(), "outcome": pl.String(), "error": pl.String(),
    "patient_ids": pl.List(pl.String()), "study_uids": pl.List(pl.String()),
    "accessions": pl.List(pl.String()), "count": pl.Int64(), "detail": pl.String(),
}

GENESIS: Final = "0" * 64
_KINDS: Final = (("patient", "patient_ids"), ("study", "study_uids"), ("accession", "accessions"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    who TEXT NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE TABLE IF NOT EXISTS audit_ids (
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_ids_value ON audit_ids(value, kind);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_ids_no_update BEFORE UPDATE ON audit_ids
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_ids_no_delete BEFORE DELETE ON audit_ids
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


def canonical(event: AuditEvent) -> str:
    """The event as the canonical JSON text that is stored and hashed."""
    return json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev: str, seq: int, record: str) -> str:
    """SHA-256 (hex) of a row: the previous row's hash, its number and its record."""
    return hashlib.sha256(f"{prev}\n{seq}\n{record}".encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Verification:
    """What :meth:`AuditLog.verify` found.

    Attributes
    ----------
    ok : bool
        Every row is intact and chained to the one before.
    rows : int
        Rows checked.
    head : str
        The last row's hash (anchor it elsewhere to detect a truncated tail).
    problems : tuple of str
        What is wrong, first break first (empty when ok).
    """

    ok: bool
    rows: int
    head: str
    problems: tuple[str, ...] = ()


class _Pending:
    __slots__ = ("done", "error", "events")

    def __init__(self, events: Sequence[AuditEvent]) -> None:
        self.events = events
        self.done = False
        self.error: BaseException | None = None


class AuditLog:
    """An append-only, hash-chained audit log in one SQLite file; also a :mod:`kit.audit` sink.

    Parameters
    ----------
    path : str or Path
        The database file (created with its folder if missing).

    Raises
    ------
    StoreError
        The file cannot be opened or is not an audit log.
    """

    name = "audit log"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().resolve()
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the audit log {self.path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r})"

    def close(self) -> None:
        """Close the database (the sink is removed if registered)."""
        audit.remove_sink(self)
        with self._write_lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------------

    def __call__(self, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` (the :mod:`kit.audit` sink interface); returns once they are on disk."""
        self.append(events)

    def append(self, events: Sequence[AuditEvent]) -> None:
        """Append ``events`` durably, in order (group-committed with other threads' events).

        Raises
        ------
        StoreError
            The rows could not be committed (nothing of this call is stored).
        """
        mine = _Pending(list(events))
        with self._queue_lock:
            self._queue.append(mine)
        with self._write_lock:
            if not mine.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if mine.error is not None:
            raise StoreError(f"cannot append to the audit log {self.path}: {mine.error}") from mine.error

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            self._insert([e for p in batch for e in p.events])
        except Exception as exc:  # noqa: BLE001 - one bad batch: each caller alone, to fail only itself
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for pending in batch:
                    self._commit([pending])
                return
        for pending in batch:
            pending.done = True

    def _insert(self, events: Sequence[AuditEvent]) -> None:
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            last = cur.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            for event in events:
                seq += 1
                text = canonical(event)
                digest = chain_hash(prev, seq, text)
                cur.execute("INSERT INTO audit (seq, at, action, who, outcome, record, prev, hash) "
                            "VALUES (?,?,?,?,?,?,?,?)",
                            (seq, event.when.isoformat(timespec="microseconds"), event.action, event.who,
                             event.outcome, text, prev, digest))
                cur.executemany("INSERT INTO audit_ids (seq, kind, value) VALUES (?,?,?)",
                                [(seq, kind, v) for kind, name in _KINDS for v in getattr(event, name)])
                prev = digest
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- reading ----------------------------------------------------------------------------------

    def frame(self, **filters: Any) -> pl.DataFrame:
        """The log as a frame (:data:`AUDIT_SCHEMA`); filters as for :func:`read_frame`."""
        return read_frame(self.path, **filters)

    def verify(self) -> Verification:
        """Check every row's hash and its link to the one before, and the identifier index."""
        return verify(self.path)


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no audit log at {path}")
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30.0)
        db.execute("SELECT 1 FROM audit LIMIT 1")
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a readable audit log: {exc}") from exc
    return db


def _since(value: dt.datetime | dt.date | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInputError(f"since {value!r} is not an ISO 8601 date or date-time") from exc
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.astimezone()  # a naive time is local time
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def read_frame(path: str | os.PathLike[str], *, patient: str | None = None, study: str | None = None,
               accession: str | None = None, since: dt.datetime | dt.date | str | None = None,
               action: str | None = None, who: str | None = None) -> pl.DataFrame:
    """The audit log at ``path`` as a frame (:data:`AUDIT_SCHEMA`), oldest first.

    Parameters
    ----------
    path : path
        The log file.
    patient, study, accession : str, optional
        Only events touching this patient id, StudyInstanceUID or accession number.
    since : datetime, date or ISO 8601 text, optional
        Only events at or after this time (naive values are local time).
    action : str, optional
        Only actions starting with this prefix (``pacs``, ``fhir.read``).
    who : str, optional
        Only events by this principal (``key:ab12``, ``user:alice``).

    Raises
    ------
    StoreError
        No log there, or not readable.
    InvalidInputError
        ``since`` is not a date.
    """
    where: list[str] = []
    args: list[Any] = []
    for kind, value in (("patient", patient), ("study", study), ("accession", accession)):
        if value is not None:
            where.append("seq IN (SELECT seq FROM audit_ids WHERE value = ? AND kind = ?)")
            args += [value, kind]
    start = _since(since)
    if start is not None:
        where.append("at >= ?")
        args.append(start)
    if action:
        where.append("substr(action, 1, ?) = ?")
        args += [len(action), action]
    if who:
        where.append("who = ?")
        args.append(who)
    sql = "SELECT seq, record FROM audit" + (" WHERE " + " AND ".join(where) if where else "")
    db = _connect_ro(Path(path))
    try:
        rows = db.execute(sql + " ORDER BY seq", args).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the audit log {path}: {exc}") from exc
    finally:
        db.close()
    records = []
    for seq, text in rows:
        item = json.loads(text)
        item["seq"] = seq
        item["when"] = dt.datetime.fromisoformat(item["when"])
        records.append({k: item.get(k) for k in AUDIT_SCHEMA})
    if not records:
        return pl.DataFrame(schema=AUDIT_SCHEMA)
    return pl.DataFrame(records, schema=AUDIT_SCHEMA)


def verify(path: str | os.PathLike[str]) -> Verification:
    """Check the chain of the log at ``path`` (see :meth:`AuditLog.verify`)."""
    db = _connect_ro(Path(path))
    problems: list[str] = []
    prev, expected, rows = GENESIS, 1, 0
    try:
        derived: dict[tuple[int, str, str], int] = {}
        for seq, at, action, who, outcome, text, stored_prev, digest in db.execute(
                "SELECT seq, at, action, who, outcome, record, prev, hash FROM audit ORDER BY seq"):
            rows += 1
            if seq != expected:
                problems.append(f"row {expected}" + (f"-{seq - 1}" if seq - 1 > expected else "")
                                + " missing" if seq > expected else f"row {seq} out of order")
            if stored_prev != prev:
                problems.append(f"row {seq}: not chained to the row before it")
            if chain_hash(stored_prev, seq, text) != digest:
                problems.append(f"row {seq}: its content does not match its hash (changed)")
            try:
                event = AuditEvent.from_dict(json.loads(text))
            except ValueError as exc:
                problems.append(f"row {seq}: not an audit event ({exc})")
            else:
                if (at, action, who, outcome) != (event.when.isoformat(timespec="microseconds"),
                                                  event.action, event.who, event.outcome):
                    problems.append(f"row {seq}: its columns differ from its record (changed)")
                for kind, name in _KINDS:
                    for value in getattr(event, name):
                        derived[(seq, kind, value)] = derived.get((seq, kind, value), 0) + 1
            prev, expected = digest, seq + 1
        indexed: dict[tuple[int, str, str], int] = {}
        for seq, kind, value in db.execute("SELECT seq, kind, value FROM audit_ids"):
            indexed[(seq, kind, value)] = indexed.get((seq, kind, value), 0) + 1
        if indexed != derived:
            bad = sorted({k[0] for k in set(indexed) ^ set(derived)}
                         | {k[0] for k in indexed if k in derived and indexed[k] != derived[k]})
            problems.append(f"the identifier index differs from the rows for row(s) "
                            f"{', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the audit log {path}: {exc}") from exc
    finally:
        db.close()
    return Verification(not problems, rows, prev, tuple(problems))


# -- the process's log ------------------------------------------------------------------------------

_open: dict[Path, tuple[AuditLog, int]] = {}
_open_lock = threading.Lock()


def enable(path: str | os.PathLike[str]) -> AuditLog:
    """Open the log at ``path`` and register it as a sink (one log per file and process).

    Each call must be matched by a :func:`release` (or :func:`disable`): the log
    stays open while any service that enabled it runs.
    """
    key = Path(path).expanduser().resolve()
    with _open_lock:
        log, users = _open.get(key, (None, 0))
        if log is None:
            log = AuditLog(key)
        _open[key] = (log, users + 1)
        audit.add_sink(log)
        return log


def release(log: AuditLog | None) -> None:
    """Undo one :func:`enable` of ``log`` (None: nothing); the last one closes it."""
    if log is None:
        return
    with _open_lock:
        found, users = _open.get(log.path, (None, 0))
        if found is not log:
            return
        if users > 1:
            _open[log.path] = (log, users - 1)
            return
        del _open[log.path]
    log.close()


def disable(path: str | os.PathLike[str] | None = None) -> None:
    """Unregister and close the log at ``path`` (default: every log :func:`enable` opened)."""
    with _open_lock:
        keys = list(_open) if path is None else [Path(path).expanduser().resolve()]
        logs = [_open.pop(key)[0] for key in keys if key in _open]
    for log in logs:
        log.close()


def configured_path(settings: Settings, default: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the audit log is: ``[audit] path``, else ``default``; None when off or unset."""
    if not settings.audit.enabled:
        return None
    if settings.audit.path:
        return Path(settings.audit.path).expanduser().resolve()
    return Path(default).expanduser().resolve() if default is not None else None


def enable_configured(settings: Settings, default: str | os.PathLike[str] | None = None) -> AuditLog | None:
    """:func:`enable` the configured log (``[audit] path``, else ``default``); None when there is none.

    ``kit serve``, ``kit api serve`` and ``kit medix serve`` pass their workspace's
    ``audit.db`` as ``default``; the CLI and notebooks pass none, so they record only
    when ``[audit] path`` (``KIT_AUDIT_PATH``) is set. ``[audit] enabled = false`` turns it off.
    """
    path = configured_path(settings, default)
    return enable(path) if path is not None else None
