"""The kit's direct-socket DIMSE data phase (kit.dicom._fastnet) keeps pynetdicom's guarantees.

PacsClient.store/get and the EmbeddedPACS's C-STORE/C-ECHO read and write PDUs
themselves; these tests drive them against real peers (the EmbeddedPACS,
pynetdicom, dcmtk) with fragmenting PDU sizes, hand-overs to pynetdicom within
one association, aborts, timeouts and shutdown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from kit.dicom._command import command_int, command_str, decode_command, encode_command
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import PeerTimeoutError
from tests.conftest import free_port
from tests.integration.pacs_scp.conftest import make_instance, run

_UID = st.from_regex(r"\A[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,8}\Z")


@settings(max_examples=60, deadline=None)
@given(sop_class=_UID, sop_uid=_UID, msg_id=st.integers(0, 0xFFFF), status=st.integers(0, 0xFFFF))
def test_command_set_encoding_matches_pydicom(sop_class: str, sop_uid: str, msg_id: int,
                                              status: int) -> None:
    fields: dict[int, int | str] = {0x00000002: sop_class, 0x00000100: 0x8001, 0x00000120: msg_id,
                                    0x00000800: 0x0101, 0x00000900: status, 0x00001000: sop_uid}
    ours = encode_command(fields)
    ds = Dataset()
    ds.CommandGroupLength = 0
    ds.AffectedSOPClassUID, ds.CommandField, ds.MessageIDBeingRespondedTo = sop_class, 0x8001, msg_id
    ds.CommandDataSetType, ds.Status, ds.AffectedSOPInstanceUID = 0x0101, status, sop_uid
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    ds.CommandGroupLength = len(buf.getvalue()) - 12
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    assert ours == buf.getvalue()
    decoded = decode_command(ours)
    assert command_str(decoded, 0x0002) == sop_class and command_str(decoded, 0x1000) == sop_uid
    assert command_int(decoded, 0x0120) == msg_id and command_int(decoded, 0x0900) == status


def _files(folder: Path, sizes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, size in enumerate(sizes, start=1):
        path = folder / f"{number}.dcm"
        make_instance("MRN1001", 0, 1, number, size=size).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _body(path: Path) -> bytes:
    """A Part 10 file's data set bytes (after the file meta)."""
    data = path.read_bytes()
    meta_len = int.from_bytes(data[140:144], "little")
    return data[144 + meta_len:]


@pytest.fixture
def small_pdu_pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    server = EmbeddedPACS(tmp_path / "pacs", max_pdu=4096)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_store_and_get_back_byte_identical_across_many_pdus(small_pdu_pacs: EmbeddedPACS,
                                                          tmp_path: Path) -> None:
    files = _files(tmp_path / "src", [8, 64, 256])  # the last is ~128 KiB: ~32 PDUs of 4 KiB
    client = PacsClient("127.0.0.1", small_pdu_pacs.port, called_aet=small_pdu_pacs.aet,
                        timeout=20, max_pdu=4096)
    sent = client.store(files)
    assert sent["status"].to_list() == [0, 0, 0]
    stored = {i.sop_instance_uid: i.path for i in small_pdu_pacs.store}
    for path in files:
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert _body(stored[sop]) == _body(path)
    study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    got = client.get(study_uid=study, dest=tmp_path / "back")
    assert got.height == 3
    for row in got.iter_rows(named=True):  # the PACS re-encodes in the syntax it negotiated
        back, original = dcmread(row["path"]), dcmread(stored[row["sop_instance_uid"]])
        assert back.file_meta.TransferSyntaxUID == row["transfer_syntax_uid"]
        assert back.PixelData == original.PixelData and back.PatientID == original.PatientID
        assert back.SOPInstanceUID == row["sop_instance_uid"]


def test_dcmtk_storescu_with_small_pdus(small_pdu_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    files = _files(tmp_path / "src", [128, 16, 200])
    result = run("storescu", "-aec", small_pdu_pacs.aet, "-pdu", "4096", "127.0.0.1",
                 str(small_pdu_pacs.port), *map(str, files))
    assert result.returncode == 0, result.stderr
    assert len(small_pdu_pacs.store) == 3
    for inst, path in zip(sorted(small_pdu_pacs.store, key=lambda i: i.sop_instance_uid),
                          sorted(files, key=lambda p: str(dcmread(p).SOPInstanceUID)), strict=True):
        assert _body(inst.path) == _body(path)


def test_one_association_mixes_fast_and_handed_over_requests(tmp_path: Path) -> None:
    """C-ECHO and C-STORE on the fast path, then C-FIND handed to pynetdicom, then C-STORE
    again (pynetdicom's from then on), then a clean release."""
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        ae = AE(ae_title="MIXED")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
            first = make_instance("MRN1001", 0, 1, 1)
            first.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            assert assoc.send_c_store(first).Status == 0x0000
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.PatientID = "MRN1001"
            responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            found = [ident for status, ident in responses
                     if ident is not None and status and status.Status in (0xFF00, 0xFF01)]
            assert [str(f.StudyInstanceUID) for f in found] == [str(first.StudyInstanceUID)]
            second = make_instance("MRN1001", 0, 1, 2)
            assert assoc.send_c_store(second).Status == 0x0000
            assert assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()
        assert assoc.is_released and not assoc.is_aborted
        assert len(pacs.store) == 2
        stored = {i.sop_instance_uid for i in pacs.store}
        assert stored == {str(first.SOPInstanceUID), str(second.SOPInstanceUID)}
        pacs.store.release_spares()  # the empty files made ahead for the next instances
        assert not list(pacs.store.tmp_dir.iterdir())


def test_peer_abort_on_fast_path_then_server_still_serves(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        ae = AE(ae_title="ABORTER")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        assert assoc.send_c_store(make_instance("MRN1002", 0, 1, 1)).Status == 0x0000
        assoc.abort()
        assert assoc.is_aborted
        deadline = time.monotonic() + 10
        while pacs._server is not None and pacs._server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pacs._server.active_associations  # type: ignore[union-attr]
        client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
        assert client.echo() < 5
        assert len(pacs.store) == 1


def test_stop_with_an_open_fast_association_is_prompt(tmp_path: Path) -> None:
    pacs = EmbeddedPACS(tmp_path / "pacs", network_timeout=60)
    pacs.start()
    ae = AE(ae_title="IDLER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    try:
        assert assoc.send_c_store(make_instance("MRN1003", 0, 1, 1)).Status == 0x0000
        start = time.monotonic()
        pacs.stop()
        assert time.monotonic() - start < 10
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
    finally:
        if assoc.is_established:
            assoc.abort()
        pacs.close()


def test_client_store_times_out_on_a_silent_peer(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(event: Any) -> int:
        release.wait(10)
        return 0x0000

    ae = AE(ae_title="SLOWPACS")
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, slow)])
    assert server is not None
    try:
        files = _files(tmp_path / "src", [8])
        client = PacsClient("127.0.0.1", port, called_aet="SLOWPACS", timeout=1.5)
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError, match="after 0 instance"):
            client.store(files)
        assert time.monotonic() - start < 8
    finally:
        release.set()
        server.shutdown()
