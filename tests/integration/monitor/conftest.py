"""Shared fixtures of the monitor tests: one embedded stack, a slow FHIR peer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kit.stack import Stack

CAPABILITY = {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-01-01",
              "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
              "rest": [{"mode": "server", "resource": [{"type": "Patient"}]}]}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack.ephemeral() as running:
        yield running


class SlowFhir:
    """A FHIR peer on 127.0.0.1 that answers GET metadata after ``delay`` seconds."""

    def __init__(self) -> None:
        self.delay = 0.0
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                time.sleep(peer.delay)
                body = json.dumps(CAPABILITY).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SlowFhir:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
