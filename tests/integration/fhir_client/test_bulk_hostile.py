"""Bulk Data $export against hostile or broken file servers: what a server sends is checked, never trusted.

Each server is a small threaded ``http.server`` on 127.0.0.1 (an ephemeral port), started
and stopped by the test that uses it: it answers the kick-off, a completion manifest
built by the test, and file routes that lie (paths as types, endless bodies, wrong ranges,
wrong resource types, error files that are not OperationOutcomes).
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kit.errors import BulkExportError, InvalidInputError, PeerDisconnectedError
from kit.fhir import bulk
from kit.fhir.bulk import STATE_FILE, BulkExport
from kit.fhir.client import FhirClient
from kit.fhir.policy import NO_RETRY

FileRoute = Callable[["_Handler"], None]
P = b'{"resourceType":"Patient","id":"p%d"}\n'
TEN = b"".join(P % i for i in range(10))
FIVE = b"".join(P % i for i in range(5))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"
        self.manifest: dict[str, Any] = {}
        self.files: dict[str, FileRoute] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = self.path.partition("?")[0]
        srv.requests.append((path, self.headers.get("Range")))
        try:
            if path.endswith("$export"):
                self.body(b"", status=202, headers={"Content-Location": srv.origin + "/status"})
            elif path == "/status":
                self.body(json.dumps(srv.manifest).encode(), ctype="application/json")
            elif path in srv.files:
                srv.files[path](self)
            else:
                self.body(b"", status=404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what a refused download does

    def body(self, data: bytes, *, status: int = 200, ctype: str = "application/fhir+ndjson",
             headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def cut(self, data: bytes, length: int) -> None:
        """Promise ``length`` bytes, send ``data``, and drop the connection."""
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+ndjson")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def chunked(self, chunks: Iterator[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


@contextmanager
def hostile(output: list[dict[str, Any]], error: list[dict[str, Any]] | None = None,
            files: dict[str, FileRoute] | None = None) -> Iterator[tuple[_Server, FhirClient]]:
    """A server with this manifest (``url``s relative to its origin) and file routes; and a client."""
    srv = _Server()

    def absolute(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**i, "url": srv.origin + i["url"]} for i in items]

    srv.manifest = {"transactionTime": "2024-01-01T00:00:00Z", "request": srv.origin + "/fhir/$export",
                    "requiresAccessToken": False, "output": absolute(output), "error": absolute(error or [])}
    srv.files = dict(files or {})
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
                              name="hostile-bulk")
    thread.start()
    try:
        with FhirClient(srv.origin + "/fhir", retries=NO_RETRY, timeout=5) as client:
            yield srv, client
    finally:
        srv.stop.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def _run(client: FhirClient, folder: Path, **kwargs: Any) -> Any:
    return BulkExport(client).run(folder, progress=False, poll_interval=0.01, **kwargs)


def _file_requests(srv: _Server) -> list[tuple[str, str | None]]:
    return [(p, r) for p, r in srv.requests if p.startswith("/file")]


# -- 1. a manifest type names a file: never a path -------------------------------------------------

@pytest.mark.parametrize("kind", ["output", "error"])
@pytest.mark.parametrize("bad", ["../outside/pwned", "ABSOLUTE", "no/such/dir", "Patient.x", "patient",
                                 "CON", ""])
def test_manifest_type_that_is_not_a_type_name_is_refused(tmp_path: Path, bad: str, kind: str) -> None:
    out, outside = tmp_path / "export", tmp_path / "outside"
    outside.mkdir()
    bad = str(tmp_path / "absolute" / "pwned") if bad == "ABSOLUTE" else bad
    (tmp_path / "absolute").mkdir()
    entry = {"type": bad, "url": "/file/1"}
    good = {"type": "Patient", "url": "/file/0"}
    output, error = ([good, entry], []) if kind == "output" else ([good], [entry])
    routes = {"/file/0": lambda h: h.body(P % 0), "/file/1": lambda h: h.body(P % 1)}
    with hostile(output, error, routes) as (srv, c), pytest.raises(BulkExportError) as err:
        _run(c, out)
    assert "not a resource type name" in str(err.value) or "needs a type" in str(err.value)
    assert _file_requests(srv) == []  # refused before anything was downloaded
    assert list(outside.iterdir()) == [] and list((tmp_path / "absolute").iterdir()) == []
    assert not any(p.suffix in (".ndjson", ".part") for p in out.rglob("*"))


def test_manifest_url_that_is_not_a_url_is_refused(tmp_path: Path) -> None:
    """``http://[::1/x`` raised a bare ValueError from the manifest's parse."""
    entry = {"type": "Patient", "url": "http://[::1/file/1"}
    with hostile([entry], [], {}) as (srv, c), pytest.raises(BulkExportError, match="is not an http"):
        _run(c, tmp_path / "export")
    assert _file_requests(srv) == []


def test_manifest_types_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    # on a case-insensitive disk (macOS, Windows) both would be written to Patient.000.ndjson
    output = [{"type": "Patient", "url": "/file/0"}, {"type": "PATIENT", "url": "/file/1"}]
    routes = {"/file/0": lambda h: h.body(P % 0), "/file/1": lambda h: h.body(P % 1)}
    with hostile(output, [], routes) as (srv, c), pytest.raises(BulkExportError, match="only in case"):
        _run(c, tmp_path)
    assert _file_requests(srv) == []


# -- 2. a size cap and a deadline per file ---------------------------------------------------------

def test_defaults_protect_a_workstation() -> None:
    assert bulk.MAX_FILE_BYTES == 16 << 30 and 0 < bulk.DOWNLOAD_TIMEOUT <= 24 * 3600


def test_endless_file_stops_at_max_file_bytes(tmp_path: Path) -> None:
    def endless(h: _Handler) -> None:
        block = P % 1 * 2000
        h.chunked(block for _ in iter(h.server.stop.is_set, True))

    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": endless}) as (srv, c):
        started = time.monotonic()
        with pytest.raises(BulkExportError, match="max_file_bytes"):
            _run(c, tmp_path, max_file_bytes=1 << 20)
        assert time.monotonic() - started < 4
    assert not (tmp_path / "Patient.000.ndjson.part").exists()
    assert not (tmp_path / "Patient.000.ndjson").exists()
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["files"][srv.origin + "/file/p"]["bytes"] == 0


def test_compressed_file_is_capped_by_the_bytes_written(tmp_path: Path) -> None:
    # 100 kB on the wire, 4 MB once decompressed by httpx: the cap counts what reaches the disk
    plain = b"".join(P % i for i in range(120_000))
    packed = gzip.compress(plain)
    assert len(packed) < 1 << 20 < len(plain)

    def bomb(h: _Handler) -> None:
        h.body(packed, headers={"Content-Encoding": "gzip"})

    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": bomb}) as (_, c):
        with pytest.raises(BulkExportError, match="max_file_bytes"):
            _run(c, tmp_path, max_file_bytes=1 << 20)
    assert not (tmp_path / "Patient.000.ndjson.part").exists()


def test_file_too_large_by_content_length_is_refused_before_writing(tmp_path: Path) -> None:
    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": lambda h: h.body(TEN)}) as (_, c):
        with pytest.raises(BulkExportError, match="max_file_bytes"):
            _run(c, tmp_path, max_file_bytes=len(TEN) - 1)
        result = _run(c, tmp_path, max_file_bytes=len(TEN))
    assert result.frame("Patient").height == 10


def test_trickling_file_stops_at_download_timeout(tmp_path: Path) -> None:
    def trickle(h: _Handler) -> None:
        def lines() -> Iterator[bytes]:
            n = 0
            while not h.server.stop.wait(0.02):  # a slow server's pace, not a synchronisation
                n += 1
                yield P % n
        h.chunked(lines())

    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": trickle}) as (_, c):
        started = time.monotonic()
        with pytest.raises(BulkExportError, match="download_timeout"):
            _run(c, tmp_path, download_timeout=0.3)
        assert time.monotonic() - started < 4
    assert not (tmp_path / "Patient.000.ndjson.part").exists()


def test_limits_must_be_positive(tmp_path: Path) -> None:
    with hostile([{"type": "Patient", "url": "/file/p"}], [], {}) as (srv, c):
        for kwargs in ({"max_file_bytes": 0}, {"download_timeout": 0.0}, {"download_timeout": float("nan")}):
            with pytest.raises(InvalidInputError, match="must be positive"):
                _run(c, tmp_path, **kwargs)
    assert srv.requests == []


# -- 3. resuming: the server's range is checked ----------------------------------------------------

def _resumable(second: FileRoute) -> Callable[[_Handler], None]:
    """First request: five whole lines of ten, then the connection drops; later ones: ``second``."""
    def route(h: _Handler) -> None:
        if h.headers.get("Range") is None and not any(p == "/file/p" for p, _ in h.server.requests[:-1]):
            h.cut(FIVE, len(TEN))
        else:
            second(h)
    return route


def _first_run_breaks(c: FhirClient, folder: Path) -> None:
    with pytest.raises(PeerDisconnectedError, match="run again to resume"):
        _run(c, folder)
    assert (folder / "Patient.000.ndjson.part").read_bytes() == FIVE


def test_206_from_byte_0_rewrites_the_file_instead_of_appending(tmp_path: Path) -> None:
    def from_zero(h: _Handler) -> None:
        h.body(TEN, status=206, headers={"Content-Range": f"bytes 0-{len(TEN) - 1}/{len(TEN)}"})

    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": _resumable(from_zero)}) as (srv, c):
        _first_run_breaks(c, tmp_path)
        result = _run(c, tmp_path)
    assert _file_requests(srv)[-1] == ("/file/p", f"bytes={len(FIVE)}-")
    assert result.frame("Patient")["id"].to_list() == [f"p{i}" for i in range(10)]
    assert (tmp_path / "Patient.000.ndjson").read_bytes() == TEN
    assert result.files["resources"].to_list() == [10]


def test_206_at_the_offset_asked_for_is_appended(tmp_path: Path) -> None:
    def honest(h: _Handler) -> None:
        h.body(TEN[len(FIVE):], status=206,
               headers={"Content-Range": f"bytes {len(FIVE)}-{len(TEN) - 1}/{len(TEN)}"})

    with hostile([{"type": "Patient", "url": "/file/p", "count": 10}], [],
                 {"/file/p": _resumable(honest)}) as (_, c):
        _first_run_breaks(c, tmp_path)
        result = _run(c, tmp_path)
    assert (tmp_path / "Patient.000.ndjson").read_bytes() == TEN
    assert result.frame("Patient").height == 10


@pytest.mark.parametrize("content_range", ["bytes 7-{end}/{size}", "", "bytes {have}-20/{size}",
                                           "bytes {have}-{end}/{bigger}", "garbage"])
def test_206_with_another_range_is_refused_and_the_part_removed(tmp_path: Path, content_range: str) -> None:
    text = content_range.format(have=len(FIVE), end=len(TEN) - 1, size=len(TEN), bigger=len(TEN) + 9)

    def liar(h: _Handler) -> None:
        if h.headers.get("Range") is None:  # after the refusal: the whole file, honestly
            h.body(TEN)
        else:
            h.body(TEN[7:], status=206, headers={"Content-Range": text} if text else {})

    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": _resumable(liar)}) as (_, c):
        _first_run_breaks(c, tmp_path)
        with pytest.raises(BulkExportError, match="Content-Range") as err:
            _run(c, tmp_path)
        assert err.value.status_code == 206
        assert not (tmp_path / "Patient.000.ndjson.part").exists()
        result = _run(c, tmp_path)  # the next run starts the file over
    assert result.frame("Patient")["id"].to_list() == [f"p{i}" for i in range(10)]


@pytest.mark.parametrize("content_range", ["bytes */{size}", "bytes */{bigger}", "", "bytes */x"])
def test_416_is_complete_only_when_the_sizes_agree(tmp_path: Path, content_range: str) -> None:
    text = content_range.format(size=len(FIVE), bigger=len(TEN))

    def unsatisfiable(h: _Handler) -> None:
        h.body(b"", status=416, headers={"Content-Range": text} if text else {})

    # the first answer promises more than it sends: the part file holds the whole (five-line) file
    routes = {"/file/p": _resumable(unsatisfiable)}
    with hostile([{"type": "Patient", "url": "/file/p"}], [], routes) as (_, c):
        _first_run_breaks(c, tmp_path)
        if text == f"bytes */{len(FIVE)}":
            assert _run(c, tmp_path).frame("Patient").height == 5
            return
        with pytest.raises(BulkExportError, match="416") as err:
            _run(c, tmp_path)
    assert err.value.status_code == 416
    assert not (tmp_path / "Patient.000.ndjson.part").exists()
    assert not (tmp_path / "Patient.000.ndjson").exists()


# -- 4. a file must hold the manifest's type ------------------------------------------------------

OBS = b'{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}\n'


@pytest.mark.parametrize("body", [
    OBS,
    P % 1 + OBS,
    P % 1 + b'{"id":"o2","contained":[{"resourceType":"Patient"}],"resourceType":"Observation",'
            b'"status":"final","code":{"text":"x"}}\n',
])
def test_file_holding_another_resource_type_is_an_error(tmp_path: Path, body: bytes) -> None:
    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": lambda h: h.body(body)}) as (_, c):
        with pytest.raises(BulkExportError, match=r"Patient\.000\.ndjson .*line \d: a 'Observation'.*"
                                                  r"holds Patient"):
            _run(c, tmp_path)
    assert not list(tmp_path.glob("*.parquet"))


def test_resource_type_hidden_by_a_duplicate_key_is_caught_after_conversion(tmp_path: Path) -> None:
    # the first member says Patient, the last (the one JSON parsers keep) says Observation
    body = P % 1 + b'{"resourceType":"Patient","id":"o1","status":"final","code":{"text":"x"},' \
                   b'"resourceType":"Observation"}\n'
    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": lambda h: h.body(body)}) as (_, c):
        with pytest.raises(BulkExportError, match="Patient.parquet has 1 rows.*hold 2 resources"):
            _run(c, tmp_path)


def test_resource_type_need_not_come_first(tmp_path: Path) -> None:
    body = b'{"id":"a","resourceType":"Patient"}\n\n{ "resourceType" : "Patient", "id":"b"}\n'
    with hostile([{"type": "Patient", "url": "/file/p", "count": 2}], [],
                 {"/file/p": lambda h: h.body(body)}) as (_, c):
        result = _run(c, tmp_path)
    assert result.frame("Patient")["id"].to_list() == ["a", "b"]


# -- 5. lines are counted in bounded memory --------------------------------------------------------

def test_a_huge_line_is_counted_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = 40 << 20
    head = b'{"resourceType":"Patient","id":"big","text":{"status":"generated","div":"'
    tail = b'"}}\n'
    block = b"A" * (1 << 16)

    def huge(h: _Handler) -> None:
        def chunks() -> Iterator[bytes]:
            yield P % 1 + b"\n" + head
            for _ in range(big // len(block)):
                yield block
            yield tail + P % 2
        h.chunked(chunks())

    # the conversion (which holds a line up to kit.fhir.frames_stream.MAX_LINE) is not what is measured
    monkeypatch.setattr(BulkExport, "_convert", lambda self, out, files: {})
    with hostile([{"type": "Patient", "url": "/file/p", "count": 3}], [], {"/file/p": huge}) as (_, c):
        tracemalloc.start()
        try:
            result = _run(c, tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.files["resources"].to_list() == [3]
    assert (tmp_path / "Patient.000.ndjson").stat().st_size > big
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_a_huge_line_of_another_type_is_found_from_its_start(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    body = b'{"resourceType":"Observation","id":"o","note":[{"text":"' + b"B" * (3 << 20) + b'"}]}\n'
    monkeypatch.setattr(BulkExport, "_convert", lambda self, out, files: {})
    with hostile([{"type": "Patient", "url": "/file/p"}], [], {"/file/p": lambda h: h.body(body)}) as (_, c):
        with pytest.raises(BulkExportError, match="line 1: a 'Observation'"):
            _run(c, tmp_path)


# -- 6. error files that are not OperationOutcomes ------------------------------------------------

@pytest.mark.parametrize(("body", "why"), [
    (b"this is not json\n", "not JSON"),
    (b"[1,2]\n", "not an OperationOutcome"),
    (P % 1, "not an OperationOutcome"),
    (b'{"resourceType":"OperationOutcome","issue":7}\n', "without readable issues"),
    (b'{"resourceType":"OperationOutcome","issue":[]}\n', "without readable issues"),
])
def test_unreadable_error_file_is_reported_not_leaked(tmp_path: Path, body: bytes, why: str) -> None:
    routes = {"/file/p": lambda h: h.body(P % 1), "/file/err": lambda h: h.body(body)}
    with hostile([{"type": "Patient", "url": "/file/p"}], [{"type": "OperationOutcome", "url": "/file/err"}],
                 routes) as (_, c):
        with pytest.raises(BulkExportError, match=f"error.OperationOutcome.000.ndjson, line 1: .*{why}"):
            _run(c, tmp_path / "a")
        result = _run(c, tmp_path / "b", fail_on_errors=False)
    assert len(result.errors) == 1 and why in result.errors[0]["diagnostics"]
    assert result.errors[0]["severity"] == "error"
    assert result.frame("Patient").height == 1
