"""The health chart (kit.widgets.charts.health_figure): traces per connector, updated in place."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from kit.errors import InvalidInputError
from kit.widgets.charts import HEALTH_SCHEMA, health_figure, update_health

T0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)


def history(rows: list[tuple[str, int, bool, float]], reasons: bool = True) -> pl.DataFrame:
    frame = pl.DataFrame([{"connector": c, "at": T0 + dt.timedelta(seconds=s), "ok": ok,
                           "latency_seconds": lat} for c, s, ok, lat in rows], schema=HEALTH_SCHEMA)
    if reasons:
        frame = frame.with_columns(pl.when(pl.col("ok")).then(None).otherwise(pl.lit("<b>refused</b>"))
                                   .alias("reason"))
    return frame


def test_latency_of_good_checks_and_a_mark_per_failure_per_connector() -> None:
    fig = health_figure(history([("ehr-fhir", 0, True, 0.02), ("ehr-fhir", 1, False, 1.0),
                                 ("hl7-mllp", 0, True, 0.001)]))
    assert [t.name for t in fig.data] == ["ehr-fhir", "ehr-fhir", "hl7-mllp", "hl7-mllp"]
    latency, failed = fig.data[0], fig.data[1]
    assert list(latency.y) == [20.0] and len(latency.x) == 1
    assert list(failed.y) == ["ehr-fhir"] and failed.marker.symbol == "x"
    assert failed.marker.color == latency.line.color  # one colour per connector
    assert list(failed.hovertext) == ["&lt;b&gt;refused&lt;/b&gt;"]  # plotly would read the tags
    assert fig.data[3].y == ()


def test_update_in_place_adds_a_connector_and_keeps_the_others() -> None:
    fig = health_figure(history([("ehr-fhir", 0, True, 0.02)], reasons=False), widget=True)
    first = fig.data[0]
    update_health(fig, history([("ehr-fhir", 0, True, 0.02), ("ehr-fhir", 1, True, 0.03),
                                ("pacs-dimse", 1, False, 0.5)], reasons=False))
    assert fig.data[0] is first and list(first.y) == [20.0, 30.0]
    assert [t.name for t in fig.data] == ["ehr-fhir", "ehr-fhir", "pacs-dimse", "pacs-dimse"]
    assert list(fig.data[3].y) == ["pacs-dimse"] and list(fig.data[3].hovertext) == ["failed"]
    update_health(fig, history([], reasons=False))  # a connector without rows in the window: empty traces
    assert fig.data[0].x == () and len(fig.data) == 4


def test_a_frame_without_the_columns_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="health history"):
        health_figure(pl.DataFrame({"connector": ["a"]}))
