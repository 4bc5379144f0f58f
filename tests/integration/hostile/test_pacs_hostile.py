"""The embedded PACS against a hostile peer on 127.0.0.1 (issue 7): raw sockets and hand-built PDUs.

One PACS for the module, attacked in turn by garbage bytes, PDUs declaring huge lengths, data
sets that never end, an idle-connection flood beyond the association limit, slowloris peers,
poison data sets via C-STORE, wildcard bombs and unparsable dates via C-FIND. Good C-STOREs are
interleaved and remembered; the last test checks that the PACS still answers C-ECHO, C-STORE,
C-FIND and C-GET at normal speed and that every instance it acknowledged is there. Bounded loops throughout.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from tests.integration.pacs_scp.conftest import encode, make_instance, poison_datasets, raw_store

pytestmark = pytest.mark.dcmtk

#: SOP Instance UIDs the PACS answered 0x0000 for, across the module.
ACKNOWLEDGED: set[str] = set()
_NUMBER = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPACS]:
    server = EmbeddedPACS(tmp_path_factory.mktemp("hostile"), request_timeout=1.0, dimse_timeout=2.0,
                          network_timeout=5.0, max_pending=32, max_pdu=65536)
    server.start()
    try:
        yield server
    finally:
        assert server.running and server.failure is None  # no attack took a worker down
        server.close()


def good_store(pacs: EmbeddedPACS, **changes: str) -> None:
    ds = make_instance("MRN1001", 1 if "StudyDescription" in changes else 0, 7, next(_NUMBER))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    status, comment = raw_store(pacs.port, pacs.aet, encode(ds), sop_uid=str(ds.SOPInstanceUID))
    assert (status, comment) == (0, "")
    ACKNOWLEDGED.add(str(ds.SOPInstanceUID))


def quick_echo(pacs: EmbeddedPACS, limit: float = 3.0) -> None:
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
    start = time.monotonic()
    client.echo()
    assert time.monotonic() - start < limit


def closed_or_aborted(sock: socket.socket, within: float) -> bool:
    """Whether the server sends A-ABORT or closes the connection within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return False
        except OSError:
            return True
        if data == b"" or data[:1] == b"\x07":
            return True
    return False


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def test_garbage_bytes(pacs: EmbeddedPACS) -> None:
    payloads = [
        b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200,  # a TLS ClientHello
        bytes(range(256)) * 4,
        b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16,  # an A-ASSOCIATE-RQ of garbage
        b"\x04\x00\x00\x00\x00\x04\x00\x00\x00\x00",  # P-DATA before any association
        b"\x09\x00\x00\x00\x00\x00",  # no such PDU type
    ]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:
            s.sendall(payload)
            assert closed_or_aborted(s, 3.0), payload[:16]
    good_store(pacs)
    quick_echo(pacs)


def test_huge_declared_lengths(pacs: EmbeddedPACS) -> None:
    before = _rss()
    for header in (struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF), struct.pack(">BBI", 0x01, 0, 1 << 30)):
        with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:
            s.sendall(header + b"\x00" * 32)
            assert closed_or_aborted(s, 3.0)
    for length in (1 << 30, 0xFFFFFFFF, 65536 + 2048):  # P-DATA-TF over the 64 KiB negotiated
        ae = AE(ae_title="HUGE")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(struct.pack(">BBI", 0x04, 0, length) + b"\x00" * 64)  # type: ignore[union-attr]
        deadline = time.monotonic() + 3
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert assoc.is_aborted, length
        ae.shutdown()
    assert _rss() - before < 100e6
    good_store(pacs)


@contextlib.contextmanager
def _owned_socket(pacs: EmbeddedPACS, title: str) -> Iterator[socket.socket]:
    """The socket of an association with the PACS (one CT context, ID 1), pynetdicom's network
    loop held off it by a DataPhase (as ``raw_store`` does): what is sent on it is ours alone."""
    from kit.dicom._fastnet import DataPhase

    ae = AE(ae_title=title)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    try:
        with DataPhase(assoc, 5, title) as phase:
            assert phase._sock is not None
            yield phase._sock
    finally:
        ae.shutdown()


def test_a_garbage_command_set_gets_a_abort(pacs: EmbeddedPACS) -> None:
    """PS3.8: a peer whose DIMSE stream cannot be read is sent A-ABORT, not just a closed socket."""
    garbage = b"\xff" * 40
    with _owned_socket(pacs, "GARBAGE") as sock:
        sock.sendall(struct.pack(">BBIIBB", 0x04, 0, len(garbage) + 6, len(garbage) + 2, 1, 0x03) + garbage)
        assert sock.recv(4096)[:1] == b"\x07"
    good_store(pacs)


def test_endless_data_sets_at_full_speed(pacs: EmbeddedPACS) -> None:
    """Four peers each send a C-STORE whose data set never ends (64 MiB, then they hang up):
    the PACS keeps what passes 8 MiB on disk, not in memory, and nothing of it stays."""
    from kit.dicom._command import encode_command

    command = encode_command({0x00000002: str(CTImageStorage), 0x00000100: 0x0001, 0x00000110: 1,
                              0x00000700: 0, 0x00000800: 0x0000, 0x00001000: "1.2.826.0.1.3680043.8.498.99"})
    piece = b"\x00" * 65_000  # within the 64 KiB negotiated, never the last fragment
    pdv = struct.pack(">BBIIBB", 0x04, 0, len(piece) + 6, len(piece) + 2, 1, 0x00) + piece
    before = _rss()

    def flood() -> None:
        with _owned_socket(pacs, "ENDLESS") as sock:
            size = len(command)
            sock.sendall(struct.pack(">BBIIBB", 0x04, 0, size + 6, size + 2, 1, 0x03) + command)
            for _ in range((64 << 20) // len(piece)):
                sock.sendall(pdv)

    peak = [before]
    done = threading.Event()

    def sample() -> None:  # the peak while the floods run (memory freed after is no proof)
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss())

    threads = [threading.Thread(target=flood) for _ in range(4)]
    sampler = threading.Thread(target=sample)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    sampler.join()
    assert peak[0] - before < 150e6  # held in memory, 4 x 64 MiB would be 512 MiB and more
    deadline = time.monotonic() + 5
    while any(p.stat().st_size for p in pacs.store.tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p.name for p in pacs.store.tmp_dir.iterdir() if p.stat().st_size] == []
    good_store(pacs)
    quick_echo(pacs)


def test_idle_flood_beyond_the_association_limit(pacs: EmbeddedPACS) -> None:
    idle = []
    try:
        for _ in range(150):  # > max_associations (64) and > max_pending (32)
            idle.append(socket.create_connection(("127.0.0.1", pacs.port), timeout=5))
        quick_echo(pacs)
        good_store(pacs)
    finally:
        for s in idle:
            s.close()
    stop = threading.Event()

    def reconnect() -> None:
        held: list[socket.socket] = []
        for _ in range(2000):
            if stop.is_set():
                break
            try:
                held.append(socket.create_connection(("127.0.0.1", pacs.port), timeout=2))
            except OSError:
                pass
            if len(held) > 60:
                held.pop(0).close()
            time.sleep(0.003)
        for s in held:
            s.close()

    flooder = threading.Thread(target=reconnect, daemon=True)
    flooder.start()
    try:
        time.sleep(0.3)
        for _ in range(3):
            quick_echo(pacs)
        good_store(pacs)
    finally:
        stop.set()
        flooder.join(15)


def test_slowloris(pacs: EmbeddedPACS) -> None:
    with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:  # a trickled request
        s.sendall(struct.pack(">BBI", 0x01, 0, 300))
        start = time.monotonic()
        for _ in range(30):
            try:
                s.sendall(b"\x00")
            except OSError:
                break
            if closed_or_aborted(s, 0.2):
                break
        assert time.monotonic() - start < 3  # request_timeout = 1 s
    ae = AE(ae_title="SLOWPDU")  # a trickled PDU on an association
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    sock.sendall(struct.pack(">BBI", 0x04, 0, 4000))
    start = time.monotonic()
    for _ in range(40):
        if assoc.is_aborted:
            break
        try:
            sock.send(b"\x00")
        except OSError:
            break
        time.sleep(0.15)
    deadline = time.monotonic() + 2
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted and time.monotonic() - start < 5  # dimse_timeout = 2 s
    ae.shutdown()
    quick_echo(pacs)


def test_poison_data_sets(pacs: EmbeddedPACS) -> None:
    for name, (data, sop_uid, expected) in poison_datasets().items():
        status, comment = raw_store(pacs.port, pacs.aet, data, sop_uid=sop_uid)
        assert status == expected and comment, name
        good_store(pacs)
    stored = {i.sop_instance_uid for i in pacs.store}
    assert stored == ACKNOWLEDGED  # nothing refused was kept, nothing acknowledged is missing


def _find(pacs: EmbeddedPACS, **keys: str) -> tuple[int, list[Dataset]]:
    ae = AE(ae_title="BOMBER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    found, final = [], -1
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status is None:
            break
        if status.Status in (0xFF00, 0xFF01):
            found.append(identifier)
        else:
            final = int(status.Status)
    assoc.release()
    ae.shutdown()
    return final, found


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the bad dates we send
def test_wildcard_bombs_and_bad_dates(pacs: EmbeddedPACS) -> None:
    good_store(pacs, StudyDescription="a" * 64)
    for pattern in ("*a" * 16 + "*b", "?*" * 20 + "b", "*a?" * 15 + "*c"):
        start = time.monotonic()
        status, found = _find(pacs, StudyDescription=pattern)
        assert status == 0 and found == [] and time.monotonic() - start < 2, pattern
    assert len(_find(pacs, StudyDescription="*a" * 20 + "*")[1]) == 1
    for key in ("abc-def", "2026-13-45", "20260101-x", "99999999"):
        status, found = _find(pacs, StudyDate=key)
        assert status == 0xA900 and found == [], key


def test_still_serves_at_normal_speed_and_lost_nothing(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    quick_echo(pacs, limit=1.0)
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
    ds = make_instance("MRN1002", 0, 1, 1)
    path = tmp_path / "last.dcm"
    ds.save_as(path, enforce_file_format=True)
    start = time.monotonic()
    client.store([path])
    ACKNOWLEDGED.add(str(ds.SOPInstanceUID))
    found = client.find("IMAGE", return_keys=["sop_instance_uid"],
                        study_instance_uid=str(ds.StudyInstanceUID))
    assert str(ds.SOPInstanceUID) in found["sop_instance_uid"].to_list()
    assert time.monotonic() - start < 3
    every = client.find("IMAGE", return_keys=["sop_instance_uid", "study_instance_uid"])
    assert set(every["sop_instance_uid"].to_list()) == ACKNOWLEDGED
    start = time.monotonic()
    studies = set(every["study_instance_uid"].to_list())
    got: set[str] = set()
    for study in studies:
        frame = client.get(study_uid=study, dest=tmp_path / "get")
        got |= set(frame["sop_instance_uid"].to_list())
    assert got == ACKNOWLEDGED
    assert time.monotonic() - start < 10
