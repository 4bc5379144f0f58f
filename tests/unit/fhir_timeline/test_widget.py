"""kit.widgets.fhir.PatientTimeline: wiring only, driven through its attributes."""

from __future__ import annotations

import html

import polars as pl
import pytest

from kit import examples
from kit.errors import InvalidInputError
from kit.fhir.frames import to_frames
from kit.fhir.timeline import TimelineKind, timeline, timeline_lanes
from kit.widgets.charts import timeline_figure
from kit.widgets.fhir import PatientTimeline


def assert_chart_shows(view: PatientTimeline) -> None:
    """The chart's data is the timeline frame: one trace per kind, one point per timed event."""
    lanes = timeline_lanes(view.events)
    assert [t.name for t in view.figure.data] == [k.value for k in TimelineKind]
    for trace in view.figure.data:
        rows = lanes.filter(pl.col("kind") == trace.name)
        assert list(trace.x or ()) == rows["time"].to_list()
        assert list(trace.y or ()) == rows["kind"].to_list()
        assert list(trace.hovertext or ()) == [html.escape(t) for t in rows["label"]]
        assert trace.visible is (True if rows.height else "legendonly")
    # and the table lists every shown event, timed or not
    assert view.table.df.equals(view.events.select("time", "kind", "code", "display", "value"))


@pytest.fixture(scope="module")
def frames() -> dict[str, pl.DataFrame]:
    return to_frames(examples.fhir_bundle())


def test_first_patient_by_mrn_and_switching(frames: dict[str, pl.DataFrame]) -> None:
    patients = frames["Patient"]
    view = PatientTimeline(patients, frames)
    first = patients.sort("patient_id")["id"][0]
    assert view.patient == first
    assert view.events.equals(timeline(frames, patient_ref=first))
    assert_chart_shows(view)
    assert sum(len(t.x or ()) for t in view.figure.data) == view.events["time"].is_not_null().sum() > 0
    other = patients.sort("patient_id")["id"][-1]
    view.patient = other
    assert view.events.equals(timeline(frames, patient_ref=other))
    assert_chart_shows(view)
    assert f"{view.events.height} events" in view._summary.value
    assert repr(view).startswith(f"PatientTimeline(patient={other!r}")


def test_kind_filter(frames: dict[str, pl.DataFrame]) -> None:
    view = PatientTimeline(frames["Patient"], frames)
    assert set(view.kinds) == set(timeline(frames)["kind"])
    view.kinds = ("Observation",)
    assert set(view.events["kind"]) == {"Observation"} and view.events.height > 0
    assert_chart_shows(view)
    assert not view.figure.data[[k.value for k in TimelineKind].index("ImagingStudy")].x
    with pytest.raises(InvalidInputError):
        view.kinds = ("Nope",)


def test_bad_input(frames: dict[str, pl.DataFrame]) -> None:
    with pytest.raises(InvalidInputError):
        PatientTimeline(frames["Patient"].clear(), frames)
    with pytest.raises(InvalidInputError):
        PatientTimeline(frames["Patient"], frames, patient="no-such-id")


def test_the_figure_builder_is_the_widgets_chart(frames: dict[str, pl.DataFrame]) -> None:
    events = timeline(frames)
    fig = timeline_figure(timeline_lanes(events))
    spec = fig.to_dict()
    assert sum(len(t.get("x", ())) for t in spec["data"]) == events["time"].is_not_null().sum()
    assert spec["layout"]["yaxis"]["categoryarray"] == [k.value for k in reversed(TimelineKind)]
    with pytest.raises(InvalidInputError):
        timeline_figure(events)  # events, not lanes
