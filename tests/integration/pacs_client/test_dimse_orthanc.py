"""PacsClient against a real Orthanc: find at every level, get, move, store, worklist, echo."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from kit.dicom.dimse import PacsClient
from kit.dicom.query import DEFAULT_RETURN_KEYS, QueryLevel, empty_frame
from kit.examples import cohort
from kit.examples.dicom import CT_SLICES, MR_SLICES
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.pacs_client.conftest import cohort_study, make_ct, pixels_by_uid

pytestmark = pytest.mark.orthanc

PERFORMED = [s for s in cohort.studies(scheduled=False) if s.modality in ("CT", "MR")]


def test_echo(client: PacsClient) -> None:
    took = client.echo()
    assert 0 < took < 5


def test_find_patients(client: PacsClient) -> None:
    df = client.find("PATIENT")
    assert df.columns == list(DEFAULT_RETURN_KEYS[QueryLevel.PATIENT])
    expected = {s.mrn for s in PERFORMED}
    assert set(df["patient_id"]) >= expected
    row = df.filter(pl.col("patient_id") == "MRN1001").row(0, named=True)
    p = cohort.patient("MRN1001")
    assert row["patient_name"] == p.dicom_name
    assert row["patient_birth_date"] == p.birth_date
    assert df.schema["patient_birth_date"] == pl.Date


def test_find_studies_typed(client: PacsClient) -> None:
    df = client.find("STUDY", patient_id="MRN1002")
    want = {s.study_uid: s for s in PERFORMED if s.mrn == "MRN1002"}
    assert set(df["study_instance_uid"]) == set(want)
    for row in df.iter_rows(named=True):
        s = want[row["study_instance_uid"]]
        assert row["accession_number"] == s.accession
        assert row["study_date"] == s.date
        assert row["study_time"] == s.time
        assert row["modalities_in_study"] == [s.modality]
        assert row["number_of_study_related_instances"] == (CT_SLICES if s.modality == "CT" else MR_SLICES)
    assert df.schema["study_time"] == pl.Time
    assert df.schema["modalities_in_study"] == pl.List(pl.String)


def test_find_date_range_and_modality(client: PacsClient) -> None:
    df = client.find("STUDY", study_date=(dt.date(2026, 1, 1), dt.date(2026, 1, 31)))
    want = {s.study_uid for s in PERFORMED if s.date.month == 1 and s.date.year == 2026}
    assert set(df["study_instance_uid"]) == want
    df2 = client.find("STUDY", study_date="20260101-20260131", modalities_in_study="MR")
    assert set(df2["study_instance_uid"]) == {s.study_uid for s in PERFORMED
                                               if s.study_uid in want and s.modality == "MR"}


def test_find_series_and_images(client: PacsClient) -> None:
    study = cohort_study("CT", 0)
    series = client.find("SERIES", study_instance_uid=study.study_uid)
    assert series["series_instance_uid"].to_list() == [study.series_uid(1)]
    assert series["modality"].to_list() == ["CT"]
    assert series.schema["series_number"] == pl.Int32
    images = client.find("IMAGE", study_instance_uid=study.study_uid,
                         series_instance_uid=study.series_uid(1))
    assert images.height == CT_SLICES
    assert sorted(images["instance_number"].to_list()) == list(range(1, CT_SLICES + 1))
    assert set(images["sop_instance_uid"]) == {study.instance_uid(1, k) for k in range(1, CT_SLICES + 1)}


def test_find_nothing_is_an_empty_typed_frame(client: PacsClient) -> None:
    df = client.find("STUDY", patient_id="NOBODY")
    assert df.height == 0
    assert df.schema == empty_frame("STUDY").schema


def test_get_study_pixels_identical(client: PacsClient, cohort_files: list[Path],
                                    tmp_path: Path) -> None:
    study = cohort_study("CT", 1)
    got = client.get(study_uid=study.study_uid, dest=tmp_path / "get")
    assert got.height == CT_SLICES
    assert got["path"].map_elements(lambda p: Path(p).is_file(), return_dtype=pl.Boolean).all()
    sources = [p for p in cohort_files if study.key in str(p)]
    assert pixels_by_uid([Path(p) for p in got["path"]]) == pixels_by_uid(sources)


def test_get_one_instance(client: PacsClient, tmp_path: Path) -> None:
    study = cohort_study("MR", 0)
    sop = study.instance_uid(1, 3)
    got = client.get(study_uid=study.study_uid, series_uid=study.series_uid(1), sop_uid=sop,
                     dest=tmp_path)
    assert got["sop_instance_uid"].to_list() == [sop]


def test_move_series(client: PacsClient, loaded: OrthancServer, cohort_files: list[Path],
                     tmp_path: Path) -> None:
    port = free_port()
    loaded.add_modality("kitmove", "KITMOVE", "127.0.0.1", port)
    study = cohort_study("CT", 2)
    got = client.move(study_uid=study.study_uid, series_uid=study.series_uid(1), dest=tmp_path,
                      move_aet="KITMOVE", store_port=port)
    assert got.height == CT_SLICES
    sources = [p for p in cohort_files if study.key in str(p)]
    assert pixels_by_uid([Path(p) for p in got["path"]]) == pixels_by_uid(sources)


def test_retrieve_of_an_unknown_study_is_an_error_not_an_empty_frame(client: PacsClient,
                                                                    tmp_path: Path) -> None:
    from kit.dicom.dimse import RetrieveError

    with pytest.raises(RetrieveError) as info:
        client.get(study_uid="1.2.3.4.5.6.7.8", dest=tmp_path / "get")
    assert info.value.received.is_empty()
    assert list((tmp_path / "get").glob("*.dcm")) == []


def test_move_to_an_unknown_destination_says_what_to_register(client: PacsClient,
                                                               tmp_path: Path) -> None:
    from kit.dicom.dimse import RetrieveError

    port = free_port()
    study = cohort_study("CT", 2)
    with pytest.raises(RetrieveError) as info:
        client.move(study_uid=study.study_uid, dest=tmp_path, move_aet="NOTREGISTERED", store_port=port)
    assert info.value.status == 0xC000        # Orthanc's answer (the embedded PACS says 0xA801)
    text = str(info.value)
    assert "if the PACS does not know the move destination 'NOTREGISTERED'" in text
    assert f"register AE title NOTREGISTERED, host 127.0.0.1, port {port}" in text


def test_store_then_get_back(client: PacsClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 12, patient_id="MRN9101")
    sent = client.store(files)
    assert sent.height == 12 and sent["status"].to_list() == [0] * 12
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    found = client.find("IMAGE", study_instance_uid=study_uid)
    assert found.height == 12
    back = client.get(study_uid=study_uid, dest=tmp_path / "back")
    assert pixels_by_uid([Path(p) for p in back["path"]]) == pixels_by_uid(files)


def test_store_datasets(client: PacsClient, tmp_path: Path) -> None:
    files = make_ct(tmp_path, 2, patient_id="MRN9102")
    sent = client.store([pydicom.dcmread(p) for p in files])
    assert sent["status"].to_list() == [0, 0]
    assert sent["path"].null_count() == 2


def _worklist_file(folder: Path, study: cohort.Study) -> None:
    p = cohort.patient(study.mrn)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = p.mrn, p.dicom_name
    ds.PatientBirthDate, ds.PatientSex = p.birth_date.strftime("%Y%m%d"), p.sex
    ds.AccessionNumber, ds.StudyInstanceUID = study.accession, study.study_uid
    ds.RequestedProcedureID, ds.RequestedProcedureDescription = study.accession, study.description
    sps = Dataset()
    sps.Modality = study.modality
    sps.ScheduledStationAETitle = "CT1"
    sps.ScheduledProcedureStepStartDate = study.date.strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = study.time.strftime("%H%M%S")
    sps.ScheduledProcedureStepDescription = study.description
    sps.ScheduledProcedureStepID = study.accession
    ds.ScheduledProcedureStepSequence = [sps]
    ds.save_as(folder / f"{study.accession}.wl", enforce_file_format=True)


def test_worklist(client: PacsClient, loaded: OrthancServer) -> None:
    for study in cohort.studies(scheduled=True):
        _worklist_file(loaded.worklist_dir, study)
    df = client.worklist(modality="CT")
    want = [s for s in cohort.studies(scheduled=True) if s.modality == "CT"]
    assert df["accession_number"].to_list() == [s.accession for s in want]
    row = df.row(0, named=True)
    assert row["scheduled_procedure_step_start_date"] == want[0].date
    assert row["scheduled_procedure_step_start_time"] == want[0].time
    assert row["patient_id"] == want[0].mrn
    all_rows = client.worklist(scheduled_procedure_step_start_date=("2026-12-01", "2026-12-31"))
    assert set(all_rows["accession_number"]) == {s.accession for s in cohort.studies(scheduled=True)}


def test_orthancs_answer_to_a_c_get_proposal_is_read_as_pynetdicom_reads_it(
        client: PacsClient, cohort_files: list[Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The A-ASSOCIATE-AC Orthanc sends for the kit's C-GET proposal (a context and a role per
    storage class): kit.dicom._assoc_ac's primitive is pynetdicom's, the first time and from its cache."""
    from pynetdicom.pdu import A_ASSOCIATE_AC

    from kit.dicom import _guard
    from tests.unit.dicom_assoc.test_assoc_ac import same

    seen: list[tuple[bytes, object]] = []
    original = _guard.read_associate_ac

    def read(data: bytes) -> object:
        primitive = original(data)
        seen.append((data, primitive))
        return primitive

    monkeypatch.setattr(_guard, "read_associate_ac", read)
    study = cohort_study("CT", 1).study_uid
    for i in range(2):
        assert client.get(study_uid=study, dest=tmp_path / str(i)).height > 0
    assert len(seen) == 2
    for data, primitive in seen:
        theirs = A_ASSOCIATE_AC()
        theirs.decode(data)
        assert primitive is not None and same(primitive, theirs.to_primitive())
        assert len(theirs.to_primitive().presentation_context_definition_results_list) > 100
