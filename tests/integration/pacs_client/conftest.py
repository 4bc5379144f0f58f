"""Fixtures for the PACS client tests: the sample cohort's images loaded into an Orthanc."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from kit.dicom.dimse import PacsClient
from kit.examples import cohort
from kit.examples.dicom import generate
from tests.integration.conftest import OrthancServer


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The cohort's CT and MR files, generated once per module."""
    return generate(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def loaded(orthanc: OrthancServer, cohort_files: list[Path]) -> OrthancServer:
    """Orthanc with the cohort uploaded over REST (independent of the client under test)."""
    for path in cohort_files:
        orthanc.upload(path)
    return orthanc


@pytest.fixture
def client(loaded: OrthancServer) -> PacsClient:
    return PacsClient("127.0.0.1", loaded.dicom_port, called_aet=loaded.aet, aet="KITSCU",
                      timeout=20)


def pixels_by_uid(paths: Iterator[Path] | list[Path]) -> dict[str, bytes]:
    """SOPInstanceUID -> PixelData bytes of the given files."""
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        out[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    return out


def make_ct(folder: Path, count: int, *, study_uid: str | None = None, patient_id: str = "MRN9001",
            size: int = 32) -> list[Path]:
    """``count`` small CT files of one new study/series (random pixels, unique UIDs)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    rng = np.random.default_rng(count)
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientID, ds.PatientName = patient_id, "Test^Patient"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime = dt.date(2026, 4, 1).strftime("%Y%m%d"), "101500"
        ds.AccessionNumber, ds.StudyID = f"ACC{patient_id[-4:]}99", "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def cohort_study(modality: str = "CT", index: int = 0) -> cohort.Study:
    return cohort.studies(modality=modality)[index]
