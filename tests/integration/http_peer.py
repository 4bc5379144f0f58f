"""A hostile HTTP peer's scaffolding for the client tests (FHIR, DICOMweb): a quiet HTTP/1.1
handler to subclass, and a server run on a thread on 127.0.0.1 (an ephemeral port) and stopped
by the test that started it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

__all__ = ["QuietHandler", "running", "trickle"]


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (kept connections), nothing logged: each test's handler says what it answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@contextmanager
def running(server: ThreadingHTTPServer, name: str = "hostile-http") -> Iterator[str]:
    """Serve ``server`` (bound to 127.0.0.1) on a thread; yield its origin
    (``http://127.0.0.1:<port>``); shut it down and close it on leaving."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name=name)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def trickle(out: BinaryIO, data: bytes, every: float, stop: threading.Event | None = None) -> None:
    """Write ``data`` to ``out`` a byte every ``every`` seconds (each well inside a client's read
    timeout): until it is all sent, ``stop`` is set, or the client hangs up."""
    for byte in data:
        if (stop or threading.Event()).wait(every):  # a fresh Event: a plain sleep
            return
        try:
            out.write(bytes([byte]))
            out.flush()
        except OSError:  # the client hung up: what a bounded client does
            return
