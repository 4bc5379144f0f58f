"""The Medix service's durable job table: one SQLite file in the workspace (WAL).

One row per job holds what the job is (study, webhook, headers), where it got
(``state``, ``status``), the statuses it reported (``events``, a JSON list of
``[code, file address]`` in order) and how far webhook delivery got
(``delivered``: how many of ``events`` are done, ``attempt`` and
``next_attempt`` of the next one). A status is committed (``synchronous =
FULL``) before anything acts on it, so after a restart every job knows its last
step and every webhook event not yet delivered is still there to send, in
order. Status changes go through :func:`kit.services.medix_protocol.transition`.

States: ``queued`` (waiting for a worker), ``running``, ``done``
(ExportCompleted), ``failed`` (RequestFailed or ExportFailed). A job found
``running`` on open was interrupted: :meth:`JobStore.recover` queues it again
(its steps are replayed without being reported twice) or, after
``max_resumes`` interruptions, fails it with the code of the step it reached.

Written by hand: a small table over :mod:`sqlite3`.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from kit._sqlite import immediate_tx
from kit.errors import StoreError
from kit.services.medix_protocol import (
    FAILURES,
    TERMINAL,
    DownloadRequest,
    MedixStatus,
    failure_for,
    transition,
)

__all__ = ["Job", "JobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    webhook_uri TEXT NOT NULL,
    webhook_headers TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER NOT NULL,
    events TEXT NOT NULL,
    emitted INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    webhook_error TEXT,
    error TEXT,
    file TEXT,
    size INTEGER,
    instances INTEGER,
    resumes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (next_attempt) WHERE delivered < emitted;
"""


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of the job table."""

    id: str
    study_uid: str
    webhook_uri: str
    webhook_headers: dict[str, str]
    state: str
    status: MedixStatus
    events: list[tuple[int, str | None]]
    delivered: int
    attempt: int
    next_attempt: float
    webhook_error: str | None
    error: str | None
    file: str | None
    size: int | None
    instances: int | None
    resumes: int
    created: float
    updated: float

    def public(self) -> dict[str, Any]:
        """The job as the service shows it (no webhook headers: they may hold the platform's secrets)."""
        return {"JobId": self.id, "StudyInstanceUID": self.study_uid, "State": self.state,
                "Status": str(int(self.status)), "StatusName": self.status.protocol_name,
                "Statuses": [str(code) for code, _ in self.events], "WebhooksDelivered": self.delivered,
                "WebhookError": self.webhook_error, "Error": self.error, "Size": self.size,
                "Instances": self.instances}


def _job(row: sqlite3.Row) -> Job:
    return Job(id=row["id"], study_uid=row["study_uid"], webhook_uri=row["webhook_uri"],
               webhook_headers=dict(json.loads(row["webhook_headers"])), state=row["state"],
               status=MedixStatus(row["status"]),
               events=[(int(c), f) for c, f in json.loads(row["events"])], delivered=row["delivered"],
               attempt=row["attempt"], next_attempt=row["next_attempt"], webhook_error=row["webhook_error"],
               error=row["error"], file=row["file"], size=row["size"], instances=row["instances"],
               resumes=row["resumes"], created=row["created"], updated=row["updated"])


class JobStore:
    """The job table in ``path`` (created if missing), safe to share between threads.

    Parameters
    ----------
    path : path
        The SQLite file (its folder must exist).

    Raises
    ------
    StoreError
        The file cannot be opened or is not this table's database.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the Medix job table {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:  # pragma: no cover - closing twice is harmless
                pass

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE ... COMMIT) under the lock."""
        return immediate_tx(self._db, self._lock, f"the Medix job table {self.path}")

    def _row(self, db: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row

    # -- jobs --------------------------------------------------------------------------------------

    def create(self, request: DownloadRequest, *, max_unfinished: int) -> Job | None:
        """Store a new job with ProcessStarted reported (committed); None when the queue is full.

        Parameters
        ----------
        request : DownloadRequest
        max_unfinished : int
            Queued plus running jobs allowed; a request over it is not stored.
        """
        now = time.time()
        job_id = uuid.uuid4().hex
        start = int(MedixStatus.PROCESS_STARTED)
        with self._tx() as db:
            (busy,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()
            if busy >= max_unfinished:
                return None
            db.execute("INSERT INTO jobs (id, study_uid, webhook_uri, webhook_headers, state, status, "
                       "events, emitted, created, updated) VALUES (?, ?, ?, ?, 'queued', ?, ?, 1, ?, ?)",
                       (job_id, request.study_instance_uid, request.webhook_uri,
                        json.dumps(list(request.webhook_headers)), start, json.dumps([[start, None]]),
                        now, now))
            row = self._row(db, job_id)
        assert row is not None
        return _job(row)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                rows: list[sqlite3.Row] = self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"the Medix job table {self.path}: {exc}") from exc
        return rows

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        return [_job(r) for r in self._read("SELECT * FROM jobs ORDER BY created, id")]

    def expired(self, before: float, *, limit: int = 256) -> list[Job]:
        """Done jobs whose zip is still kept and whose last change was before ``before`` (epoch s)."""
        return [_job(r) for r in self._read(
            "SELECT * FROM jobs WHERE state = 'done' AND file IS NOT NULL AND updated < ? "
            "ORDER BY updated LIMIT ?", (before, limit))]

    def forget_file(self, job_id: str) -> None:
        """Record that the job's zip was deleted (its download answers 410 Gone from now on)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET file = NULL WHERE id = ?", (job_id,))

    def unfinished(self) -> int:
        """Queued plus running jobs."""
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")[0][0])

    def claim(self) -> Job | None:
        """The oldest queued job, now ``running``; None when none waits."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' "
                             "ORDER BY created, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', updated = ? WHERE id = ?",
                       (time.time(), row["id"]))
            claimed = self._row(db, row["id"])
        assert claimed is not None
        return _job(claimed)

    def report(self, job_id: str, status: MedixStatus, *, file_url: str | None = None,
               error: str | None = None, **fields: Any) -> bool:
        """Record that the job reached ``status`` (committed); False when it was already reported.

        ``fields`` sets ``file``, ``size`` or ``instances`` in the same transaction.
        A terminal status also sets ``state`` (``done`` or ``failed``) and ``error``.

        Raises
        ------
        InvalidInputError
            Not a legal step from the job's current status (see ``transition``).
        """
        allowed = {"file", "size", "instances"}
        if set(fields) - allowed:
            raise ValueError(f"unknown job fields {sorted(set(fields) - allowed)}")
        with self._tx() as db:
            row = self._row(db, job_id)
            if row is None:
                raise StoreError(f"no Medix job {job_id}")
            current = MedixStatus(row["status"])
            new = transition(current, status)
            if new is None:
                return False
            events = json.loads(row["events"])
            events.append([int(new), file_url])
            state = row["state"]
            if new in TERMINAL:
                state = "done" if new is MedixStatus.EXPORT_COMPLETED else "failed"
            sets = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE jobs SET status = ?, events = ?, emitted = ?, state = ?, error = ?, "
                       f"updated = ?{', ' + sets if sets else ''} WHERE id = ?",
                       (int(new), json.dumps(events), len(events), state, error if new in FAILURES else None,
                        time.time(), *fields.values(), job_id))
        return True

    def fail(self, job_id: str, reason: str, *, at_least: MedixStatus | None = None) -> MedixStatus:
        """Fail the job with the code of the step it reached (``at_least`` counts as reached); the code."""
        job = self.get(job_id)
        if job is None:
            raise StoreError(f"no Medix job {job_id}")
        reached = max(job.status, at_least) if at_least is not None else job.status
        code = failure_for(reached)
        self.report(job_id, code, error=reason[:2000])
        return code

    def recover(self, *, max_resumes: int) -> list[str]:
        """Queue again every job interrupted while running (a restart); fail those resumed too often.

        Returns
        -------
        list of str
            The ids of the jobs queued again.
        """
        rows = self._read("SELECT id, resumes FROM jobs WHERE state = 'running'")
        queued: list[str] = []
        for row in rows:
            if row["resumes"] >= max_resumes:
                self.fail(row["id"], f"interrupted by {row['resumes'] + 1} restarts")
                continue
            with self._tx() as db:
                db.execute("UPDATE jobs SET state = 'queued', resumes = resumes + 1, updated = ? "
                           "WHERE id = ?", (time.time(), row["id"]))
            queued.append(row["id"])
        return queued

    # -- webhook deliveries ------------------------------------------------------------------------

    def due(self, now: float, *, skip: set[str] | frozenset[str] = frozenset(), limit: int = 64) -> list[Job]:
        """Jobs with an undelivered webhook event due at ``now`` (not those in ``skip``), oldest first."""
        rows = self._read("SELECT * FROM jobs WHERE delivered < emitted AND next_attempt <= ? "
                          "ORDER BY next_attempt, created LIMIT ?", (now, limit + len(skip)))
        return [_job(r) for r in rows if r["id"] not in skip][:limit]

    def next_due(self) -> float | None:
        """When the earliest undelivered event is due (epoch seconds), or None."""
        (when,) = self._read("SELECT MIN(next_attempt) FROM jobs WHERE delivered < emitted")[0]
        return float(when) if when is not None else None

    def delivered(self, job_id: str, index: int, *, error: str | None = None) -> None:
        """Event ``index`` of the job is done (sent, or given up with ``error``): move to the next."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET delivered = ?, attempt = 0, next_attempt = 0, "
                       "webhook_error = COALESCE(?, webhook_error) WHERE id = ? AND delivered = ?",
                       (index + 1, error, job_id, index))

    def retry_later(self, job_id: str, index: int, *, attempt: int, when: float, error: str) -> None:
        """Event ``index`` failed ``attempt`` times: try it again at ``when``."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET attempt = ?, next_attempt = ?, webhook_error = ? "
                       "WHERE id = ? AND delivered = ?", (attempt, when, error[:500], job_id, index))
