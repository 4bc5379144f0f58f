"""A deadline on a DICOMweb answer's status line and headers, under requests (I/O).

requests (urllib3, :mod:`http.client`) bounds each read by the timeout, never the wait for an
answer's head as a whole: a server that sends its status line and headers a byte at a time,
each just inside the timeout, holds a request as long as it likes (:mod:`http.client` takes up
to 100 headers of 64 KiB each). :func:`mount` gives a session connections whose
``getresponse`` (from the request sent to the headers parsed) is cut off ``seconds`` after it
began: a timer shuts the socket down, and :class:`HeadTooSlow` (a :class:`TimeoutError`, which
urllib3 and requests report as a read timeout) is raised; :func:`head_too_slow` finds it in
the exception requests raises. The body is bounded by the caller as it is read
(:class:`kit.dicom.web._BoundedBody`).

Written by hand: neither requests nor urllib3 has a total timeout. The seam is urllib3's own
(a pool's ``ConnectionCls``, a pool manager's ``pool_classes_by_scheme``); a timer thread per
answer costs about 0.1 ms, nothing beside a DICOMweb request.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

__all__ = ["HeadTooSlow", "head_too_slow", "mount"]


class HeadTooSlow(TimeoutError):
    """An answer's status line and headers did not arrive whole within the deadline."""


class _Cut:
    """Shut a connection's socket down at the deadline, unless the head came first."""

    def __init__(self, conn: HTTPConnection, seconds: float) -> None:
        self.conn, self.seconds = conn, seconds
        self.lock = threading.Lock()
        self.done = self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True

    def _fire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the read waiting on it
            except OSError:
                pass

    def __enter__(self) -> _Cut:
        self.timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()
        with self.lock:
            self.done = True
        if self.fired:  # the socket is shut: whatever the read made of that, it was the deadline
            raise HeadTooSlow(f"the answer's status line and headers did not come within "
                              f"{self.seconds:g} s")


class _Timed:
    """``getresponse`` within :attr:`head_seconds` (set by :func:`mount`)."""

    head_seconds: float

    def getresponse(self) -> Any:
        with _Cut(self, self.head_seconds):  # type: ignore[arg-type]
            return super().getresponse()  # type: ignore[misc]


def _pools(seconds: float) -> dict[str, type[urllib3.HTTPConnectionPool]]:
    """Pool classes whose connections time ``getresponse`` to ``seconds``."""
    plain = type("_TimedHTTPConnection", (_Timed, HTTPConnection), {"head_seconds": seconds})
    tls = type("_TimedHTTPSConnection", (_Timed, HTTPSConnection), {"head_seconds": seconds})
    return {"http": type("_TimedPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": plain}),
            "https": type("_TimedTLSPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": tls})}


class _Adapter(requests.adapters.HTTPAdapter):
    """requests' adapter, its pools' connections timed (:func:`_pools`)."""

    def __init__(self, seconds: float) -> None:
        self.head_seconds = seconds
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pools(self.head_seconds)


def mount(session: requests.Session, seconds: float) -> None:
    """Give ``session`` (http and https) connections whose answers' heads must come within
    ``seconds`` of the request being sent."""
    adapter = _Adapter(seconds)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def head_too_slow(exc: BaseException) -> bool:
    """Whether ``exc`` (as requests raises it) comes of a :class:`HeadTooSlow`."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, HeadTooSlow):
            return True
        todo += [e for e in (err.__cause__, err.__context__, *err.args) if isinstance(e, BaseException)]
    return False
