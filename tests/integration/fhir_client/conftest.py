"""Fixtures: the embedded FHIR server, and small uvicorn apps for faults and OAuth, on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from kit.fhir.client import FhirClient, RetryPolicy
from kit.fhir.server import EmbeddedFhirServer
from tests.conftest import free_port

FAST_RETRY = RetryPolicy(max_attempts=3, backoff=0.05, max_backoff=0.2, max_total_wait=5.0)


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yield its origin URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True, name=f"test-app-{port}")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("test app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFhirServer]:
    """The embedded FHIR server on an ephemeral port, with an empty database."""
    folder: Path = tmp_path_factory.mktemp("fhir")
    server = EmbeddedFhirServer(folder / "fhir.db", port=0, export_delay=0.2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(fhir_server: EmbeddedFhirServer) -> Iterator[FhirClient]:
    with FhirClient(fhir_server.base_url, retries=FAST_RETRY, timeout=10) as c:
        yield c
