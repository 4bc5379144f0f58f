"""dicomweb-client (the library a researcher would pick) against the embedded DICOMweb server:
search, retrieve (instances, metadata, frames), store, and the QIDO-RS parameters."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from kit.examples import cohort as sample_cohort
from kit.examples.dicom import CT_SLICES
from tests.integration.dicomweb_server.conftest import Embedded, cohort, get, make_ct

CT = sample_cohort.studies(modality="CT")


@pytest.fixture
def lib(embedded: Embedded) -> DICOMwebClient:
    return DICOMwebClient(embedded.base)


def _uid(item: dict[str, dict[str, list[str]]], tag: str) -> str:
    return item[tag]["Value"][0]


def test_search_levels_and_default_fields(lib: DICOMwebClient) -> None:
    studies = lib.search_for_studies()
    assert len(studies) == len({p.parent.parent for p in cohort()})
    one = Dataset.from_json(studies[0])
    for keyword in ("StudyInstanceUID", "PatientID", "StudyDate", "ModalitiesInStudy",
                    "NumberOfStudyRelatedInstances", "RetrieveURL"):
        assert keyword in one, keyword
    assert one.RetrieveURL.endswith(f"/studies/{one.StudyInstanceUID}")
    series = lib.search_for_series(CT[0].study_uid)
    assert {_uid(s, "0020000E") for s in series} == {CT[0].series_uid(1)}
    instances = lib.search_for_instances(CT[0].study_uid, CT[0].series_uid(1))
    assert len(instances) == CT_SLICES
    first = Dataset.from_json(instances[0])
    assert first.Rows > 0 and first.BitsAllocated == 16  # read from the file: the index lacks them
    everywhere = lib.search_for_series(search_filters={"Modality": "CT"})
    assert all(Dataset.from_json(s).Modality == "CT" for s in everywhere)
    assert "StudyDate" in Dataset.from_json(everywhere[0])  # /series carries the study's fields too


def test_limit_offset_includefield_fuzzy(lib: DICOMwebClient, embedded: Embedded) -> None:
    all_ids = [_uid(i, "00080018") for i in lib.search_for_instances(CT[0].study_uid)]
    pages = [lib.search_for_instances(CT[0].study_uid, limit=5, offset=o) for o in range(0, len(all_ids), 5)]
    assert [_uid(i, "00080018") for page in pages for i in page] == all_ids
    got = lib.search_for_studies(search_filters={"PatientID": "MRN1001"},
                                 fields=["StudyDescription", "00080090", "InstitutionName"])
    assert got and all("00081030" in s and "00080090" in s and "00080080" in s for s in got)
    status, headers, _ = get(embedded.base, "/studies?limit=1")
    assert status == 200 and "additional results" in headers["warning"]
    status, headers, _ = get(embedded.base, "/studies?PatientName=moreau*&fuzzymatching=true")
    assert status == 200 and "fuzzymatching parameter is not supported" in headers["warning"]
    status, _, body = get(embedded.base, "/studies?PatientName=moreau*&fuzzymatching=true")
    assert len(__import__("json").loads(body)) == 2  # literal, case-insensitive PN (as C-FIND)


@pytest.mark.parametrize("query", ["NoSuchKeyword=1", "StudyDate=20261340", "limit=-1", "limit=x",
                                   "SOPInstanceUID=1.2.3", "PatientID=a&00100020=b", "00091001=x",
                                   "fuzzymatching=maybe"])
def test_bad_queries_are_400(embedded: Embedded, query: str) -> None:
    status, _, body = get(embedded.base, f"/studies?{query}")
    assert status == 400, body


def test_retrieve_instance_metadata_and_frames(lib: DICOMwebClient) -> None:
    study, series = CT[1].study_uid, CT[1].series_uid(1)
    sop = _uid(lib.search_for_instances(study, series, limit=1)[0], "00080018")
    source = next(pydicom.dcmread(p) for p in cohort() if pydicom.dcmread(
        p, stop_before_pixels=True).SOPInstanceUID == sop)
    ds = lib.retrieve_instance(study, series, sop)
    assert ds.PixelData == source.PixelData
    meta = Dataset.from_json(lib.retrieve_instance_metadata(study, series, sop))
    assert meta.SOPInstanceUID == sop and "PixelData" not in meta
    assert len(lib.retrieve_series_metadata(study, series)) == CT_SLICES
    frames = lib.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
    assert frames == [source.PixelData]
    assert len(list(lib.iter_series(study, series))) == CT_SLICES


def test_retrieve_in_another_transfer_syntax(embedded: Embedded) -> None:
    study = CT[2].study_uid
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    status, headers, body = get(embedded.base, f"/studies/{study}", accept=accept)
    assert status == 200 and body.count(b"transfer-syntax=1.2.840.10008.1.2\r\n") == CT_SLICES
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert get(embedded.base, f"/studies/{study}", accept=accept)[0] == 406
    assert get(embedded.base, f"/studies/{study}", accept="application/pdf")[0] == 406
    assert get(embedded.base, "/studies/1.2.3.404")[0] == 404
    assert get(embedded.base, "/studies/not-a-uid")[0] == 400


def test_store_then_search_and_retrieve(lib: DICOMwebClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path, 3, patient_id="MRN9301", seed=7)
    datasets = [pydicom.dcmread(f) for f in files]
    answer = lib.store_instances(datasets)
    stored = {str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence}
    assert stored == {str(d.SOPInstanceUID) for d in datasets}
    assert "FailedSOPSequence" not in answer
    assert answer.RetrieveURL.endswith(f"/studies/{datasets[0].StudyInstanceUID}")
    back = lib.retrieve_study(str(datasets[0].StudyInstanceUID))
    assert sorted(bytes(d.PixelData) for d in back) == sorted(bytes(d.PixelData) for d in datasets)


def test_store_into_another_study_is_refused_per_instance(lib: DICOMwebClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path, 1, patient_id="MRN9302", seed=8)
    with pytest.raises(requests.HTTPError) as info:
        lib.store_instances([pydicom.dcmread(files[0])], study_instance_uid="1.2.3.4")
    assert info.value.response.status_code == 409
    answer = Dataset.from_json(info.value.response.json())
    assert answer.FailedSOPSequence[0].FailureReason == 0xA900
    assert lib.search_for_instances(search_filters={"PatientID": "MRN9302"}) == []
