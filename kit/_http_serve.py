"""Serve an ASGI app with uvicorn in a thread, hardened: shared by every HTTP service of the kit.

- :func:`guarded_protocol` makes uvicorn's h11 protocol close a connection whose
  request head is not complete within ``head_timeout`` seconds of connecting
  (or of the previous response), and drop one that reads nothing of a buffered
  answer for a ``head_timeout`` period. uvicorn itself has no such limit: its
  ``timeout_keep_alive`` only runs between requests and is cancelled by the first
  byte of the next one, so a slowloris peer sending a header byte every few
  seconds would hold a connection for ever. It also refuses connections beyond
  ``max_connections`` (503) and answers unparseable HTTP in the service's own
  error shape (``render``: an OperationOutcome for FHIR, ``{"detail": ...}`` JSON
  for the others) instead of uvicorn's plain-text 400.
- :func:`run_guarded` is the last ASGI layer's core: each ``send`` may wait at
  most ``send_timeout`` for a slow reader (then the connection is dropped), and
  any unexpected exception is logged and answered 500 (if no answer started):
  one request never stops the service.
- :class:`ServingThread` binds the socket, runs uvicorn on it in a daemon thread
  and returns once it answers. If the thread dies, the listening socket is closed
  (never a listener that accepts into a void) and :attr:`ServingThread.failure`
  says why, which the stack and ``kit status`` report; it is logged as critical.

Written by hand: uvicorn has no hooks for these limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import orjson
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from kit.errors import PeerError, ServiceFailedError

__all__ = ["Render", "Served", "ServingThread", "bind", "guarded_protocol", "json_response", "run_guarded"]

log = logging.getLogger("kit.http")

#: ``render(status, code, message)`` -> a complete ``Connection: close`` HTTP/1.1 response
Render = Callable[[int, str, str], bytes]

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
            500: b"Internal Server Error", 503: b"Service Unavailable"}


def raw_response(status: int, body: bytes, content_type: bytes) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response (written bypassing h11)."""
    return (f"HTTP/1.1 {status} ".encode() + _REASONS.get(status, b"Error")
            + b"\r\ncontent-type: " + content_type + b"\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body)


def json_response(status: int, code: str, message: str) -> bytes:
    """The default :data:`Render`: ``{"detail": message}`` as FastAPI's own errors are shaped."""
    del code  # FastAPI's error bodies carry no code
    return raw_response(status, orjson.dumps({"detail": message}), b"application/json")


def guarded_protocol(*, head_timeout: float, max_connections: int, service: str = "HTTP server",
                     render: Render = json_response) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a request-head deadline, a connection cap and errors in ``render``'s shape.

    Parameters
    ----------
    head_timeout : float
        Seconds a connection may take to send a complete request head, counted
        from connecting and from the end of each response.
    max_connections : int
        Open connections above this are answered 503 and closed at once.
    service : str
        The service's name in log lines.
    render : callable, optional
        ``render(status, code, message)`` -> the raw response for a refusal
        (codes are FHIR issue codes: ``transient``, ``structure``, ``timeout``).
    """

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _unsent: float = float("inf")

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("%s: refusing a connection over the limit of %d", service, max_connections)
                transport.write(render(503, "transient", "too many open connections; retry later"))
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
            log.warning("%s: unparseable HTTP from %s: %s", service, self.client, msg)
            self._cancel_head()
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(render(400, "structure", f"invalid HTTP request: {msg}"))
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
                log.warning("%s: dropping %s, which read nothing for %g s", service, self.client,
                            head_timeout)
                self.transport.abort()  # close() would wait for the buffer to drain, i.e. for ever
                return
            if self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:  # a partial head: say why
                self.transport.write(render(408, "timeout",
                                            f"request head not complete within {head_timeout:g} s"))
            self.transport.close()

    return GuardedH11Protocol


async def run_guarded(app: Any, scope: MutableMapping[str, Any], receive: Any, send: Any, *,
                      send_timeout: float, service: str, logger: logging.Logger,
                      reject: Callable[[int, str], Awaitable[None]],
                      answer: Callable[[Exception], tuple[int, str] | None] | None = None) -> None:
    """Call ``app`` with a slow-reader limit on ``send`` and a logged 500 for anything unexpected.

    Parameters
    ----------
    app, scope, receive, send
        The ASGI call to guard.
    send_timeout : float
        Seconds one ``send`` may wait for the peer to read; then the connection is dropped.
    service : str
        The service's name in log lines.
    logger : logging.Logger
        The service's logger.
    reject : callable
        ``await reject(status, message)`` writes an error response through ``send``.
    answer : callable, optional
        Maps an exception the app lets out on purpose to ``(status, message)``
        (e.g. an HTTPException raised by a middleware); None: unexpected.
    """
    started = False

    async def guarded_send(message: MutableMapping[str, Any]) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        try:
            async with asyncio.timeout(send_timeout):
                await send(message)
        except TimeoutError:
            raise OSError(f"the client read nothing for {send_timeout:g} s") from None

    try:
        await app(scope, receive, guarded_send)
    except Exception as exc:  # noqa: BLE001 - the last line: log it, answer 500, keep serving
        if isinstance(exc, OSError) and started:
            logger.warning("%s: dropped a slow or gone client: %s", service, exc)
            return
        known = answer(exc) if answer is not None and not started else None
        if known is not None:
            with contextlib.suppress(OSError):
                await reject(*known)
            return
        logger.error("%s: unexpected error on %s %s", service, scope.get("method"), scope.get("path"),
                     exc_info=exc)
        if not started:
            with contextlib.suppress(OSError):
                await reject(500, f"internal error ({type(exc).__name__})")


def bind(host: str, port: int, *, what: str) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: ephemeral); :class:`PeerError` naming ``what`` if not."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PeerError(f"cannot bind {what} to {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class Served:
    """Mixin of a service run by a :class:`ServingThread` held as ``_serving``: its health."""

    _serving: ServingThread

    @property
    def failure(self) -> BaseException | None:
        """Why the server thread died (health: red; None while it serves and after a clean stop)."""
        return self._serving.failure

    @property
    def running(self) -> bool:
        """Whether it is serving (False once its thread died)."""
        return self._serving.running


class ServingThread:
    """uvicorn serving one app on one bound socket in a daemon thread, whose death is loud.

    Parameters
    ----------
    service : str
        The service's name (``fhir``, ``dicomweb``, ``api``, ``medix``): in the
        thread's name, the log lines and :class:`~kit.errors.ServiceFailedError`.
    label : str
        What to call it in messages (``the FHIR server``).
    """

    def __init__(self, service: str, label: str) -> None:
        self.service = service
        self.label = label
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failure: BaseException | None = None

    @property
    def failure(self) -> BaseException | None:
        """Why the thread died (None while it serves and after a clean stop)."""
        return self._failure

    @property
    def running(self) -> bool:
        """Whether it is serving (False once its thread died)."""
        return self._thread is not None and self._thread.is_alive() and self._failure is None

    def start(self, app: Any, sock: socket.socket, *, head_timeout: float, max_connections: int,
              keep_alive: float = 5.0, render: Render = json_response, wait: float = 15.0) -> None:
        """Serve ``app`` on ``sock``; return once uvicorn answers.

        Raises
        ------
        ServiceFailedError
            It did not start within ``wait`` seconds (the socket is closed).
        """
        config = uvicorn.Config(
            app,
            log_level="warning",
            log_config=None,  # uvicorn would reset the process's logging on each start
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            timeout_keep_alive=max(1, int(keep_alive)),
            http=guarded_protocol(head_timeout=head_timeout, max_connections=max_connections,
                                  service=self.label, render=render),
            proxy_headers=False,  # X-Forwarded-* from a peer is not trusted
            server_header=False,
        )
        server = uvicorn.Server(config)
        self._server, self._stopping, self._failure = server, False, None
        port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(server, sock), daemon=True,
                                        name=f"kit-{self.service}-{port}")
        self._thread.start()
        ready = threading.Event()
        for _ in range(max(1, int(wait / 0.05))):
            if server.started:
                return
            if not self._thread.is_alive():
                break
            ready.wait(0.05)
        self.stop()
        sock.close()
        raise ServiceFailedError(f"{self.label} did not start on port {port}", service=self.service)

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # noqa: BLE001 - recorded through .failure and logged, loudly
            self._failure = exc
        finally:
            sock.close()  # never a listener that accepts into a void
            if not self._stopping and self._failure is None:
                self._failure = ServiceFailedError(f"{self.label} stopped by itself", service=self.service)
            if self._failure is not None and not self._stopping:
                log.critical("%s is down: %r", self.label, self._failure)

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
