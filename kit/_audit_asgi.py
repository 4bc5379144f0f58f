"""An ASGI layer that records one :mod:`kit.audit` event per HTTP request a kit server answers.

Used by the embedded FHIR server, the integration API and the Medix service,
each with its own ``describe(scope, status, request_body, response_body)`` that
turns the request into the event's fields (or None: not a data access). Bodies
are kept only up to ``body_limit`` bytes, only to read identifiers from, and
only while a sink is registered.

The event is recorded before the last byte of the answer is sent (in a worker
thread: the log's fsync never stalls the event loop), so an answer a client
received is in the log. ``actor(scope)`` names who is asking once the app has
authenticated them; work the request does through kit's clients is attributed
to that principal too (:func:`kit.audit.acting_as`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from kit import audit

__all__ = ["AuditMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Describe = Callable[[Scope, int, bytes, bytes], Mapping[str, Any] | None]

#: bytes of a request or response body kept for reading identifiers
BODY_LIMIT = 16 * 1024 * 1024


class AuditMiddleware:
    """Record each HTTP request as an audit event (``side="server"``).

    Parameters
    ----------
    app : ASGI application
    describe : callable
        ``describe(scope, status, request_body, response_body)``: the event's
        fields including ``action`` (None: no event). A body over ``body_limit``
        is given as empty bytes.
    actor : callable, optional
        ``actor(scope)``: the principal once known (None: the local user).
    body_limit : int
        Largest body kept.
    """

    def __init__(self, app: ASGIApp, describe: Describe, *,
                 actor: Callable[[Scope], str | None] | None = None, body_limit: int = BODY_LIMIT) -> None:
        self.app = app
        self.describe = describe
        self.actor = actor
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not audit.enabled():
            await self.app(scope, receive, send)
            return
        request = _Body(self.body_limit)
        response = _Body(self.body_limit)
        status = 0
        recorded = False

        async def tee_receive() -> Message:
            message = await receive()
            if message.get("type") == "http.request":
                request.add(message.get("body", b""))
            return message

        async def tee_send(message: Message) -> None:
            nonlocal status, recorded
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
            elif message.get("type") == "http.response.body":
                response.add(message.get("body", b""))
                if not message.get("more_body") and not recorded:
                    recorded = True
                    await self._record(scope, status, request, response)
            await send(message)

        actor = self.actor
        context = audit.acting_as((lambda: actor(scope)) if actor is not None else lambda: None)
        try:
            with context:
                await self.app(scope, tee_receive, tee_send)
        except BaseException:
            if not recorded:
                recorded = True
                await self._record(scope, status or 500, request, response)
            raise

    async def _record(self, scope: Scope, status: int, request: _Body, response: _Body) -> None:
        await asyncio.to_thread(self._record_now, scope, status, request.value(), response.value())

    def _record_now(self, scope: Scope, status: int, request: bytes, response: bytes) -> None:
        try:
            fields = self.describe(scope, status, request, response)
        except Exception as exc:  # noqa: BLE001 - describing never breaks the answer
            audit.record_failure("describe http", exc)
            return
        if fields is None:
            return
        fields = dict(fields)
        if self.actor is not None and "who" not in fields:
            fields["who"] = self.actor(scope) or ""
        fields.setdefault("side", "server")
        if status >= 400 and "outcome" not in fields:
            fields.update(outcome="failed", error=f"HTTP{status}")
        audit.record(str(fields.pop("action")), **fields)


class _Body:
    """A body kept up to ``limit`` bytes (beyond that: dropped, and given as empty)."""

    __slots__ = ("chunks", "limit", "over", "size")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.over = False

    def add(self, chunk: bytes) -> None:
        if self.over or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.over = True
            self.chunks.clear()
            return
        self.chunks.append(bytes(chunk))

    def value(self) -> bytes:
        return b"" if self.over else b"".join(self.chunks)
