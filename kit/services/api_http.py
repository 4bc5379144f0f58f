"""HTTP plumbing of the integration REST API: JSON and problem answers, body limits, the server thread (I/O).

* :class:`Json` renders with orjson (NaN and infinities become null, dates ISO
  8601); :func:`problem_response` is ``application/problem+json`` (RFC 9457).
* :class:`ApiGuard` (the outermost ASGI layer) refuses a declared body over
  the limit (413) and a Host header that is not a host name before any route
  runs, cuts off a body that grows past the limit or trickles in past
  ``body_timeout`` (413, 408), bounds how long one ``send`` may wait for a slow
  reader, and turns anything unexpected into a logged 500 problem: the last line.
* :class:`ApiServer` runs the app with uvicorn in a thread, with the FHIR
  server's connection guards (:func:`kit._http_serve.guarded_protocol`:
  a deadline on request heads, a cap on open connections).

Written by hand: Starlette and uvicorn have no such limits of their own.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import Response

from kit._http_serve import Served, ServingThread, bind, run_guarded
from kit.services.api_models import problem

__all__ = ["ApiGuard", "ApiServer", "Json", "problem_response"]

log = logging.getLogger("kit.services.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PROBLEM_JSON: Final = "application/problem+json"
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}


def _default(value: Any) -> Any:
    return str(value)


class Json(Response):
    """A JSON answer rendered by orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)


def problem_body(status: int, detail: str, **extra: Any) -> bytes:
    """The bytes of a problem answer."""
    return orjson.dumps(problem(status, _TITLES.get(status, "Error"), detail, **extra), default=_default)


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    """An ``application/problem+json`` answer."""
    return Response(
        problem_body(status, detail, **extra), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


class BodyTooLarge(HTTPException):
    """The body grew past the limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class BodyTooSlow(HTTPException):
    """The body did not arrive within the deadline (408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s")


class ApiGuard:
    """Outermost ASGI layer: body limits, Host check, slow-reader limit, last-resort 500.

    Parameters
    ----------
    app : ASGI application
    max_json_body : int
        Largest body of most routes.
    max_body : int
        Largest body of the routes in ``large_paths`` (DICOM uploads).
    large_paths : tuple of str
        Path suffixes that take ``max_body``.
    body_timeout, send_timeout : float
        Seconds a body may take to arrive, and one answer chunk to be taken.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        max_json_body: int,
        max_body: int,
        large_paths: tuple[str, ...] = (),
        body_timeout: float = 30.0,
        send_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.max_json_body = max_json_body
        self.max_body = max_body
        self.large_paths = large_paths
        self.body_timeout = body_timeout
        self.send_timeout = send_timeout

    async def _reject(self, send: Send, status: int, detail: str) -> None:
        body = problem_body(status, detail)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"connection", b"close"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path") or "")
        limit = self.max_body if path.endswith(self.large_paths) else self.max_json_body
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 19 or int(declared) > limit):
            await self._reject(send, 413, f"request body over {limit} bytes")
            return
        host = headers.get(b"host", b"").decode("latin-1")
        if host and _HOST.fullmatch(host) is None:
            await self._reject(send, 400, "the Host header is not a host name")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        state = {"received": 0, "done": False}

        async def limited_receive() -> Message:
            if state["done"]:
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow(self.body_timeout) from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    state["done"] = True
            else:
                state["done"] = True
            return message

        def answer(exc: Exception) -> tuple[int, str] | None:
            return (exc.status_code, str(exc.detail)) if isinstance(exc, HTTPException) else None

        await run_guarded(self.app, scope, limited_receive, send, send_timeout=self.send_timeout,
                          service="API", logger=log, answer=answer,
                          reject=lambda status, message: self._reject(send, status, message))


class ApiServer(Served):
    """The API app served by uvicorn in a background thread.

    Parameters
    ----------
    app : FastAPI
        From :func:`kit.services.api.create_app`.
    host, port : str, int
        Where to listen (port 0: ephemeral; read :attr:`port` after :meth:`start`).
    head_timeout : float
        Seconds a connection may take to send a request head.
    keep_alive : float
        Seconds an idle keep-alive connection stays open.
    max_connections : int
        Open connections above this are answered 503 and closed.
    on_stop : callable, optional
        Called after the server stopped (closes the app's store).
    """

    name = "api"

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        head_timeout: float = 10.0,
        keep_alive: float = 5.0,
        max_connections: int = 256,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.head_timeout = head_timeout
        self.keep_alive = keep_alive
        self.max_connections = max_connections
        self.on_stop = on_stop
        self._serving = ServingThread("api", "the API server")

    @property
    def address(self) -> str:
        """``http://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind and return once the server answers."""
        if self._serving.running:
            return
        sock = bind(self.host, self.port, what="the API")
        self.port = int(sock.getsockname()[1])
        self._serving.start(self.app, sock, head_timeout=self.head_timeout,
                            max_connections=self.max_connections, keep_alive=self.keep_alive)

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self._serving.stop()
        if self.on_stop is not None:
            self.on_stop()
            self.on_stop = None

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
