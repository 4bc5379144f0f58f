"""HTTP hardening of the embedded FHIR server: connection limits, time limits, size limits, last-resort 500.

Every peer is treated as hostile:

- The connection guards (request-head deadline, connection cap, 400 on
  unparseable HTTP) are :func:`kit._http_serve.guarded_protocol`'s, shared by
  every HTTP service; :func:`outcome_response` gives them the FHIR shape
  (an OperationOutcome).
- :class:`GuardMiddleware` (outermost ASGI layer) rejects a declared body over
  the limit (413) and a Host header that is not a host name before any route
  runs, bounds the time one ``send`` may wait for a slow reader, and turns any
  unexpected exception into a logged 500 OperationOutcome: the last line, not
  the validation (which is in :mod:`kit.fhir.server_limits` and the routes).
- :func:`read_body` reads a request body with a size bound and a deadline
  (413, 408), so a peer trickling a declared body is cut off.

Written by hand: uvicorn and Starlette have no hooks for these limits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request

from kit._http_serve import raw_response, run_guarded
from kit.fhir.resources import issue, operation_outcome
from kit.fhir.server_limits import outcome_error

__all__ = ["GuardMiddleware", "outcome_body", "outcome_response", "read_body"]

log = logging.getLogger("kit.fhir.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def outcome_body(code: str, message: str) -> bytes:
    """An OperationOutcome with one error issue, as JSON bytes."""
    return orjson.dumps(operation_outcome([issue("error", code, message)]))


def outcome_response(status: int, code: str, message: str) -> bytes:
    """A :data:`kit._http_serve.Render`: a raw ``Connection: close`` response with an OperationOutcome."""
    return raw_response(status, outcome_body(code, message), b"application/fhir+json")


async def read_body(request: Request, *, limit: int, timeout: float) -> bytes:
    """The request body, at most ``limit`` bytes, all within ``timeout`` seconds.

    Raises
    ------
    OperationOutcomeError
        413 over the limit, 408 when the peer is too slow, 400 if it went away.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise outcome_error(413, "too-costly", f"request body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise outcome_error(408, "timeout", f"request body not received within {timeout:g} s") from None
    except ClientDisconnect:
        raise outcome_error(400, "incomplete", "the client went away before sending the body") from None
    return b"".join(chunks)


class GuardMiddleware:
    """Outermost ASGI layer: early 413/400 on the request head, slow-reader limit, last-resort 500.

    Parameters
    ----------
    app : ASGI application
        The FastAPI application.
    max_body : int
        Largest declared ``Content-Length`` accepted (413 above it).
    send_timeout : float
        Seconds one response chunk may wait for a slow reader before the connection is dropped.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, send_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.send_timeout = send_timeout

    async def _reject(self, send: Send, status: int, code: str, message: str) -> None:
        body = outcome_body(code, message)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/fhir+json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (len(declared) > 19 or int(declared) > self.max_body):
            await self._reject(send, 413, "too-costly", f"request body over {self.max_body} bytes")
            return
        host = headers.get(b"host", b"").decode("latin-1")
        if host and _HOST.fullmatch(host) is None:
            await self._reject(send, 400, "invalid", "the Host header is not a host name")
            return
        await run_guarded(self.app, scope, receive, send, send_timeout=self.send_timeout,
                          service="FHIR server", logger=log,
                          reject=lambda status, message: self._reject(
                              send, status, "exception" if status >= 500 else "invalid", message))
