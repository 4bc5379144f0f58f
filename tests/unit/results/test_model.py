"""AnalysisResult is valid by construction: every bad field is an InvalidInputError naming it."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import InvalidInputError
from kit.results import (
    Algorithm,
    AnalysisResult,
    BoundingBox,
    Code,
    Label,
    Measurement,
    Region,
    Subject,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
IMAGES = ("1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12")
DIAMETER = Code("81827009", "SCT", "Diameter")
MM = Code("mm", "UCUM", "mm")
LESION = Code("52988006", "SCT", "Lesion")
TISSUE = Code("85756007", "SCT", "Tissue")


def subject(**kw: object) -> Subject:
    return Subject(**{"patient_id": "MRN1001", "study_instance_uid": STUDY, "accession_number": "ACC1001",
                      "sop_instance_uids": IMAGES, **kw})  # type: ignore[arg-type]


def region(**kw: object) -> Region:
    mask = np.zeros((2, 8, 8), bool)
    mask[0, 2:4, 2:5] = True
    return Region(**{"label": "lesion 1", "category": TISSUE, "kind": LESION, "mask": mask,
                     "source_instances": IMAGES, **kw})  # type: ignore[arg-type]


def result(**kw: object) -> AnalysisResult:
    return AnalysisResult(**{"subject": subject(), "algorithm": Algorithm("lesion-finder", "1.0", {"t": 0.5}),
                             "measurements": (Measurement(DIAMETER, 12.5, MM, finding=LESION,
                                                          region="lesion 1"),),
                             "regions": (region(),), "result_id": "r-1", **kw})  # type: ignore[arg-type]


def test_a_valid_result_and_its_frames() -> None:
    r = result(labels=(Label(Code("F-1", "99KIT", "Finding"), LESION, 0.9, region="lesion 1"),))
    m = r.measurements_frame()
    assert m.row(0, named=True) | {} == {
        "result_id": "r-1", "patient_id": "MRN1001", "accession_number": "ACC1001",
        "study_instance_uid": STUDY, "algorithm": "lesion-finder", "algorithm_version": "1.0",
        "name_code": "81827009", "name_scheme": "SCT", "name": "Diameter", "value": 12.5, "unit": "mm",
        "finding": "Lesion", "finding_site": None, "region": "lesion 1"}
    assert r.labels_frame()["score"].to_list() == [0.9]
    assert not r.regions[0].mask.flags.writeable


def test_derived_uids_are_stable_per_result_and_kind() -> None:
    a, b = result(), result()
    assert a.uid("sr") == b.uid("sr") != a.uid("seg")
    assert result(result_id="r-2").uid("sr") != a.uid("sr")
    assert len(a.uid("sr")) <= 64


@pytest.mark.parametrize("change, field", [
    ({"result_id": "bad id!"}, "result_id"),
    ({"measurements": (), "regions": ()}, "no finding"),
    ({"created": dt.datetime(2026, 1, 1)}, "created"),
    ({"measurements": (Measurement(DIAMETER, 1.0, MM, region="elsewhere"),)}, "region"),
    ({"regions": (region(), region())}, "unique"),
    ({"regions": (region(source_instances=("1.2.3", "1.2.4")),)}, "outside the subject"),
    ({"measurements": ("12 mm",)}, "Measurement"),
    ({"conclusion": "x\x00y"}, "conclusion"),
])
def test_inconsistent_results_are_refused(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        result(**change)


@pytest.mark.parametrize("build, field", [
    (lambda: Code("", "SCT", "x"), "Code.value"),
    (lambda: Code("1", "NOPE", "x"), "Code.scheme"),
    (lambda: Measurement(DIAMETER, float("nan"), MM), "Measurement.value"),
    (lambda: Measurement(DIAMETER, True, MM), "Measurement.value"),
    (lambda: Measurement(DIAMETER, 10**400, MM), "Measurement.value"),  # was an OverflowError
    (lambda: Label(DIAMETER, LESION, 10**400), "Label.score"),
    (lambda: Measurement(DIAMETER, 1.0, DIAMETER), "UCUM"),
    (lambda: Label(DIAMETER, LESION, 1.5), "Label.score"),
    (lambda: subject(study_instance_uid="1.2.03"), "study_instance_uid"),
    (lambda: subject(patient_id=""), "patient_id"),
    (lambda: subject(patient_sex="X"), "patient_sex"),
    (lambda: subject(frame_numbers=(0,)), "frame_numbers"),
    (lambda: subject(fhir_patient="a/b"), "fhir_patient"),
    (lambda: region(mask=np.zeros((2, 8), bool)), "source_instances"),
    (lambda: region(mask=np.full((2, 4, 4), 2)), "binary"),
    (lambda: region(mask=np.zeros((2, 0, 4), bool)), "shape"),
    (lambda: BoundingBox("b", LESION, IMAGES[0], 5, 5, 5, 9), "x1 > x0"),
    (lambda: BoundingBox("b", LESION, IMAGES[0], 0, 0, 5, 9, time=-1.0), "time"),
    (lambda: Algorithm("a", "1", {"p": [1]}), "parameters"),
])
def test_parts_are_valid_by_construction(build: object, field: str) -> None:
    with pytest.raises(InvalidInputError, match=field):
        build()  # type: ignore[operator]


def test_frozen() -> None:
    r = result()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.conclusion = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.algorithm.parameters["t"] = 1  # type: ignore[index]


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                       st.integers(min_value=10**300, max_value=10**500), st.text(max_size=5), st.none(),
                       st.booleans()),
       score=st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=3)),
       rid=st.text(max_size=70))
def test_only_invalid_input_error_on_any_value(value: object, score: object, rid: str) -> None:
    try:
        AnalysisResult(subject=subject(), algorithm=Algorithm("a", "1"),
                       measurements=(Measurement(DIAMETER, value, MM),),  # type: ignore[arg-type]
                       labels=(Label(DIAMETER, LESION, score),),  # type: ignore[arg-type]
                       result_id=rid)
    except InvalidInputError:
        pass


@settings(max_examples=200, deadline=None)
@given(corner=st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.just(10**400), st.text(max_size=3),
                        st.none()),
       score=st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.booleans()),
       time=st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=3)))
def test_boxes_raise_only_invalid_input_error(corner: object, score: object, time: object) -> None:
    try:
        BoundingBox("b", LESION, IMAGES[0], corner, 0, 10, 10, score=score, time=time)  # type: ignore[arg-type]
    except InvalidInputError:
        pass
