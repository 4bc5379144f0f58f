"""Fixtures for the PACS client tests: the sample cohort's images loaded into an Orthanc."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from kit.dicom.dimse import PacsClient
from kit.examples import cohort
from kit.examples.dicom import (
    generate,
    random_ct_files,  # noqa: E402
)
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
    return random_ct_files(folder, count, study_uid=study_uid, patient_id=patient_id, size=size, seed=count)



def cohort_study(modality: str = "CT", index: int = 0) -> cohort.Study:
    return cohort.studies(modality=modality)[index]
