"""Batch and transaction Bundles for the embedded FHIR server (I/O through :class:`FhirStore`).

Written by hand after FHIR R4 http.html#transaction (no library executes
Bundles): a ``transaction`` runs every entry in one SQLite transaction, in the
order DELETE, POST, PUT, GET, after giving each ``urn:uuid`` fullUrl its
server id and rewriting every reference to it (and resolving conditional
references ``Type?query``); any failing entry rolls back all of them and the
response is that entry's error. A ``batch`` runs each entry on its own and
reports each outcome in the ``batch-response``.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kit.errors import FhirValidationError, KitError, OperationOutcomeError
from kit.fhir.resources import issue, operation_outcome
from kit.fhir.server_limits import MAX_BUNDLE_ENTRIES, MAX_BUNDLE_READ, check_id, etag_version, is_type
from kit.fhir.server_store import FhirStore, fail

__all__ = ["Getter", "process_bundle"]

log = logging.getLogger("kit.fhir.server")

#: Answers a GET entry: ``(url relative to the base) -> (status, resource or Bundle)``.
Getter = Callable[[str], tuple[int, dict[str, Any]]]

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclasses.dataclass
class _Entry:
    index: int
    method: str
    url: str
    resource: dict[str, Any] | None
    full_url: str | None
    if_none_exist: str | None
    if_match: int | None
    rtype: str = ""
    rid: str | None = None
    query: str | None = None
    new_id: str | None = None


def _optional_str(req: Mapping[str, Any], key: str, i: int) -> str | None:
    value = req.get(key)
    if value is not None and not isinstance(value, str):
        raise fail(400, "structure", f"entry[{i}]: request.{key} must be a string, "
                   f"got {type(value).__name__}", f"Bundle.entry[{i}].request.{key}")
    return value or None


def _entry(i: int, raw: Any, base_url: str) -> _Entry:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("request"), Mapping):
        raise fail(400, "invalid", f"entry[{i}] has no request", f"Bundle.entry[{i}].request")
    req = raw["request"]
    method = (_optional_str(req, "method", i) or "").upper()
    url = _optional_str(req, "url", i) or ""
    if method not in _ORDER or not url:
        raise fail(400, "invalid", f"entry[{i}]: request needs a method (GET POST PUT DELETE) and url",
                   f"Bundle.entry[{i}].request")
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise fail(400, "structure", f"entry[{i}]: fullUrl must be a string, got {type(full_url).__name__}",
                   f"Bundle.entry[{i}].fullUrl")
    if_match = _optional_str(req, "ifMatch", i)
    if url.startswith(base_url):
        url = url[len(base_url):]
    url = url.lstrip("/")
    resource = raw.get("resource")
    if method in ("POST", "PUT") and not isinstance(resource, Mapping):
        raise fail(400, "required", f"entry[{i}]: {method} needs a resource", f"Bundle.entry[{i}].resource")
    e = _Entry(i, method, url, dict(resource) if isinstance(resource, Mapping) else None, full_url,
               _optional_str(req, "ifNoneExist", i),
               etag_version(if_match, f"Bundle.entry[{i}].request.ifMatch") if if_match else None)
    path, _, e.query = url.partition("?")
    parts = path.split("/")
    e.rtype = parts[0]
    if not e.query:
        e.query = None
    if method != "GET":
        if not is_type(e.rtype):
            raise fail(400, "not-supported", f"entry[{i}]: unknown resource type {e.rtype!r}",
                       f"Bundle.entry[{i}].request.url")
        if len(parts) > 2 or (method in ("PUT", "DELETE") and len(parts) == 1 and e.query is None):
            raise fail(400, "invalid", f"entry[{i}]: {method} {url} is not supported",
                       f"Bundle.entry[{i}].request.url")
        e.rid = check_id(parts[1], f"Bundle.entry[{i}].request.url") if len(parts) == 2 else None
    return e


def _rewrite(node: Any, refs: Mapping[str, str], resolve: Callable[[str], str]) -> Any:
    if isinstance(node, list):
        return [_rewrite(x, refs, resolve) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "reference" and isinstance(v, str):
            out[k] = refs.get(v) or (resolve(v) if "?" in v else v)
        else:
            out[k] = _rewrite(v, refs, resolve)
    return out


def _response(status: int, resource: Mapping[str, Any] | None = None, *, rtype: str = "",
              rid: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"response": {"status": _STATUS_TEXT.get(status, str(status))}}
    if resource is not None and "meta" in resource:
        version = resource["meta"].get("versionId")
        out["response"]["location"] = f"{rtype}/{rid}/_history/{version}"
        out["response"]["etag"] = f'W/"{version}"'
        out["response"]["lastModified"] = resource["meta"].get("lastUpdated")
    if resource is not None:
        out["resource"] = dict(resource)
    return out


def _error_response(exc: OperationOutcomeError | FhirValidationError) -> dict[str, Any]:
    status = exc.status_code if isinstance(exc, OperationOutcomeError) and exc.status_code else 400
    return {"response": {"status": str(status), "outcome": operation_outcome(exc.issues)}}


def _execute(store: FhirStore, conn: sqlite3.Connection, e: _Entry, get: Getter) -> dict[str, Any]:
    if e.method == "GET":
        status, body = get(e.url)
        return {"resource": body, "response": {"status": _STATUS_TEXT.get(status, str(status))}}
    if e.method == "DELETE":
        rid = e.rid
        if rid is None:
            found = store.find(e.rtype, e.query or "")
            if len(found) > 1:
                raise fail(412, "multiple-matches", f"conditional delete {e.url} matches several")
            if not found:
                return _response(204)
            rid = found[0]["id"]
        store.delete_in(conn, e.rtype, rid)
        return _response(204)
    assert e.resource is not None
    if e.method == "POST":
        if e.rid is not None:  # resolved by If-None-Exist to an existing resource
            return _response(200, store.read(e.rtype, e.rid), rtype=e.rtype, rid=e.rid)
        out = store.create_in(conn, {k: v for k, v in e.resource.items() if k != "id"}, rtype=e.rtype,
                              rid=e.new_id)
        return _response(201, out, rtype=e.rtype, rid=out["id"])
    rid = e.rid
    if rid is None:  # conditional update
        found = store.find(e.rtype, e.query or "")
        if len(found) > 1:
            raise fail(412, "multiple-matches", f"conditional update {e.url} matches several")
        rid = found[0]["id"] if found else (e.resource.get("id") or str(uuid.uuid4()))
    out, created = store.update_in(conn, e.resource, rtype=e.rtype, rid=rid, if_match=e.if_match)
    return _response(201 if created else 200, out, rtype=e.rtype, rid=rid)


def _within_budget(get: Getter) -> Getter:
    """``get``, failing (400 too-costly) once the Bundle's GET entries have returned more than
    :data:`MAX_BUNDLE_READ` resources (100 entries of ``Patient?_count=1000`` in a 7.8 KB batch
    answered 76 MB; a transaction held the store meanwhile). One search page more at most."""
    left = MAX_BUNDLE_READ

    def one(url: str) -> tuple[int, dict[str, Any]]:
        nonlocal left
        if left < 0:
            raise _too_costly()
        status, body = get(url)
        left -= len(body.get("entry") or ()) if body.get("resourceType") == "Bundle" else 1
        if left < 0:
            raise _too_costly()
        return status, body

    return one


def _too_costly() -> OperationOutcomeError:
    return fail(400, "too-costly", f"the Bundle's GET entries return more than {MAX_BUNDLE_READ:,} resources")


def _if_none_exist(store: FhirStore, e: _Entry) -> None:
    """Resolve a POST entry's ifNoneExist: an existing match becomes ``e.rid`` (412 if several)."""
    if e.method != "POST" or not e.if_none_exist:
        return
    found = store.find(e.rtype, e.if_none_exist)
    if len(found) > 1:
        raise fail(412, "multiple-matches",
                   f"entry[{e.index}]: ifNoneExist {e.if_none_exist!r} matches several")
    if found:
        e.rid = found[0]["id"]


def _conditional_ref(store: FhirStore, ref: str) -> str:
    rtype, _, query = ref.partition("?")
    found = store.find(rtype, query)
    if len(found) != 1:
        raise fail(412 if found else 404, "not-found" if not found else "multiple-matches",
                   f"conditional reference {ref!r} matches {len(found)} resources")
    return f"{rtype}/{found[0]['id']}"


def process_bundle(store: FhirStore, bundle: Mapping[str, Any], *, base_url: str, get: Getter
                   ) -> dict[str, Any]:
    """Execute a ``batch`` or ``transaction`` Bundle; return the response Bundle.

    Raises
    ------
    OperationOutcomeError
        The Bundle is malformed, or (transaction) an entry failed: nothing was stored.
    FhirValidationError
        (transaction) an entry's resource is invalid: nothing was stored.
    """
    get = _within_budget(get)
    btype = bundle.get("type")
    if bundle.get("resourceType") != "Bundle" or btype not in ("batch", "transaction"):
        raise fail(400, "invalid", "POST to the base needs a Bundle of type batch or transaction",
                   "Bundle.type")
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise fail(400, "structure", "Bundle.entry must be a list", "Bundle.entry")
    if len(raw_entries) > MAX_BUNDLE_ENTRIES:
        raise fail(400, "too-costly", f"a Bundle may have at most {MAX_BUNDLE_ENTRIES} entries",
                   "Bundle.entry")
    base = base_url.rstrip("/") + "/"
    if btype == "batch":
        responses = []
        for i, raw in enumerate(raw_entries):
            try:
                entry = _entry(i, raw, base)

                def one(conn: sqlite3.Connection, entry: _Entry = entry) -> dict[str, Any]:
                    _if_none_exist(store, entry)  # in the entry's own transaction: no race with a twin
                    return _execute(store, conn, entry, get)

                responses.append(store.run(one))
            except (OperationOutcomeError, FhirValidationError) as exc:
                responses.append(_error_response(exc))
            except Exception as exc:  # noqa: BLE001 - earlier entries are committed: report, do not 500
                log.error("FHIR batch entry %d failed", i, exc_info=exc)
                message = str(exc) if isinstance(exc, KitError) else f"internal error ({type(exc).__name__})"
                responses.append({"response": {"status": "500", "outcome": operation_outcome(
                    [issue("error", "exception", f"entry[{i}]: {message}")])}})
        return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "batch-response",
                "entry": responses}

    entries = [_entry(i, raw, base) for i, raw in enumerate(raw_entries)]

    def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        refs: dict[str, str] = {}
        for e in entries:
            if e.method == "POST":
                _if_none_exist(store, e)
                if e.rid is None:
                    e.new_id = str(uuid.uuid4())
                target = f"{e.rtype}/{e.rid or e.new_id}"
            elif e.method == "PUT" and e.rid:
                target = f"{e.rtype}/{e.rid}"
            else:
                continue
            if e.full_url:  # a string (checked in _entry)
                refs[e.full_url] = target
                if e.full_url.startswith(base):
                    refs[e.full_url[len(base):]] = target
        for e in entries:
            if e.resource is not None:
                e.resource = _rewrite(e.resource, refs, lambda r: _conditional_ref(store, r))
        results: dict[int, dict[str, Any]] = {}
        for e in sorted(entries, key=lambda x: (_ORDER[x.method], x.index)):
            try:
                results[e.index] = _execute(store, conn, e, get)
            except OperationOutcomeError as exc:
                raise OperationOutcomeError(f"entry[{e.index}]: {exc}", issues=exc.issues,
                                            status_code=exc.status_code) from exc
            except FhirValidationError as exc:
                raise FhirValidationError(f"entry[{e.index}]: {exc}", issues=[
                    {**i, "expression": [f"Bundle.entry[{e.index}].resource" + x.partition(".")[1]
                                         + x.partition(".")[2] for x in i.get("expression", [])]}
                    for i in exc.issues]) from exc
        return [results[i] for i in range(len(entries))]

    responses = store.run(work)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "transaction-response",
            "entry": responses}
