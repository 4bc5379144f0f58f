"""kit.widgets.fhir.PatientTimeline: wiring only, driven through its attributes."""

from __future__ import annotations

import polars as pl
import pytest

from kit import examples
from kit.errors import InvalidInputError
from kit.fhir.frames import to_frames
from kit.fhir.timeline import timeline
from kit.widgets.fhir import PatientTimeline


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return to_frames(examples.fhir_bundle())


def test_first_patient_by_mrn_and_switching(frames: dict[str, pl.DataFrame]) -> None:
    patients = frames["Patient"]
    view = PatientTimeline(patients, frames)
    first = patients.sort("patient_id")["id"][0]
    assert view.patient == first
    assert view.events.equals(timeline(frames, patient_ref=first))
    assert view.rendered.count("<circle") == view.events["time"].is_not_null().sum()
    other = patients.sort("patient_id")["id"][-1]
    view.patient = other
    assert view.events.equals(timeline(frames, patient_ref=other))
    assert f"{view.events.height} events" in view._summary.value
    assert repr(view).startswith(f"PatientTimeline(patient={other!r}")


def test_kind_filter(frames: dict[str, pl.DataFrame]) -> None:
    view = PatientTimeline(frames["Patient"], frames)
    assert set(view.kinds) == set(timeline(frames)["kind"])
    view.kinds = ("Observation",)
    assert set(view.events["kind"]) == {"Observation"} and view.events.height > 0
    assert "ImagingStudy" not in view.rendered
    with pytest.raises(InvalidInputError):
        view.kinds = ("Nope",)


def test_bad_input(frames: dict[str, pl.DataFrame]) -> None:
    with pytest.raises(InvalidInputError):
        PatientTimeline(frames["Patient"].clear(), frames)
    with pytest.raises(InvalidInputError):
        PatientTimeline(frames["Patient"], frames, patient="no-such-id")
