"""The embedded PACS under bad clients and failures: it refuses, survives and never leaves partial files."""

from __future__ import annotations

import logging
import socket
import sqlite3
import struct
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from kit.dicom.scp import EmbeddedPACS
from kit.dicom.store import InstanceStore
from kit.errors import ConfigError
from tests.integration.pacs_scp.conftest import N_INSTANCES, make_instance, run

pytestmark = pytest.mark.dcmtk


def echo_ok(pacs: EmbeddedPACS, aet: str = "ECHOSCU") -> bool:
    result = run("echoscu", "-aet", aet, "-aec", pacs.aet, "127.0.0.1", str(pacs.port), timeout=30)
    return result.returncode == 0


def leftovers(store: InstanceStore | Path) -> list[Path]:
    """Temporary or partial files anywhere in the store (of a store: once the empty files its
    pool made ahead for receivers are released, so any file left is one a write left)."""
    if isinstance(store, InstanceStore):
        store.release_spares()
        store = store.root
    return [p for p in store.rglob("*") if p.is_file() and (p.suffix == ".part" or p.parent.name == "tmp")]


def test_allow_list_rejects_unknown_calling_aet(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", allowed_aets=("GOODSCU",)) as pacs:
        rejected = run("echoscu", "-v", "-aet", "BADSCU", "-aec", pacs.aet, "127.0.0.1", str(pacs.port))
        assert rejected.returncode != 0
        text = (rejected.stdout + rejected.stderr).lower()
        assert "rejected" in text and "calling ae title not recognized" in text
        assert echo_ok(pacs, "GOODSCU")


def test_invalid_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        EmbeddedPACS(tmp_path / "p", aet="THIS_AE_TITLE_IS_TOO_LONG")
    with pytest.raises(ConfigError):
        EmbeddedPACS(tmp_path / "p", port=70000)


def test_garbage_bytes_then_echo_still_works(pacs: EmbeddedPACS) -> None:
    for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 8, b"\x01\x00\xff\xff\xff\xff"):
        with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(5)
            try:
                s.recv(100)  # an A-ABORT or a close
            except (TimeoutError, ConnectionError):
                pass
    # a client that connects and disconnects at once
    socket.create_connection(("127.0.0.1", pacs.port), timeout=5).close()
    assert echo_ok(pacs)


def test_idle_client_is_timed_out(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", acse_timeout=1, network_timeout=1) as pacs, \
            socket.create_connection(("127.0.0.1", pacs.port), timeout=10) as s:
        s.settimeout(10)
        start = time.monotonic()
        data = s.recv(100)  # the server closes (or aborts) the silent connection
        assert time.monotonic() - start < 8
        assert data == b"" or data[:1] == b"\x07"  # closed, or A-ABORT PDU
        assert echo_ok(pacs)


def _partial_c_store(pacs: EmbeddedPACS, ds: Dataset) -> None:
    """Associate, send the C-STORE command and about half of the dataset's PDUs, then reset the connection."""
    ae = AE(ae_title="DYINGSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet, max_pdu=16382)
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    buf = BytesIO()
    dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    primitive.DataSet = BytesIO(buf.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = []
    for pdata in message.encode_msg(context.context_id, 16382):
        pdu = P_DATA_TF()
        pdu.from_primitive(pdata)
        pdus.append(pdu.encode())
    assert len(pdus) > 10
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    for raw in pdus[: len(pdus) // 2]:
        sock.sendall(raw)
    time.sleep(0.2)
    # die like a killed process: RST, no A-RELEASE/A-ABORT
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    ae.shutdown()


def test_client_killed_mid_store_leaves_nothing(pacs: EmbeddedPACS) -> None:
    big = make_instance("MRN1004", 0, 1, 1, size=512)  # ~512 KiB of pixels, ~32 PDUs
    _partial_c_store(pacs, big)
    time.sleep(0.5)
    assert len(pacs.store) == 0
    assert not list(pacs.store.files_dir.rglob("*.dcm"))
    assert leftovers(pacs.store) == []
    assert echo_ok(pacs)
    small = make_instance("MRN1004", 0, 1, 2)
    path = pacs.store.root.parent / "small.dcm"
    small.save_as(path, enforce_file_format=True)
    assert run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(path)).returncode == 0
    assert len(pacs.store) == 1


def test_failed_write_returns_failure_and_leaves_no_file(pacs: EmbeddedPACS, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The index commit fails (a fault no peer can cause, hence the patch): 0xA700, no file, no temp."""
    def broken(self: InstanceStore, *args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(InstanceStore, "_insert", broken)
    ds = make_instance("MRN1004", 0, 1, 3)
    ae = AE(ae_title="KITSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xA700
    assert not list(pacs.store.files_dir.rglob("*.dcm"))
    assert leftovers(pacs.store) == []
    monkeypatch.undo()
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert len(pacs.store) == 1


def test_duplicate_replaces_atomically(pacs: EmbeddedPACS) -> None:
    ds = make_instance("MRN1005", 0, 1, 1)
    ae = AE(ae_title="KITSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.send_c_store(ds).Status == 0x0000
    ds.SeriesDescription = "second version"
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    assert len(pacs.store) == 1
    files = list(pacs.store.files_dir.rglob("*.dcm"))
    assert len(files) == 1
    assert dcmread(files[0]).SeriesDescription == "second version"


def test_restart_keeps_everything_findable(tmp_path: Path, cohort_dir: Path) -> None:
    root = tmp_path / "pacs"
    with EmbeddedPACS(root) as pacs:
        assert run("storescu", "-aec", pacs.aet, "+sd", "127.0.0.1", str(pacs.port),
                   str(cohort_dir)).returncode == 0
    pacs.store.close()

    def study_count(p: EmbeddedPACS) -> int:
        ae = AE(ae_title="KITSCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", p.port, ae_title=p.aet)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.SOPInstanceUID = ""
        found = [r for s, r in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                 if s and s.Status == 0xFF00]
        assoc.release()
        return len(found)

    with EmbeddedPACS(root) as again:
        assert len(again.store) == N_INSTANCES
        assert study_count(again) == N_INSTANCES
    again.store.close()
    # the index lost (deleted): rebuilt from the files on open
    for f in root.glob("index.sqlite*"):
        f.unlink()
    with EmbeddedPACS(root) as rebuilt:
        assert study_count(rebuilt) == N_INSTANCES
    rebuilt.store.close()


def test_preload_with_skip_existing_writes_nothing_twice(tmp_path: Path) -> None:
    from kit.examples import study_dir

    files = sorted(study_dir("MRN1002").rglob("*.dcm"))
    first = EmbeddedPACS(tmp_path / "store")
    assert first.import_files(files, skip_existing=True) == len(files)
    stored = {s.path: s.path.stat().st_mtime_ns for s in first.store.instances()}
    first.close()
    again = EmbeddedPACS(tmp_path / "store")
    assert again.import_files(files, skip_existing=True) == 0
    assert {s.path: s.path.stat().st_mtime_ns for s in again.store.instances()} == stored
    assert again.import_files(files[:1]) == 1  # without the flag a file replaces its instance
    again.close()


def test_store_frame_has_the_index_columns_and_types(tmp_path: Path) -> None:
    import polars as pl

    from kit.dicom.index import index_dicom
    from kit.examples import study_dir

    files = sorted(study_dir("MRN1001").rglob("*.dcm"))
    pacs = EmbeddedPACS(tmp_path / "store")
    pacs.import_files(files)
    frame = pacs.store.frame().sort("instance_number")
    index = index_dicom(files).frame.sort("instance_number")
    for column in ("patient_id", "study_instance_uid", "sop_instance_uid", "series_number",
                   "instance_number", "study_date", "size_bytes"):
        assert frame.schema[column] == index.schema[column], column
        assert frame[column].to_list() == index[column].to_list(), column
    assert frame["size_bytes"].null_count() == 0 and frame.schema["size_bytes"] == pl.Int64
    pacs.close()


def _request_naming(kind: str, sop_class: str) -> tuple[bytes, bytes | None]:
    """(command set, data set) of a ``kind`` request naming ``sop_class`` as its Affected SOP Class,
    whose service does not serve it: pynetdicom handed it to that service all the same."""
    from pynetdicom.dimse_messages import C_FIND_RQ, C_GET_RQ, N_EVENT_REPORT_RQ
    from pynetdicom.dimse_primitives import C_FIND, C_GET, N_EVENT_REPORT
    from pynetdicom.dsutils import encode

    from tests.integration.pacs_scp.conftest import encode as encode_dataset

    dataset = None
    if kind == "N-EVENT-REPORT":
        primitive: Any = N_EVENT_REPORT()
        primitive.AffectedSOPInstanceUID, primitive.EventTypeID = "1.2.3.4", 1
        message: Any = N_EVENT_REPORT_RQ()
    else:
        primitive, message = (C_FIND(), C_FIND_RQ()) if kind == "C-FIND" else (C_GET(), C_GET_RQ())
        primitive.Priority = 2
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.PatientID = "PATIENT", "*"
        dataset = encode_dataset(identifier)
    primitive.MessageID, primitive.AffectedSOPClassUID = 1, sop_class
    message.primitive_to_message(primitive)
    message.command_set.CommandDataSetType = 0x0101 if dataset is None else 0x0001
    command = encode(message.command_set, True, True)
    assert command is not None
    return command, dataset


@pytest.mark.parametrize(("kind", "sop_class"), [
    ("N-EVENT-REPORT", str(CTImageStorage)), ("C-FIND", str(CTImageStorage)),
    ("C-GET", "1.2.840.10008.5.1.4.31")])  # Modality Worklist: C-FIND only
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
def test_a_request_its_sop_class_does_not_serve_is_aborted_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, sop_class: str, fast: bool) -> None:
    from kit.errors import AssociationAbortedError
    from tests.integration.pacs_scp.conftest import owned_association

    caplog.set_level(logging.WARNING)
    command, dataset = _request_naming(kind, sop_class)
    pacs = EmbeddedPACS(tmp_path / "pacs", port=0, fast=fast)
    pacs.start()
    try:
        with pytest.raises(AssociationAbortedError, match="A-ABORT"), \
                owned_association(pacs, "ODDREQUEST") as (_, phase, cx):
            phase.send(cx, command, dataset)
            phase.recv()
        assert echo_ok(pacs)
    finally:
        pacs.stop()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kit.")] == [
        f"a {kind} request naming SOP class {sop_class} from ODDREQUEST: association aborted"]
    assert leftovers(pacs.store) == [] and not list((pacs.store.root / "files").rglob("*.dcm"))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
def test_a_flood_of_requests_that_do_not_fit_is_one_line_an_association(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, fast: bool) -> None:
    """300 N-EVENT-REPORTs naming CT Image Storage sent without reading, on each of 3 associations:
    pynetdicom serves each on a thread of its own, and those that arrive while the association
    ends are dropped without a line (there were about 170 lines an association)."""
    import threading

    from kit.errors import KitError
    from tests.conftest import wait_until
    from tests.integration.pacs_scp.conftest import owned_association

    caplog.set_level(logging.WARNING)
    command, dataset = _request_naming("N-EVENT-REPORT", str(CTImageStorage))
    pacs = EmbeddedPACS(tmp_path / "pacs", port=0, fast=fast)
    pacs.start()
    threads = threading.active_count()
    try:
        for _ in range(3):
            try:
                with owned_association(pacs, "FLOOD") as (_, phase, cx):
                    for _ in range(300):
                        phase.send(cx, command, dataset)
            except KitError:
                pass  # aborted while still sending: what the peer may see
        assert echo_ok(pacs)
        wait_until(lambda: threading.active_count() <= threads, "the request threads did not end")
    finally:
        pacs.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("kit.")]
    assert 3 <= len(lines) <= 6, lines      # one an association (two threads may race to the first)
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
