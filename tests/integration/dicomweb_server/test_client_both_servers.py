"""DicomWebClient against the embedded DICOMweb and against Orthanc: the same tests for both.

QIDO-RS answers as C-FIND on the same server, WADO-RS gives the stored pixels, STOW-RS stores
what C-FIND then finds (and C-STORE what QIDO-RS then finds), errors are typed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest

from kit.dicom.web import DicomWebClient
from kit.errors import DicomFileError, DicomWebError, PeerUnreachableError, TruncatedResultWarning
from kit.examples import cohort as sample_cohort
from kit.examples.dicom import CT_SLICES
from tests.conftest import free_port
from tests.integration.dicomweb_server.conftest import Target, cohort, make_ct

KEYS = {"PATIENT": "patient_id", "STUDY": "study_instance_uid", "SERIES": "series_instance_uid",
        "IMAGE": "sop_instance_uid"}
CT = sample_cohort.studies(modality="CT")


def _pixels(paths: list[Path]) -> dict[str, bytes]:
    return {str(ds.SOPInstanceUID): bytes(ds.PixelData) for ds in (pydicom.dcmread(p) for p in paths)}


@pytest.fixture
def web(target: Target) -> DicomWebClient:
    return DicomWebClient(target.base, timeout=20)


@pytest.mark.parametrize("level,filters", [
    ("PATIENT", {}),
    ("STUDY", {}),
    ("STUDY", {"patient_id": "MRN1005"}),
    ("STUDY", {"study_date": ("2026-01-01", "2026-02-01"), "modalities_in_study": "CT"}),
    ("STUDY", {"patient_name": "Moreau*"}),
    ("SERIES", {"modality": "MR"}),
    ("IMAGE", {"study_instance_uid": CT[3].study_uid}),
])
def test_qido_answers_as_cfind(web: DicomWebClient, target: Target, level: str,
                               filters: dict[str, object]) -> None:
    dimse = target.dimse.find(level, **filters).sort(KEYS[level])
    qido = web.find(level, **filters).sort(KEYS[level])
    assert dimse.height > 0
    assert qido.schema == dimse.schema
    assert qido.to_dicts() == dimse.to_dicts()


def test_qido_limit_pages_and_warns(web: DicomWebClient) -> None:
    everything = web.find("IMAGE", study_instance_uid=CT[0].study_uid)
    with pytest.warns(TruncatedResultWarning):
        first = web.find("IMAGE", study_instance_uid=CT[0].study_uid, limit=5)
    assert first.height == 5
    assert set(first["sop_instance_uid"]) <= set(everything["sop_instance_uid"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert web.find("IMAGE", study_instance_uid=CT[0].study_uid, limit=everything.height).height == \
            everything.height


def test_wado_gives_the_stored_pixels(web: DicomWebClient, tmp_path: Path) -> None:
    study = CT[4]
    got = web.get(study.study_uid, dest=tmp_path)
    assert got.height == CT_SLICES
    sources = [p for p in cohort() if study.key in str(p)]
    assert _pixels([Path(p) for p in got["path"]]) == _pixels(sources)
    one = web.get(study.study_uid, study.series_uid(1), dest=tmp_path / "series")
    assert one.height == CT_SLICES


def test_stow_is_found_by_cfind_and_qido_and_read_back(web: DicomWebClient, target: Target,
                                                        tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 4, patient_id="MRN9201", seed=1)
    sent = web.store(files)
    assert sent["status"].to_list() == [0] * 4
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    by_cfind = target.dimse.find("IMAGE", study_instance_uid=study_uid)
    assert sorted(by_cfind["sop_instance_uid"]) == sorted(sent["sop_instance_uid"])
    assert web.find("IMAGE", study_instance_uid=study_uid).height == 4
    back = web.get(study_uid, dest=tmp_path / "back")
    assert _pixels([Path(p) for p in back["path"]]) == _pixels(files)


def test_cstore_is_found_by_qido(web: DicomWebClient, target: Target, tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 3, patient_id="MRN9202", seed=2)
    assert target.dimse.store(files)["status"].to_list() == [0] * 3
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    found = web.find("SERIES", study_instance_uid=study_uid)
    assert found["number_of_series_related_instances"].to_list() == [3]
    assert found["patient_id"].to_list() == ["MRN9202"]


def test_a_truncated_file_is_refused_before_sending(web: DicomWebClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path, 1, seed=3)
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
