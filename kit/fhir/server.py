"""The embedded FHIR R4 server: FastAPI over SQLite, for the offline stack and for tests.

FastAPI/uvicorn serve HTTP; storage, search, Bundles and Bulk Data export are
in :mod:`kit.fhir.server_store`, :mod:`kit.fhir.server_search`,
:mod:`kit.fhir.server_bundle` and :mod:`kit.fhir.server_export`, written by hand
because no library provides a small embeddable FHIR server.

Supported (see ``GET [base]/metadata``): read, vread, create (conditional with
``If-None-Exist``), update (``If-Match`` -> 412 on mismatch; conditional
``PUT [type]?query``), delete, history (instance, type, system), search
(``GET [type]?`` and ``POST [type]/_search``), batch and transaction Bundles,
``$export`` at system, Patient and Group level. Every write is validated by
:func:`kit.fhir.resources.validate` (400 with an OperationOutcome) and answered
only after it is committed to disk.

>>> with EmbeddedFhirServer(tmp / "fhir.db") as server:   # doctest: +SKIP
...     httpx.get(server.base_url + "/metadata")
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kit._http_serve import Served, ServingThread, bind
from kit.errors import FhirValidationError, KitError, OperationOutcomeError
from kit.fhir._audit import FhirAuditMiddleware
from kit.fhir.resources import issue, operation_outcome
from kit.fhir.server_bundle import process_bundle
from kit.fhir.server_export import ExportManager
from kit.fhir.server_http import GuardMiddleware, outcome_response, read_body
from kit.fhir.server_limits import (
    MAX_FORM_BODY,
    MAX_OFFSET,
    MAX_SEARCH_PARAMS,
    MAX_VERSION,
    ascii_int,
    check_containers,
    check_depth,
    check_id,
    etag_version,
    is_type,
)
from kit.fhir.server_openapi import capability_statement, openapi_document
from kit.fhir.server_search import MAX_COUNT, SearchQuery, date_range, parse_search
from kit.fhir.server_store import FhirStore, fail

__all__ = ["DEFAULT_MAX_BODY", "FHIR_JSON", "EmbeddedFhirServer", "capability_statement", "create_app"]

log = logging.getLogger("kit.fhir.server")

FHIR_JSON = "application/fhir+json"
#: Largest request body accepted (bytes); larger -> 413.
DEFAULT_MAX_BODY = 32 * 1024 * 1024


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=dict(headers or {}))


def _outcome(status: int, issues: list[dict[str, Any]]) -> Response:
    return _json(operation_outcome(issues), status)


def _q(value: object) -> str:
    return quote(str(value), safe="", errors="replace")


def _resource_headers(resource: Mapping[str, Any], base: str) -> dict[str, str]:
    """ETag, Last-Modified and Location of a stored resource; cannot fail (it runs after the commit).

    Every value is percent-encoded ASCII, and a ``lastUpdated`` that does not parse
    (it always does: the store writes it) only drops Last-Modified.
    """
    raw_meta = resource.get("meta")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    version = _q(meta.get("versionId", "1"))
    headers = {"ETag": f'W/"{version}"'}
    try:
        when = dt.datetime.fromisoformat(str(meta["lastUpdated"]))
        headers["Last-Modified"] = email.utils.format_datetime(when.astimezone(dt.UTC), usegmt=True)
    except (KeyError, ValueError, TypeError, OverflowError):
        pass
    safe_base = base.encode("ascii", "replace").decode("ascii")
    headers["Location"] = (f"{safe_base}/{_q(resource.get('resourceType'))}/{_q(resource.get('id'))}"
                           f"/_history/{version}")
    return headers


def _if_match(value: str | None) -> int | None:
    return etag_version(value) if value else None


def _parse_body(raw: bytes) -> Any:
    """A request body as JSON, its nesting and its number of objects and arrays checked (a 30 MB
    body of ten million empty objects took 1.5 GB and 15 s on the event loop)."""
    check_containers(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirValidationError(
            f"request body is not JSON: {exc}",
            issues=[issue("error", "structure", f"request body is not JSON: {exc}")],
        ) from exc
    check_depth(body)  # before validation, indexing or Bundle rewriting recurse into it
    return body


def _prefer(request: Request, key: str) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == key:
            return v.strip().strip('"') or "true"
    return None


def _check_type(rtype: str) -> None:
    if not is_type(rtype):
        raise fail(404, "not-supported", f"unknown resource type {rtype!r}")


def _elements(resource: dict[str, Any], elements: tuple[str, ...]) -> dict[str, Any]:
    keep = {"resourceType", "id", "meta", *elements}
    out = {k: v for k, v in resource.items() if k in keep}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [
        *meta.get("tag", []),
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"},
    ]
    out["meta"] = meta
    return out


def create_app(
    db_path: Path | str,
    *,
    base_path: str = "/fhir/R4",
    max_body: int = DEFAULT_MAX_BODY,
    export_delay: float = 0.0,
    store: FhirStore | None = None,
    body_timeout: float = 30.0,
    send_timeout: float = 30.0,
) -> FastAPI:
    """The FastAPI application of the embedded FHIR server.

    Parameters
    ----------
    db_path : Path or str
        SQLite database (created if missing); exports go to ``<its folder>/exports``.
    base_path : str
        URL path of the FHIR base.
    max_body : int
        Largest request body in bytes (413 above it).
    export_delay : float
        Pause per resource type in ``$export`` jobs (for tests that watch a running job).
    store : FhirStore, optional
        An already open store (the embedded server passes its own).
    body_timeout : float
        Seconds a client may take to send a request body (408 after).
    send_timeout : float
        Seconds one response chunk may wait for a client that does not read (dropped after).
    """
    store = store or FhirStore(db_path)
    exports = ExportManager(store, Path(db_path).parent / "exports", delay=export_delay)
    app = FastAPI(title="kit FHIR R4", docs_url=None, redoc_url=None, openapi_url=None)
    # inside Starlette's ServerErrorMiddleware, around everything else: the last line for 500s
    app.add_middleware(FhirAuditMiddleware, base_path=base_path)  # inside the guard: kit.audit
    app.add_middleware(GuardMiddleware, max_body=max_body, send_timeout=send_timeout)
    app.state.store = store
    app.state.exports = exports
    bp = "/" + base_path.strip("/") if base_path.strip("/") else ""

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/") + bp

    @app.exception_handler(OperationOutcomeError)
    async def _oo(_: Request, exc: OperationOutcomeError) -> Response:
        response = _outcome(exc.status_code or 400, exc.issues)
        if exc.status_code in (408, 413):  # the rest of the body is not wanted: do not wait for it
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(_: Request, exc: RequestValidationError) -> Response:
        return _outcome(400, [issue("error", "invalid", "request does not match the route")])

    @app.exception_handler(FhirValidationError)
    async def _invalid(_: Request, exc: FhirValidationError) -> Response:
        return _outcome(400, exc.issues or [issue("error", "invalid", str(exc))])

    @app.exception_handler(KitError)
    async def _kit(request: Request, exc: KitError) -> Response:
        log.error("FHIR server: %s %s failed: %s", request.method, request.url.path, exc)
        return _outcome(500, [issue("error", "exception", str(exc))])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = "not-found" if exc.status_code == 404 else "not-supported"
        return _outcome(exc.status_code, [issue("error", code, str(exc.detail))])

    async def body_of(request: Request) -> Any:
        if "xml" in request.headers.get("content-type", ""):
            raise fail(415, "not-supported", "only JSON (application/fhir+json) is supported")
        raw = await read_body(request, limit=max_body, timeout=body_timeout)
        return await run_in_threadpool(_parse_body, raw)  # off the event loop: seconds for a big one

    async def form_of(request: Request) -> list[tuple[str, str]]:
        """The fields of an ``application/x-www-form-urlencoded`` body (FHIR search via POST)."""
        raw = await read_body(request, limit=min(max_body, MAX_FORM_BODY), timeout=body_timeout)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not raw:
            return []
        if ctype != "application/x-www-form-urlencoded":
            raise fail(415, "not-supported", "POST [type]/_search takes application/x-www-form-urlencoded")
        try:
            return parse_qsl(raw.decode("ascii"), keep_blank_values=True, max_num_fields=MAX_SEARCH_PARAMS)
        except (UnicodeDecodeError, ValueError) as exc:
            raise fail(400, "invalid", f"not a form-encoded search: {exc}") from None

    def written(request: Request, resource: dict[str, Any], status: int) -> Response:
        base = base_of(request)
        headers = _resource_headers(resource, base)
        prefer = _prefer(request, "return")
        if prefer == "minimal":
            return Response(status_code=status, headers=headers)
        if prefer == "OperationOutcome":
            return _json(
                operation_outcome([issue("information", "informational", "stored")]), status, headers
            )
        return _json(resource, status, headers)

    def searchset(request: Request, rtype: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        strict = (_prefer(request, "handling") or "strict") != "lenient"
        query: SearchQuery = parse_search(rtype, pairs, strict=strict)
        result = store.search(query)
        base = base_of(request)
        kept = [(k, v) for k, v in pairs if k not in ("_offset", "_count")]

        def link(offset: int) -> str:
            return f"{base}/{rtype}?" + urlencode(
                [*kept, ("_count", str(query.count)), ("_offset", str(offset))]
            )

        links = [{"relation": "self", "url": link(query.offset)}]
        if query.count and query.offset + query.count < result.total:
            links.append({"relation": "next", "url": link(query.offset + query.count)})
        if query.offset > 0 and query.count:
            links.append({"relation": "previous", "url": link(max(0, query.offset - query.count))})
        entries = [
            {
                "fullUrl": f"{base}/{rtype}/{r['id']}",
                "resource": _elements(r, query.elements) if query.elements else r,
                "search": {"mode": "match"},
            }
            for r in result.matches
        ]
        entries += [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "include"}}
            for r in result.included
        ]
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")},
            "type": "searchset",
            "total": result.total,
            "link": links,
            "entry": entries,
        }

    def history_bundle(request: Request, rtype: str | None, rid: str | None) -> dict[str, Any]:
        params = dict(request.query_params)
        count = ascii_int(params.get("_count", "50"), "_count", high=MAX_COUNT)
        offset = ascii_int(params.get("_offset", "0"), "_offset", high=MAX_OFFSET)
        since = date_range(params["_since"])[0] if params.get("_since") else None
        versions, total = store.history(rtype, rid, since=since, count=count, offset=offset)
        base = base_of(request)
        entries = []
        for v in versions:
            entry: dict[str, Any] = {"fullUrl": f"{base}/{v.type}/{v.id}"}
            if v.resource is not None:
                entry["resource"] = v.resource
            entry["request"] = {
                "method": v.method,
                "url": f"{v.type}/{v.id}" if v.method != "POST" else v.type,
            }
            entry["response"] = {
                "status": "204" if v.resource is None else ("201" if v.version == 1 else "200"),
                "etag": f'W/"{v.version}"',
                "lastModified": v.last_updated,
            }
            entries.append(entry)
        path = "/".join(p for p in (rtype, rid, "_history") if p)
        links = [{"relation": "self", "url": f"{base}/{path}"}]
        if offset + count < total:
            links.append(
                {
                    "relation": "next",
                    "url": f"{base}/{path}?"
                    + urlencode({**params, "_count": count, "_offset": offset + count}),
                }
            )
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "history",
            "total": total,
            "link": links,
            "entry": entries,
        }

    def get_entry(url: str, request: Request) -> tuple[int, dict[str, Any]]:
        path, _, qs = url.partition("?")
        parts = [p for p in path.split("/") if p]
        _check_type(parts[0] if parts else "")
        if len(parts) == 1:
            return 200, searchset(request, parts[0], parse_qsl(qs, keep_blank_values=True))
        if len(parts) == 2:
            return 200, store.read(parts[0], check_id(parts[1]))
        if len(parts) == 4 and parts[2] == "_history":
            version = ascii_int(parts[3], "version", low=1, high=MAX_VERSION, status=404)
            return 200, store.vread(parts[0], check_id(parts[1]), version)
        raise fail(400, "not-supported", f"GET {url} is not supported in a Bundle")

    # -- routes (specific paths first) -----------------------------------------------------------

    @app.get(bp + "/metadata")
    async def metadata(request: Request) -> Response:
        return _json(capability_statement(base_of(request)))

    @app.get("/openapi.json")
    async def openapi(request: Request) -> Response:
        doc = openapi_document(bp, str(request.base_url).rstrip("/"))
        return Response(orjson.dumps(doc), media_type="application/json")

    def kick_off(request: Request, level: str, group_id: str | None = None) -> Response:
        if _prefer(request, "respond-async") is None:
            raise fail(400, "invalid", "$export needs the header Prefer: respond-async")
        job = exports.kick_off(
            level=level,
            params=dict(request.query_params),
            request_url=str(request.url),
            base_url=base_of(request),
            group_id=group_id,
        )
        return Response(
            status_code=202, headers={"Content-Location": f"{base_of(request)}/$export-status/{job.id}"}
        )

    @app.get(bp + "/$export")
    async def export_system(request: Request) -> Response:
        return await run_in_threadpool(kick_off, request, "system")

    @app.get(bp + "/Patient/$export")
    async def export_patient(request: Request) -> Response:
        return await run_in_threadpool(kick_off, request, "Patient")

    @app.get(bp + "/Group/{gid}/$export")
    async def export_group(request: Request, gid: str) -> Response:
        return await run_in_threadpool(kick_off, request, "Group", check_id(gid))

    @app.get(bp + "/$export-status/{job_id}")
    async def export_status(job_id: str) -> Response:
        job = exports.get(job_id)
        if job.status == "running":
            return Response(status_code=202, headers={"X-Progress": job.progress, "Retry-After": "1"})
        if job.status == "error":
            return _outcome(500, [issue("error", "exception", job.error or "export failed")])
        return Response(
            orjson.dumps(job.manifest()),
            status_code=200,
            media_type="application/json",
            headers={
                "Expires": email.utils.format_datetime(
                    dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), usegmt=True
                )
            },
        )

    @app.delete(bp + "/$export-status/{job_id}")
    async def export_cancel(job_id: str) -> Response:
        exports.cancel(job_id)
        return Response(status_code=202)

    @app.get(bp + "/$export-file/{job_id}/{name}")
    async def export_file(job_id: str, name: str) -> Response:
        return FileResponse(exports.file(job_id, name), media_type="application/fhir+ndjson")

    @app.post(bp + "/")
    @app.post(bp or "/")
    async def bundle(request: Request) -> Response:
        body = await body_of(request)
        if not isinstance(body, dict):
            raise fail(400, "structure", "expected a Bundle")
        result = await run_in_threadpool(
            process_bundle, store, body, base_url=base_of(request), get=lambda url: get_entry(url, request)
        )
        return _json(result)

    @app.get(bp + "/_history")
    async def history_system(request: Request) -> Response:
        return _json(await run_in_threadpool(history_bundle, request, None, None))

    @app.get(bp + "/{rtype}")
    async def search(request: Request, rtype: str) -> Response:
        _check_type(rtype)
        pairs = list(request.query_params.multi_items())
        return _json(await run_in_threadpool(searchset, request, rtype, pairs))

    @app.post(bp + "/{rtype}/_search")
    async def search_post(request: Request, rtype: str) -> Response:
        _check_type(rtype)
        pairs = [*request.query_params.multi_items(), *await form_of(request)]
        return _json(await run_in_threadpool(searchset, request, rtype, pairs))

    @app.post(bp + "/{rtype}")
    async def create(request: Request, rtype: str) -> Response:
        _check_type(rtype)
        body = await body_of(request)
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "id"}
        resource, created = await run_in_threadpool(
            lambda: store.create(body, rtype=rtype, if_none_exist=request.headers.get("if-none-exist"))
        )
        return written(request, resource, 201 if created else 200)

    @app.put(bp + "/{rtype}")
    async def conditional_update(request: Request, rtype: str) -> Response:
        _check_type(rtype)
        body = await body_of(request)
        query = str(request.url.query)
        if not query:
            raise fail(400, "invalid", "PUT [type] needs an id or a search query")

        def work() -> tuple[dict[str, Any], bool]:
            with store.transaction() as conn:
                found = store.find(rtype, query)
                if len(found) > 1:
                    raise fail(412, "multiple-matches", f"conditional update {query!r} matches several")
                rid = found[0]["id"] if found else (body.get("id") if isinstance(body, dict) else None)
                return store.update_in(conn, body, rtype=rtype, rid=str(uuid.uuid4()) if rid is None else rid)

        resource, created = await run_in_threadpool(work)
        return written(request, resource, 201 if created else 200)

    @app.get(bp + "/{rtype}/_history")
    async def history_type(request: Request, rtype: str) -> Response:
        _check_type(rtype)
        return _json(await run_in_threadpool(history_bundle, request, rtype, None))

    @app.get(bp + "/{rtype}/{rid}")
    async def read(request: Request, rtype: str, rid: str) -> Response:
        _check_type(rtype)
        check_id(rid)
        resource = await run_in_threadpool(store.read, rtype, rid)
        headers = _resource_headers(resource, base_of(request))
        headers.pop("Location")
        return _json(resource, 200, headers)

    @app.put(bp + "/{rtype}/{rid}")
    async def update(request: Request, rtype: str, rid: str) -> Response:
        _check_type(rtype)
        check_id(rid)  # before anything is read or written
        body = await body_of(request)
        if_match = _if_match(request.headers.get("if-match"))
        resource, created = await run_in_threadpool(
            lambda: store.update(body, rtype=rtype, rid=rid, if_match=if_match)
        )
        return written(request, resource, 201 if created else 200)

    @app.delete(bp + "/{rtype}/{rid}")
    async def delete(rtype: str, rid: str) -> Response:
        _check_type(rtype)
        check_id(rid)
        await run_in_threadpool(store.delete, rtype, rid)
        return Response(status_code=204)

    @app.get(bp + "/{rtype}/{rid}/_history")
    async def history_instance(request: Request, rtype: str, rid: str) -> Response:
        _check_type(rtype)
        check_id(rid)
        return _json(await run_in_threadpool(history_bundle, request, rtype, rid))

    @app.get(bp + "/{rtype}/{rid}/_history/{vid}")
    async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
        _check_type(rtype)
        check_id(rid)
        version = ascii_int(vid, "version", low=1, high=MAX_VERSION, status=404)
        resource = await run_in_threadpool(store.vread, rtype, rid, version)
        headers = _resource_headers(resource, base_of(request))
        headers.pop("Location")
        return _json(resource, 200, headers)

    return app


class EmbeddedFhirServer(Served):
    """The embedded FHIR R4 server, run by uvicorn in a background thread.

    Parameters
    ----------
    db_path : Path or str
        SQLite database file (kept across restarts).
    host : str
        Interface to bind.
    port : int
        Port to bind; 0 picks a free one (read :attr:`port` after :meth:`start`).
    base_path : str
        URL path of the FHIR base.
    preload : Path, optional
        A Bundle JSON file (the sample cohort) loaded on start; resources whose
        content is unchanged are skipped, so restarts do not add versions.
    max_body, export_delay, body_timeout, send_timeout
        See :func:`create_app`.
    head_timeout : float
        Seconds a connection may take to send a complete request head (from
        connecting, or from the previous response); then it is closed (408).
    keep_alive : float
        Seconds an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``).
    max_connections : int
        Open connections above this are answered 503 and closed.
    """

    name = "fhir"

    def __init__(
        self,
        db_path: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = "/fhir/R4",
        preload: Path | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        export_delay: float = 0.0,
        head_timeout: float = 10.0,
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
        keep_alive: float = 5.0,
        max_connections: int = 512,
    ) -> None:
        self.db_path = Path(db_path)
        self.host = host
        self.port = port
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.preload = Path(preload) if preload is not None else None
        self.max_body = max_body
        self.export_delay = export_delay
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout
        self.keep_alive = keep_alive
        self.max_connections = max_connections
        self.store: FhirStore | None = None
        self._serving = ServingThread("fhir", "the embedded FHIR server")

    @property
    def base_url(self) -> str:
        """The FHIR base URL, e.g. ``http://127.0.0.1:8080/fhir/R4``."""
        return f"http://{self.host}:{self.port}{self.base_path}"

    @property
    def address(self) -> str:
        """Same as :attr:`base_url` (the stack's address convention)."""
        return self.base_url

    def load(self, path: Path) -> int:
        """Load a Bundle file of resources with ids (any Bundle.type); return how many changed."""
        try:
            bundle = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise FhirValidationError(f"cannot read FHIR bundle: {exc}", source=str(path)) from exc
        resources = [
            e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict) and "resource" in e
        ]
        assert self.store is not None
        return self.store.load(resources)

    def start(self) -> None:
        """Open the database, preload, bind, and return once the server answers."""
        if self._serving.running:
            return
        self.store = FhirStore(self.db_path)
        try:
            if self.preload is not None:
                self.load(self.preload)
            sock = bind(self.host, self.port, what="the FHIR server")
        except BaseException:
            self.store.close()
            self.store = None
            raise
        self.port = int(sock.getsockname()[1])
        app = create_app(
            self.db_path,
            base_path=self.base_path,
            max_body=self.max_body,
            export_delay=self.export_delay,
            store=self.store,
            body_timeout=self.body_timeout,
            send_timeout=self.send_timeout,
        )
        try:
            self._serving.start(app, sock, head_timeout=self.head_timeout,
                                max_connections=self.max_connections, keep_alive=self.keep_alive,
                                render=outcome_response)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving and close the database (idempotent)."""
        self._serving.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> EmbeddedFhirServer:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
