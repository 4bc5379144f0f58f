"""The embedded DICOMweb server treats every peer as hostile: unreadable instances are refused
with a reason and never stored, bodies are bounded in size, parts and time, a client that goes
away leaves nothing behind, concurrent STOW-RS and C-STORE of one instance do not corrupt it,
and after each of these the server still answers a good request at normal speed."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from kit.dicom.dimse import PacsClient
from kit.dicom.web import DicomWebClient
from kit.errors import DicomWebError
from tests.integration.dicomweb_server.conftest import (
    Embedded,
    make_ct,
    multipart,
    post,
    start_embedded,
    stop_embedded,
)

LIMITS = {"max_body": 256 * 1024, "max_parts": 3, "max_uploads": 1, "idle_timeout": 1.0,
          "body_timeout": 3.0, "head_timeout": 2.0}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Embedded]:
    """An empty embedded PACS + DICOMweb with small limits."""
    running = start_embedded(tmp_path / "pacs", preload=False, **LIMITS)
    try:
        yield running
    finally:
        stop_embedded(running)


def _reasons(body: bytes) -> list[int]:
    answer = Dataset.from_json(json.loads(body))
    return [int(item.FailureReason) for item in answer.get("FailedSOPSequence", [])]


def _nothing_left(server: Embedded) -> None:
    assert len(server.pacs.store) == 0
    assert not any(server.pacs.store.files_dir.rglob("*.dcm"))
    server.pacs.store.release_spares()  # the empty files made ahead for the next C-STOREs
    assert not any(server.pacs.store.tmp_dir.iterdir())


def _still_serves(server: Embedded, tmp_path: Path, *, patient: str = "MRN9401") -> None:
    """A good STOW-RS is stored quickly, and C-FIND finds it."""
    files = make_ct(tmp_path / f"good-{patient}", 2, patient_id=patient, seed=11)
    start = time.monotonic()
    sent = DicomWebClient(server.base, timeout=10).store(files)
    assert time.monotonic() - start < 5
    assert sent["status"].to_list() == [0, 0]
    found = server.dimse().find("IMAGE", patient_id=patient)
    assert sorted(found["sop_instance_uid"]) == sorted(sent["sop_instance_uid"])


def _raw(server: Embedded) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.web.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(length: int, content_type: str) -> bytes:
    return (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _answer(sock: socket.socket, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_unreadable_instances_are_refused_with_a_reason_and_not_stored(server: Embedded,
                                                                       tmp_path: Path) -> None:
    good, short, other = make_ct(tmp_path / "src", 3, seed=5)
    cut = short.read_bytes()[:-10]                        # pixel data cut short: cannot understand
    uid = str(pydicom.dcmread(other).SOPInstanceUID).encode()
    other_uid = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    mismatch = other.read_bytes().replace(uid, other_uid, 1)  # the file meta names another instance
    for data, reason in ((cut, 0xC000), (b"not DICOM at all", 0xC000), (mismatch, 0xA900)):
        status, _, body = post(server.base, "/studies", *multipart([data]))
        assert status == 409, body
        assert _reasons(body) == [reason]
    _nothing_left(server)
    status, _, body = post(server.base, "/studies", *multipart([good.read_bytes(), cut]))
    assert status == 202
    assert _reasons(body) == [0xC000]
    assert server.dimse().find("IMAGE", patient_id="MRN9001")["sop_instance_uid"].to_list() == [
        str(pydicom.dcmread(good).SOPInstanceUID)]
    with pytest.raises(DicomWebError, match="reason 0xC000"):  # the client names the server's reason
        _client_store_bytes(server, cut)


def _client_store_bytes(server: Embedded, data: bytes) -> None:
    """Send ``data`` through DicomWebClient as it would send a dataset it read (it checks files first)."""
    from io import BytesIO

    ds = pydicom.dcmread(BytesIO(data), force=True)
    DicomWebClient(server.base).store([ds])


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversize_body_is_refused(server: Embedded, tmp_path: Path, chunked: bool) -> None:
    import http.client

    body, ctype = multipart([b"\0" * (300 * 1024)])
    conn = http.client.HTTPConnection("127.0.0.1", server.web.port, timeout=10)
    if chunked:
        conn.request("POST", "/dicom-web/studies", body=iter([body[i:i + 65536] for i in range(0, len(body),
                                                                                              65536)]),
                     headers={"Content-Type": ctype}, encode_chunked=True)
    else:
        conn.request("POST", "/dicom-web/studies", body=body, headers={"Content-Type": ctype})
    try:
        assert conn.getresponse().status == 413
    except (ConnectionResetError, BrokenPipeError):  # refused before reading it all: also a refusal
        assert chunked
    conn.close()
    _nothing_left(server)
    _still_serves(server, tmp_path)


def test_too_many_parts_wrong_types_and_broken_bodies(server: Embedded, tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 4, seed=6)
    status, _, _ = post(server.base, "/studies", *multipart([f.read_bytes() for f in files]))
    assert status == 413
    body, _ = multipart([files[0].read_bytes()])
    for ctype in ('multipart/related; type="application/dicom+json"; boundary=kitboundary',
                  "application/dicom", "text/plain", 'multipart/related; type="application/dicom"'):
        assert post(server.base, "/studies", body, ctype)[0] == 415, ctype
    good_type = 'multipart/related; type="application/dicom"; boundary=kitboundary'
    assert post(server.base, "/studies", b"garbage, not multipart", good_type)[0] == 400
    assert post(server.base, "/studies", body[:-20], good_type)[0] == 400  # no closing boundary
    assert post(server.base, "/studies", b"--kitboundary--\r\n", good_type)[0] == 400  # no parts
    _nothing_left(server)
    _still_serves(server, tmp_path)


def test_a_client_that_goes_away_mid_upload_leaves_nothing(server: Embedded, tmp_path: Path) -> None:
    first, second = make_ct(tmp_path / "src", 2, seed=9)
    body, ctype = multipart([first.read_bytes(), second.read_bytes()])
    for cut in (len(body) // 2, len(body) - 5):  # after one whole part; just before the end
        sock = _raw(server)
        sock.sendall(_head(len(body), ctype) + body[:cut])
        time.sleep(0.2)
        sock.close()
    time.sleep(0.5)
    _nothing_left(server)
    _still_serves(server, tmp_path)


def test_a_slow_upload_is_cut_off(server: Embedded, tmp_path: Path) -> None:
    part = make_ct(tmp_path / "src", 1, seed=10)[0].read_bytes()
    body, ctype = multipart([part])
    stalled = _raw(server)
    stalled.sendall(_head(len(body), ctype) + body[:100])   # then a pause longer than idle_timeout
    assert b" 408 " in _answer(stalled).split(b"\r\n")[0] + b" "
    stalled.close()
    trickle = _raw(server)                                   # a byte every 0.3 s: under the pause limit
    trickle.sendall(_head(len(body), ctype))
    start, answered = time.monotonic(), b""
    trickle.settimeout(0.3)
    for i in range(40):
        try:
            trickle.sendall(body[i:i + 1])
            answered = trickle.recv(65536)
            if answered:
                break
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            break
    trickle.close()
    assert time.monotonic() - start < LIMITS["body_timeout"] + 3
    assert not answered or answered.startswith(b"HTTP/1.1 408")
    _nothing_left(server)
    _still_serves(server, tmp_path)


def test_uploads_at_once_are_bounded(server: Embedded, tmp_path: Path) -> None:
    part = make_ct(tmp_path / "src", 1, seed=12)[0].read_bytes()
    body, ctype = multipart([part])
    holder = _raw(server)
    holder.sendall(_head(len(body), ctype) + body[:50])
    time.sleep(0.3)
    status, headers, _ = post(server.base, "/studies", body, ctype)
    assert status == 503 and headers.get("retry-after")
    holder.close()
    time.sleep(0.3)
    _still_serves(server, tmp_path)


def test_concurrent_stow_and_cstore_of_one_instance(server: Embedded, tmp_path: Path) -> None:
    a_path, b_path = make_ct(tmp_path / "a", 1, seed=13)[0], tmp_path / "b.dcm"
    version_b = pydicom.dcmread(a_path)
    version_b.PixelData = bytes(reversed(version_b.PixelData))
    version_b.save_as(b_path, enforce_file_format=True)
    sop = str(version_b.SOPInstanceUID)
    web = DicomWebClient(server.base, timeout=20)
    dimse = PacsClient("127.0.0.1", server.pacs.port, called_aet="KIT", timeout=20)
    errors: list[BaseException] = []

    def run(send: object, path: Path) -> None:
        try:
            for _ in range(8):
                send(path)  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lambda p: web.store([p]), a_path)),
               threading.Thread(target=run, args=(lambda p: dimse.store([p]), b_path))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    rows = server.pacs.store.instances({"SOPInstanceUID": [sop]})
    assert len(rows) == 1 and len(server.pacs.store) == 1
    stored = pydicom.dcmread(rows[0].path)
    assert bytes(stored.PixelData) in (pydicom.dcmread(a_path).PixelData, version_b.PixelData)
    server.pacs.store.release_spares()  # the empty files made ahead for the next C-STOREs
    assert not any(server.pacs.store.tmp_dir.iterdir())
    assert len(list(server.pacs.store.files_dir.rglob("*.dcm"))) == 1
    got = web.get(str(stored.StudyInstanceUID), dest=tmp_path / "back")
    assert pydicom.dcmread(got["path"][0]).PixelData == stored.PixelData


def test_an_exception_in_one_request_does_not_stop_the_service(server: Embedded, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import kit.dicom.web_server as web_server

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:  # faults no real peer can cause: a bug in a handler
        patch.setattr(web_server, "search", broken)
        with pytest.raises(DicomWebError) as info:
            DicomWebClient(server.base).find("STUDY")
        assert info.value.status_code == 500
        patch.setattr(server.pacs.store, "store_encoded", broken)
        part = make_ct(tmp_path / "src", 1, seed=14)[0].read_bytes()
        status, _, body = post(server.base, "/studies", *multipart([part]))
        assert status == 409 and _reasons(body) == [0x0110]
    _nothing_left(server)
    _still_serves(server, tmp_path)
    assert server.web.running and server.web.failure is None


def test_a_dead_server_thread_is_reported_and_stops_listening(server: Embedded) -> None:
    serving = server.web._serving
    assert serving._server is not None
    serving._server.should_exit = True  # the thread ends without stop(): as if it had died
    assert serving._thread is not None
    serving._thread.join(timeout=10)
    assert not server.web.running and server.web.failure is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.web.port), timeout=2).close()
