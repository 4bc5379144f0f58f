"""A retrieve keeps only what was asked: a hostile PACS's other instances are refused, never published.

- C-GET: an instance of another study (series) than asked, or a C-STORE-RQ whose data set is
  another instance than its Affected SOP Instance UID, is answered 0xA900 and never written;
  the retrieve raises RetrieveError counting the refused instances and saying why;
- C-GET: a final Success counting more completed sub-operations than arrived is a RetrieveError
  (an incomplete study is not reported as retrieved); a final C-GET-RSP to another message is a
  typed error;
- C-MOVE: the storage SCP refuses an instance from another AE title than the PACS's, and one of
  another study;
- the cohort pull's fetch publishes nothing of a retrieve that received another patient's instances;
- C-STORE: a response naming another instance than the one sent is a typed error.

The PACSs are raw sockets (or pynetdicom SCPs) on 127.0.0.1, ephemeral ports, closed by the
test that started them.
"""

from __future__ import annotations

import socket
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from kit.cohort.limiter import LocalLimiter
from kit.cohort.retrieve import Source, fetch
from kit.config import PacsSettings
from kit.dicom._command import decode_command, encode_command
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.errors import AssociationAbortedError, KitError
from tests.conftest import free_port

ASKED = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.999"
GET = "1.2.840.10008.5.1.4.1.2.2.3"
C_STORE_RQ, C_GET_RSP = 0x0001, 0x8010


def ct(study: str, series: str, sop: str, patient: str = "MRN1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.Modality = patient, "Test^" + patient, "CT"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.SamplesPerPixel, ds.PixelRepresentation = 7, 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    return ds


# -- a raw C-GET SCP (pynetdicom cannot lie about counts or UIDs) -----------------------------------


def _exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = conn.recv(n - len(buf))
        if not got:
            raise EOFError("closed")
        buf += got
    return bytes(buf)


def _pdu(conn: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack(">BBI", _exact(conn, 6))
    return kind, _exact(conn, length)


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def _accept(conn: socket.socket) -> dict[str, int]:
    """Read the A-ASSOCIATE-RQ, accept every context in Implicit VR LE; {abstract syntax: context ID}."""
    kind, body = _pdu(conn)
    assert kind == 0x01
    called, calling = body[4:20], body[20:36]
    contexts: dict[str, int] = {}
    pos = 68
    while pos < len(body):
        kind, _, length = struct.unpack_from(">BBH", body, pos)
        item, pos = body[pos + 4:pos + 4 + length], pos + 4 + length
        if kind == 0x20:
            sub = 4
            while sub < len(item):
                sub_kind, _, sub_len = struct.unpack_from(">BBH", item, sub)
                if sub_kind == 0x30:
                    contexts[item[sub + 4:sub + 4 + sub_len].decode().rstrip("\x00")] = item[0]
                sub += 4 + sub_len
    var = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid in contexts.values():
        var += _item(0x21, bytes([cid, 0, 0, 0]) + _item(0x40, ImplicitVRLittleEndian.encode()))
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4.5.6")
    for abstract in contexts:
        if abstract != GET:
            user += _item(0x54, struct.pack(">H", len(abstract)) + abstract.encode() + b"\x01\x01")
    body = struct.pack(">HH", 1, 0) + called + calling + bytes(32) + var + _item(0x50, user)
    conn.sendall(struct.pack(">BBI", 0x02, 0, len(body)) + body)
    return contexts


def _message(cx: int, command: bytes, dataset: bytes | None = None) -> bytes:
    out = b""
    for data, control in ((command, 0x03), (dataset, 0x02)):
        if data is not None:
            pdv = struct.pack(">IBB", len(data) + 2, cx, control) + data
            out += struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
    return out


def _recv_message(conn: socket.socket) -> dict[int, bytes]:
    """The next message's command set (its data set, if any, read and dropped)."""
    command, data_done, decoded = b"", False, None
    while decoded is None or not data_done:
        kind, body = _pdu(conn)
        assert kind == 0x04, kind
        pos = 0
        while pos < len(body):
            length, _cx, control = struct.unpack_from(">IBB", body, pos)
            if control & 0x01:
                command += body[pos + 6:pos + 4 + length]
                if control & 0x02:
                    decoded = decode_command(command)
                    data_done = int.from_bytes(decoded[0x0800], "little") == 0x0101
            elif control & 0x02:
                data_done = True
            pos += 4 + length
    assert decoded is not None
    return decoded


class RawGetSCP:
    """A C-GET SCP on a raw socket: ``script(scp, store, get_rsp)`` plays one association;
    ``answers`` holds the status of each C-STORE-RSP it got."""

    def __init__(self, script: Callable[..., None]) -> None:
        self.script = script
        self.answers: list[int] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                contexts = _accept(conn)
                _recv_message(conn)  # the C-GET-RQ

                def store(msg_id: int, ds: Dataset, uid: str | None = None) -> int:
                    command = encode_command({
                        0x00000002: CTImageStorage, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                        0x00000700: 0, 0x00000800: 0, 0x00001000: uid or ds.SOPInstanceUID})
                    conn.sendall(_message(contexts[CTImageStorage], command, encode(ds, True, True)))
                    status = int.from_bytes(_recv_message(conn)[0x0900], "little")
                    self.answers.append(status)
                    return status

                def get_rsp(status: int, *, remaining: int = 0, completed: int = 0, failed: int = 0,
                            msg_id: int = 1) -> None:
                    conn.sendall(_message(contexts[GET], encode_command({
                        0x00000002: GET, 0x00000100: C_GET_RSP, 0x00000120: msg_id, 0x00000800: 0x0101,
                        0x00000900: status, 0x00001020: remaining, 0x00001021: completed,
                        0x00001022: failed, 0x00001023: 0})))

                self.script(store, get_rsp)
                kind, _ = _pdu(conn)  # A-RELEASE-RQ (or A-ABORT)
                if kind == 0x05:
                    conn.sendall(struct.pack(">BBIHH", 0x06, 0, 4, 0, 0))
            except (OSError, EOFError, AssertionError):
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def raw_get() -> Iterator[Callable[[Callable[..., None]], RawGetSCP]]:
    started: list[RawGetSCP] = []

    def start(script: Callable[..., None]) -> RawGetSCP:
        started.append(RawGetSCP(script))
        return started[-1]

    yield start
    for scp in started:
        scp.close()


def _get(scp: RawGetSCP, dest: Path, **asked: str) -> Any:
    client = PacsClient("127.0.0.1", scp.port, called_aet="HOSTILE", timeout=5)
    return client.get(dest=dest, **{"study_uid": ASKED, **asked})


def _on_disk(dest: Path) -> dict[str, str]:
    """{file name: StudyInstanceUID} of the files in ``dest``."""
    return {p.name: str(pydicom.dcmread(p).StudyInstanceUID) for p in sorted(dest.glob("*.dcm"))}


def test_cget_refuses_another_patients_instances(raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        get_rsp(0xFF00, remaining=4)
        for i in range(2):
            store(i + 1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.{i}"))
        for i in range(2):
            store(i + 3, ct(OTHER, OTHER + ".1", f"{OTHER}.1.{i}", patient="OTHERPATIENT"))
        get_rsp(0x0000, completed=4)

    scp = raw_get(script)
    with pytest.raises(RetrieveError, match=r"2 instance\(s\) refused.*of study " + OTHER) as caught:
        _get(scp, tmp_path / "out")
    assert scp.answers == [0, 0, 0xA900, 0xA900]
    assert caught.value.failed == 2
    assert set(caught.value.received["study_instance_uid"]) == {ASKED}
    assert set(_on_disk(tmp_path / "out").values()) == {ASKED}  # nothing of the other patient written
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.endswith(".dcm")]


def test_cget_refuses_a_data_set_that_is_not_the_commands_instance(
        raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        store(1, ct(OTHER, OTHER + ".1", f"{OTHER}.1.0", patient="OTHERPATIENT"), uid=f"{ASKED}.1.0")
        get_rsp(0x0000, completed=1)

    scp = raw_get(script)
    with pytest.raises(RetrieveError, match=f"names {ASKED}.1.0 but its data set is {OTHER}.1.0"):
        _get(scp, tmp_path / "out")
    assert scp.answers == [0xA900]
    assert list((tmp_path / "out").iterdir()) == []


def test_cget_refuses_a_uid_that_cannot_name_a_file(raw_get: Callable[..., RawGetSCP],
                                                    tmp_path: Path) -> None:
    """A SOP Instance UID too long for a file name: refused (0xC000) as not an instance kit can
    keep, before anything is written; before, the write failed (0xA700) and the RetrieveError
    blamed the local disk. The instances around it are kept; a UID that only breaks PS3.5's
    syntax is kept too."""
    long_uid = f"{ASKED}.1.{'9' * 260}"

    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        store(1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.0"))
        store(2, ct(ASKED, ASKED + ".1", long_uid))
        store(3, ct(ASKED, ASKED + ".1", f"{ASKED}.1..3"))
        get_rsp(0x0000, completed=3)

    scp = raw_get(script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the UIDs it writes
        with pytest.raises(RetrieveError, match="unusable SOP Instance UID .*cannot name a file") as caught:
            _get(scp, tmp_path / "out")
    assert scp.answers == [0, 0xC000, 0]
    assert "local write" not in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{ASKED}.1..3.dcm", f"{ASKED}.1.0.dcm"]


def test_cget_of_a_series_refuses_another_series(raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        store(1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.0"))
        store(2, ct(ASKED, ASKED + ".2", f"{ASKED}.2.0"))
        get_rsp(0x0000, completed=2)

    scp = raw_get(script)
    with pytest.raises(RetrieveError, match=rf"1 instance\(s\) refused.*of series {ASKED}\.2, not"):
        _get(scp, tmp_path / "out", series_uid=ASKED + ".1")
    assert scp.answers == [0, 0xA900]
    assert list(_on_disk(tmp_path / "out")) == [f"{ASKED}.1.0.dcm"]


def test_cget_success_counting_more_than_arrived_is_an_error(
        raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        get_rsp(0xFF00, remaining=10)
        for i in range(3):
            store(i + 1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.{i}"))
        get_rsp(0x0000, completed=10)

    scp = raw_get(script)
    with pytest.raises(RetrieveError, match=r"reports 10 completed .* but 3 instance\(s\) arrived") as caught:
        _get(scp, tmp_path / "out")
    assert caught.value.received.height == 3


def test_cget_final_response_to_another_message_is_an_error(
        raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        store(1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.0"))
        get_rsp(0x0000, completed=1, msg_id=999)

    scp = raw_get(script)
    with pytest.raises(AssociationAbortedError, match="message 999"):
        _get(scp, tmp_path / "out")


def test_cohort_fetch_publishes_nothing_of_another_patient(
        raw_get: Callable[..., RawGetSCP], tmp_path: Path) -> None:
    def script(store: Callable[..., int], get_rsp: Callable[..., None]) -> None:
        get_rsp(0xFF00, remaining=2)
        store(1, ct(ASKED, ASKED + ".1", f"{ASKED}.1.0"))
        store(2, ct(OTHER, OTHER + ".1", f"{OTHER}.1.0", patient="OTHERPATIENT"))
        get_rsp(0x0000, completed=2)

    scp = raw_get(script)
    source = Source("c-get", PacsSettings(host="127.0.0.1", port=scp.port, called_aet="HOSTILE", timeout=5))
    with pytest.raises(KitError, match="refused"):
        fetch(source, ASKED, tmp_path / "out", LocalLimiter(1, 1000), partial_dir=tmp_path / "partial")
    assert not (tmp_path / "out" / ASKED).exists()
    assert list((tmp_path / "partial").iterdir()) == []


# -- C-MOVE: a pynetdicom Move SCP pushing into our storage SCP -------------------------------------


@pytest.fixture
def move_pacs() -> Iterator[Callable[[Callable[[Any], Iterator[Any]]], int]]:
    """Start a Move SCP (AE title HOSTILE) whose EVT_C_MOVE handler ``on_move`` yields its answers."""
    servers: list[Any] = []

    def start(on_move: Callable[[Any], Iterator[Any]]) -> int:
        ae = AE(ae_title="HOSTILE")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        server = ae.start_server(("127.0.0.1", 0), block=False,
                                 evt_handlers=[(evt.EVT_C_MOVE, on_move)])
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()


def _move(port: int, store_port: int, dest: Path) -> Any:
    client = PacsClient("127.0.0.1", port, called_aet="HOSTILE", timeout=5)
    return client.move(study_uid=ASKED, dest=dest, store_port=store_port, store_host="127.0.0.1")


def test_move_keeps_what_was_asked_whichever_ae_sends_it_and_refuses_the_rest(
        move_pacs: Callable[..., int], tmp_path: Path) -> None:
    """A storage node with its own AE title may perform a PACS's C-MOVE: its instance of the study
    asked for is kept; a ROGUE's instance of another patient is refused (0xA900), not published."""
    store_port = free_port()
    statuses: list[int] = []

    def on_move(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", store_port
        for title, study, patient in (("STORENODE", ASKED, "P1"), ("ROGUE", OTHER, "OTHERPATIENT")):
            sender = AE(ae_title=title)
            sender.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
            assoc = sender.associate("127.0.0.1", store_port, ae_title="KITSCU")
            if assoc.is_established:
                status = assoc.send_c_store(ct(study, study + ".1", f"{study}.1.0", patient=patient))
                statuses.append(int(status.Status) if status else -1)
                assoc.release()
        yield 0

    port = move_pacs(on_move)
    with pytest.raises(RetrieveError, match=rf"1 instance\(s\) refused.*of study {OTHER}"):
        _move(port, store_port, tmp_path / "out")
    assert statuses == [0x0000, 0xA900]
    assert list(_on_disk(tmp_path / "out")) == [f"{ASKED}.1.0.dcm"]


def test_move_refuses_another_study(move_pacs: Callable[..., int], tmp_path: Path) -> None:
    store_port = free_port()

    def on_move(event: Any) -> Iterator[Any]:
        yield "127.0.0.1", store_port
        yield 2
        yield 0xFF00, ct(ASKED, ASKED + ".1", f"{ASKED}.1.1")
        yield 0xFF00, ct(OTHER, OTHER + ".1", f"{OTHER}.1.1", patient="OTHERPATIENT")

    port = move_pacs(on_move)
    with pytest.raises(RetrieveError, match=rf"1 instance\(s\) refused.*of study {OTHER}"):
        _move(port, store_port, tmp_path / "out")
    assert list(_on_disk(tmp_path / "out")) == [f"{ASKED}.1.1.dcm"]


def test_move_success_with_none_completed_while_instances_arrived_is_an_error(
        move_pacs: Callable[..., int], tmp_path: Path) -> None:
    store_port = free_port()

    def on_move(event: Any) -> Iterator[Any]:  # sends on a side association, counts nothing
        yield "127.0.0.1", store_port
        side = AE(ae_title="HOSTILE")
        side.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
        assoc = side.associate("127.0.0.1", store_port, ae_title="KITSCU")
        if assoc.is_established:
            assoc.send_c_store(ct(ASKED, ASKED + ".1", f"{ASKED}.1.0"))
            assoc.release()
        yield 0

    port = move_pacs(on_move)
    with pytest.raises(RetrieveError, match=r"reports 0 completed .* but 1 instance\(s\) arrived"):
        _move(port, store_port, tmp_path / "out")


# -- C-STORE: an answer for another instance ---------------------------------------------------------


def test_store_response_naming_another_instance_is_an_error(tmp_path: Path) -> None:
    sock = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(10)
            try:
                contexts = _accept(conn)
                command = _recv_message(conn)
                conn.sendall(_message(contexts[CTImageStorage], encode_command({
                    0x00000002: CTImageStorage, 0x00000100: 0x8001,
                    0x00000120: int.from_bytes(command[0x0110], "little"), 0x00000800: 0x0101,
                    0x00000900: 0x0000, 0x00001000: OTHER + ".1.1"})))
                _pdu(conn)
            except (OSError, EOFError, AssertionError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    path = tmp_path / "one.dcm"
    ct(ASKED, ASKED + ".1", f"{ASKED}.1.0").save_as(path, enforce_file_format=True)
    try:
        client = PacsClient("127.0.0.1", sock.getsockname()[1], called_aet="HOSTILE", timeout=5)
        with pytest.raises(KitError, match=f"answered for {OTHER}.1.1"):
            client.store([path])
    finally:
        sock.close()
        thread.join(10)
