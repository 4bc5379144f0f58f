"""A whole-request deadline under httpx: status line and headers too, not only the body (I/O).

httpx bounds each read, write and connect by its timeout, never a request as a whole: a
server that sends its status line and headers a byte at a time, each just inside the
timeout, holds a request for days (h11 takes up to 100 KiB of them), and one that reads a
request body a few bytes at a time does the same to an upload. :func:`deadline_transport`
makes an :class:`httpx.HTTPTransport` whose network streams cut every connect, read and write
to what is left of the deadline set by :func:`request_deadline` in the calling thread
(a :class:`contextvars.ContextVar`: threads sharing one client each keep their own); past it
they raise httpcore's own timeouts, which httpx maps to :class:`httpx.TimeoutException`. With
no deadline set (a streamed body read after the request returned) they are httpx's streams
unchanged. The FHIR client (:mod:`kit.fhir.client`) and the Medix webhooks
(:mod:`kit.services.medix_worker`) use it.

Written by hand: httpx has no total deadline; httpcore's network-backend interface is the
seam it offers. The one private attribute reached into is the transport's pool, whose
backend is wrapped (httpx builds it, proxies included): were it gone, making a client would
fail, and every FHIR test with it. A TLS handshake is one call: it is bounded by what was
left when it began.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["deadline_transport", "request_deadline"]

#: The deadline (:func:`time.monotonic`) of the request this thread is making, if any.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("kit_http_deadline", default=None)
#: A write is split into pieces this large, each within what is left of the deadline
#: (httpcore's own write loops over ``send`` with the whole timeout each time).
_PIECE = 64 * 1024


@contextlib.contextmanager
def request_deadline(deadline: float) -> Iterator[None]:
    """Bound the connects, reads and writes of requests made in this block (in this thread)
    to end by ``deadline`` (a :func:`time.monotonic` time)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the deadline; ``late`` raised once it has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late("the request's deadline (total_timeout) passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            self._inner.write(bytes(view[:_PIECE]), _left(timeout, httpcore.WriteTimeout))
            view = view[_PIECE:]

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _Stream(self._inner.start_tls(ssl_context, server_hostname,
                                             _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpx's network backend, its streams bounded by the deadline (:class:`_Stream`)."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self.inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self.inner.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                              local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _Stream(self.inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                      socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def deadline_transport(verify: bool | str | ssl.SSLContext = True, **options: Any) -> httpx.HTTPTransport:
    """An :class:`httpx.HTTPTransport` (as :class:`httpx.Client` makes by default, with
    ``verify`` and any other of its ``options``: ``limits``, ``trust_env``...) whose requests end
    by the deadline :func:`request_deadline` sets. Give a client's ``verify`` and ``limits`` here:
    :class:`httpx.Client` does not pass its own to a transport it is given."""
    transport = httpx.HTTPTransport(verify=verify, **options)
    pool = transport._pool  # httpx's connection pool (or proxy): the network backend is its
    pool._network_backend = _Backend(pool._network_backend)
    return transport
