"""C-FIND matching rules and worklist items (kit.dicom.matching, pure)."""

from __future__ import annotations

import ast
import datetime as dt
import fnmatch
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import kit.dicom.matching as matching
from kit.dicom.matching import (
    candidate_dataset,
    match_element,
    match_value,
    matches,
    query_level,
    response_identifier,
    worklist_items_from_cohort,
)
from kit.dicom.query import QueryLevel, QueryModel
from kit.errors import InvalidInputError
from kit.examples.cohort import COHORT, studies


def ds(**kw: object) -> Dataset:
    out = Dataset()
    for k, v in kw.items():
        setattr(out, k, v)
    return out


# -- single values, wildcards, ranges ---------------------------------------------------

@pytest.mark.parametrize(("query", "vr", "value", "expected"), [
    ("MRN1001", "LO", "MRN1001", True),
    ("MRN1001", "LO", "MRN1001 ", True),      # trailing padding is insignificant
    ("MRN100", "LO", "MRN1001", False),       # no implicit prefix matching
    ("mrn1001", "LO", "MRN1001", False),      # case-sensitive outside PN
    ("moreau^alice", "PN", "Moreau^Alice", True),
    ("Mor*", "PN", "Moreau^Alice", True),
    ("*^Alice", "PN", "Moreau^Alice", True),
    ("M?reau*", "PN", "Moreau^Alice", True),
    ("M?eau*", "PN", "Moreau^Alice", False),
    ("*", "LO", "", True),                    # '*' alone is universal
    ("CT", "CS", "", False),                  # a value never matches an empty attribute
    ("CT", "CS", ["MR", "CT"], True),         # multi-valued candidate (ModalitiesInStudy)
    ("20260112", "DA", "20260112", True),
    ("20260101-20260131", "DA", "20260112", True),
    ("20260113-20260131", "DA", "20260112", False),
    ("-20260112", "DA", "20260112", True),
    ("20260113-", "DA", "20260112", False),
    ("202601", "DA", "20260131", True),       # partial date: the whole month
    ("0900-1000", "TM", "091400", True),
    ("0900-1000", "TM", "100059", True),      # a partial upper bound covers its minute
    ("0900-1000", "TM", "100100", False),
    ("09", "TM", "09:14:00", True),           # ACR-NEMA colons tolerated
    ("20260112090000-20260112100000", "DT", "20260112091400+0100", True),
    ("3", "IS", "3", True),
    ("3", "IS", "03", True),                  # numbers compare as numbers
    ("3", "IS", "4", False),
    ("1.2.3", "UI", "1.2.3", True),
    ("1.2.*", "UI", "1.2.3", False),          # no wildcards on UIDs
])
def test_match_value(query: str, vr: str, value: object, expected: bool) -> None:
    assert match_value(query, vr, value) is expected


def test_uid_list_matching() -> None:
    element = DataElement(0x0020000D, "UI", ["1.2.3", "1.2.4"])
    assert match_element(element, "1.2.4")
    assert not match_element(element, "1.2.5")


def test_empty_query_is_universal() -> None:
    for vr in ("PN", "DA", "UI", "IS", "CS"):
        assert match_element(DataElement(0x00100010, vr, None), None)
        assert match_element(DataElement(0x00100010, vr, ""), "anything")


@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="*?\\[]"), max_size=20))
def test_exact_value_matches_itself(text: str) -> None:
    text = text.strip(" \x00")
    assert match_value(text, "LO", text)
    assert match_value("*", "LO", text)


@given(st.from_regex(r"[A-Za-z^ ]{0,8}[*?][A-Za-z^ *?]{0,8}", fullmatch=True),
       st.from_regex(r"[A-Za-z^ ]{0,16}", fullmatch=True))
def test_wildcards_agree_with_fnmatch(pattern: str, value: str) -> None:
    value = value.rstrip(" ")
    expected = fnmatch.fnmatchcase(value, pattern.rstrip(" ")) if pattern.strip("*") else True
    assert match_value(pattern, "LO", value) is expected


@given(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 1, 1)),
       st.integers(0, 400), st.integers(0, 400))
def test_date_range_contains_exactly_its_dates(day: dt.date, before: int, after: int) -> None:
    low, high = day - dt.timedelta(days=before), day + dt.timedelta(days=after)
    query = f"{low:%Y%m%d}-{high:%Y%m%d}"
    assert match_value(query, "DA", f"{day:%Y%m%d}")
    assert not match_value(query, "DA", f"{high + dt.timedelta(days=1):%Y%m%d}")
    assert not match_value(query, "DA", f"{low - dt.timedelta(days=1):%Y%m%d}")


# -- identifiers, sequences and responses -----------------------------------------------

def test_matches_all_keys_and_ignores_qr_level() -> None:
    cand = ds(PatientID="MRN1001", PatientName="Moreau^Alice", StudyDate="20260112")
    assert matches(ds(QueryRetrieveLevel="STUDY", PatientID="MRN1001", StudyDate="20260101-"), cand)
    assert not matches(ds(PatientID="MRN1001", StudyDate="20250101-20251231"), cand)
    assert not matches(ds(AccessionNumber="ACC1"), cand)   # absent attribute, non-empty query
    assert matches(ds(AccessionNumber=""), cand)            # absent attribute, universal
    assert matches(ds(Modality="MR"), cand, ignore=["Modality"])


def _sps(modality: str, aet: str) -> Dataset:
    return ds(Modality=modality, ScheduledStationAETitle=aet, ScheduledProcedureStepStartDate="20261201")


def test_sequence_matching_and_response() -> None:
    item = ds(PatientID="MRN1003", ScheduledProcedureStepSequence=Sequence([_sps("CT", "KITCT1")]))
    query = ds(PatientID="", ScheduledProcedureStepSequence=Sequence(
        [ds(Modality="CT", ScheduledStationAETitle="")]))
    assert matches(query, item)
    rsp = response_identifier(query, item, level=None)
    assert rsp.PatientID == "MRN1003"
    sps = rsp.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledStationAETitle == "KITCT1"
    assert "ScheduledProcedureStepStartDate" not in sps     # not asked for
    query.ScheduledProcedureStepSequence[0].Modality = "MR"
    assert not matches(query, item)
    # an empty sequence item in the query returns the whole sequence
    whole = response_identifier(ds(ScheduledProcedureStepSequence=Sequence([Dataset()])), item, level=None)
    assert whole.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate == "20261201"


def test_response_has_only_requested_keys() -> None:
    cand = ds(PatientID="MRN1001", PatientName="Moreau^Alice", StudyInstanceUID="1.2.3", StudyDate="20260112")
    query = ds(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="", AccessionNumber="",
               RetrieveAETitle="")
    rsp = response_identifier(query, cand, level=QueryLevel.STUDY, retrieve_aet="KIT")
    assert {e.keyword for e in rsp} == {"QueryRetrieveLevel", "StudyInstanceUID", "PatientName",
                                        "AccessionNumber", "RetrieveAETitle"}
    assert rsp.QueryRetrieveLevel == "STUDY" and rsp.RetrieveAETitle == "KIT"
    assert rsp.AccessionNumber in (None, "")
    assert "SpecificCharacterSet" not in rsp


def test_non_ascii_response_declares_utf8() -> None:
    rsp = response_identifier(ds(PatientName=""), ds(PatientName="Müller^Zoë"), level=QueryLevel.PATIENT)
    assert rsp.SpecificCharacterSet == "ISO_IR 192"


def test_candidate_dataset_skips_empty_and_private_keys() -> None:
    cand = candidate_dataset({"PatientID": "P", "StudyDate": None, "_path": "x",
                              "ModalitiesInStudy": ["CT", "MR"], "NumberOfStudyRelatedInstances": 3})
    assert cand.PatientID == "P" and "StudyDate" not in cand
    assert list(cand.ModalitiesInStudy) == ["CT", "MR"] and cand.NumberOfStudyRelatedInstances == 3


# -- levels and models ------------------------------------------------------------------

def test_query_level_and_models() -> None:
    assert query_level(ds(QueryRetrieveLevel="SERIES"), QueryModel.STUDY_ROOT) is QueryLevel.SERIES
    with pytest.raises(InvalidInputError):
        query_level(ds(QueryRetrieveLevel="PATIENT"), QueryModel.STUDY_ROOT)
    with pytest.raises(InvalidInputError):
        query_level(ds(QueryRetrieveLevel="FRAME"), QueryModel.PATIENT_ROOT)
    with pytest.raises(InvalidInputError):
        query_level(Dataset(), QueryModel.PATIENT_ROOT)
    assert QueryModel.from_sop_class("1.2.840.10008.5.1.4.1.2.1.3") is QueryModel.PATIENT_ROOT
    assert QueryModel.from_sop_class("1.2.840.10008.5.1.4.1.2.2.2") is QueryModel.STUDY_ROOT
    with pytest.raises(InvalidInputError):
        QueryModel.from_sop_class("1.2.840.10008.5.1.4.31")
    assert [lv.depth for lv in QueryLevel] == [0, 1, 2, 3]
    assert QueryLevel.SERIES.unique_key == "SeriesInstanceUID"


# -- worklist ---------------------------------------------------------------------------

def test_worklist_items_from_cohort() -> None:
    items = worklist_items_from_cohort()
    expected = [s for p in COHORT for s in p.studies if s.scheduled or s.modality == "ES"]
    assert [i.AccessionNumber for i in items] == [s.accession for s in expected]
    assert len(worklist_items_from_cohort(include_endoscopy=False)) == len(studies(scheduled=True))
    first = items[0]
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                    "RequestedProcedureID"):
        assert first.get(keyword), keyword
    sps = first.ScheduledProcedureStepSequence[0]
    for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID"):
        assert sps.get(keyword), keyword
    es = [i for i in items if i.ScheduledProcedureStepSequence[0].Modality == "ES"]
    assert {i.ScheduledProcedureStepSequence[0].ScheduledStationAETitle for i in es} == {"ENDO1"}
    assert worklist_items_from_cohort()[0] == items[0]      # deterministic
    # a worklist query for the scheduled MR finds exactly it
    query = ds(PatientID="", ScheduledProcedureStepSequence=Sequence([ds(Modality="MR")]))
    hits = [i for i in items if matches(query, i)]
    assert [h.PatientID for h in hits] == [s.mrn for s in studies(scheduled=True, modality="MR")]


def test_module_is_pure() -> None:
    tree = ast.parse(Path(matching.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert not imported & {"socket", "asyncio", "httpx", "ssl", "pynetdicom", "uvicorn", "sqlite3"}


# -- issue 7 item 7: wildcards in linear time; item 9: unparsable DA/TM/DT keys -----------

def _regex_glob(pattern: str, text: str, fold: bool) -> bool:
    """The old implementation (a regex): the reference answer on small inputs."""
    import re

    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, (re.IGNORECASE if fold else 0) | re.DOTALL) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab*?^ ", max_size=10), st.text(alphabet="ab^ ", max_size=12))
def test_glob_match_equals_fnmatch_and_regex(pattern: str, text: str) -> None:
    expected = fnmatch.fnmatchcase(text, pattern)
    assert matching.glob_match(pattern, text) is expected
    assert expected is _regex_glob(pattern, text, fold=False)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aAbBéÉ*?", max_size=8), st.text(alphabet="aAbBéÉ", max_size=10))
def test_glob_match_case_folding_equals_regex_ignorecase(pattern: str, text: str) -> None:
    assert matching.glob_match(pattern, text, fold=True) is _regex_glob(pattern, text, fold=True)


def test_wildcard_bomb_is_fast() -> None:
    """7 wildcards against 64 characters took 24.5 s with the regex (x9 per extra '*a')."""
    import time

    description = "a" * 64
    for stars in (7, 12, 30):
        pattern = "*a" * stars + "*b"
        start = time.perf_counter()
        assert not match_value(pattern, "LO", description)
        assert not match_value(pattern.lower(), "PN", description.upper())
        assert time.perf_counter() - start < 0.05, stars
    assert match_value("*a" * 30 + "*", "LO", description)


@pytest.mark.parametrize(("query", "vr"), [
    ("abc-def", "DA"), ("abc", "DA"), ("2026-13-45", "DA"), ("20261345", "DA"), ("20260132", "DA"),
    ("2026011", "DA"), ("20260101-2026x", "DA"), ("20260101--20260102", "DA"), ("2026*", "DA"),
    ("25", "TM"), ("0960", "TM"), ("ab:cd", "TM"), ("0900-xx", "TM"),
    ("2026011309x", "DT"), ("20261301", "DT"), ("now-later", "DT"),
])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_unparsable_date_time_keys_are_rejected(query: str, vr: str) -> None:
    with pytest.raises(InvalidInputError):
        match_value(query, vr, "20260112" if vr != "TM" else "091400")
    with pytest.raises(InvalidInputError):
        match_value(query, vr, None)  # even with no candidate value: never "matches all"
    identifier = Dataset()
    identifier.add(DataElement({"DA": 0x00080020, "TM": 0x00080030, "DT": 0x0008002A}[vr], vr, query))
    with pytest.raises(InvalidInputError):
        matching.check_identifier(identifier)


def test_check_identifier_accepts_valid_keys_and_looks_into_sequences() -> None:
    good = ds(StudyDate="20260101-20260131", StudyTime="-1000", PatientBirthDate="",
              AcquisitionDateTime="20260112090000-")
    matching.check_identifier(good)
    item = ds(ScheduledProcedureStepStartDate="abc-def")
    with pytest.raises(InvalidInputError, match="ScheduledProcedureStepStartDate"):
        matching.check_identifier(ds(ScheduledProcedureStepSequence=Sequence([item])))
