"""The embedded FHIR server against a hostile peer, over real HTTP and raw sockets on 127.0.0.1.

About 140 hostile requests (the classes of issue #7 item 16-18 and more: date overflows, huge and
non-ASCII numbers, OR floods, deep nesting, ill-typed Bundle entries, ids outside the grammar,
garbage bytes, lying Content-Length, oversized and trickled bodies, slowloris heads, idle sockets),
then: no answer was a 5xx, every 4xx was an OperationOutcome, the server answers good requests at
normal speed, every write answered 2xx is readable and nothing answered 4xx was written.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from kit.fhir.server import EmbeddedFhirServer

pytestmark = pytest.mark.timeout(240)

MARK = "urn:kit:hostile"
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 48


class Log:
    """What the peer sent and what the server answered."""

    def __init__(self) -> None:
        self.answers: list[tuple[str, int, str]] = []  # (what, status, content-type)
        self.bodies: list[tuple[str, int, bytes]] = []
        self.writes: dict[str, list[int]] = {}  # marker -> statuses of the writes that carried it
        self.closed_without_answer: list[str] = []

    def answer(self, what: str, status: int, ctype: str, body: bytes) -> None:
        self.answers.append((what, status, ctype))
        self.bodies.append((what, status, body))

    def wrote(self, marker: str, status: int) -> None:
        self.writes.setdefault(marker, []).append(status)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFhirServer]:
    with EmbeddedFhirServer(tmp_path_factory.mktemp("hostile") / "fhir.db", max_body=MAX_BODY,
                            head_timeout=HEAD_TIMEOUT, body_timeout=BODY_TIMEOUT, send_timeout=2.0,
                            keep_alive=1.0, max_connections=MAX_CONNECTIONS) as s:
        yield s


def patient(marker: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": MARK, "value": marker}],
            "name": [{"family": "Hostile"}], **extra}


# -- raw sockets ---------------------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, *, wait: float = 5.0, half_close: bool = False
                 ) -> tuple[int | None, bytes, float]:
    """Send ``data``, read until the server closes or a full response arrived: (status, body, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may close early (413) while we still send
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return (*_read_response(sock, wait), time.monotonic() - started)


def _read_response(sock: socket.socket, wait: float) -> tuple[int | None, bytes]:
    buf = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    if not buf.startswith(b"HTTP/1.1 "):
        return None, buf
    head, _, body = buf.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def check_raw(log: Log, what: str, status: int | None, body: bytes) -> None:
    if status is None:
        log.closed_without_answer.append(what)
        return
    log.answer(what, status, "application/fhir+json" if body.startswith(b"{") else "?", body)


# -- the hostile list ----------------------------------------------------------------------------


def http_attacks(c: httpx.Client, log: Log, pid: str) -> None:
    """About 120 hostile requests over HTTP."""
    n = iter(range(10**6))

    def send(what: str, method: str, url: str, marker: str | None = None, **kw: Any) -> httpx.Response:
        r = c.request(method, url, **kw)
        log.answer(what, r.status_code, r.headers.get("content-type", ""), r.content)
        if marker is not None:
            log.wrote(marker, r.status_code)
        return r

    dates = ["ap0001", "9999-12-31T23:59:59Z", "gt9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00+14:00",
             "٢٠٢٦", "2026-02-30", "ne0000", "eb9999-12-31T23:59:59-14:00", "2026-01-01T25:00:00Z", "9" * 30]
    for param in ("birthdate", "_lastUpdated"):
        for value in dates:
            send(f"date {param}={value}", "GET", "/Patient", params={param: value})
    numbers = ["²", "¹⁰", "١٠", "-1", "99999999999999999999", "9223372036854775808", "1e3", " 5", "0x10", ""]
    for param in ("_count", "_offset"):
        for value in numbers:
            send(f"number {param}={value!r}", "GET", "/Observation", params={param: value})
    for value in numbers:
        send(f"vread {value!r}", "GET", f"/Patient/{pid}/_history/{value or 'x'}")
    victim = send("victim", "POST", "/Patient", json=patient("victim")).json()["id"]  # overwritten below
    for value in ("²", "99999999999999999999", "١", "W/", "garbage", 'W/"2"', '"1"'):
        m = f"H{next(n)}"  # only the last If-Match is right, so only its marker is stored
        send(f"If-Match {value!r}", "PUT", f"/Patient/{victim}", m,
             json={**patient(m), "id": victim}, headers={"If-Match": value.encode()})
    for count in (101, 1200):
        values = ",".join(f"v{i}" for i in range(count))
        send(f"OR x{count}", "GET", "/Patient", params={"identifier": values})
        send(f"_id x{count}", "GET", "/Patient", params={"_id": ",".join(f"i{i}" for i in range(count))})
        send(f"form OR x{count}", "POST", "/Patient/_search",
             data={"identifier": ",".join(f"v{i}" for i in range(count))})
    send("URL over the head limit", "GET", "/Patient", params={"identifier": ",".join(["v"] * 12000)})
    for count in (65, 200):
        send(f"{count} params", "GET", "/Patient", params=[("family", f"f{i}") for i in range(count)])
    send("11 _include", "GET", "/Observation", params=[("_include", "Observation:subject")] * 11)
    send("_include unknown", "GET", "/Observation", params={"_include": "Observation:nothing"})
    send("_sort x200", "GET", "/Patient", params={"_sort": ",".join(["family"] * 200)})
    for depth in (60, 125):
        ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
        for _ in range(depth):
            ext = {"url": "http://example.org/x", "extension": [ext]}
        m = f"H{next(n)}"
        send(f"extension depth {depth}", "POST", "/Patient", m, json=patient(m, extension=[ext]))
    for depth in (150, 2000):
        m = f"H{next(n)}"
        raw = orjson.dumps(patient(m))[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
        send(f"list depth {depth}", "POST", "/Patient", m, content=raw,
             headers={"content-type": "application/fhir+json"})
    send("form search", "POST", "/Patient/_search", data={"family": "Hostile"})
    send("json search body", "POST", "/Patient/_search", json={"family": "Hostile"})
    send("multipart search", "POST", "/Patient/_search", files={"family": b"Hostile"})
    send("binary search body", "POST", "/Patient/_search", content=b"\xff\x00=%%",
         headers={"content-type": "application/x-www-form-urlencoded"})
    send("empty search body", "POST", "/Patient/_search")
    bad_requests: list[Callable[[str], dict[str, Any]]] = [
        lambda m: {"method": "PUT", "url": f"Patient/{m}", "ifMatch": 1},
        lambda m: {"method": "PUT", "url": f"Patient/{m}", "ifMatch": ["W/\"1\""]},
        lambda m: {"method": "PUT", "url": f"Patient/{m}", "ifMatch": {"v": 1}},
        lambda m: {"method": "POST", "url": "Patient", "ifNoneExist": {"identifier": m}},
        lambda m: {"method": ["POST"], "url": "Patient"},
        lambda m: {"method": "POST", "url": 12},
        lambda m: {"method": "PUT", "url": "Patient/患者"},
        lambda m: {"method": "PUT", "url": "Patient/" + "x" * 65},
        lambda m: {"method": "GET", "url": "Patient/x/_history/²"},
    ]
    for btype in ("batch", "transaction"):
        for make in bad_requests:
            m = f"H{next(n)}"
            body = {"resourceType": "Bundle", "type": btype, "entry": [
                {"resource": {**patient(m), "id": m}, "request": make(m)}]}
            r = send(f"{btype} entry {make(m)}", "POST", "/", json=body)
            _bundle_writes(log, r, [m])
        for full_url in (12, {"a": 1}, ["urn:uuid:1"]):
            m = f"H{next(n)}"
            body = {"resourceType": "Bundle", "type": btype, "entry": [
                {"fullUrl": full_url, "resource": patient(m),
                 "request": {"method": "POST", "url": "Patient"}}]}
            r = send(f"{btype} fullUrl {full_url!r}", "POST", "/", json=body)
            _bundle_writes(log, r, [m])
        for shape in ({"entry": {"x": 1}}, {"entry": [1, "x"]}, {"entry": [{"request": "GET"}]},
                      {"entry": [{"resource": "Patient", "request": {"method": "POST", "url": "Patient"}}]}):
            send(f"{btype} shape {shape}", "POST", "/",
                 json={"resourceType": "Bundle", "type": btype, **shape})
    for rid in ("患者", "Ärzte", "x" * 65, "a_b", "a:b", "a b", "é", "a%00b"):
        for with_id in (False, True):
            m = f"H{next(n)}"
            body = {**patient(m), "id": rid} if with_id else patient(m)
            send(f"PUT id {rid!r}", "PUT", f"/Patient/{rid}", m, json=body)
    for rid in ("-", "a..b", "A.b-9", "x" * 64):  # odd but valid ids
        m = f"H{next(n)}"
        r = send(f"PUT valid id {rid!r}", "PUT", f"/Patient/{rid}", m, json={**patient(m), "id": rid})
        assert r.status_code in (200, 201), r.text
    m = f"H{next(n)}"
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(m), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**patient(m + "b"), "id": "患者"},
         "request": {"method": "PUT", "url": "Patient/患者"}}]}
    _bundle_writes(log, send("transaction with one bad id", "POST", "/", json=tx), [m, m + "b"])
    m = f"H{next(n)}"
    ine = {"resource": patient(m), "request": {"method": "POST", "url": "Patient",
                                               "ifNoneExist": f"identifier={MARK}|{m}"}}
    for _ in range(2):
        r = send("batch ifNoneExist", "POST", "/", json={"resourceType": "Bundle", "type": "batch",
                                                         "entry": [ine, ine]})
        _bundle_writes(log, r, [m, m])
    for path in ("/NotAType", "/patient", "/Patient$", "/ẞ", "/Patient/x/y/z/w"):
        send(f"path {path}", "GET", path)
    for good in range(8):  # good writes among the bad ones
        m = f"H{next(n)}"
        send(f"good POST {good}", "POST", "/Patient", m, json=patient(m))
    for header, value in (("Prefer", b"return=\xff\xfe"), ("If-None-Exist", b"identifier=\xe6\x82\xa3"),
                          ("Content-Type", b"application/fhir+json; charset=\xff")):
        m = f"H{next(n)}"
        send(f"header {header}", "POST", "/Patient", m, json=patient(m), headers={header: value})
    send("PATCH", "PATCH", f"/Patient/{pid}", json=[])
    send("xml", "POST", "/Patient", content=b"<Patient/>", headers={"content-type": "application/fhir+xml"})


def _bundle_writes(log: Log, r: httpx.Response, markers: list[str]) -> None:
    if r.status_code != 200:
        for m in markers:
            log.wrote(m, r.status_code)
        return
    entries = r.json()["entry"]
    for m, e in zip(markers, entries, strict=True):
        log.wrote(m, int(e["response"]["status"].split()[0]))


def raw_attacks(port: int, log: Log) -> None:
    """Raw-socket attacks (garbage, lying lengths, oversized and trickled bodies, bad heads)."""
    base = "/fhir/R4"

    def post(path: str, body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
        size = len(body) if length is None else length
        return (f"POST {base}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n"
                f"Content-Length: {size}\r\n").encode() + extra + b"\r\n" + body

    rng = os.urandom
    cases: list[tuple[str, bytes, bool]] = [
        ("random bytes", rng(512), False),
        ("random bytes with a blank line", rng(256) + b"\r\n\r\n", False),
        ("NUL bytes", b"\x00" * 1024 + b"\r\n\r\n", False),
        ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", False),
        ("no Host", b"GET " + base.encode() + b"/metadata HTTP/1.1\r\n\r\n", False),
        ("Host [", b"GET " + base.encode() + b"/metadata HTTP/1.1\r\nHost: [\r\n\r\n", False),
        ("Host with spaces", b"GET " + base.encode() + b"/metadata HTTP/1.1\r\nHost: a b c\r\n\r\n", False),
        ("header over 16 KB", b"GET " + base.encode() + b"/metadata HTTP/1.1\r\nHost: x\r\nX-Big: "
         + b"a" * 20000 + b"\r\n\r\n", False),
        ("two Content-Lengths", post("/Patient", b"{}", extra=b"Content-Length: 5\r\n"), False),
        ("negative Content-Length", post("/Patient", b"{}", length=-1), False),
        ("huge Content-Length, small body", post("/Patient", b"{}", length=10**15), False),
        ("Content-Length over the limit", post("/Patient", b"x" * (MAX_BODY + 10)), False),
        ("bad chunked encoding", b"POST " + base.encode() + b"/Patient HTTP/1.1\r\nHost: x\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", False),
        ("chunked body over the limit", b"POST " + base.encode() + b"/Patient HTTP/1.1\r\nHost: x\r\n"
         b"Transfer-Encoding: chunked\r\nContent-Type: application/fhir+json\r\n\r\n"
         + b"".join(b"1000\r\n" + b"y" * 0x1000 + b"\r\n" for _ in range(20)) + b"0\r\n\r\n", False),
        ("deep JSON", post("/Patient", b"[" * 100000 + b"]" * 100000), False),
        ("NUL in the path", b"GET " + base.encode() + b"/Patient/%00 HTTP/1.1\r\nHost: x\r\n\r\n", False),
        ("non-UTF-8 path", b"GET " + base.encode() + b"/Patient/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", False),
        ("half-closed request", b"GET " + base.encode() + b"/metadata HTTP/1.1\r\nHost: x\r\n", True),
    ]
    for what, data, half in cases:
        status, body, _ = raw_exchange(port, data, half_close=half)
        check_raw(log, f"raw {what}", status, body)
    # declared 1000 bytes, sent 10, then silence: 408 after the body deadline
    status, body, took = raw_exchange(port, post("/Patient", b'{"resource', length=1000), wait=10)
    check_raw(log, "raw trickled body", status, body)
    assert status == 408 and took < BODY_TIMEOUT + 3, (status, took)
    # two good requests pipelined in one write are both answered
    one = b"GET " + base.encode() + b"/metadata HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(one + one)
        sock.shutdown(socket.SHUT_WR)
        answers = b""
        while chunk := sock.recv(65536):
            answers += chunk
    assert answers.count(b"HTTP/1.1 200 ") == 2, answers[:300]


def slowloris(port: int, log: Log, *, sockets: int = 12) -> None:
    """Heads sent a byte at a time, and silent sockets: all closed soon after the head deadline."""
    head = b"GET /fhir/R4/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(sockets)]
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(sockets)]
    started = time.monotonic()
    open_ = set(range(sockets))
    closed_at: dict[int, float] = {}
    try:
        for i in range(len(head)):
            if not open_ or time.monotonic() - started > HEAD_TIMEOUT + 4:
                break
            for k in list(open_):
                try:
                    socks[k].sendall(head[i:i + 1])
                except OSError:
                    closed_at[k] = time.monotonic() - started
                    open_.discard(k)
            time.sleep(0.1)
        for k in list(open_):  # a closed socket may accept a few sends; reading tells
            socks[k].settimeout(0.5)
            try:
                if socks[k].recv(4096) is not None:
                    closed_at[k] = time.monotonic() - started
                    open_.discard(k)
            except OSError:
                pass
        took = time.monotonic() - started
        assert not open_, f"{len(open_)} slowloris connections still open after {took:.1f} s"
        assert max(closed_at.values()) < HEAD_TIMEOUT + 3, closed_at
        for k, sock in enumerate(idle):
            status, body = _read_response(sock, HEAD_TIMEOUT + 3)
            check_raw(log, f"idle socket {k}", status, body)
            assert status in (None, 408), status
        assert time.monotonic() - started < HEAD_TIMEOUT + 8
    finally:
        for sock in socks + idle:
            sock.close()


def connection_flood(port: int, log: Log) -> None:
    """More connections than the cap: the extra ones get 503 at once, the server recovers."""
    socks = []
    try:
        for _ in range(MAX_CONNECTIONS + 8):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        refused = 0
        for sock in socks[MAX_CONNECTIONS:]:
            status, body = _read_response(sock, 2)
            if status == 503:
                assert orjson.loads(body)["resourceType"] == "OperationOutcome"
                refused += 1
        assert refused >= 1
    finally:
        for sock in socks:
            sock.close()


# -- the test ------------------------------------------------------------------------------------


def good_requests_are_fast(c: httpx.Client, pid: str) -> None:
    timings = []
    for _ in range(10):
        t = time.monotonic()
        assert c.get(f"/Patient/{pid}").status_code == 200
        r = c.get("/Patient", params={"identifier": f"{MARK}|anchor"})
        assert r.status_code == 200 and r.json()["total"] == 1
        timings.append(time.monotonic() - t)
    assert statistics.median(timings) < 0.5 and max(timings) < 2, timings


def test_hostile_peer(server: EmbeddedFhirServer) -> None:
    log = Log()
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        anchor = c.post("/Patient", json=patient("anchor"))
        assert anchor.status_code == 201
        pid = anchor.json()["id"]
        good_requests_are_fast(c, pid)

        # good traffic keeps flowing while slowloris and idle sockets hold connections
        stop = threading.Event()
        slow_good: list[float] = []

        def good_traffic() -> None:
            with httpx.Client(base_url=server.base_url, timeout=10) as g:
                while not stop.is_set():
                    t = time.monotonic()
                    assert g.get(f"/Patient/{pid}").status_code == 200
                    slow_good.append(time.monotonic() - t)
                    time.sleep(0.05)

        traffic = threading.Thread(target=good_traffic, daemon=True)
        traffic.start()
        try:
            slowloris(server.port, log)
        finally:
            stop.set()
            traffic.join(10)
        assert slow_good and statistics.median(slow_good) < 0.5, slow_good

        http_attacks(c, log, pid)
        raw_attacks(server.port, log)
        connection_flood(server.port, log)
        time.sleep(0.5)

        sent = len(log.answers) + len(log.closed_without_answer)
        print(f"hostile: {sent} requests, {len(log.closed_without_answer)} closed without an answer, "
              f"{sum(any(200 <= s < 300 for s in v) for v in log.writes.values())} writes acknowledged, "
              f"{sum(not any(200 <= s < 300 for s in v) for v in log.writes.values())} refused")
        print("closed without an answer:", [w for w in log.closed_without_answer if not w.startswith("idle")])
        assert sent >= 140, sent
        server_errors = [(w, s) for w, s, _ in log.answers if s >= 500 and not w.startswith("raw flood")]
        assert not server_errors, server_errors
        not_outcomes = [(w, s, b[:120]) for w, s, b in log.bodies
                        if 400 <= s < 500 and not _is_outcome(b)]
        assert not not_outcomes, not_outcomes
        assert any(s == 413 for _, s, _ in log.answers) and any(s == 408 for _, s, _ in log.answers)

        # the server still answers good requests at normal speed ...
        good_requests_are_fast(c, pid)
        # ... every write it acknowledged is readable, nothing it refused was written
        for marker, statuses in log.writes.items():
            acknowledged = any(200 <= s < 300 for s in statuses)
            r = c.get("/Patient", params={"identifier": f"{MARK}|{marker}"})
            assert r.status_code == 200
            assert r.json()["total"] == int(acknowledged), (marker, statuses, r.json()["total"])
            if acknowledged:
                rid = r.json()["entry"][0]["resource"]["id"]
                assert c.get(f"/Patient/{rid}").json()["identifier"][0]["value"] == marker
        assert sum(any(200 <= s < 300 for s in v) for v in log.writes.values()) >= 10
        assert sum(not any(200 <= s < 300 for s in v) for v in log.writes.values()) >= 30


def _is_outcome(body: bytes) -> bool:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome"
            and bool(parsed["issue"]))


def test_slow_reader_is_dropped(tmp_path: Path) -> None:
    """A client that asks for a large answer and never reads it loses its connection, not the server."""
    with EmbeddedFhirServer(tmp_path / "reader.db", send_timeout=1.0, head_timeout=HEAD_TIMEOUT) as s:
        with httpx.Client(base_url=s.base_url, timeout=30) as c:
            text = {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">" + "x" * 20000
                    + "</div>"}
            bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": patient(f"R{i}", text=text), "request": {"method": "POST", "url": "Patient"}}
                for i in range(400)]}
            assert c.post("/", json=bundle).status_code == 200
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(5)
        sock.connect(("127.0.0.1", s.port))
        sock.sendall(b"GET /fhir/R4/Patient?_count=400 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(4)  # never read: the server's send times out and it drops the connection
        with httpx.Client(base_url=s.base_url, timeout=10) as c:
            t = time.monotonic()
            assert c.get("/Patient", params={"_count": "1"}).status_code == 200
            assert time.monotonic() - t < 1
        received = 0
        sock.settimeout(5)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except OSError:
            pass
        sock.close()
        assert received < 400 * 20000, received  # the answer was cut off, not delivered whole
