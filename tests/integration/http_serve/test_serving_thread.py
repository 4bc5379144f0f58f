"""kit._http_serve: every HTTP service's thread and connection guards, in each service's own error shape."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import orjson
import pytest

from kit._http_serve import ServingThread, bind
from kit.errors import PeerError, ServiceFailedError
from kit.fhir.server import EmbeddedFhirServer


async def _app(scope, receive, send):  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _garbage(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"\x00\x01 not http\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def _die(serving: ServingThread) -> None:
    assert serving._server is not None and serving._thread is not None
    serving._server.should_exit = True  # the thread ends without stop(): as if it had died
    serving._thread.join(timeout=10)


def test_a_plain_service_serves_refuses_garbage_as_json_and_a_dead_thread_is_loud() -> None:
    serving = ServingThread("demo", "the demo server")
    sock = bind("127.0.0.1", 0, what="the demo server")
    port = sock.getsockname()[1]
    serving.start(_app, sock, head_timeout=2.0, max_connections=4)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "ok" and serving.running
        answer = _garbage(port)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"application/json" in answer
        assert "invalid HTTP request" in orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"]
        _die(serving)
        assert not serving.running
        assert isinstance(serving.failure, ServiceFailedError) and serving.failure.service == "demo"
        with pytest.raises(OSError):  # never a listener that accepts into a void
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        serving.stop()
    assert serving.failure is not None  # a stop after the death keeps the reason


def test_a_clean_stop_is_no_failure_and_a_taken_port_is_a_peer_error() -> None:
    serving = ServingThread("demo", "the demo server")
    sock = bind("127.0.0.1", 0, what="the demo server")
    port = sock.getsockname()[1]
    serving.start(_app, sock, head_timeout=2.0, max_connections=4)
    with pytest.raises(PeerError, match="cannot bind the demo server to 127.0.0.1"):
        bind("127.0.0.1", port, what="the demo server")
    serving.stop()
    assert serving.failure is None and not serving.running


def test_the_fhir_server_answers_garbage_with_an_outcome_and_reports_a_dead_thread(tmp_path: Path) -> None:
    with EmbeddedFhirServer(db_path=tmp_path / "fhir.db", port=0) as fhir:
        answer = _garbage(fhir.port)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"application/fhir+json" in answer
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["resourceType"] == "OperationOutcome"
        assert fhir.running and fhir.failure is None
        _die(fhir._serving)  # before: the FHIR server had no .failure, so the stack never saw it die
        deadline = time.monotonic() + 5
        while fhir.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(fhir.failure, ServiceFailedError) and fhir.failure.service == "fhir"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", fhir.port), timeout=2).close()


def _guarded(app, send, answer=None):  # type: ignore[no-untyped-def]
    import asyncio
    import logging

    from kit._http_serve import run_guarded

    rejected: list[tuple[int, str]] = []

    async def reject(status: int, message: str) -> None:
        rejected.append((status, message))

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": b""}

    import threading

    errors: list[BaseException] = []

    def run() -> None:  # a thread of its own: the test's thread may hold another test's event loop
        try:
            asyncio.run(run_guarded(app, {"type": "http", "method": "GET", "path": "/x"}, receive, send,
                                    send_timeout=0.2, service="demo", logger=logging.getLogger("test"),
                                    reject=reject, answer=answer))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and not errors, errors
    return rejected


def test_run_guarded_drops_a_reader_that_reads_nothing_and_answers_500_for_a_bug() -> None:
    import asyncio

    async def stuck(message):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3600)  # a peer whose socket never drains

    started = time.monotonic()
    assert _guarded(_app, stuck) == []  # dropped (no answer can be written), not hung
    assert time.monotonic() - started < 5

    async def bug(scope, receive, send):  # type: ignore[no-untyped-def]
        raise KeyError("surprise")

    async def fine(message):  # type: ignore[no-untyped-def]
        pass

    assert _guarded(bug, fine) == [(500, "internal error (KeyError)")]
    assert _guarded(bug, fine, answer=lambda exc: (413, "too big")) == [(413, "too big")]
