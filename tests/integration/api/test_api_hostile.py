"""Hostile peers on raw sockets: oversized, trickled, chunked and deeply nested bodies, a bad Host.

Each is refused with a problem answer; afterwards the API answers a good request at normal speed and
still holds what it acknowledged before.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kit.services.api import serve
from kit.stack import Stack
from tests.integration.api.helpers import ADMIN_KEY, RunningApi, api_settings, running_api

pytestmark = pytest.mark.timeout(120)

LIMIT = 4096
SIU = "/api/v1/scheduling/siu?send=false"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    with (
        Stack.ephemeral(services=("mllp",)) as stack,
        running_api(
            stack, tmp_path_factory.mktemp("api") / "ws", max_json_body=LIMIT, body_timeout=1.0
        ) as running,
    ):
        yield running


def _raw(api: RunningApi, data: bytes, *, pause: float = 0.0, rest: bytes = b"") -> bytes:
    """Send ``data`` (then ``rest`` after ``pause`` s) on a raw connection; return what came back."""
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=15) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)
            try:
                sock.sendall(rest)
            except OSError:
                pass
        chunks = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in chunk:
                break
        return b"".join(chunks)


def _head(length: int | None, *, path: str = SIU, host: str = "127.0.0.1", chunked: bool = False) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"X-API-Key: {ADMIN_KEY}",
        "Content-Type: application/json",
    ]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _siu(api: RunningApi, placer: str) -> int:
    body = {"placer_appointment_id": placer, "start": "2026-04-01T08:00:00", "modality": "CT"}
    with api.client("write") as c:
        return c.post(SIU, json=body).status_code


def test_hostile_bodies_are_refused_and_nothing_acknowledged_is_lost(api: RunningApi) -> None:
    assert _siu(api, "BEFORE-1") == 201  # acknowledged before the attack
    declared = _raw(api, _head(10**9))
    assert _status(declared) == 413 and b"application/problem+json" in declared
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    assert _status(_raw(api, _head(None, chunked=True) + body)) == 413
    assert _status(_raw(api, _head(100) + b'{"placer', pause=2.0, rest=b"x" * 92)) == 408
    nested = b"[" * 2000 + b"]" * 2000
    assert _status(_raw(api, _head(len(nested)) + nested)) in (400, 422)
    assert _status(_raw(api, _head(2, host="bad host\x01") + b"{}")) == 400
    not_json = b"\xff\xfe not json"
    assert _status(_raw(api, _head(len(not_json)) + not_json)) in (400, 422)

    with ThreadPoolExecutor(max_workers=8) as pool:  # many at once: each refused, none stops the service
        answers = list(pool.map(lambda _: _status(_raw(api, _head(10**7))), range(32)))
    assert set(answers) == {413}

    started = time.monotonic()
    assert _siu(api, "AFTER-1") == 201
    assert time.monotonic() - started < 2.0  # normal speed
    with api.client("read") as c:
        ids = {a["appointment_id"] for a in c.get("/api/v1/scheduling/appointments").json()["appointments"]}
    assert {"BEFORE-1", "AFTER-1"} <= ids


def test_large_uploads_have_their_own_limit(api: RunningApi, tmp_path: Path) -> None:
    big = b"\0" * (LIMIT * 4)  # over the JSON limit, under the upload limit: read, then refused as not DICOM
    with api.client("write") as c:
        answer = c.post(
            "/api/v1/integration/pacs/store-image",
            content=big,
            headers={"Content-Type": "application/dicom"},
        )
        assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
        wrong = c.post(
            "/api/v1/integration/pacs/store-image", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert wrong.status_code == 415


def test_a_silent_mllp_peer_holds_one_request_not_every_worker(tmp_path: Path) -> None:
    """The MLLP peer accepts and never answers. Each SIU send waited for the kept connection's lock
    while another send waited 30 s on the peer: 45 of them took every worker thread, and even
    /health went unanswered for over a minute. Now a request waits at most HL7_WAIT for the
    connection (then 503, the SIU stored), and /health does not need a worker thread."""
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def accept_and_keep_silent() -> None:
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:  # closed at the end
                return

    threading.Thread(target=accept_and_keep_silent, daemon=True).start()
    with Stack.ephemeral(services=("mllp",)) as stack:
        settings = api_settings(stack)
        settings = dataclasses.replace(settings, hl7=dataclasses.replace(
            settings.hl7, host="127.0.0.1", port=silent.getsockname()[1], timeout=3.0))
        server = serve(settings, port=0, workspace=tmp_path / "ws")
        try:
            answers: list[int] = []

            def post(i: int) -> None:
                with httpx.Client(base_url=server.address, headers={"X-API-Key": ADMIN_KEY}, timeout=60) as c:
                    answers.append(c.post("/api/v1/scheduling/siu", json={
                        "placer_appointment_id": f"SILENT{i}", "start": "2026-04-01T08:00:00",
                        "modality": "CT"}).status_code)

            posts = [threading.Thread(target=post, args=(i,)) for i in range(45)]
            for t in posts:
                t.start()
            time.sleep(1.0)
            started = time.monotonic()
            assert httpx.get(server.address + "/health", timeout=30).status_code == 200
            assert time.monotonic() - started < 10.0  # the silent peer holds its request longer
            for t in posts:
                t.join(60)
            # one 502 (the peer's timeout, the SIU stored); every other request 503 within HL7_WAIT
            assert sorted(set(answers)) == [502, 503] and answers.count(502) == 1, answers
        finally:
            server.stop()
            silent.close()
            for conn in held:
                conn.close()
