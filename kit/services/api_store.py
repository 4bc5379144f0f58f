"""The integration REST API's state: one SQLite database in its workspace (I/O).

Tables: ``api_keys`` (key id, scrypt hash, role; never the key),
``integrations`` (settings as JSON, credentials only as a Fernet token from
:class:`~kit.services.api_vault.CredentialVault`), ``sync_jobs`` and
``sync_runs`` (the history of each job), and ``siu_log`` (every SIU entered
through the API, stored before it is sent, with the ACK). WAL journal,
``synchronous=FULL`` (a write is on disk when the call returns) and
``secure_delete`` (a replaced or deleted credential token is overwritten).
Every table is bounded (:data:`LIMITS`); a full one refuses the write.
"""

from __future__ import annotations

import datetime as dt
import secrets
import sqlite3
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

import orjson

from kit._sqlite import immediate_tx
from kit.errors import InvalidInputError, RecordNotFoundError, StoreError
from kit.services._auth import Role, hash_key, key_id, verify_key
from kit.services.api_models import ApiProblem

__all__ = ["LIMITS", "RUNS_KEPT", "ApiStore"]

#: Most rows each table holds.
LIMITS: Final = {"api_keys": 10_000, "integrations": 1_000, "sync_jobs": 1_000, "siu_log": 100_000}
#: Runs kept per sync job (the oldest go first).
RUNS_KEPT: Final = 200

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL, label TEXT,
    created TEXT NOT NULL, revoked TEXT);
CREATE TABLE IF NOT EXISTS integrations (
    integration_id TEXT PRIMARY KEY, name TEXT NOT NULL, connector TEXT NOT NULL, auth_type TEXT NOT NULL,
    description TEXT, config TEXT NOT NULL, credentials BLOB, credential_fields TEXT NOT NULL,
    status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, last_test TEXT);
CREATE TABLE IF NOT EXISTS sync_jobs (
    job_id TEXT PRIMARY KEY,
    integration_id TEXT NOT NULL REFERENCES integrations(integration_id) ON DELETE CASCADE,
    name TEXT NOT NULL, spec TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id TEXT PRIMARY KEY, job_id TEXT NOT NULL REFERENCES sync_jobs(job_id) ON DELETE CASCADE,
    started TEXT NOT NULL, finished TEXT, status TEXT NOT NULL, counts TEXT, report TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS sync_runs_job ON sync_runs(job_id, started);
CREATE TABLE IF NOT EXISTS siu_log (
    control_id TEXT PRIMARY KEY, message TEXT NOT NULL, received TEXT NOT NULL,
    ack_code TEXT, ack_text TEXT, sent TEXT);
"""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(8)


class ApiStore:
    """The API's SQLite database (``<workspace>/api.db``), safe to use from many threads.

    Parameters
    ----------
    workspace : path
        The folder (created with its parents if missing).
    """

    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace)
        try:
            self.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(
                f"cannot create the API workspace {self.workspace}: {exc.strerror or exc}"
            ) from exc
        self.path = self.workspace / "api.db"
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "secure_delete=ON"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the API database {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> ApiStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE ... COMMIT) under the lock."""
        return immediate_tx(self._db, self._lock, "the API database could not write")

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"the API database could not read: {exc}") from exc

    def _room(self, db: sqlite3.Connection, table: str, where: str = "", args: tuple[Any, ...] = ()) -> None:
        count = db.execute(f"SELECT count(*) FROM {table} {where}", args).fetchone()[0]
        if count >= LIMITS[table]:
            raise ApiProblem(507, f"the API holds its maximum of {LIMITS[table]} {table.replace('_', ' ')}")

    # -- keys ----------------------------------------------------------------------------------------

    def add_key(self, key: str, role: Role | str, label: str | None = None) -> str:
        """Store a key's hash with its role (replacing a key with the same id); return its key id."""
        role = Role(role)
        kid = key_id(key)
        stored = hash_key(key)  # outside the lock: scrypt takes a while
        with self._tx() as db:
            self._room(db, "api_keys")
            db.execute(
                "INSERT OR REPLACE INTO api_keys (key_id, hash, role, label, created) VALUES (?,?,?,?,?)",
                (kid, stored, role.value, label, _now()),
            )
        return kid

    def check_key(self, key: str) -> tuple[str, Role] | None:
        """(key id, role) of a valid, unrevoked key; None for any other."""
        kid = key_id(key)
        found = self._rows("SELECT hash, role FROM api_keys WHERE key_id = ? AND revoked IS NULL", (kid,))
        if not found or not verify_key(key, found[0][0]):
            return None
        return kid, Role(found[0][1])

    def keys(self) -> list[dict[str, Any]]:
        """Every key's id, role, label, created and revoked time (never the hash)."""
        rows = self._rows("SELECT key_id, role, label, created, revoked FROM api_keys ORDER BY created")
        return [dict(zip(("key_id", "role", "label", "created", "revoked"), r, strict=True)) for r in rows]

    def revoke_key(self, kid: str) -> None:
        """Revoke a key (RecordNotFoundError for an unknown or revoked one)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL", (_now(), kid)
            )
            if cur.rowcount == 0:
                raise RecordNotFoundError(f"no active key {kid!r}", what="key")

    # -- integrations --------------------------------------------------------------------------------

    _INTEGRATION: Final = (
        "integration_id",
        "name",
        "connector",
        "auth_type",
        "description",
        "config",
        "credential_fields",
        "status",
        "created",
        "updated",
        "last_test",
    )

    def _integration(self, row: tuple[Any, ...]) -> dict[str, Any]:
        item = dict(zip(self._INTEGRATION, row, strict=True))
        item["config"] = orjson.loads(item["config"])
        item["credential_fields"] = orjson.loads(item["credential_fields"])
        item["last_test"] = orjson.loads(item["last_test"]) if item["last_test"] else None
        return item

    def add_integration(
        self,
        name: str,
        connector: str,
        auth_type: str,
        description: str | None,
        config: Mapping[str, Any],
        credentials: bytes | None,
        credential_fields: list[str],
    ) -> dict[str, Any]:
        """Store a new integration (credentials already sealed); return it without credentials."""
        iid = _new_id("int-")
        now = _now()
        with self._tx() as db:
            self._room(db, "integrations")
            db.execute(
                "INSERT INTO integrations (integration_id, name, connector, auth_type, description, config,"
                " credentials, credential_fields, status, created, updated) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    iid,
                    name,
                    connector,
                    auth_type,
                    description,
                    orjson.dumps(dict(config)).decode(),
                    credentials,
                    orjson.dumps(sorted(credential_fields)).decode(),
                    "active",
                    now,
                    now,
                ),
            )
        return self.integration(iid)

    def integration(self, iid: str) -> dict[str, Any]:
        """One integration (never its credentials); RecordNotFoundError if unknown."""
        rows = self._rows(
            f"SELECT {', '.join(self._INTEGRATION)} FROM integrations WHERE integration_id = ?", (iid,)
        )
        if not rows:
            raise RecordNotFoundError(f"no integration {iid!r}", what="integration")
        return self._integration(rows[0])

    def integrations(self) -> list[dict[str, Any]]:
        """Every integration, oldest first (never credentials)."""
        rows = self._rows(f"SELECT {', '.join(self._INTEGRATION)} FROM integrations ORDER BY created")
        return [self._integration(r) for r in rows]

    def sealed_credentials(self, iid: str) -> bytes | None:
        """The stored Fernet token of an integration (None without credentials)."""
        rows = self._rows("SELECT credentials FROM integrations WHERE integration_id = ?", (iid,))
        if not rows:
            raise RecordNotFoundError(f"no integration {iid!r}", what="integration")
        return bytes(rows[0][0]) if rows[0][0] is not None else None

    def update_integration(self, iid: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change columns of an integration (``config`` as a dict, ``credentials`` as sealed bytes)."""
        allowed = {
            "name",
            "auth_type",
            "description",
            "config",
            "credentials",
            "credential_fields",
            "status",
            "last_test",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInputError(f"cannot change {sorted(unknown)}")
        values = {
            k: (
                orjson.dumps(v).decode()
                if k in ("config", "last_test", "credential_fields") and v is not None
                else v
            )
            for k, v in changes.items()
        }
        values["updated"] = _now()
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE integrations SET {sets} WHERE integration_id = ?", (*values.values(), iid)
            )
            if cur.rowcount == 0:
                raise RecordNotFoundError(f"no integration {iid!r}", what="integration")
        return self.integration(iid)

    def delete_integration(self, iid: str) -> None:
        """Delete an integration with its sync jobs and their history."""
        with self._tx() as db:
            if db.execute("DELETE FROM integrations WHERE integration_id = ?", (iid,)).rowcount == 0:
                raise RecordNotFoundError(f"no integration {iid!r}", what="integration")

    # -- sync jobs -----------------------------------------------------------------------------------

    def add_job(self, iid: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Store a sync job of an integration."""
        jid = _new_id("job-")
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM integrations WHERE integration_id = ?", (iid,)).fetchone():
                raise RecordNotFoundError(f"no integration {iid!r}", what="integration")
            self._room(db, "sync_jobs")
            db.execute(
                "INSERT INTO sync_jobs (job_id, integration_id, name, spec, created) VALUES (?,?,?,?,?)",
                (jid, iid, name, orjson.dumps(dict(spec)).decode(), _now()),
            )
        return self.job(jid)

    def job(self, jid: str) -> dict[str, Any]:
        """One sync job; RecordNotFoundError if unknown."""
        rows = self._rows(
            "SELECT job_id, integration_id, name, spec, created FROM sync_jobs WHERE job_id = ?", (jid,)
        )
        if not rows:
            raise RecordNotFoundError(f"no sync job {jid!r}", what="sync job")
        job_id, iid, name, spec, created = rows[0]
        return {
            "job_id": job_id,
            "integration_id": iid,
            "name": name,
            "spec": orjson.loads(spec),
            "created": created,
        }

    def jobs(self, iid: str) -> list[dict[str, Any]]:
        """The sync jobs of an integration."""
        self.integration(iid)
        rows = self._rows("SELECT job_id FROM sync_jobs WHERE integration_id = ? ORDER BY created", (iid,))
        return [self.job(r[0]) for r in rows]

    def delete_job(self, jid: str) -> None:
        """Delete a sync job and its history."""
        with self._tx() as db:
            if db.execute("DELETE FROM sync_jobs WHERE job_id = ?", (jid,)).rowcount == 0:
                raise RecordNotFoundError(f"no sync job {jid!r}", what="sync job")

    def start_run(self, jid: str) -> str:
        """Record that a run of a job started; return its run id."""
        rid = _new_id("run-")
        with self._tx() as db:
            db.execute(
                "INSERT INTO sync_runs (run_id, job_id, started, status) VALUES (?,?,?,?)",
                (rid, jid, _now(), "running"),
            )
        return rid

    def finish_run(
        self,
        rid: str,
        status: str,
        counts: Mapping[str, int] | None,
        report: list[dict[str, Any]] | None,
        error: str | None,
    ) -> None:
        """Record how a run ended, and keep only the newest :data:`RUNS_KEPT` runs of its job."""
        with self._tx() as db:
            db.execute(
                "UPDATE sync_runs SET finished = ?, status = ?, counts = ?, report = ?, error = ? "
                "WHERE run_id = ?",
                (
                    _now(),
                    status,
                    orjson.dumps(counts).decode() if counts else None,
                    orjson.dumps(report).decode() if report is not None else None,
                    error,
                    rid,
                ),
            )
            db.execute(
                "DELETE FROM sync_runs WHERE run_id IN (SELECT run_id FROM sync_runs WHERE job_id = "
                "(SELECT job_id FROM sync_runs WHERE run_id = ?) ORDER BY started DESC LIMIT -1 OFFSET ?)",
                (rid, RUNS_KEPT),
            )

    def runs(self, jid: str, *, report: bool = False) -> list[dict[str, Any]]:
        """The history of a job, newest first (with each run's per-row report when asked)."""
        self.job(jid)
        rows = self._rows(
            "SELECT run_id, started, finished, status, counts, error, report FROM sync_runs "
            "WHERE job_id = ? ORDER BY started DESC",
            (jid,),
        )
        out = []
        for run_id, started, finished, status, counts, error, rep in rows:
            item = {
                "run_id": run_id,
                "job_id": jid,
                "started": started,
                "finished": finished,
                "status": status,
                "counts": orjson.loads(counts) if counts else None,
                "error": error,
            }
            if report:
                item["report"] = orjson.loads(rep) if rep else None
            out.append(item)
        return out

    # -- SIU log -------------------------------------------------------------------------------------

    def log_siu(self, control_id: str, message: str) -> None:
        """Store an SIU before it is sent (a control id used before is refused: 409)."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM siu_log WHERE control_id = ?", (control_id,)).fetchone():
                raise ApiProblem(409, f"an SIU with control id {control_id!r} was entered before")
            self._room(db, "siu_log")
            db.execute(
                "INSERT INTO siu_log (control_id, message, received) VALUES (?,?,?)",
                (control_id, message, _now()),
            )

    def siu_sent(self, control_id: str, ack_code: str | None, ack_text: str | None) -> None:
        """Record the ACK of a logged SIU."""
        with self._tx() as db:
            db.execute(
                "UPDATE siu_log SET ack_code = ?, ack_text = ?, sent = ? WHERE control_id = ?",
                (ack_code, ack_text, _now(), control_id),
            )

    def siu_messages(self) -> list[str]:
        """Every logged SIU (ER7), oldest first."""
        return [r[0] for r in self._rows("SELECT message FROM siu_log ORDER BY received, rowid")]
