"""DicomWebClient against Orthanc's DICOMweb plugin: QIDO equals C-FIND, WADO and STOW round trips."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.web import DicomWebClient
from kit.errors import DicomFileError, DicomWebError, PeerUnreachableError
from kit.examples.dicom import CT_SLICES
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.pacs_client.conftest import cohort_study, make_ct, pixels_by_uid

pytestmark = pytest.mark.orthanc


@pytest.fixture
def web(loaded: OrthancServer) -> DicomWebClient:
    return DicomWebClient(loaded.dicomweb, timeout=20)


@pytest.mark.parametrize("level,filters", [
    ("PATIENT", {}),
    ("STUDY", {}),
    ("STUDY", {"patient_id": "MRN1005"}),
    ("STUDY", {"study_date": ("2026-01-01", "2026-02-01"), "modalities_in_study": "CT"}),
    ("SERIES", {"modality": "MR"}),
    ("IMAGE", {"study_instance_uid": cohort_study("CT", 3).study_uid}),
])
def test_qido_equals_cfind(web: DicomWebClient, client: PacsClient, level: str,
                           filters: dict[str, object]) -> None:
    key = {"PATIENT": "patient_id", "STUDY": "study_instance_uid", "SERIES": "series_instance_uid",
           "IMAGE": "sop_instance_uid"}[level]
    dimse = client.find(level, **filters).sort(key)
    qido = web.find(level, **filters).sort(key)
    assert dimse.height > 0
    assert qido.schema == dimse.schema
    assert qido.to_dicts() == dimse.to_dicts()


def test_wado_get_pixels_identical(web: DicomWebClient, cohort_files: list[Path], tmp_path: Path) -> None:
    study = cohort_study("CT", 4)
    got = web.get(study.study_uid, dest=tmp_path)
    assert got.height == CT_SLICES
    sources = [p for p in cohort_files if study.key in str(p)]
    assert pixels_by_uid([Path(p) for p in got["path"]]) == pixels_by_uid(sources)
    one = web.get(study.study_uid, study.series_uid(1), dest=tmp_path / "series")
    assert one.height == CT_SLICES


def test_stow_then_find_and_get(web: DicomWebClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 7, patient_id="MRN9201")
    sent = web.store(files)
    assert sent["status"].to_list() == [0] * 7
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    found = web.find("IMAGE", study_instance_uid=study_uid)
    assert found.height == 7
    back = web.get(study_uid, dest=tmp_path / "back")
    assert pixels_by_uid([Path(p) for p in back["path"]]) == pixels_by_uid(files)


def test_stow_truncated_file(web: DicomWebClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path, 1)
    files[0].write_bytes(files[0].read_bytes()[:-10])
    with pytest.raises(DicomFileError):
        web.store(files)


def test_http_error_and_unreachable(web: DicomWebClient, tmp_path: Path) -> None:
    with pytest.raises(DicomWebError) as info:
        web.get("1.2.3.4.5.404", dest=tmp_path)
    assert info.value.status_code == 404
    dead = DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    with pytest.raises(PeerUnreachableError):
        dead.find("STUDY")
