"""WADO-RS keeps only whole instances of what was asked: another study's part, a part cut short,
parts run together under a wrong multipart boundary are never written, and the retrieve raises.

The DICOMweb server is an http.server on 127.0.0.1 (ephemeral port), shut down by the test.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydicom import dcmwrite

from kit.dicom.web import DicomWebClient
from kit.errors import DicomWebError
from tests.integration.pacs_client.test_retrieve_integrity import ASKED, OTHER, ct

CTYPE = 'multipart/related; type="application/dicom"; boundary=BOUND'


def part10(study: str, sop: str, patient: str = "MRN1") -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ct(study, study + ".1", sop, patient), enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes], boundary: str = "BOUND") -> bytes:
    out = b""
    for part in parts:
        out += b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


@pytest.fixture
def wado() -> Iterator[Callable[[bytes], str]]:
    """Serve ``body`` (multipart, boundary BOUND in the header) to every GET; the DICOMweb root."""
    servers: list[ThreadingHTTPServer] = []

    def start(body: bytes) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", CTYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_wado_refuses_another_patients_instance(wado: Callable[[bytes], str], tmp_path: Path) -> None:
    base = wado(multipart([part10(ASKED, ASKED + ".1.1"),
                           part10(OTHER, OTHER + ".1.1", patient="OTHERPATIENT")]))
    with pytest.raises(DicomWebError, match=rf"1 instance\(s\) .*refused.*of study {OTHER}, not {ASKED}"):
        DicomWebClient(base, timeout=5).get(ASKED, dest=tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{ASKED}.1.1.dcm"]


def test_wado_of_a_series_refuses_another_series(wado: Callable[[bytes], str], tmp_path: Path) -> None:
    base = wado(multipart([part10(ASKED, ASKED + ".1.1")]))
    with pytest.raises(DicomWebError, match=rf"of series {ASKED}\.1, not {ASKED}\.2"):
        DicomWebClient(base, timeout=5).get(ASKED, ASKED + ".2", dest=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_wado_refuses_a_part_cut_short(wado: Callable[[bytes], str], tmp_path: Path) -> None:
    base = wado(multipart([part10(ASKED, ASKED + ".1.1")[:-7]]))  # 9 of the 16 pixel bytes
    with pytest.raises(DicomWebError, match=r"refused.*\(7FE0,0010\) overruns"):
        DicomWebClient(base, timeout=5).get(ASKED, dest=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_wado_parts_lost_to_a_wrong_boundary_are_not_a_success(wado: Callable[[bytes], str],
                                                               tmp_path: Path) -> None:
    body = multipart([part10(ASKED, ASKED + ".1.1"), part10(ASKED, ASKED + ".1.2")], boundary="OTHER")
    with pytest.raises(DicomWebError, match="refused"):
        DicomWebClient(wado(body), timeout=5).get(ASKED, dest=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
