"""SQLite storage of the embedded FHIR server: versioned resources, history, search index.

Written by hand (no library stores FHIR in SQLite): one table of current
resources, one of every version (history/vread), and the search index built by
:func:`kit.fhir.server_search.index_rows`. The database runs in WAL mode with
``synchronous=FULL``, so a write is on disk when its transaction commits, and
the server answers only after that. Every write (and a whole transaction
Bundle) runs in one ``BEGIN IMMEDIATE`` transaction under a lock, so
concurrent writers get consecutive versions and a failing Bundle entry rolls
back the rest.

Failures are raised as :class:`~kit.errors.OperationOutcomeError` carrying the
HTTP status (404, 409, 410, 412 ...) and OperationOutcome issues;
invalid resources as :class:`~kit.errors.FhirValidationError`; SQLite failures
as :class:`~kit.errors.StoreError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from kit.errors import FhirValidationError, OperationOutcomeError, StoreError
from kit.fhir.resources import issue, validate
from kit.fhir.server_limits import MAX_INCLUDED, check_id
from kit.fhir.server_search import SearchQuery, build_order, build_where, index_rows, parse_search

__all__ = ["FhirStore", "SearchResult", "Version", "fail"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0, json BLOB NOT NULL, PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL,
    deleted INTEGER NOT NULL, method TEXT NOT NULL, json BLOB NOT NULL,
    PRIMARY KEY (type, id, version));
CREATE INDEX IF NOT EXISTS history_time ON history (last_updated);
CREATE TABLE IF NOT EXISTS idx (
    type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
    system TEXT, value TEXT, lo TEXT, hi TEXT);
DROP INDEX IF EXISTS idx_resource;
CREATE INDEX IF NOT EXISTS idx_owner ON idx (type, id, param);
CREATE INDEX IF NOT EXISTS idx_value ON idx (type, param, value);
CREATE INDEX IF NOT EXISTS idx_date ON idx (type, param, lo, hi);
"""


def fail(status: int, code: str, message: str, expression: str | None = None) -> OperationOutcomeError:
    """An :class:`OperationOutcomeError` for the HTTP layer to turn into a response."""
    return OperationOutcomeError(message, status_code=status,
                                 issues=[issue("error", code, message, expression)])


@dataclasses.dataclass(frozen=True)
class Version:
    """One stored version of a resource (``resource`` is None when it is a deletion)."""

    type: str
    id: str
    version: int
    last_updated: str
    method: str
    resource: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A page of matches, the total, and the ``_include``/``_revinclude`` resources."""

    matches: list[dict[str, Any]]
    total: int
    included: list[dict[str, Any]]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _loads(blob: bytes | str) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(blob)
    return out


def _validated(resource: Mapping[str, Any], rtype: str) -> dict[str, Any]:
    """:func:`validate` after checking the type name first (validate caches every name it sees)."""
    if isinstance(resource, Mapping) and resource.get("resourceType") != rtype:
        got = resource.get("resourceType")
        shown = got[:64] if isinstance(got, str) else type(got).__name__
        raise FhirValidationError(f"expected a {rtype} resource, got {shown!r}", issues=[
            issue("error", "invalid", f"resourceType {shown!r} does not match {rtype!r}", "resourceType")])
    return validate(resource, resource_type=rtype)


def _content(resource: Mapping[str, Any]) -> dict[str, Any]:
    """A resource without the server-managed meta (for "unchanged?" comparisons)."""
    out = dict(resource)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


class FhirStore:
    """Versioned FHIR resources in one SQLite file.

    Parameters
    ----------
    db_path : Path
        The database file (created with its folder if missing).
    """

    def __init__(self, db_path: Path | str) -> None:
        self.path = Path(db_path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                         timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open FHIR database {self.path}: {exc}") from exc
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                yield self._conn
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"FHIR database write failed: {exc}") from exc
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"FHIR database read failed: {exc}") from exc

    # -- reads ---------------------------------------------------------------------------------

    def read(self, rtype: str, rid: str) -> dict[str, Any]:
        """The current version of a resource (404 if unknown, 410 if deleted)."""
        with self._reading() as conn:
            row = conn.execute("SELECT deleted, json FROM resources WHERE type = ? AND id = ?",
                               (rtype, rid)).fetchone()
        if row is None:
            raise fail(404, "not-found", f"{rtype}/{rid} is not known")
        if row[0]:
            raise fail(410, "deleted", f"{rtype}/{rid} has been deleted")
        return _loads(row[1])

    def vread(self, rtype: str, rid: str, version: int) -> dict[str, Any]:
        """One version of a resource (404 if there is no such version, 410 if it is a deletion)."""
        with self._reading() as conn:
            row = conn.execute("SELECT deleted, json FROM history WHERE type = ? AND id = ? AND version = ?",
                               (rtype, rid, version)).fetchone()
        if row is None:
            raise fail(404, "not-found", f"{rtype}/{rid} has no version {version}")
        if row[0]:
            raise fail(410, "deleted", f"version {version} of {rtype}/{rid} is a deletion")
        return _loads(row[1])

    def history(self, rtype: str | None = None, rid: str | None = None, *, since: str | None = None,
                count: int = 50, offset: int = 0) -> tuple[list[Version], int]:
        """Versions newest first (of one resource, one type, or everything) and their total."""
        clauses, args = ["1 = 1"], []
        if rtype:
            clauses.append("type = ?")
            args.append(rtype)
        if rid:
            clauses.append("id = ?")
            args.append(rid)
        if since:
            clauses.append("last_updated >= ?")
            args.append(since)
        where = " AND ".join(clauses)
        with self._reading() as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM history WHERE {where}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT type, id, version, last_updated, method, deleted, json FROM history WHERE {where} "
                "ORDER BY last_updated DESC, version DESC LIMIT ? OFFSET ?",
                [*args, count, offset]).fetchall()
        if rid and total == 0:
            raise fail(404, "not-found", f"{rtype}/{rid} is not known")
        return [Version(t, i, v, lu, m, None if d else _loads(j)) for t, i, v, lu, m, d, j in rows], total

    def search(self, query: SearchQuery) -> SearchResult:
        """Run a parsed search: one page of matches, the total, and included resources."""
        where, args = build_where(query)
        order, order_args = build_order(query)
        with self._reading() as conn:
            total = conn.execute(f"SELECT COUNT(*) FROM resources r WHERE {where}", args).fetchone()[0]
            if query.summary_count or query.count == 0:
                return SearchResult([], total, [])
            rows = conn.execute(
                f"SELECT r.id, r.json FROM resources r WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, *order_args, query.count, query.offset]).fetchall()
            matches = [_loads(j) for _, j in rows]
            ids = [i for i, _ in rows]
            included = self._included(conn, query, ids) if ids else []
        return SearchResult(matches, total, included)

    def _included(self, conn: sqlite3.Connection, query: SearchQuery, ids: list[str]) -> list[dict[str, Any]]:
        seen = {(query.resource_type, i) for i in ids}
        out: list[dict[str, Any]] = []
        marks = ",".join("?" * len(ids))

        def too_many() -> OperationOutcomeError:
            return fail(400, "too-costly", f"_include/_revinclude would add more than {MAX_INCLUDED} "
                        "resources to one page; lower _count")

        for inc in query.includes:
            if inc.source_type != query.resource_type:
                continue
            targets = conn.execute(
                f"SELECT DISTINCT system, value FROM idx WHERE type = ? AND param = ? AND id IN ({marks}) "
                "LIMIT ?", [inc.source_type, inc.param, *ids, MAX_INCLUDED + 1]).fetchall()
            if len(targets) > MAX_INCLUDED:
                raise too_many()
            for ttype, tid in targets:
                if ttype is None or (inc.target_type and ttype != inc.target_type) or (ttype, tid) in seen:
                    continue
                row = conn.execute("SELECT json FROM resources WHERE type = ? AND id = ? AND deleted = 0",
                                   (ttype, tid)).fetchone()
                if row:
                    seen.add((ttype, tid))
                    out.append(_loads(row[0]))
            if len(out) > MAX_INCLUDED:
                raise too_many()
        for rev in query.revincludes:
            if rev.target_type and rev.target_type != query.resource_type:
                continue
            rows = conn.execute(
                "SELECT DISTINCT r.type, r.id, r.json FROM idx i JOIN resources r ON r.type = i.type "
                f"AND r.id = i.id WHERE i.type = ? AND i.param = ? AND i.system = ? AND i.value IN ({marks}) "
                "AND r.deleted = 0 ORDER BY r.rowid LIMIT ?",
                [rev.source_type, rev.param, query.resource_type, *ids, MAX_INCLUDED + 1]).fetchall()
            if len(rows) > MAX_INCLUDED:
                raise too_many()
            for t, i, j in rows:
                if (t, i) not in seen:
                    seen.add((t, i))
                    out.append(_loads(j))
            if len(out) > MAX_INCLUDED:
                raise too_many()
        return out

    def find(self, rtype: str, query_string: str) -> list[dict[str, Any]]:
        """Resources matching a conditional query string (``identifier=sys|val``), up to 2."""
        from urllib.parse import parse_qsl

        query = parse_search(rtype, [*parse_qsl(query_string, keep_blank_values=True), ("_count", "2")])
        return self.search(query).matches

    def iter_resources(self, types: list[str] | None = None, *, since: str | None = None,
                       patients: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """``(type, json)`` of current resources, for Bulk Data export.

        ``patients`` (ids) restricts to those Patients and resources referencing them.
        """
        clauses, args = ["r.deleted = 0"], []
        if types:
            clauses.append(f"r.type IN ({','.join('?' * len(types))})")
            args.extend(types)
        if since:
            clauses.append("r.last_updated >= ?")
            args.append(since)
        if patients is not None:
            marks = ",".join("?" * len(patients))
            clauses.append(f"((r.type = 'Patient' AND r.id IN ({marks})) OR EXISTS (SELECT 1 FROM idx i "
                           "WHERE i.type = r.type AND i.id = r.id AND i.system = 'Patient' "
                           f"AND i.lo IS NULL AND i.value IN ({marks})))")
            args.extend([*patients, *patients])
        with self._reading() as conn:
            rows = conn.execute(f"SELECT r.type, r.json FROM resources r WHERE {' AND '.join(clauses)} "
                                "ORDER BY r.type, r.rowid", args).fetchall()
        for t, j in rows:
            yield t, bytes(j)

    # -- writes (call inside transaction()) ---------------------------------------------------

    def _current(self, conn: sqlite3.Connection, rtype: str, rid: str) -> tuple[int, bool, bytes] | None:
        row = conn.execute("SELECT version, deleted, json FROM resources WHERE type = ? AND id = ?",
                           (rtype, rid)).fetchone()
        return (int(row[0]), bool(row[1]), bytes(row[2])) if row else None

    def _write(self, conn: sqlite3.Connection, rtype: str, rid: str, resource: dict[str, Any] | None,
               method: str, version: int) -> dict[str, Any] | None:
        # the one place every write passes: an id outside the FHIR grammar is never stored (and so
        # never reaches a Location header after the commit)
        check_id(rid, f"{rtype}.id")
        now = _now()
        if resource is not None:
            resource = {**resource, "id": rid}
            resource["meta"] = {**(resource.get("meta") or {}), "versionId": str(version), "lastUpdated": now}
            blob = orjson.dumps(resource)
        else:
            blob = b"{}"
        deleted = int(resource is None)
        conn.execute(
            "INSERT INTO resources (type, id, version, last_updated, deleted, json) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, "
            "last_updated = excluded.last_updated, deleted = excluded.deleted, json = excluded.json",
            (rtype, rid, version, now, deleted, blob))
        conn.execute("INSERT INTO history (type, id, version, last_updated, deleted, method, json) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)", (rtype, rid, version, now, deleted, method, blob))
        conn.execute("DELETE FROM idx WHERE type = ? AND id = ?", (rtype, rid))
        if resource is not None:
            conn.executemany("INSERT INTO idx (type, id, param, system, value, lo, hi) "
                             "VALUES (?,?,?,?,?,?,?)",
                             [(rtype, rid, *row) for row in index_rows(resource)])
        return resource

    def create_in(self, conn: sqlite3.Connection, resource: Mapping[str, Any], *, rtype: str,
                  rid: str | None = None) -> dict[str, Any]:
        """Validate and store a new resource (server-assigned id unless ``rid``)."""
        checked = _validated(resource, rtype)
        rid = rid or str(uuid.uuid4())
        if self._current(conn, rtype, rid) is not None:
            raise fail(409, "duplicate", f"{rtype}/{rid} already exists")
        out = self._write(conn, rtype, rid, checked, "POST", 1)
        assert out is not None
        return out

    def update_in(self, conn: sqlite3.Connection, resource: Mapping[str, Any], *, rtype: str, rid: str,
                  if_match: int | None = None, skip_unchanged: bool = False) -> tuple[dict[str, Any], bool]:
        """Validate and store a new version (or create with this id); return it and whether it is new."""
        checked = _validated(resource, rtype)
        if checked.get("id") not in (None, rid):
            raise fail(400, "invalid", f"resource id {checked.get('id')!r} does not match URL id {rid!r}",
                       "id")
        current = self._current(conn, rtype, rid)
        if if_match is not None and (current is None or current[0] != if_match):
            have = "no version" if current is None else f"version {current[0]}"
            raise fail(412, "conflict", f"If-Match version {if_match} does not match {rtype}/{rid} ({have})")
        if current is None:
            out = self._write(conn, rtype, rid, checked, "PUT", 1)
            assert out is not None
            return out, True
        same = not current[1] and _content(_loads(current[2])) == _content({**checked, "id": rid})
        if skip_unchanged and same:
            return _loads(current[2]), False
        out = self._write(conn, rtype, rid, checked, "PUT", current[0] + 1)
        assert out is not None
        return out, current[1]

    def delete_in(self, conn: sqlite3.Connection, rtype: str, rid: str) -> bool:
        """Mark a resource deleted (a new version); False if it was already deleted."""
        current = self._current(conn, rtype, rid)
        if current is None:
            raise fail(404, "not-found", f"{rtype}/{rid} is not known")
        if current[1]:
            return False
        self._write(conn, rtype, rid, None, "DELETE", current[0] + 1)
        return True

    # -- convenience (one transaction each) ---------------------------------------------------

    def create(self, resource: Mapping[str, Any], *, rtype: str, if_none_exist: str | None = None
               ) -> tuple[dict[str, Any], bool]:
        """Create (conditionally); return the resource and True if it was created."""
        with self.transaction() as conn:
            if if_none_exist:
                found = self.find(rtype, if_none_exist)
                if len(found) > 1:
                    raise fail(412, "multiple-matches", f"If-None-Exist {if_none_exist!r} matches several")
                if found:
                    return found[0], False
            return self.create_in(conn, resource, rtype=rtype), True

    def update(self, resource: Mapping[str, Any], *, rtype: str, rid: str, if_match: int | None = None
               ) -> tuple[dict[str, Any], bool]:
        """Update (or create with this id); return the resource and True if it was created."""
        with self.transaction() as conn:
            return self.update_in(conn, resource, rtype=rtype, rid=rid, if_match=if_match)

    def delete(self, rtype: str, rid: str) -> bool:
        """Delete; False if it was already deleted."""
        with self.transaction() as conn:
            return self.delete_in(conn, rtype, rid)

    def load(self, resources: list[dict[str, Any]]) -> int:
        """Store resources with their ids in one transaction, skipping unchanged ones; count written."""
        written = 0
        with self.transaction() as conn:
            for r in resources:
                if not r.get("id"):
                    raise FhirValidationError("a preloaded resource needs an id",
                                              issues=[issue("error", "required", "id is missing", "id")])
                before = self._current(conn, r["resourceType"], r["id"])
                out, _ = self.update_in(conn, r, rtype=r["resourceType"], rid=r["id"], skip_unchanged=True)
                written += before is None or str(before[0]) != out["meta"]["versionId"]
        return written

    def run(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(conn)`` in one transaction (all or nothing) and return its result."""
        with self.transaction() as conn:
            return work(conn)
