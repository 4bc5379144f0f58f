"""kit.fhir.timeline: events from FHIR frames, patient labels, chart lanes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import examples
from kit.errors import InvalidInputError
from kit.fhir.frames import to_frame, to_frames
from kit.fhir.timeline import (
    KIND_COLOURS,
    LANES_SCHEMA,
    TIMELINE_SCHEMA,
    TimelineKind,
    patient_options,
    timeline,
    timeline_lanes,
)

UTC = dt.UTC


def _patient(pid: str, mrn: str, family: str, given_: str, birth: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "birthDate": birth,
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:mrn", "value": mrn}],
            "name": [{"family": family, "given": [given_]}]}


def _obs(oid: str, pid: str, when: str | None, **value: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                                              "display": "Heart rate"}]},
                         "subject": {"reference": f"Patient/{pid}"}, **value}
    if when:
        r["effectiveDateTime"] = when
    return r


def _resources() -> list[dict[str, Any]]:
    return [
        _patient("p2", "MRN2", "Zed", "Zoe", "1990-01-01"),
        _patient("p1", "MRN1", "Able", "Ann", "1950-05-06"),
        _obs("o1", "p1", "2024-01-02T10:00:00Z", valueQuantity={"value": 63.0, "unit": "/min"}),
        _obs("o2", "p1", "2024-01-01T09:00:00+01:00", valueQuantity={"value": 0.75, "unit": "mg/dL"}),
        _obs("o3", "p1", None, valueString="see note"),
        _obs("o4", "p2", "2024-03-01", component=[
            {"code": {"coding": [{"code": "8480-6", "display": "Systolic"}]},
             "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
            {"code": {"coding": [{"code": "8462-4", "display": "Diastolic"}]},
             "valueQuantity": {"value": 80.5, "unit": "mm[Hg]"}}]),
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
         "clinicalStatus": {"coding": [{"code": "active"}]},
         "code": {"coding": [{"code": "427359005", "display": "Solitary nodule of lung"}]},
         "recordedDate": "2024-01-03"},
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},
         "subject": {"reference": "Patient/p1"}, "period": {"start": "2024-01-02T09:30:00Z"}},
        {"resourceType": "Procedure", "id": "pr1", "status": "completed",
         "subject": {"reference": "Patient/p2"}, "performedDateTime": "2024-02-01T08:00:00Z",
         "code": {"coding": [{"code": "73761001", "display": "Colonoscopy <ES>"}]}},
        {"resourceType": "ImagingStudy", "id": "i1", "status": "available",
         "subject": {"reference": "Patient/p1"}, "started": "2024-01-02T10:30:00Z",
         "modality": [{"code": "CT"}, {"code": "SR"}], "description": "CT CHEST",
         "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"},
                        {"type": {"coding": [{"code": "ACSN"}]}, "value": "ACC1"}]},
        {"resourceType": "Practitioner", "id": "dr1"},
    ]


@pytest.fixture()
def frames() -> dict[str, pl.DataFrame]:
    return to_frames(_resources())


def test_columns_order_and_values(frames: dict[str, pl.DataFrame]) -> None:
    ev = timeline(frames)
    assert ev.schema == TIMELINE_SCHEMA
    p1 = ev.filter(pl.col("patient_ref") == "p1")
    assert p1.select("kind", "code", "value").rows() == [
        ("Observation", "8867-4", "0.75 mg/dL"),          # 08:00Z after the +01:00 offset
        ("Encounter", "AMB", "finished"),
        ("Observation", "8867-4", "63 /min"),
        ("ImagingStudy", "CT,SR", "ACC1"),
        ("Condition", "427359005", "active"),              # recordedDate when no onset
        ("Observation", "8867-4", "see note"),             # no time: kept, last
    ]
    assert p1["time"][0] == dt.datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    assert p1["time"][-1] is None
    assert p1.filter(pl.col("kind") == "ImagingStudy")["display"].to_list() == ["CT CHEST"]


def test_components_summarised(frames: dict[str, pl.DataFrame]) -> None:
    ev = timeline(frames, patient_ref="p2").filter(pl.col("kind") == "Observation")
    assert ev["value"].to_list() == ["Systolic: 120 mm[Hg]; Diastolic: 80.5 mm[Hg]"]


def test_patient_filter_and_ignored_types(frames: dict[str, pl.DataFrame]) -> None:
    assert "Practitioner" in frames and "Patient" in frames
    everyone = timeline(frames)
    assert set(everyone["kind"]) <= {k.value for k in TimelineKind}
    assert everyone.height == 8
    assert timeline(frames, patient_ref="p2").height == 2
    assert timeline(frames, patient_ref=["p1", "p2"]).equals(everyone)
    assert timeline(frames, patient_ref="nobody").is_empty()


def test_empty_and_missing_columns(frames: dict[str, pl.DataFrame]) -> None:
    empty = timeline({})
    assert empty.is_empty() and empty.schema == TIMELINE_SCHEMA
    assert timeline({"Observation": to_frame([], "Observation")}).is_empty()
    with pytest.raises(InvalidInputError, match="Observation"):
        timeline({"Observation": frames["Observation"].drop("effective")})


def test_sample_cohort_every_event_kept() -> None:
    frames = to_frames(examples.fhir_bundle())
    ev = timeline(frames)
    kinds = {k.value for k in TimelineKind}
    expected = sum(f.height for t, f in frames.items() if t in kinds)
    assert ev.height == expected > 0
    # within each patient the times never go backwards
    assert ev.group_by("patient_ref").agg(pl.col("time").drop_nulls().is_sorted().alias("ok"))["ok"].all()


def test_patient_options_sorted_by_mrn(frames: dict[str, pl.DataFrame]) -> None:
    assert patient_options(frames["Patient"]) == [
        ("MRN1 · Able, Ann · 1950-05-06", "p1"), ("MRN2 · Zed, Zoe · 1990-01-01", "p2")]
    assert patient_options(pl.DataFrame({"id": ["x"]})) == [("x", "x")]
    with pytest.raises(InvalidInputError):
        patient_options(pl.DataFrame({"name": ["x"]}))


def test_lanes_one_row_per_timed_event(frames: dict[str, pl.DataFrame]) -> None:
    ev = timeline(frames)
    lanes = timeline_lanes(ev)
    assert lanes.schema == LANES_SCHEMA
    timed = ev.filter(pl.col("time").is_not_null())
    assert lanes.height == timed.height == 7
    assert lanes.select("time", "kind", "code", "display", "value").equals(
        timed.select("time", "kind", "code", "display", "value"))
    order = [k.value for k in TimelineKind]
    assert lanes["lane"].to_list() == [order.index(k) for k in lanes["kind"]]
    assert lanes["colour"].to_list() == [KIND_COLOURS[TimelineKind(k)] for k in lanes["kind"]]
    colonoscopy = lanes.filter(pl.col("kind") == "Procedure").row(0, named=True)
    # the hover text is data: kept as written (the chart library escapes it), never truncated
    assert colonoscopy["label"] == "2024-02-01 08:00 · 73761001 · Colonoscopy <ES> · completed"
    assert timeline_lanes(ev.filter(pl.col("time").is_null())).schema == LANES_SCHEMA
    assert timeline_lanes(ev.clear()).is_empty()
    with pytest.raises(InvalidInputError):
        timeline_lanes(ev.drop("value"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.one_of(st.none(), st.datetimes(min_value=dt.datetime(1900, 1, 1),
                                                            max_value=dt.datetime(2100, 1, 1))),
                          st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False))),
                max_size=30))
def test_property_rows_kept_and_ordered(rows: list[tuple[str, dt.datetime | None, float | None]]) -> None:
    resources = []
    for i, (pid, when, value) in enumerate(rows):
        extra = {"valueQuantity": {"value": value, "unit": "u"}} if value is not None else {}
        resources.append(_obs(f"o{i}", pid, when.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if when else None,
                              **extra))
    ev = timeline({"Observation": to_frame(resources, "Observation")})
    assert ev.height == len(rows)
    assert ev["patient_ref"].is_sorted()
    for (pid,), part in ev.group_by(["patient_ref"]):
        times = part["time"]
        timed = times.drop_nulls()
        assert timed.is_sorted()
        assert times[: timed.len()].null_count() == 0  # nulls only at the end
        expected = sorted((w.replace(tzinfo=UTC) for p, w, _ in rows if p == pid and w is not None))
        assert timed.to_list() == expected
    numbers = [float(v.split()[0]) for v in ev["value"].drop_nulls()]
    assert sorted(numbers) == sorted(v for _, _, v in rows if v is not None)
