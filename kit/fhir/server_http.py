"""HTTP hardening of the embedded FHIR server: connection limits, time limits, size limits, last-resort 500.

Every peer is treated as hostile:

- :func:`guarded_protocol` makes uvicorn's h11 protocol close a connection whose
  request head is not complete within ``head_timeout`` seconds of connecting
  (or of the previous response), and drop one that reads nothing of a buffered
  answer for a ``head_timeout`` period. uvicorn itself has no such limit: its
  ``timeout_keep_alive`` only runs between requests and is cancelled by the first
  byte of the next one, so a slowloris peer sending a header byte every few
  seconds would hold a connection for ever. It also refuses connections beyond
  ``max_connections`` (503) and answers unparseable HTTP with an
  OperationOutcome instead of uvicorn's plain-text 400.
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

import h11
import orjson
from starlette.requests import ClientDisconnect, Request
from uvicorn.protocols.http.h11_impl import H11Protocol

from kit.fhir.resources import issue, operation_outcome
from kit.fhir.server_limits import outcome_error

__all__ = ["GuardMiddleware", "guarded_protocol", "outcome_body", "read_body"]

log = logging.getLogger("kit.fhir.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


def outcome_body(code: str, message: str) -> bytes:
    """An OperationOutcome with one error issue, as JSON bytes."""
    return orjson.dumps(operation_outcome([issue("error", code, message)]))


def _raw_response(status: int, code: str, message: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response with an OperationOutcome (written bypassing h11)."""
    body = outcome_body(code, message)
    head = (f"HTTP/1.1 {status} ".encode() + _REASONS.get(status, b"Error")
            + b"\r\ncontent-type: application/fhir+json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode())
    return head + body


def guarded_protocol(*, head_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request-head deadline, a connection cap and OperationOutcome 400s.

    Parameters
    ----------
    head_timeout : float
        Seconds a connection may take to send a complete request head, counted
        from connecting and from the end of each response.
    max_connections : int
        Open connections above this are answered 503 and closed at once.
    """

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _unsent: float = float("inf")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("FHIR server: refusing a connection over the limit of %d", max_connections)
                transport.write(_raw_response(503, "transient", "too many open connections; retry later"))
                transport.close()
                return
            self._arm_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a complete request head arrived
                self._cancel_head()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._unsent = float("inf")
                self._arm_head()  # the next request head (or the rest of an unread body) has a deadline too
            super().on_response_complete()

        def send_400_response(self, msg: str) -> None:
            log.warning("FHIR server: unparseable HTTP from %s: %s", self.client, msg)
            self._cancel_head()
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(_raw_response(400, "structure", f"invalid HTTP request: {msg}"))
            self.transport.close()

        def _arm_head(self) -> None:
            self._cancel_head()
            self._head_timer = self.loop.call_later(head_timeout, self._head_expired)

        def _cancel_head(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            unsent = self.transport.get_write_buffer_size()
            if unsent:  # the last answer is still buffered: a slow reader, not a slow sender
                if unsent < self._unsent:  # it is reading: give it another period
                    self._unsent = unsent
                    self._arm_head()
                    return
                log.warning("FHIR server: dropping %s, which read nothing for %g s", self.client,
                            head_timeout)
                self.transport.abort()  # close() would wait for the buffer to drain, i.e. for ever
                return
            if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # a partial head: say why
                self.transport.write(_raw_response(408, "timeout",
                                                   f"request head not complete within {head_timeout:g} s"))
            self.transport.close()

    return GuardedH11Protocol


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
        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError:
                raise OSError(f"the client read nothing for {self.send_timeout:g} s") from None

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - the last line: log it, answer 500, keep serving
            if isinstance(exc, OSError) and started:
                log.warning("FHIR server: dropped a slow or gone client: %s", exc)
                return
            log.error("FHIR server: unexpected error on %s %s", scope.get("method"), scope.get("path"),
                      exc_info=exc)
            if not started:
                try:
                    await self._reject(send, 500, "exception", f"internal error ({type(exc).__name__})")
                except OSError:
                    pass
