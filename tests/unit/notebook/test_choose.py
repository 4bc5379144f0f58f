"""kit.choose: the row a notebook's parameters name, or a sentence saying what is missing."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.choose import pick_row, pick_slice, pick_study, require_rows
from kit.errors import InvalidInputError, KitError

STUDIES = pl.DataFrame({
    "patient_id": ["MRN1", "MRN1", "MRN2", "MRN3"],
    "study_date": [dt.date(2026, 1, 12), dt.date(2026, 2, 3), dt.date(2026, 1, 15), None],
    "modalities_in_study": [["CT"], ["ES"], ["CT", "SR"], ["MR"]],
    "study_instance_uid": ["1.1", "1.2", "2.1", "3.1"],
})


def test_pick_study_by_patient_and_modality_earliest_or_latest() -> None:
    assert pick_study(STUDIES, modality="CT")["study_instance_uid"] == "1.1"
    assert pick_study(STUDIES, modality="CT", latest=True)["study_instance_uid"] == "2.1"
    assert pick_study(STUDIES, patient_id="MRN1", latest=True)["study_instance_uid"] == "1.2"
    assert pick_study(STUDIES, patient_id="MRN2", modality="SR")["study_instance_uid"] == "2.1"


def test_a_missing_patient_is_a_sentence_naming_who_is_there() -> None:
    with pytest.raises(InvalidInputError) as err:
        pick_study(STUDIES, patient_id="MRN9", modality="CT")
    assert str(err.value) == "patient_id: the PACS lists no study of patient MRN9; it lists studies of " \
                             "MRN1, MRN2, MRN3"


def test_a_missing_modality_is_a_sentence_naming_what_is_there() -> None:
    with pytest.raises(InvalidInputError) as err:
        pick_study(STUDIES, patient_id="MRN1", modality="MR")
    assert str(err.value) == "modality: the PACS lists no MR study of patient MRN1; it lists CT, ES " \
                             "studies of patient MRN1"
    with pytest.raises(InvalidInputError, match="lists no CT study; it lists no study at all"):
        pick_study(STUDIES.clear(), modality="CT")


def test_pick_row_and_require_rows() -> None:
    assert pick_row(STUDIES, "study", patient_id="MRN3")["study_instance_uid"] == "3.1"
    with pytest.raises(InvalidInputError) as err:
        pick_row(STUDIES, "study", source="the PACS", patient_id="MRN7")
    assert str(err.value) == \
        "no study with patient_id 'MRN7' in the PACS (patient_id there: MRN1, MRN2, MRN3)"
    with pytest.raises(InvalidInputError, match="has no column modality"):
        pick_row(STUDIES, "study", modality="CT")
    with pytest.raises(InvalidInputError, match=r"\(there are none at all\)"):
        pick_row(STUDIES.clear(), "study", patient_id="MRN1")
    assert require_rows(STUDIES, "never said") is STUDIES
    with pytest.raises(InvalidInputError, match="PATIENT_ID: the PACS has no series of patient X"):
        require_rows(STUDIES.clear(), "the PACS has no series of patient X", source="PATIENT_ID")


def test_pick_slice_middle_by_default_and_checked() -> None:
    assert pick_slice(16) == 8 and pick_slice(1) == 0 and pick_slice(16, 15) == 15
    for bad in (16, -1, True, 2.0):
        with pytest.raises(InvalidInputError, match="outside the series"):
            pick_slice(16, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="no slice"):
        pick_slice(0)


def test_a_long_list_of_what_is_there_is_cut() -> None:
    many = pl.DataFrame({"patient_id": [f"P{i:02}" for i in range(20)]})
    with pytest.raises(InvalidInputError, match=r"P00, P01, P02, P03, P04, P05, P06, P07 and 12 more\)$"):
        pick_row(many, "patient", patient_id="X")


@settings(max_examples=60, deadline=None)
@given(patients=st.lists(st.sampled_from(["A", "B", ""]), max_size=5),
       modality=st.one_of(st.none(), st.sampled_from(["CT", "MR", ""])),
       patient=st.one_of(st.none(), st.sampled_from(["A", "B", "Z"])),
       count=st.integers(-3, 5), index=st.one_of(st.none(), st.integers(-3, 8)))
def test_only_kit_errors(patients: list[str], modality: str | None, patient: str | None, count: int,
                         index: int | None) -> None:
    frame = pl.DataFrame({"patient_id": patients, "study_date": [None] * len(patients),
                          "modalities_in_study": [["CT"] if p else [] for p in patients],
                          "study_instance_uid": [str(i) for i in range(len(patients))]},
                         schema={"patient_id": pl.String, "study_date": pl.Date,
                                 "modalities_in_study": pl.List(pl.String), "study_instance_uid": pl.String})
    for call in (lambda: pick_study(frame, modality=modality, patient_id=patient),
                 lambda: pick_slice(count, index)):
        try:
            call()
        except KitError:
            pass
