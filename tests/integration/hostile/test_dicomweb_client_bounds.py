"""DicomWebClient against a hostile DICOMweb server: an answer's body is bounded while it arrives.

A QIDO-RS gzip bomb, a WADO-RS part far over the bound (plain, gzip, or one that never ends) and
a body trickled a byte at a time each end in a typed error within the bound (memory, time), with
the connection closed and no part written; a normal find, retrieve and store still work under the
defaults and under small bounds that suffice. The hostile server is an :mod:`http.server` on
127.0.0.1 (ephemeral port) in a thread, stopped by the test that started it.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import dcmwrite

from kit.dicom import web
from kit.dicom.web import DicomWebClient
from kit.errors import DicomWebError, InvalidInputError, PeerTimeoutError
from tests.integration.dicomweb_server.conftest import (
    Embedded,
    cohort,
    embedded,  # noqa: F401 - the fixture (one embedded PACS + DICOMweb per module)
    make_ct,
)
from tests.integration.http_peer import QuietHandler, running, trickle
from tests.integration.pacs_client.test_retrieve_integrity import ASKED, ct
from tests.integration.pacs_client.test_retrieve_integrity_web import CTYPE, multipart, part10

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
QIDO_JSON = "application/dicom+json"

Route = Callable[["_Handler"], None]


class _Handler(QuietHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests += 1
        try:
            self.server.route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.server.cut.set()  # the client closed the connection before the body was sent

    def head(self, ctype: str, *, length: int | None = None, encoding: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.end_headers()

    def answer(self, body: bytes, ctype: str, encoding: str | None = None) -> None:
        self.head(ctype, length=len(body), encoding=encoding)
        for start in range(0, len(body), MiB):
            self.wfile.write(body[start:start + MiB])

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    route: Route
    requests: int
    cut: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that closed the connection (as it should) when waiting for its next request


@contextmanager
def serve(route: Route) -> Iterator[tuple[str, _Server]]:
    """Run ``route`` for every GET on 127.0.0.1 (ephemeral port); yield (DICOMweb root, server)."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.route, srv.requests, srv.cut = route, 0, threading.Event()
    with running(srv) as origin:
        yield origin + "/dicom-web", srv


def big_part(sop: str, pixels: int) -> bytes:
    """A whole CT instance of study ASKED (Part 10) with ``pixels`` bytes of (zero) pixel data."""
    ds = ct(ASKED, ASKED + ".1", sop)
    ds.Rows, ds.Columns = pixels // 1024, 1024
    ds.PixelData = bytes(pixels)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def left_in(folder: Path) -> list[str]:
    """Every name under ``folder`` (temporary files included)."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- a) QIDO-RS: a gzip bomb, a body too large -------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", None], ids=["gzip-bomb", "plain"])
def test_a_qido_answer_over_max_response_bytes_is_refused_while_it_arrives(encoding: str | None) -> None:
    size = 64 * MiB if encoding else 16 * MiB
    body = b"[" + b" " * (size - 2) + b"]"  # valid JSON: the old client read it whole and found nothing
    wire = zlib.compress(body, 9, wbits=31) if encoding else body
    del body
    assert not encoding or len(wire) < 128 * 1024

    with serve(lambda h: h.answer(wire, QIDO_JSON, encoding)) as (base, srv):
        client = DicomWebClient(base, timeout=5, max_response_bytes=1 * MiB)
        tracemalloc.start()
        try:
            with pytest.raises(DicomWebError, match=r"larger than max_response_bytes=1048576") as info:
                client.find("STUDY", patient_id="MRN1")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(info.value, web.ResponseTooLargeError)
        assert base in str(info.value)  # names the server
        assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a {size // MiB} MiB answer"
        assert srv.requests == 1
        if not encoding:  # the connection was closed, not read to the end
            assert srv.cut.wait(5)


def test_a_gzip_qido_answer_within_max_response_bytes_is_read() -> None:
    matches = [{"0020000D": {"vr": "UI", "Value": [f"{ASKED}.{i}"]},
                "00100020": {"vr": "LO", "Value": ["MRN1"]}} for i in range(900)]  # 80 KB, under a page
    body = json.dumps(matches).encode()

    with serve(lambda h: h.answer(gzip.compress(body), QIDO_JSON, "gzip")) as (base, _):
        found = DicomWebClient(base, timeout=5, max_response_bytes=len(body)).find(
            "STUDY", return_keys=["study_instance_uid", "patient_id"])
    assert found["study_instance_uid"].to_list() == [f"{ASKED}.{i}" for i in range(900)]


# -- b) WADO-RS: a part far over max_part_bytes --------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", None], ids=["gzip", "plain"])
def test_a_wado_part_over_max_part_bytes_is_refused_and_not_written(tmp_path: Path,
                                                                    encoding: str | None) -> None:
    small = part10(ASKED, ASKED + ".1.1")
    body = multipart([small, big_part(ASKED + ".1.2", 32 * MiB)])  # the first is written, not the second
    wire = gzip.compress(body, 6) if encoding else body

    with serve(lambda h: h.answer(wire, CTYPE, encoding)) as (base, srv):
        client = DicomWebClient(base, timeout=5, max_part_bytes=1 * MiB)
        tracemalloc.start()
        try:
            with pytest.raises(DicomWebError, match=r"a part of the answer to GET \S+ is larger than "
                                                    r"max_part_bytes=1048576") as info:
                client.get(ASKED, dest=tmp_path / "out")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(info.value, web.ResponseTooLargeError)
        assert base in str(info.value)
        if not encoding:
            assert srv.cut.wait(5)
    assert left_in(tmp_path / "out") == [f"{ASKED}.1.1.dcm"]  # no temporary file of the cut part
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a 32 MiB part"


def test_an_endless_wado_part_is_cut_at_max_part_bytes(tmp_path: Path) -> None:
    def route(h: _Handler) -> None:
        h.head(CTYPE)  # chunked; the part's head, then bytes without end (64 MiB for the old client)
        h.chunk(b"--BOUND\r\nContent-Type: application/dicom\r\n\r\n" + part10(ASKED, ASKED + ".1.1")[:200])
        for _ in range(256):
            h.chunk(bytes(256 * 1024))
        h.chunk(b"")

    with serve(route) as (base, srv):
        started = time.monotonic()
        with pytest.raises(web.DicomWebError, match="max_part_bytes=2097152"):
            DicomWebClient(base, timeout=5, max_part_bytes=2 * MiB).get(ASKED, dest=tmp_path / "out")
        assert time.monotonic() - started < 5
        assert srv.cut.wait(5)
    assert left_in(tmp_path / "out") == []


# -- c) a body trickled a byte at a time -------------------------------------------------------------

class Trickle:
    """Send ``head`` then ``body`` a byte every ``every`` seconds (chunked or with a length)."""

    def __init__(self, body: bytes, ctype: str, *, chunked: bool, head: bytes = b"",
                 every: float = 0.2) -> None:
        self.body, self.ctype, self.chunked, self.head, self.every = body, ctype, chunked, head, every

    def __call__(self, h: _Handler) -> None:
        total = len(self.head) + len(self.body)
        h.head(self.ctype, length=None if self.chunked else total)
        self._send(h, self.head)
        for i in range(len(self.body)):
            time.sleep(self.every)
            self._send(h, self.body[i:i + 1])
        if self.chunked:
            h.chunk(b"")

    def _send(self, h: _Handler, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            h.chunk(data)
        else:
            h.wfile.write(data)
            h.wfile.flush()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_trickled_qido_answer_ends_at_total_timeout(chunked: bool) -> None:
    body = b"[" + b" " * 38 + b"]"  # 8 s at 5 bytes a second (each read within timeout=1)
    with serve(Trickle(body, QIDO_JSON, chunked=chunked)) as (base, _):
        client = DicomWebClient(base, timeout=1, total_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(PeerTimeoutError, match=r"not complete within total_timeout=1.5 s") as info:
            client.find("STUDY")
        took = time.monotonic() - started
    assert 1.4 < took < 3.0, took
    assert base in str(info.value)


def test_a_trickled_wado_part_ends_at_total_timeout_and_is_not_written(tmp_path: Path) -> None:
    first, second = part10(ASKED, ASKED + ".1.1"), part10(ASKED, ASKED + ".1.2")
    body = multipart([first, second])
    cut = body.index(second) + 100  # the first part at once, the second one a byte every 0.2 s
    trickle = Trickle(body[cut:cut + 40], CTYPE, chunked=True, head=body[:cut])
    with serve(trickle) as (base, _):
        started = time.monotonic()
        with pytest.raises(PeerTimeoutError, match=r"a part of the answer .* total_timeout=1.5 s"):
            DicomWebClient(base, timeout=1, total_timeout=1.5).get(ASKED, dest=tmp_path / "out")
        assert time.monotonic() - started < 3.0
    assert left_in(tmp_path / "out") == [f"{ASKED}.1.1.dcm"]


def _trickled_head(h: _Handler) -> None:
    """The first answer: a status line and headers a byte every 0.1 s (each read within timeout=1),
    for 12.5 s; the next ones: no study."""
    if h.server.requests == 1:
        return trickle(h.wfile, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100, 0.1)
    h.answer(b"[]", QIDO_JSON)


@pytest.mark.parametrize("what", ["find", "get"])
def test_a_trickled_head_ends_at_total_timeout(what: str, tmp_path: Path) -> None:
    """requests bounds each read: a head trickled inside the timeout held the request for good."""
    with serve(_trickled_head) as (base, srv):
        client = DicomWebClient(base, timeout=1, total_timeout=1.5)
        started = time.monotonic()
        with pytest.raises(PeerTimeoutError, match=r"headers did not come within total_timeout=1.5 s"):
            client.find("STUDY") if what == "find" else client.get(ASKED, dest=tmp_path / "out")
        took = time.monotonic() - started
        assert 1.4 < took < 5.0, took  # the trickle lasts 12.5 s
        assert srv.requests == 1
        assert client.find("STUDY").height == 0  # the same client, a good answer: served
    assert left_in(tmp_path / "out") == []


def test_total_timeout_bounds_each_wado_part_not_the_whole_study(tmp_path: Path) -> None:
    """Six parts, one every 0.4 s: 2.4 s in all, over total_timeout=1.5 s, each part well within."""
    parts = [part10(ASKED, f"{ASKED}.1.{i}") for i in range(1, 7)]

    def route(h: _Handler) -> None:
        h.head(CTYPE)
        body = multipart(parts)
        pieces = body.split(b"--BOUND\r\n")[1:]
        for piece in pieces:
            time.sleep(0.4)
            h.chunk(b"--BOUND\r\n" + piece)
        h.chunk(b"")

    with serve(route) as (base, _):
        started = time.monotonic()
        got = DicomWebClient(base, timeout=1, total_timeout=1.5).get(ASKED, dest=tmp_path / "out")
        assert time.monotonic() - started > 1.5
    assert got.height == 6


# -- d) a normal server: the defaults and small bounds that suffice ---------------------------------

def test_find_retrieve_and_store_work_under_the_defaults_and_small_bounds(
        embedded: Embedded, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    largest = max(p.stat().st_size for p in cohort())
    study = str(pydicom.dcmread(cohort()[0], stop_before_pixels=True).StudyInstanceUID)
    expected = sum(1 for p in cohort()
                   if str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study)
    default = DicomWebClient(embedded.base, timeout=10)
    assert (default.max_response_bytes, default.max_part_bytes) == (256 * MiB, 2048 * MiB)
    assert default.total_timeout == 100.0
    small = DicomWebClient(embedded.base, timeout=10, max_response_bytes=256 * 1024,
                           max_part_bytes=largest + 4096, total_timeout=10)
    clients = {"default": default, "small": small}
    found = {name: (c.find("STUDY"), c.find("PATIENT"), c.find("IMAGE", study_instance_uid=study))
             for name, c in clients.items()}
    assert study in found["small"][0]["study_instance_uid"].to_list()
    assert found["small"][2].height == expected
    assert all(a.equals(b) for a, b in zip(found["default"], found["small"], strict=True))
    for name, client in clients.items():
        got = client.get(study, dest=tmp_path / name)
        assert got.height == expected
        assert left_in(tmp_path / name) == sorted(f"{sop}.dcm" for sop in got["sop_instance_uid"])
        files = make_ct(tmp_path / f"src-{name}", 3, patient_id=f"MRN95{len(name)}", seed=len(name))
        assert client.store(files)["status"].to_list() == [0, 0, 0]
        assert client.find("IMAGE", patient_id=f"MRN95{len(name)}").height == 3


def test_a_part_over_a_small_max_part_bytes_is_refused_from_the_embedded_server(
        embedded: Embedded, tmp_path: Path) -> None:  # noqa: F811 - the imported fixture
    study = str(pydicom.dcmread(cohort()[0], stop_before_pixels=True).StudyInstanceUID)
    with pytest.raises(web.ResponseTooLargeError, match="max_part_bytes=1024"):
        DicomWebClient(embedded.base, timeout=10, max_part_bytes=1024).get(study, dest=tmp_path / "out")
    assert left_in(tmp_path / "out") == []


# -- e) bad values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max_response_bytes", "max_part_bytes", "total_timeout"])
@pytest.mark.parametrize("value", [0, -1, True, False, "1", 1.5, float("nan")],
                         ids=["zero", "negative", "true", "false", "str", "float", "nan"])
def test_bad_bounds_are_invalid_input(name: str, value: Any) -> None:
    if name == "total_timeout" and value == 1.5:
        DicomWebClient("http://127.0.0.1:9/dicom-web", total_timeout=value)  # a float is a time
        return
    with pytest.raises(InvalidInputError, match=name):
        DicomWebClient("http://127.0.0.1:9/dicom-web", **{name: value})
