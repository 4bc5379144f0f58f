"""Run a sync job: local table -> FHIR server, with conflicts queued in SQLite (I/O).

:class:`SyncJob` fetches the destination's resources for the keys of the local
rows (token searches ``identifier=system|value``, OR-ed in chunks), plans with
:func:`kit.hub.sync.plan_sync`, then writes each planned create/update through a
client with ``search``/``create``/``update`` (:class:`FhirClientLike`, which
:class:`kit.fhir.client.FhirClient` satisfies). Updates are version-aware
(``If-Match`` with the version read), and each write counts as done only when
the stored resource the server returns carries the mapped values (else
``error`` with the differences). A failed write is ``error`` for that record;
the others go on.

With ``Strategy.MANUAL`` conflicts go to a :class:`ConflictStore` (SQLite) for a
person; :meth:`SyncJob.resolve` applies the choice (``"local"`` or ``"remote"``).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson
import polars as pl

from kit.errors import InvalidInputError, KitError, StoreError
from kit.hub.sync import (
    Action,
    Conflict,
    PlannedAction,
    Strategy,
    SyncReport,
    apply_values,
    plan_sync,
)
from kit.hub.syncmap import ResourceMapping, get_path

__all__ = ["ConflictStore", "FhirClientLike", "SyncJob"]


class FhirClientLike(Protocol):
    """What a sync needs from a FHIR client (kit.fhir.client.FhirClient has it)."""

    def search(self, resource_type: str, params: Any = None, /) -> Iterable[dict[str, Any]]:
        """Resources matching the search, all pages."""
        ...

    def create(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Create; return the stored resource."""
        ...

    def update(self, resource: Mapping[str, Any], *, if_match: str | int | None = None) -> dict[str, Any]:
        """Update by id; return the stored resource."""
        ...


class ConflictStore:
    """Conflicts waiting for a person, in SQLite (``":memory:"`` for a throwaway store).

    Columns: conflict_id, resource_type, key, resource_id, fields (JSON: remote
    path -> [local, remote]), row (JSON), status (open/local/remote).
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            with self._db:
                self._db.execute("""CREATE TABLE IF NOT EXISTS conflicts (
                    conflict_id TEXT PRIMARY KEY, resource_type TEXT NOT NULL, key TEXT NOT NULL,
                    resource_id TEXT, fields TEXT NOT NULL, row TEXT NOT NULL,
                    status TEXT NOT NULL DEFAULT 'open',
                    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))""")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open conflict store {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def add(self, conflict: Conflict) -> None:
        """Queue a conflict (committed before returning)."""
        fields = {p: list(v) for p, v in conflict.fields.items()}
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT INTO conflicts (conflict_id, resource_type, key, resource_id, fields, row) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (conflict.conflict_id, conflict.resource_type, conflict.key, conflict.resource_id,
                     orjson.dumps(fields).decode(), orjson.dumps(conflict.row, default=str).decode()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot queue conflict: {exc}") from exc

    def get(self, conflict_id: str) -> tuple[Conflict, str]:
        """The conflict and its status; unknown id raises InvalidInputError."""
        with self._lock:
            found = self._db.execute(
                "SELECT resource_type, key, resource_id, fields, row, status FROM conflicts "
                "WHERE conflict_id = ?", (conflict_id,)).fetchone()
        if found is None:
            raise InvalidInputError(f"no conflict {conflict_id!r}")
        rtype, key, rid, fields, row, status = found
        parsed = {p: (v[0], v[1]) for p, v in orjson.loads(fields).items()}
        return Conflict(conflict_id, rtype, key, rid, parsed, orjson.loads(row)), status

    def set_status(self, conflict_id: str, status: str) -> None:
        """Mark a conflict resolved (``local`` / ``remote``)."""
        try:
            with self._lock, self._db:
                self._db.execute("UPDATE conflicts SET status = ? WHERE conflict_id = ?",
                                 (status, conflict_id))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot update conflict {conflict_id}: {exc}") from exc

    def frame(self, status: str | None = "open") -> pl.DataFrame:
        """The queued conflicts (``status=None``: all) as a frame."""
        sql = "SELECT conflict_id, resource_type, key, resource_id, fields, status, created FROM conflicts"
        args: tuple[str, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created", args).fetchall()
        return pl.DataFrame(rows, orient="row", schema={
            "conflict_id": pl.Utf8, "resource_type": pl.Utf8, "key": pl.Utf8, "resource_id": pl.Utf8,
            "fields": pl.Utf8, "status": pl.Utf8, "created": pl.Utf8})

    def __enter__(self) -> ConflictStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class SyncJob:
    """Push a local table into FHIR resources following a :class:`ResourceMapping`.

    Parameters
    ----------
    mapping : ResourceMapping
    strategy : Strategy
        How differences are settled (see :mod:`kit.hub.sync`).
    merge_rule : Strategy
        For ``MERGE``: who wins fields that differ.
    conflicts : ConflictStore, optional
        Where ``MANUAL`` conflicts are queued (default: an in-memory store).
    validate : bool
        Validate each write (required fields, FHIR R4) before sending.
    chunk : int
        Keys per identifier search.
    """

    def __init__(self, mapping: ResourceMapping, strategy: Strategy | str = Strategy.SOURCE_WINS, *,
                 merge_rule: Strategy | str = Strategy.SOURCE_WINS, conflicts: ConflictStore | None = None,
                 validate: bool = True, chunk: int = 50) -> None:
        self.mapping = mapping
        self.strategy = Strategy(strategy)
        self.merge_rule = Strategy(merge_rule)
        self.conflicts = conflicts if conflicts is not None else ConflictStore()
        self.validate = validate
        if chunk < 1:
            raise InvalidInputError("chunk must be >= 1")
        self.chunk = chunk

    def fetch(self, client: FhirClientLike, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The destination's resources with these keys."""
        system = self.mapping.key_system
        wanted = sorted({str(k) for k in keys})
        out: list[dict[str, Any]] = []
        for part in _chunks(wanted, self.chunk):
            token = ",".join(f"{system}|{_escape(k)}" for k in part)
            out.extend(client.search(self.mapping.resource_type, {"identifier": token}))
        return out

    def plan(self, local: pl.DataFrame, client: FhirClientLike) -> list[PlannedAction]:
        """Fetch and plan, writing nothing."""
        if self.mapping.key_column not in local.columns:
            raise InvalidInputError(f"local table has no key column {self.mapping.key_column!r}")
        keys = [k for k in local.get_column(self.mapping.key_column).cast(pl.Utf8).to_list() if k]
        remote = self.fetch(client, keys)
        return plan_sync(self.mapping, local, remote, self.strategy, merge_rule=self.merge_rule,
                         validate=self.validate)

    def run(self, local: pl.DataFrame, client: FhirClientLike) -> SyncReport:
        """Plan and execute; one report row per local row."""
        done = [self._execute(a, client) for a in self.plan(local, client)]
        return SyncReport.from_actions(done)

    def pull(self, client: FhirClientLike, keys: Iterable[str]) -> pl.DataFrame:
        """Local-shaped rows (key column + fields read from FHIR) for these keys."""
        rows = [self.mapping.from_resource(r) for r in self.fetch(client, keys)]
        return pl.DataFrame(rows) if rows else pl.DataFrame(
            schema={self.mapping.key_column: pl.Utf8,
                    **{f.local: pl.Utf8 for f in self.mapping.fields if f.reads_remote}})

    def resolve(self, conflict_id: str, choice: str, client: FhirClientLike) -> PlannedAction:
        """Settle a queued conflict: ``"local"`` writes the row's values, ``"remote"`` keeps FHIR's."""
        if choice not in ("local", "remote"):
            raise InvalidInputError(f"choice must be 'local' or 'remote', not {choice!r}")
        conflict, status = self.conflicts.get(conflict_id)
        if status != "open":
            raise InvalidInputError(f"conflict {conflict_id} is already resolved ({status})")
        if choice == "remote":
            self.conflicts.set_status(conflict_id, "remote")
            return PlannedAction(conflict.key, Action.SKIPPED, "resolved: remote kept",
                                 resource_id=conflict.resource_id)
        current = self.fetch(client, [conflict.key])
        remote = next((r for r in current if self.mapping.key_of(r) == conflict.key), None)
        if remote is None:
            raise InvalidInputError(f"the resource of conflict {conflict_id} is gone")
        values = {p: lv for p, (lv, _) in conflict.fields.items()}
        planned = PlannedAction(conflict.key, Action.UPDATED, "resolved: local written",
                                apply_values(remote, values), remote.get("id"),
                                (remote.get("meta") or {}).get("versionId"))
        done = self._execute(planned, client)
        if done.action is Action.UPDATED:
            self.conflicts.set_status(conflict_id, "local")
        return done

    def _execute(self, action: PlannedAction, client: FhirClientLike) -> PlannedAction:
        if action.action is Action.CONFLICT:
            assert action.conflict is not None
            self.conflicts.add(action.conflict)
            return action
        if action.action not in (Action.CREATED, Action.UPDATED):
            return action
        assert action.resource is not None
        try:
            if action.action is Action.CREATED:
                stored = client.create(action.resource)
            else:
                stored = client.update(action.resource, if_match=action.version)
        except KitError as exc:
            return PlannedAction(action.key, Action.ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0],
                                 resource_id=action.resource_id)
        differences = [f"{f.remote}: sent {get_path(action.resource, f.remote)!r}, "
                       f"stored {get_path(stored, f.remote)!r}"
                       for f in self.mapping.fields if f.writes_remote
                       and get_path(action.resource, f.remote) != get_path(stored, f.remote)]
        if differences:
            return PlannedAction(action.key, Action.ERROR, "read-back differs: " + "; ".join(differences),
                                 resource_id=stored.get("id"))
        return _replace(action, resource=stored, resource_id=stored.get("id"))


def _escape(value: str) -> str:
    """Escape FHIR search special characters in a token value."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _replace(action: PlannedAction, **changes: Any) -> PlannedAction:
    return dataclasses.replace(action, **changes)
