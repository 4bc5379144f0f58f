"""Large, endless and malformed DIMSE messages: memory stays bounded, the peer gets A-ABORT.

- The data phases (the embedded PACS's ReceiverPhase, on kernel and Python timeouts,
  DataPhase keeping raw PDUs, the client's ClientPhase) keep a data set past
  ``spill_at`` on disk while it arrives: reading a 24 MiB data set allocates a few MiB
  (tracemalloc), and gives the same bytes;
- a data set over ``max_dataset``, a command set over MAX_COMMAND, a data set that
  cannot be kept on disk, and a malformed message (a command set that does not
  decode, fragments out of order, a P-DATA-TF whose PDVs do not add up) are answered
  with A-ABORT and a typed error;
- end to end with real peers: dcmtk storescu stores an 18 MiB instance (past the
  default SPILL_AT) byte for byte and the kit's C-GET brings it back the same; an
  instance over ``max_dataset_size`` is refused with an abort and the PACS goes on; a
  pynetdicom peer that queries first (so pynetdicom serves the rest of its
  association) is bounded too.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import struct
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from kit.dicom._clientphase import ClientPhase
from kit.dicom._command import encode_command
from kit.dicom._fastnet import MAX_COMMAND, DataPhase
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import AssociationAbortedError, KitError, StoreError
from kit.examples.dicom import random_ct_files
from tests.integration.pacs_client_fast.test_client_phase import _phase as _client_phase
from tests.integration.pacs_get_fast.test_get_answer_path import _store_rq
from tests.integration.pacs_scp.conftest import assert_echoes, encode, run
from tests.integration.pacs_scp.test_receiver_phase import _phase as _receiver_phase
from tests.integration.pacs_scp.test_receiver_phase import collector

SPILL = 1 << 20
BIG = 24 << 20
FRAGMENT = 16_000  # the peer's PDUs: within the receiver phases' 16 KiB Maximum Length
Pair = tuple[socket.socket, socket.socket]
PHASES = ["receiver-kernel", "receiver-python-timeout", "dataphase-raw", "client"]


def _make(kind: str, sock: socket.socket) -> DataPhase:
    if kind == "client":
        return _client_phase(ClientPhase, sock, kernel=True)
    return _receiver_phase(sock, fast=kind != "dataphase-raw", kernel=kind == "receiver-kernel")


def _read(phase: DataPhase, theirs: socket.socket, stream: bytes,
          messages: int = 1) -> tuple[list[Any], int, bytes]:
    """Read ``messages`` messages (or the error) while the peer ``theirs`` sends ``stream``; with
    the peak of memory allocated meanwhile (tracemalloc) and the bytes the peer received."""
    assert phase._sock is not None
    got = bytearray()

    def send() -> None:
        view = memoryview(stream)  # slices: no copies that tracemalloc would count
        try:
            for pos in range(0, len(view), 1 << 16):
                theirs.sendall(view[pos:pos + (1 << 16)])
        except OSError:
            pass

    threads = [threading.Thread(target=send), collector(theirs, got)]
    out: list[Any] = []
    tracemalloc.start()
    try:
        for thread in threads:
            thread.start()
        try:
            for _ in range(messages):
                msg = phase.recv()
                out.append((msg, None if phase.raw is None else list(phase.raw)))
        except KitError as exc:
            out.append(exc)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        phase._sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(10)
    return out, peak, bytes(got)


@pytest.fixture
def pair() -> Any:
    """(ours, theirs): a connected socket pair."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


@pytest.mark.parametrize("kind", PHASES)
def test_a_large_data_set_is_kept_on_disk_while_it_arrives(kind: str, pair: Pair,
                                                           tmp_path: Path) -> None:
    data = os.urandom(BIG)
    small = os.urandom(1000)
    stream = _store_rq(1, 1, "1.2.3", data, FRAGMENT) + _store_rq(1, 2, "1.2.4", small, FRAGMENT)
    phase = _make(kind, pair[0])
    phase.spill_at, phase.spill_dir = SPILL, str(tmp_path)
    out, peak, _ = _read(phase, pair[1], stream, messages=2)
    (big, big_raw), (after, after_raw) = out
    assert peak < 6 * SPILL, f"{peak:,} bytes allocated to read a {BIG:,}-byte data set"
    assert isinstance(big.dataset, memoryview) and big.dataset.readonly
    assert big.dataset == data
    assert big_raw is None  # not kept raw: it cannot go to pynetdicom
    assert after.dataset == small  # the next message as ever, its raw PDUs kept again where asked
    assert (after_raw is not None) == (kind != "client")
    assert os.listdir(tmp_path) == []  # the file never had a name


@pytest.mark.parametrize("kind", PHASES)
def test_a_data_set_over_the_bound_is_aborted(kind: str, pair: Pair, tmp_path: Path) -> None:
    phase = _make(kind, pair[0])
    phase.spill_at, phase.spill_dir, phase.max_dataset = SPILL, str(tmp_path), 3 * SPILL
    (err,), _, got = _read(phase, pair[1], _store_rq(1, 1, "1.2.3", os.urandom(4 * SPILL), FRAGMENT))
    assert isinstance(err, AssociationAbortedError)
    assert f"data set of more than {3 * SPILL:,} bytes" in str(err)
    assert got[:1] == b"\x07"  # A-ABORT
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", PHASES)
def test_an_endless_command_set_is_aborted(kind: str, pair: Pair) -> None:
    piece = b"\x00" * 8000
    pdu = struct.pack(">BBIIBB", 0x04, 0, len(piece) + 6, len(piece) + 2, 1, 0x01) + piece
    stream = pdu * (MAX_COMMAND // len(piece) + 10)  # command fragments, none the last
    (err,), peak, got = _read(_make(kind, pair[0]), pair[1], stream)
    assert isinstance(err, AssociationAbortedError)
    assert f"command set of more than {MAX_COMMAND:,} bytes" in str(err)
    assert got[:1] == b"\x07"
    assert peak < 4 * MAX_COMMAND


@pytest.mark.parametrize("kind", PHASES)
def test_a_data_set_that_cannot_be_kept_on_disk_is_a_store_error(kind: str, pair: Pair,
                                                                 tmp_path: Path) -> None:
    phase = _make(kind, pair[0])
    phase.spill_at, phase.spill_dir = SPILL, str(tmp_path / "gone")
    (err,), _, got = _read(phase, pair[1], _store_rq(1, 1, "1.2.3", os.urandom(2 * SPILL), FRAGMENT))
    assert isinstance(err, StoreError) and "large data set" in str(err)
    assert got[:1] == b"\x07"


@pytest.mark.parametrize("kind", PHASES)
def test_a_disk_that_fills_while_a_data_set_arrives_is_a_store_error(kind: str, pair: Pair,
                                                                    tmp_path: Path) -> None:
    """The file size limit (RLIMIT_FSIZE, EFBIG) stands in for a full disk: a real failed write."""
    phase = _make(kind, pair[0])
    phase.spill_at, phase.spill_dir = SPILL, str(tmp_path)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not the signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * SPILL, old_limit[1]))
    try:
        (err,), _, got = _read(phase, pair[1], _store_rq(1, 1, "1.2.3", os.urandom(8 * SPILL), FRAGMENT))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert isinstance(err, StoreError) and "cannot keep a large data set on disk" in str(err)
    assert got[:1] == b"\x07"
    assert os.listdir(tmp_path) == []


def _pdata(*pdvs: tuple[int, int, bytes]) -> bytes:
    """One P-DATA-TF PDU of (context, control, fragment) PDVs."""
    body = b"".join(struct.pack(">IBB", len(f) + 2, cx, control) + f for cx, control, f in pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


_COMMAND = encode_command({0x00000002: str(CTImageStorage), 0x00000100: 0x0001, 0x00000110: 1,
                           0x00000700: 0, 0x00000800: 1, 0x00001000: "1.2.3"})  # a data set follows
MALFORMED = {
    "command set that does not decode": _pdata((1, 0x03, b"\xff" * 40)),
    "data fragment before the command set": _pdata((1, 0x02, b"\x00" * 40)),
    "command fragment after the command set": _pdata((1, 0x03, _COMMAND), (1, 0x01, b"\x00" * 8)),
    "context changed within the message": _pdata((1, 0x03, _COMMAND), (3, 0x02, b"\x00" * 8)),
    "PDVs that do not add up": struct.pack(">BBIIBB", 0x04, 0, 12, 40, 1, 0x03) + b"\x00" * 6,
}


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.parametrize("kind", PHASES)
def test_a_malformed_message_is_answered_with_a_abort(kind: str, case: str, pair: Pair) -> None:
    (err,), _, got = _read(_make(kind, pair[0]), pair[1], MALFORMED[case])
    assert isinstance(err, AssociationAbortedError), err
    assert got[:1] == b"\x07", f"{case}: the peer got {got[:16]!r}, not an A-ABORT"


# -- end to end, real peers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 18 MiB CT instance: past the default SPILL_AT."""
    (path,) = random_ct_files(tmp_path_factory.mktemp("big"), 1, patient_id="BIGONE", size=3072, seed=5)
    return path


def test_storescu_stores_a_large_instance_byte_for_byte_and_get_brings_it_back(
        pacs: EmbeddedPACS, big_file: Path, tmp_path: Path) -> None:
    out = run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(big_file))
    assert out.returncode == 0, out.stderr
    src = dcmread(big_file)
    (stored,) = (pacs.store.root / "files").rglob("*.dcm")
    assert dcmread(stored).PixelData == src.PixelData
    assert _leftovers(pacs) == []
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=30)
    got = client.get(study_uid=str(src.StudyInstanceUID), dest=tmp_path / "back")
    assert got.height == 1
    back = Path(got["path"][0])
    assert dcmread(back).PixelData == src.PixelData
    assert sorted(p.name for p in back.parent.iterdir()) == [back.name]


def _leftovers(pacs: EmbeddedPACS) -> list[str]:
    """Files in the PACS's tmp/ holding bytes (its spare files for next instances are empty)."""
    return [p.name for p in Path(pacs.store.tmp_dir).iterdir() if p.stat().st_size]


@pytest.fixture
def bounded_pacs(tmp_path: Path) -> Any:
    server = EmbeddedPACS(tmp_path / "pacs", port=0, max_dataset_size=2 << 20)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_instance_over_max_dataset_size_is_aborted_and_the_pacs_goes_on(
        bounded_pacs: EmbeddedPACS, big_file: Path, tmp_path: Path) -> None:
    pacs = bounded_pacs
    out = run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(big_file))
    assert out.returncode != 0 or "abort" in (out.stdout + out.stderr).lower()
    (small,) = random_ct_files(tmp_path / "small", 1, patient_id="SMALL", size=64, seed=6)
    assert run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(small)).returncode == 0
    stored = [dcmread(p).PatientID for p in (pacs.store.root / "files").rglob("*.dcm")]
    assert stored == ["SMALL"]
    assert _leftovers(pacs) == []


def test_a_peer_that_queries_first_is_bounded_on_pynetdicoms_path_too(
        bounded_pacs: EmbeddedPACS, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After a C-FIND the association is pynetdicom's, which holds a data set in memory whole."""
    caplog.set_level(logging.WARNING, logger="kit.dicom._guard")  # whatever an earlier test set
    pacs = bounded_pacs
    ae = AE(ae_title="QUERYFIRST")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    (path,) = random_ct_files(tmp_path / "src", 1, patient_id="PYN", size=1100, seed=7)  # 2.3 MiB
    ds = dcmread(path)
    query = Dataset()
    query.QueryRetrieveLevel, query.PatientID = "PATIENT", "*"
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    try:
        assert [status.Status for status, _ in assoc.send_c_find(
            query, PatientRootQueryRetrieveInformationModelFind)][-1] == 0x0000
        assert not assoc.send_c_store(ds)  # no answer: the connection was cut
    finally:
        if assoc.is_established:
            assoc.abort()
    assert list((pacs.store.root / "files").rglob("*.dcm")) == []
    assert_echoes(pacs)
    assert len(encode(ds)) > pacs.max_dataset_size  # the case: over the bound
    assert f"data set of more than {pacs.max_dataset_size} bytes: association aborted" in caplog.text


def test_the_pacs_takes_max_dataset_size_from_its_parameters(tmp_path: Path) -> None:
    from kit.errors import ConfigError

    with pytest.raises(ConfigError):
        EmbeddedPACS(tmp_path / "p", max_dataset_size=0)
    assert EmbeddedPACS(tmp_path / "q").max_dataset_size == 4 << 30

