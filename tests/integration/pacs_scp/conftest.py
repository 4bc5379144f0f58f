"""Fixtures for the embedded PACS tests: small DICOM files from the sample cohort, dcmtk runners."""

from __future__ import annotations

import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from kit.dicom.scp import EmbeddedPACS
from kit.examples.cohort import patient
from tests.conftest import peer_env, require_tool

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


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    """An empty running EmbeddedPACS on an ephemeral port, stopped afterwards."""
    server = EmbeddedPACS(tmp_path / "pacs", port=0)
    server.start()
    try:
        yield server
    finally:
        server.close()


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
