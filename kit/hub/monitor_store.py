"""The monitor's history: health checks and alerts in SQLite (WAL), bounded (I/O).

``<workspace>/monitor.db`` holds one row per health check (connector, time,
ok, latency, reason) and one per alert with its lifecycle
(:class:`kit.hub.alerts.Alert`). A round of checks and the alerts it raises or
resolves are written in one transaction. :meth:`MonitorStore.prune` keeps the
history bounded: checks older than the retention, or beyond a number per
connector, and alerts resolved before the retention are deleted.

Safe to use from several threads (one connection behind a lock). Every
sqlite3 error is a :class:`~kit.errors.StoreError`.

Written by hand: a small schema over the standard library's sqlite3.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

import polars as pl

from kit._sqlite import immediate_tx
from kit.errors import InvalidInputError, RecordNotFoundError, StoreError
from kit.hub.alerts import Alert, AlertState, CheckResult, Firing

__all__ = ["CHECK_COLUMNS", "DB_NAME", "MonitorStore"]

#: The database file in the workspace.
DB_NAME: Final = "monitor.db"

#: Columns of :meth:`MonitorStore.history`.
CHECK_COLUMNS: Final[Mapping[str, pl.DataType]] = {
    "connector": pl.String(), "at": pl.Datetime("us", "UTC"), "ok": pl.Boolean(),
    "latency_seconds": pl.Float64(), "reason": pl.String(),
}

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY, connector TEXT NOT NULL, at REAL NOT NULL, ok INTEGER NOT NULL,
    latency REAL NOT NULL, reason TEXT);
CREATE INDEX IF NOT EXISTS checks_by_connector ON checks (connector, at);
CREATE INDEX IF NOT EXISTS checks_by_time ON checks (at);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, connector TEXT NOT NULL, rule TEXT NOT NULL, severity TEXT NOT NULL,
    state TEXT NOT NULL, message TEXT NOT NULL, value REAL NOT NULL, raised_at REAL NOT NULL,
    acknowledged_by TEXT, acknowledged_at REAL, resolved_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_alert ON alerts (connector, rule) WHERE state != 'resolved';
"""
_ALERT_FIELDS: Final = ("id", "connector", "rule", "severity", "state", "message", "value", "raised_at",
                        "acknowledged_by", "acknowledged_at", "resolved_at")
_ALERT_SELECT: Final = f"SELECT {', '.join(_ALERT_FIELDS)} FROM alerts"


class MonitorStore:
    """Health checks and alerts in ``<workspace>/monitor.db`` (or in memory).

    Parameters
    ----------
    workspace : path, optional
        The folder (created, mode 0700, if missing). None keeps everything in
        memory (one round of ``kit monitor status``).
    """

    def __init__(self, workspace: str | Path | None) -> None:
        self.path: Path | None = None
        target = ":memory:"
        if workspace is not None:
            folder = Path(workspace).expanduser()
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise StoreError(f"cannot create the monitor workspace {folder}: {exc.strerror or exc}") \
                    from exc
            self.path = folder / DB_NAME
            target = str(self.path)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._db = sqlite3.connect(target, timeout=30.0, check_same_thread=False, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the monitor database {target}: {exc}") from exc

    def __repr__(self) -> str:
        return f"MonitorStore({self.path or ':memory:'})"

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._closed = True
            self._db.close()

    def __enter__(self) -> MonitorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE ... COMMIT) under the lock."""
        return immediate_tx(self._db, self._lock, "the monitor database could not write")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"the monitor database could not read: {exc}") from exc

    # -- a round -------------------------------------------------------------------------------

    def record(self, results: Iterable[CheckResult], raised: Iterable[Firing], resolved: Iterable[Alert],
               at: float) -> list[Alert]:
        """Write a round in one transaction: its checks, new alerts (raised at ``at``), resolutions.

        Returns
        -------
        list of Alert
            The alerts raised, with their ids.
        """
        new: list[Alert] = []
        with self._tx() as db:
            db.executemany("INSERT INTO checks (connector, at, ok, latency, reason) VALUES (?,?,?,?,?)",
                           [(r.connector, r.at, int(r.ok), r.latency_seconds, r.reason) for r in results])
            for alert in resolved:
                db.execute("UPDATE alerts SET state = ?, resolved_at = ? WHERE id = ? AND state != ?",
                           (AlertState.RESOLVED.value, alert.resolved_at, alert.id,
                            AlertState.RESOLVED.value))
            for f in raised:
                cur = db.execute(
                    "INSERT INTO alerts (connector, rule, severity, state, message, value, raised_at) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (f.connector, f.rule.name, f.rule.severity.value, AlertState.RAISED.value, f.message,
                     f.value, at))
                new.append(Alert(int(cur.lastrowid or 0), f.connector, f.rule.name, f.rule.severity,
                                 f.message, f.value, at))
        return new

    # -- reading -------------------------------------------------------------------------------

    def recent(self, connector: str, *, since: float, at_least: int, limit: int) -> list[CheckResult]:
        """A connector's checks after ``since`` (and its last ``at_least`` in any case), at most ``limit``,
        oldest first."""
        rows = self._rows(
            "SELECT connector, at, ok, latency, reason FROM checks WHERE connector = ? AND "
            "(at > ? OR id IN (SELECT id FROM checks WHERE connector = ? ORDER BY at DESC, id DESC LIMIT ?)) "
            "ORDER BY at DESC, id DESC LIMIT ?", (connector, since, connector, at_least, limit))
        return [CheckResult(r[0], r[1], bool(r[2]), r[3], r[4]) for r in reversed(rows)]

    def connectors(self) -> list[str]:
        """Connectors with checks in the history."""
        return [r[0] for r in self._rows("SELECT DISTINCT connector FROM checks ORDER BY connector")]

    def history(self, connector: str | None = None, *, since: float | None = None,
                limit: int = 100_000) -> pl.DataFrame:
        """Checks as a frame (:data:`CHECK_COLUMNS`), oldest first: the latest ``limit`` after ``since``."""
        if limit < 1:
            raise InvalidInputError(f"limit must be positive, got {limit}")
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if connector is not None:
            where.append("connector = ?")
            args.append(connector)
        if since is not None:
            where.append("at > ?")
            args.append(since)
        rows = self._rows("SELECT connector, at, ok, latency, reason FROM checks WHERE "
                          f"{' AND '.join(where)} ORDER BY at DESC, id DESC LIMIT ?", [*args, limit])
        rows.reverse()
        frame = pl.DataFrame(
            {"connector": [r[0] for r in rows], "at": [round(r[1] * 1_000_000) for r in rows],
             "ok": [bool(r[2]) for r in rows], "latency_seconds": [r[3] for r in rows],
             "reason": [r[4] for r in rows]},
            schema={**CHECK_COLUMNS, "at": pl.Int64()})
        return frame.with_columns(pl.col("at").cast(pl.Datetime("us", "UTC")))

    def alerts(self, *, active_only: bool = False, limit: int = 10_000) -> list[Alert]:
        """Alerts, newest first (only raised and acknowledged ones with ``active_only``)."""
        where = f" WHERE state != '{AlertState.RESOLVED.value}'" if active_only else ""
        rows = self._rows(f"{_ALERT_SELECT}{where} ORDER BY raised_at DESC, id DESC LIMIT ?", (limit,))
        return [_alert(r) for r in rows]

    def alert(self, alert_id: int) -> Alert:
        """One alert by id (RecordNotFoundError if there is none)."""
        rows = self._rows(f"{_ALERT_SELECT} WHERE id = ?", (alert_id,))
        if not rows:
            raise RecordNotFoundError(f"no alert {alert_id}", what="alert")
        return _alert(rows[0])

    def save_acknowledgement(self, alert: Alert) -> None:
        """Store an alert's acknowledgement (only while it is still raised)."""
        with self._tx() as db:
            db.execute("UPDATE alerts SET state = ?, acknowledged_by = ?, acknowledged_at = ? "
                       "WHERE id = ? AND state = ?",
                       (alert.state.value, alert.acknowledged_by, alert.acknowledged_at, alert.id,
                        AlertState.RAISED.value))

    # -- retention -----------------------------------------------------------------------------

    def prune(self, *, before: float, max_per_connector: int) -> int:
        """Delete checks before ``before`` or beyond the latest ``max_per_connector`` of each connector,
        and alerts resolved before ``before``; return how many checks went."""
        with self._tx() as db:
            gone = db.execute("DELETE FROM checks WHERE at < ?", (before,)).rowcount
            for (connector,) in db.execute("SELECT DISTINCT connector FROM checks").fetchall():
                gone += db.execute(
                    "DELETE FROM checks WHERE connector = ? AND id NOT IN "
                    "(SELECT id FROM checks WHERE connector = ? ORDER BY at DESC, id DESC LIMIT ?)",
                    (connector, connector, max_per_connector)).rowcount
            db.execute("DELETE FROM alerts WHERE state = ? AND resolved_at < ?",
                       (AlertState.RESOLVED.value, before))
        return int(gone)

    def count(self) -> int:
        """Checks held."""
        return int(self._rows("SELECT count(*) FROM checks")[0][0])


def _alert(row: tuple[Any, ...]) -> Alert:
    try:
        return Alert(**dict(zip(_ALERT_FIELDS, row, strict=True)))
    except InvalidInputError as exc:
        raise StoreError(f"the monitor database holds an invalid alert (id {row[0]}): {exc}") from exc
