"""A hostile FHIR server: bodies too large or too slow, credentials steered elsewhere, malformed URLs.

Each server is a small :mod:`http.server` on 127.0.0.1 (ephemeral port) in a thread,
stopped by the test that started it; a few cases use :class:`httpx.MockTransport`
(faults and origins a loopback server cannot produce).
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from kit.config import Secret
from kit.errors import AuthError, FhirError, InvalidInputError, KitError, PeerTimeoutError
from kit.fhir import client as fhir_client
from kit.fhir.auth import BearerAuth, ClientCredentialsAuth
from kit.fhir.client import NO_RETRY, FhirClient, RetryPolicy
from tests.integration.http_peer import QuietHandler, running, trickle

SECRET = "hostile-test-client-secret-7f3a"
PATIENT = {"resourceType": "Patient", "id": "a"}

Route = Callable[["_Handler"], None]


class _Handler(QuietHandler):
    server: _Server

    def _go(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append((self.command, self.path, dict(self.headers), body))
        try:
            self.server.route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_DELETE = _go

    def answer(self, status: int = 200, body: bytes = b"", ctype: str = "application/fhir+json",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def answer_json(self, obj: Any, status: int = 200, ctype: str = "application/fhir+json") -> None:
        self.answer(status, json.dumps(obj).encode(), ctype)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    route: Route
    seen: list[tuple[str, str, dict[str, str], bytes]]
    stop: threading.Event


@contextmanager
def serve(route: Route) -> Iterator[tuple[str, _Server]]:
    """Run ``route`` for every request on 127.0.0.1, an ephemeral port; yield (origin, server)."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.route, srv.seen, srv.stop = route, [], threading.Event()
    with running(srv) as origin:
        try:
            yield origin, srv
        finally:
            srv.stop.set()  # routes that wait on it end before the server shuts down


def _origin(h: _Handler) -> str:
    return f"http://127.0.0.1:{h.server.server_address[1]}"


# -- 1. the size of a body ----------------------------------------------------------------------------

def _patient_of_size(n: int) -> bytes:
    return b'{"resourceType":"Patient","id":"a","text":"' + b"A" * n + b'"}'


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip-bomb", "plain"])
def test_a_body_over_max_response_bytes_is_refused(gzip: bool) -> None:
    big = _patient_of_size(4 << 20)  # 4 MiB decompressed; about 4 KB as gzip
    wire = zlib.compress(big, 9, wbits=31) if gzip else big

    def route(h: _Handler) -> None:
        h.answer(200, wire, headers={"Content-Encoding": "gzip"} if gzip else {})

    with serve(route) as (url, srv), \
            FhirClient(url + "/fhir", retries=NO_RETRY, timeout=5, max_response_bytes=256 * 1024) as c:
        with pytest.raises(fhir_client.ResponseTooLargeError, match="max_response_bytes=262144") as info:
            c.read("Patient", "a")
        assert isinstance(info.value, FhirError)
        assert len(srv.seen) == 1  # not retried: the same answer would come again
    if gzip:
        assert len(wire) < 64 * 1024


def test_a_body_within_max_response_bytes_is_read_and_decompressed() -> None:
    body = _patient_of_size(100_000)
    wire = zlib.compress(body, 9, wbits=31)

    def route(h: _Handler) -> None:
        h.answer(200, wire, headers={"Content-Encoding": "gzip"})

    with serve(route) as (url, _), \
            FhirClient(url + "/fhir", retries=NO_RETRY, timeout=5, max_response_bytes=len(body)) as c:
        assert len(c.read("Patient", "a")["text"]) == 100_000
        assert c.send("GET", url + "/fhir/Patient/a").content == body


def test_a_streamed_body_is_not_limited() -> None:
    """Bulk Data downloads stream (``stream=True``): the caller bounds them, not the limit."""
    lines = b"".join(json.dumps({"resourceType": "Patient", "id": str(i)}).encode() + b"\n"
                     for i in range(2000))

    def route(h: _Handler) -> None:
        h.answer(200, lines, ctype="application/fhir+ndjson")

    with serve(route) as (url, _), \
            FhirClient(url + "/fhir", retries=NO_RETRY, timeout=5, max_response_bytes=1024) as c:
        response = c.send("GET", url + "/fhir/file.ndjson", stream=True)
        try:
            assert b"".join(response.iter_bytes()) == lines
        finally:
            response.close()


def test_the_limits_have_documented_defaults() -> None:
    with FhirClient("http://127.0.0.1:9/fhir", timeout=3) as c:
        assert c.max_response_bytes == fhir_client.DEFAULT_MAX_RESPONSE_BYTES == 256 * 1024 * 1024
        assert c.total_timeout == fhir_client.TOTAL_TIMEOUT_FACTOR * 3 == 30
        assert (c.max_pages, c.max_resources) == (100_000, 10_000_000)
    with pytest.raises(KitError):
        FhirClient("http://127.0.0.1:9/fhir", max_response_bytes=0)
    for bad in (0, -1, 2.5, True, "10"):
        for name in ("max_pages", "max_resources"):
            with pytest.raises(InvalidInputError, match=name):
                FhirClient("http://127.0.0.1:9/fhir", **{name: bad})
    with pytest.raises(KitError):
        FhirClient("http://127.0.0.1:9/fhir", total_timeout=-1)


# -- 2. a body that never ends -------------------------------------------------------------------------

def _trickle(h: _Handler, data: bytes) -> None:
    """Send ``data`` a byte every 20 ms (well inside any read timeout) until the test ends."""
    trickle(h.wfile, data, 0.02, h.server.stop)


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_trickled_answer_ends_at_total_timeout(part: str) -> None:
    """httpx bounds each read, not a request: a body, or a status line and headers, a byte at a
    time, each inside ``timeout``, would hold the request for as long as the server likes."""
    def route(h: _Handler) -> None:
        if part == "headers":
            return _trickle(h, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 5000)
        h.send_response(200)
        h.send_header("Content-Type", "application/fhir+json")
        h.send_header("Content-Length", "100000000")
        h.end_headers()
        h.wfile.flush()
        _trickle(h, b" " * 400)

    retry = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.01)
    with serve(route) as (url, srv), \
            FhirClient(url + "/fhir", retries=retry, timeout=2, total_timeout=0.5) as c:
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError, match="total_timeout=0.5"):
            c.read("Patient", "a")
        assert time.monotonic() - start < 4  # the deadline: the trickle lasts 8 s (body), 100 s (headers)
        assert len(srv.seen) == 1  # the deadline is the whole budget: not retried


def test_an_upload_read_slowly_ends_at_total_timeout() -> None:
    """A server that reads a request body a little at a time (each send inside ``timeout``)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    stop = threading.Event()

    def sink() -> None:
        conn, _ = sock.accept()
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            while not stop.wait(0.02) and conn.recv(4096):
                pass

    reader = threading.Thread(target=sink, daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    try:
        with FhirClient(url, retries=NO_RETRY, timeout=2, total_timeout=0.5) as c:
            start = time.monotonic()
            with pytest.raises(PeerTimeoutError, match="not answered within total_timeout=0.5"):
                c.send("POST", url + "/Binary", content=b"x" * (64 << 20),
                       headers={"Content-Type": "application/octet-stream"})
            assert time.monotonic() - start < 4  # 64 MiB at 200 KB/s: 5 minutes
    finally:
        stop.set()
        sock.close()
        reader.join(5)


def test_the_deadline_ends_with_its_request() -> None:
    """A body streamed to the caller is read after the request returned: bounded per read by
    ``timeout``, not by ``total_timeout`` (a Bulk Data file takes as long as it takes); and
    a request after a timed-out one has its own deadline."""
    def route(h: _Handler) -> None:
        if h.path.endswith("/slow"):
            return _trickle(h, b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 5000)
        body = b"x" * 60
        h.send_response(200)
        h.send_header("Content-Type", "application/fhir+ndjson")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        _trickle(h, body)  # 1.2 s: more than the total_timeout

    with serve(route) as (url, _), \
            FhirClient(url + "/fhir", retries=NO_RETRY, timeout=2, total_timeout=0.5) as c:
        with pytest.raises(PeerTimeoutError, match="total_timeout"):
            c.send("GET", url + "/fhir/slow")
        response = c.send("GET", url + "/fhir/file.ndjson", stream=True)
        try:
            assert b"".join(response.iter_bytes()) == b"x" * 60
        finally:
            response.close()


# -- 3. where the client secret goes ----------------------------------------------------------------

@contextmanager
def _two_origins(route_a: Route) -> Iterator[tuple[str, _Server, str, _Server]]:
    """A: the FHIR server (``route_a``); B: another origin that would take anything."""
    def route_b(h: _Handler) -> None:
        if h.path == "/token":
            return h.answer_json({"access_token": "token-from-b", "token_type": "bearer"},
                                 ctype="application/json")
        return h.answer_json(PATIENT)

    with serve(route_b) as (b, b_srv), serve(route_a) as (a, a_srv):
        a_srv.other = b  # type: ignore[attr-defined]
        yield a, a_srv, b, b_srv


def _leaked(seen: list[tuple[str, str, dict[str, str], bytes]]) -> bool:
    pair = base64.b64encode(f"client:{SECRET}".encode()).decode()
    return any(SECRET.encode() in body or any(SECRET in v or pair in v for v in headers.values())
               for _, _, headers, body in seen)


@pytest.mark.parametrize("method", ["basic", "post"])
def test_a_discovered_token_endpoint_on_another_http_origin_is_refused(method: str) -> None:
    def route_a(h: _Handler) -> None:
        if h.path.endswith("/.well-known/smart-configuration"):
            return h.answer_json({"token_endpoint": h.server.other + "/token"},  # type: ignore[attr-defined]
                                 ctype="application/json")
        return h.answer_json(PATIENT)

    with _two_origins(route_a) as (a, _, b, b_srv):
        auth = ClientCredentialsAuth(None, "client", Secret(SECRET), method=method)  # type: ignore[arg-type]
        with FhirClient(a + "/fhir", auth=auth, retries=NO_RETRY, timeout=5) as c:
            with pytest.raises(AuthError, match=b.replace(".", r"\.") + "/token"):
                c.read("Patient", "a")
        assert b_srv.seen == []


@pytest.mark.parametrize("method", ["basic", "post"])
def test_a_token_request_does_not_follow_a_redirect(method: str) -> None:
    def route_a(h: _Handler) -> None:
        if h.path.endswith("/.well-known/smart-configuration"):
            return h.answer_json({"token_endpoint": _origin(h) + "/token"}, ctype="application/json")
        if h.path == "/token":
            return h.answer(307, headers={"Location": h.server.other + "/token"})  # type: ignore[attr-defined]
        return h.answer_json(PATIENT)

    with _two_origins(route_a) as (a, _, _b, b_srv):
        auth = ClientCredentialsAuth(None, "client", Secret(SECRET), method=method)  # type: ignore[arg-type]
        with FhirClient(a + "/fhir", auth=auth, retries=NO_RETRY, timeout=5) as c:
            with pytest.raises(AuthError, match="redirect"):
                c.read("Patient", "a")
        assert b_srv.seen == []
        assert not _leaked(b_srv.seen)


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def test_a_discovered_https_token_endpoint_elsewhere_is_used() -> None:
    """The usual EHR set-up (an authorisation server on its own https host) keeps working."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(302, headers={"Location": "/fhir/smart-config.json"})
        if request.url.path == "/fhir/smart-config.json":
            return httpx.Response(200, json={"token_endpoint": "https://auth.example.org/token"})
        if request.url.host == "auth.example.org":
            return httpx.Response(200, json={"access_token": "tok", "token_type": "bearer"})
        assert request.headers["Authorization"] == "Bearer tok"
        return httpx.Response(200, json=PATIENT)

    auth = ClientCredentialsAuth(None, "client", Secret(SECRET))
    with FhirClient("https://fhir.example.org/fhir", auth=auth, retries=NO_RETRY,
                    transport=_mock(handler)) as c:
        assert c.read("Patient", "a") == PATIENT
    assert "https://auth.example.org/token" in asked


# -- 4. typed errors for malformed URLs and JSON -------------------------------------------------------

def test_a_control_character_in_a_url_is_a_fhir_error() -> None:
    with FhirClient("http://127.0.0.1:9/fhir", retries=NO_RETRY, timeout=1) as c:
        with pytest.raises(FhirError, match="not a valid URL"):
            c.send("GET", "http://127.0.0.1:9/fhir/Patient/a\x01")


def test_a_malformed_location_after_a_write_is_a_fhir_error() -> None:
    def route(h: _Handler) -> None:
        h.answer(201, headers={"Location": "http://[::1"})

    with serve(route) as (url, _), FhirClient(url + "/fhir", retries=NO_RETRY, timeout=5) as c:
        with pytest.raises(FhirError, match="Location"):
            c.create({"resourceType": "Patient"})


def test_a_malformed_redirect_target_is_a_typed_error() -> None:
    def route(h: _Handler) -> None:
        h.answer(302, headers={"Location": "http://[::1/fhir/Patient/a"})

    retry = RetryPolicy(max_attempts=3, backoff=0.01, max_backoff=0.01)
    with serve(route) as (url, srv), FhirClient(url + "/fhir", retries=retry, timeout=5) as c:
        with pytest.raises(FhirError, match="redirect to a malformed URL"):
            c.read("Patient", "a")
        assert len(srv.seen) == 1  # a malformed answer is not retried


@pytest.mark.parametrize("endpoint", ["http://[::1/token", "{origin}/tok\x01en", "relative/token"])
def test_a_malformed_discovered_token_url_is_an_auth_error(endpoint: str) -> None:
    def route(h: _Handler) -> None:
        if h.path.endswith("/.well-known/smart-configuration"):
            return h.answer_json({"token_endpoint": endpoint.format(origin=_origin(h))},
                                 ctype="application/json")
        return h.answer_json(PATIENT)

    with serve(route) as (url, _):
        auth = ClientCredentialsAuth(None, "client", Secret(SECRET))
        with FhirClient(url + "/fhir", auth=auth, retries=NO_RETRY, timeout=5) as c:
            with pytest.raises(AuthError, match="token endpoint"):
                c.read("Patient", "a")


@pytest.mark.parametrize("where", ["discovery", "token"])
def test_deeply_nested_json_from_the_auth_endpoints_is_an_auth_error(where: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000

    def route(h: _Handler) -> None:
        if h.path.endswith("/.well-known/smart-configuration"):
            if where == "discovery":
                return h.answer(200, deep, ctype="application/json")
            return h.answer_json({"token_endpoint": _origin(h) + "/token"}, ctype="application/json")
        if h.path == "/token":
            return h.answer(200, deep, ctype="application/json")
        return h.answer_json(PATIENT)

    with serve(route) as (url, _):
        auth = ClientCredentialsAuth(None, "client", Secret(SECRET))
        with FhirClient(url + "/fhir", auth=auth, retries=NO_RETRY, timeout=5) as c:
            with pytest.raises(AuthError):
                c.read("Patient", "a")


# -- 5. credentials on a redirect ----------------------------------------------------------------------

def test_a_cross_origin_redirect_carries_no_credential_headers() -> None:
    def route_a(h: _Handler) -> None:
        return h.answer(302, headers={"Location": h.server.other + "/fhir/Patient/a"})  # type: ignore[attr-defined]

    with _two_origins(route_a) as (a, _, _b, b_srv):
        with FhirClient(a + "/fhir", auth=BearerAuth(Secret("bearer-tok-123")), retries=NO_RETRY, timeout=5,
                        headers={"X-Api-Key": "apikey-456", "Proxy-Authorization": "Basic cHJveHk6cHc=",
                                 "Cookie": "session=1"}) as c:
            assert c.read("Patient", "a") == PATIENT
        assert len(b_srv.seen) == 1
        sent = {k.lower() for k in b_srv.seen[0][2]}
        assert not sent & {"authorization", "x-api-key", "proxy-authorization", "cookie"}, sent


def test_a_same_origin_redirect_keeps_the_credentials() -> None:
    def route(h: _Handler) -> None:
        if h.path == "/fhir/Patient/a":
            return h.answer(301, headers={"Location": "/fhir/Patient/b"})
        return h.answer_json(PATIENT)

    with serve(route) as (url, srv), FhirClient(url + "/fhir", auth=BearerAuth(Secret("bearer-tok-123")),
                                                retries=NO_RETRY, timeout=5,
                                                headers={"X-Api-Key": "apikey-456"}) as c:
        assert c.read("Patient", "a") == PATIENT
        (_, first, h1, _), (_, second, h2, _) = srv.seen
        assert (first, second) == ("/fhir/Patient/a", "/fhir/Patient/b")
        assert h2["Authorization"] == "Bearer bearer-tok-123" and h2["X-Api-Key"] == "apikey-456"


# -- 6. the retry log and odd token lifetimes -----------------------------------------------------------

def test_the_retry_log_counts_against_max_attempts_for_read_timeouts(
        caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    retry = RetryPolicy(max_attempts=3, max_connect_attempts=7, backoff=0.01, max_backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="kit.fhir.client"), \
            FhirClient("http://fhir.example.org/fhir", retries=retry, transport=_mock(handler)) as c:
        with pytest.raises(PeerTimeoutError, match="gave up after 3 attempts"):
            c.read("Patient", "a")
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2
    assert "retry 2/3" in retries[0] and "retry 3/3" in retries[1], retries


def test_the_retry_log_counts_against_max_connect_attempts_for_refused_connections(
        caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    retry = RetryPolicy(max_attempts=5, max_connect_attempts=2, backoff=0.01, max_backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="kit.fhir.client"), \
            FhirClient("http://fhir.example.org/fhir", retries=retry, transport=_mock(handler)) as c:
        with pytest.raises(KitError):
            c.read("Patient", "a")
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert ["retry 2/2" in m for m in retries] == [True], retries


@pytest.mark.parametrize("expires_in", [-100, "NaN", "-Infinity"])
def test_a_negative_or_nan_expires_in_means_no_expiry_given(expires_in: Any) -> None:
    tokens: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            tokens.append("x")
            return httpx.Response(200, json={"access_token": "tok", "token_type": "bearer",
                                             "expires_in": expires_in})
        return httpx.Response(200, json=PATIENT)

    auth = ClientCredentialsAuth("https://fhir.example.org/token", "client", Secret(SECRET))
    with FhirClient("https://fhir.example.org/fhir", auth=auth, retries=NO_RETRY,
                    transport=_mock(handler)) as c:
        for _ in range(3):
            c.read("Patient", "a")
    assert len(tokens) == 1
