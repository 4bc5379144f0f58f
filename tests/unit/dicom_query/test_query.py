"""kit.dicom.query: identifiers, filters, date ranges and typed frames (pure)."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from kit.dicom.query import (
    DEFAULT_RETURN_KEYS,
    WORKLIST_RETURN_KEYS,
    QueryLevel,
    QueryModel,
    empty_frame,
    find_identifier,
    format_date_range,
    parse_da,
    parse_tm,
    responses_to_frame,
    worklist_identifier,
    worklist_to_frame,
)
from kit.errors import InvalidInputError

dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31))


def test_levels_and_models() -> None:
    assert QueryLevel.of("instance") is QueryLevel.IMAGE
    assert QueryLevel.of("study") is QueryLevel.STUDY
    with pytest.raises(InvalidInputError):
        QueryLevel.of("FRAME")
    assert QueryModel.of("patient") is QueryModel.PATIENT_ROOT
    assert QueryModel.STUDY_ROOT.get_uid == "1.2.840.10008.5.1.4.1.2.2.3"
    assert QueryModel.STUDY_ROOT.move_uid == "1.2.840.10008.5.1.4.1.2.2.2"


@pytest.mark.parametrize("level", list(QueryLevel))
def test_default_return_keys_are_universal(level: QueryLevel) -> None:
    ds = find_identifier(level, model="patient")
    assert ds.QueryRetrieveLevel == level.value
    assert len(ds) == len(DEFAULT_RETURN_KEYS[level]) + 1
    assert all(e.value in ("", None) for e in ds if e.keyword != "QueryRetrieveLevel")


def test_filters_map_to_keywords() -> None:
    ds = find_identifier("STUDY", patient_id="MRN1001", accession_number="ACC*",
                         study_date=(dt.date(2026, 1, 1), None), modalities_in_study=["CT", "MR"])
    assert ds.PatientID == "MRN1001"
    assert ds.AccessionNumber == "ACC*"
    assert ds.StudyDate == "20260101-"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]


def test_bad_filters_are_named() -> None:
    with pytest.raises(InvalidInputError, match="pateint_id"):
        find_identifier("STUDY", pateint_id="x")
    with pytest.raises(InvalidInputError, match="sop_instance_uid"):
        find_identifier("STUDY", sop_instance_uid="1.2")
    with pytest.raises(InvalidInputError, match="study_date"):
        find_identifier("STUDY", study_date="2026-13-45")
    with pytest.raises(InvalidInputError, match="patient root"):
        find_identifier("PATIENT")
    with pytest.raises(InvalidInputError, match="after its end"):
        find_identifier("STUDY", study_date="20260301-20260101")


@pytest.mark.parametrize("value,expected", [
    ("20260101", "20260101"), ("2026-01-01", "20260101"), (dt.date(2026, 1, 1), "20260101"),
    ("20260101-20260301", "20260101-20260301"), ("2026-01-01-2026-03-01", "20260101-20260301"),
    ("20260101-", "20260101-"), ("-20260301", "-20260301"), ((None, "2026-03-01"), "-20260301"),
    ((dt.date(2026, 1, 1), dt.date(2026, 3, 1)), "20260101-20260301"),
])
def test_date_ranges(value: object, expected: str) -> None:
    assert format_date_range(value) == expected


@given(dates, dates)
def test_date_range_roundtrip(a: dt.date, b: dt.date) -> None:
    lo, hi = sorted((a, b))
    text = format_date_range((lo, hi))
    start, end = text.split("-")
    assert (parse_da(start), parse_da(end)) == (lo, hi)
    assert format_date_range(text) == text


@given(st.times())
def test_tm_roundtrip(t: dt.time) -> None:
    text = t.strftime("%H%M%S") + (f".{t.microsecond:06d}" if t.microsecond else "")
    assert parse_tm(text) == t.replace(tzinfo=None)


@given(st.text(max_size=20))
def test_parsers_never_raise(text: str) -> None:
    parse_da(text)
    parse_tm(text)


def test_frame_types_and_values() -> None:
    ds = Dataset()
    ds.PatientID, ds.PatientName = "MRN1001", "Moreau^Alice"
    ds.PatientBirthDate, ds.PatientSex = "19580314", "F"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = "1.2.3", "20260112", "091400.25"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.NumberOfStudyRelatedInstances = "16"
    ds.AccessionNumber = ""
    df = responses_to_frame("STUDY", [ds])
    row = df.row(0, named=True)
    assert row["patient_birth_date"] == dt.date(1958, 3, 14)
    assert row["study_time"] == dt.time(9, 14, 0, 250000)
    assert row["modalities_in_study"] == ["CT", "SR"]
    assert row["number_of_study_related_instances"] == 16
    assert row["accession_number"] is None
    assert df.schema["study_date"] == pl.Date
    assert df.schema["number_of_study_related_instances"] == pl.Int32


@pytest.mark.parametrize("level", list(QueryLevel))
def test_empty_result_has_the_schema(level: QueryLevel) -> None:
    df = responses_to_frame(level, [])
    assert df.height == 0
    assert df.columns == list(DEFAULT_RETURN_KEYS[level])
    assert df.schema == empty_frame(level).schema
    for name in ("patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        if name in df.columns:
            assert df.schema[name] == pl.String


def test_worklist_identifier_and_frame() -> None:
    ds = worklist_identifier(modality="CT", scheduled_procedure_step_start_date="2026-12-01",
                             patient_id="MRN1003")
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledProcedureStepStartDate == "20261201"
    assert ds.PatientID == "MRN1003" and "Modality" not in ds
    with pytest.raises(InvalidInputError, match="station"):
        worklist_identifier(station="CT1")
    answer = Dataset()
    answer.PatientID = "MRN1003"
    a, b = Dataset(), Dataset()
    a.Modality, a.ScheduledProcedureStepStartDate = "CT", "20261201"
    a.ScheduledProcedureStepStartTime = "0900"
    b.Modality = "MR"
    answer.ScheduledProcedureStepSequence = [a, b]
    df = worklist_to_frame([answer])
    assert df.columns == list(WORKLIST_RETURN_KEYS)
    assert df["modality"].to_list() == ["CT", "MR"]
    assert df["scheduled_procedure_step_start_time"][0] == dt.time(9, 0)
    assert worklist_to_frame([]).schema == df.schema
