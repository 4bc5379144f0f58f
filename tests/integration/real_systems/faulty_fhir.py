"""A FHIR server with the faults real servers have, in front of the kit's own (a FastAPI proxy).

- ``next_links=False``: search Bundles lose their ``next`` link (the server pages
  only when asked with ``_offset``); ``offset=False`` also drops ``_offset`` from
  searches, so the server always answers the first page.
- ``max_transaction``: a transaction or batch Bundle with more entries is refused
  with 400 and an OperationOutcome, as HAPI-style servers do.
- ``drop_types``: resource types the server does not support: left out of its
  CapabilityStatement, and a request for one is answered 404 with an OperationOutcome;
  ``drop_operations`` the same for operations (``export``: no Bulk Data).

Everything else is passed through to the real server unchanged.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

FHIR_JSON = "application/fhir+json"


def faulty_app(upstream: str, *, next_links: bool = True, offset: bool = True,
               max_transaction: int | None = None, drop_types: Collection[str] = (),
               drop_operations: Collection[str] = ()) -> FastAPI:
    """The proxy app in front of ``upstream`` (a FHIR base URL)."""
    app = FastAPI()
    dropped = frozenset(drop_types) | {f"${op}" for op in drop_operations}
    client = httpx.Client(timeout=30)
    upstream = upstream.rstrip("/")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def proxy(path: str, request: Request) -> Response:
        body = await request.body()
        if dropped & set(path.strip("/").split("/")):
            outcome = {"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "not-supported",
                "diagnostics": f"Not supported here: {path}"}]}
            return Response(orjson.dumps(outcome), status_code=404, media_type=FHIR_JSON)
        params = [(k, v) for k, v in request.query_params.multi_items() if offset or k != "_offset"]
        if request.method == "POST" and path.strip("/") == "" and max_transaction is not None:
            bundle = orjson.loads(body)
            entries = len(bundle.get("entry") or [])
            if entries > max_transaction:
                outcome = {"resourceType": "OperationOutcome", "issue": [{
                    "severity": "error", "code": "processing",
                    "diagnostics": f"Bundle contains more update operations ({entries}) than "
                                   f"allowed ({max_transaction})"}]}
                return Response(orjson.dumps(outcome), status_code=400, media_type=FHIR_JSON)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "accept", "prefer", "if-none-exist", "if-match")}
        answer = client.request(request.method, f"{upstream}/{path}", params=params, content=body,
                                headers=headers)
        content = answer.content
        if dropped and path.strip("/") == "metadata" and answer.status_code == 200:
            statement = orjson.loads(content)
            for rest in statement.get("rest") or []:
                rest["resource"] = [r for r in rest.get("resource") or [] if r.get("type") not in dropped]
                rest["operation"] = [o for o in rest.get("operation") or []
                                     if f"${o.get('name')}" not in dropped]
            content = orjson.dumps(statement)
        if not next_links and request.method == "GET" and content:
            data = orjson.loads(content)
            if data.get("resourceType") == "Bundle" and data.get("type") == "searchset":
                data["link"] = [lk for lk in data.get("link") or [] if lk.get("relation") != "next"]
                content = orjson.dumps(data)
        keep = {k: v for k, v in answer.headers.items() if k.lower() in ("location", "etag")}
        return Response(content, status_code=answer.status_code, headers=keep,
                        media_type=answer.headers.get("content-type", FHIR_JSON))

    return app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on an ephemeral loopback port in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


