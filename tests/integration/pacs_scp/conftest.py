"""Fixtures for the embedded PACS tests: small DICOM files from the sample cohort, dcmtk runners."""

from __future__ import annotations

import contextlib
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from kit.config import StackSettings
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.examples.cohort import patient
from kit.stack import Stack
from tests.conftest import free_port, peer_env, require_tool

#: (mrn, study index in the patient's studies, number of series, instances per series)
LAYOUT = (("MRN1001", 0, 2, 3), ("MRN1002", 0, 1, 2), ("MRN1002", 1, 1, 2), ("MRN1003", 0, 1, 2))
N_INSTANCES = sum(s * i for _, _, s, i in LAYOUT)


def dcmtk(name: str) -> str:
    """Path of a dcmtk tool (not pynetdicom's same-named console scripts that may shadow it)."""
    path = require_tool(name)
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    if "dcmtk" in (probe.stdout + probe.stderr).lower():
        return path
    fallback = Path("/usr/bin") / name
    if fallback.exists():
        return str(fallback)
    pytest.skip(f"{name} on PATH is not dcmtk's")  # pragma: no cover
    raise AssertionError  # unreachable


def run(tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool with TCP_NODELAY=1."""
    return subprocess.run([dcmtk(tool), *args], env=peer_env(), capture_output=True, text=True,
                          timeout=timeout)


def make_instance(mrn: str, study_index: int, series: int, number: int, *, size: int = 16) -> Dataset:
    """One small CT/MR image of a cohort study (deterministic UIDs and pixels)."""
    p = patient(mrn)
    study = p.studies[study_index]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage if study.modality == "MR" else CTImageStorage
    ds.SOPInstanceUID = study.instance_uid(series, number)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = p.dicom_name
    ds.PatientID = p.mrn
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.date.strftime("%Y%m%d")
    ds.StudyTime = study.time.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.StudyID = "1"
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = study.series_uid(series)
    ds.Modality = study.modality
    ds.SeriesNumber = series
    ds.SeriesDescription = f"series {series}"
    ds.BodyPartExamined = study.body_part
    ds.InstanceNumber = number
    ds.InstitutionName = "Kit Test Hospital"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    rng = np.random.default_rng(zlib.crc32(f"{mrn}/{study_index}/{series}/{number}".encode()))
    ds.PixelData = rng.integers(0, 4000, (size, size), dtype=np.uint16).tobytes()
    return ds


def write_cohort(folder: Path) -> list[Path]:
    """Write the LAYOUT as Part 10 files; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for mrn, study_index, n_series, n_inst in LAYOUT:
        for series in range(1, n_series + 1):
            for number in range(1, n_inst + 1):
                ds = make_instance(mrn, study_index, series, number)
                path = folder / f"{mrn}_{study_index}_{series}_{number}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
    return paths


def extracted(folder: Path) -> list[Dataset]:
    """The datasets findscu -X wrote (rsp0001.dcm ...), in order."""
    return [dcmread(p) for p in sorted(folder.glob("rsp*.dcm"))]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with N_INSTANCES small images of the sample cohort."""
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder)
    return folder


@pytest.fixture(scope="module")
def loaded_pacs(tmp_path_factory: pytest.TempPathFactory, cohort_dir: Path) -> Iterator[EmbeddedPACS]:
    """A running EmbeddedPACS preloaded (import_files) with the cohort folder."""
    server = EmbeddedPACS(tmp_path_factory.mktemp("pacs"), port=0)
    assert server.import_files([cohort_dir]) == N_INSTANCES
    server.start()
    try:
        yield server
    finally:
        server.close()


# -- raw peers (issue 7): hand-built C-STOREs and PDUs ----------------------------------------

def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    """A data set encoded (no preamble/meta) in Explicit (default) or Implicit VR Little Endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def raw_store(port: int, called: str, dataset: bytes, *, sop_class: str = str(CTImageStorage),
              sop_uid: str = "1.2.826.0.1.3680043.8.498.1", syntax: str = str(ExplicitVRLittleEndian),
              calling: str = "RAWSCU") -> tuple[int, str]:
    """Send one C-STORE-RQ whose data set is ``dataset`` byte for byte; (status, ErrorComment)."""
    from pynetdicom import AE

    from kit.dicom._command import C_STORE_RQ, command_int, command_str, encode_command
    from kit.dicom._fastnet import DataPhase

    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        cx = assoc.accepted_contexts[0]
        assert cx.context_id is not None
        with DataPhase(assoc, 15, "raw_store") as phase:
            phase.send(cx.context_id, encode_command({
                0x00000002: sop_class, 0x00000100: C_STORE_RQ, 0x00000110: 7, 0x00000700: 2,
                0x00000800: 1, 0x00001000: sop_uid}), dataset)
            rsp = phase.recv()
        status = command_int(rsp.command, 0x0900)
        assert status is not None
        return status, command_str(rsp.command, 0x0902)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def poison_datasets() -> dict[str, tuple[bytes, str, int]]:
    """Data sets a PACS must not acknowledge: name -> (bytes, the command's SOP Instance UID,
    expected status: 0xC000 cannot understand, 0xA900 does not match)."""
    import numpy as np

    def case(number: int) -> Dataset:
        return make_instance("MRN1001", 0, 1, number)

    good = case(1)
    uid = str(good.SOPInstanceUID)
    body = encode(good)
    overrun = bytearray(body)
    pos = body.index(b"\x10\x00\x20\x00LO")  # PatientID: its 2-byte length now runs past the end
    overrun[pos + 6:pos + 8] = (0xFFF0).to_bytes(2, "little")
    short_pixels, no_study, no_patient = case(2), case(3), case(4)
    short_pixels.PixelData = short_pixels.PixelData[:100]
    del no_study.StudyInstanceUID
    del no_patient.PatientID
    return {
        "empty": (b"", uid, 0xC000),
        "seven bytes": (b"\x08\x00\x16\x00UI\x1a", uid, 0xC000),
        "random 10 KB": (np.random.default_rng(7).bytes(10 * 1024), uid, 0xC000),
        "value length overrun": (bytes(overrun), uid, 0xC000),
        "cut mid-element": (body[:-37], uid, 0xC000),
        "truncated pixel data": (encode(short_pixels), str(short_pixels.SOPInstanceUID), 0xC000),
        "no StudyInstanceUID": (encode(no_study), str(no_study.SOPInstanceUID), 0xA900),
        "no PatientID": (encode(no_patient), str(no_patient.SOPInstanceUID), 0xA900),
        "other SOPInstanceUID": (encode(case(5)), uid, 0xA900),
    }


def assert_echoes(pacs: EmbeddedPACS, calling: str = "AFTER") -> None:
    """A C-ECHO to ``pacs`` succeeds (it goes on serving after what a test did to it)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@contextlib.contextmanager
def owned_association(pacs: EmbeddedPACS, aet: str) -> Iterator[tuple[Any, Any, int]]:
    """An association to ``pacs`` whose socket the test owns (a DataPhase holds pynetdicom off)."""
    from pynetdicom import AE

    from kit.dicom._fastnet import DataPhase

    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    try:
        cx = assoc.accepted_contexts[0].context_id
        assert cx is not None
        with DataPhase(assoc, 60, aet) as phase:
            yield assoc, phase, cx
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()


@contextlib.contextmanager
def sample_stack_to_move_from(tmp_path: Path) -> Iterator[tuple[PacsClient, int]]:
    """The embedded stack's PACS (the sample cohort) and a client it may C-MOVE to: (client, its
    storage port), the port registered as move destination KITMOVE."""
    store_port = free_port()
    settings = StackSettings(pacs_port=0, fhir_port=0, mllp_port=0, data_dir=str(tmp_path / "stack"),
                             move_destinations={"KITMOVE": f"127.0.0.1:{store_port}"})
    with Stack(settings, services=["pacs"]) as stack:
        s = stack.client_settings()
        yield PacsClient(s.pacs.host, s.pacs.port, called_aet=s.pacs.called_aet, aet="KITMOVE",
                         timeout=10), store_port
