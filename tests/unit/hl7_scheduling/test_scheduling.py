"""Scheduling from SIU: replay, conflicts, analytics, JSON -> SIU."""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import InvalidInputError
from kit.examples.hl7 import feed
from kit.hl7.message import parse_message
from kit.hl7.scheduling import APPOINTMENT_SCHEMA, analytics, appointments, conflicts, siu_from_json
from kit.hl7.typed import Appointment

T0 = dt.datetime(2026, 3, 2, 8, 0)


def siu(trigger: str, appt: str, start: str, minutes: int = 30, sent: str = "2026-03-01T08:00", *,
        patient: str = "MRN1", room: str = "CT1", resource: str = "CT-1", modality: str = "CT",
        n: int = 0) -> str:
    return siu_from_json({
        "trigger": trigger, "placer_appointment_id": appt, "start": start, "duration_minutes": minutes,
        "patient_id": patient, "family": "Doe", "given": "J", "location": room, "resource_id": resource,
        "modality": modality, "control_id": f"C{appt}{trigger}{n}", "timestamp": sent})


def test_sample_feed_state() -> None:
    table = appointments(feed())
    assert table.schema == pl.Schema(APPOINTMENT_SCHEMA)
    by_id = {r["placer_appointment_id"]: r for r in table.to_dicts()}
    assert by_id["APTACC100290"]["status"] == "cancelled"
    assert by_id["APTACC100490"]["status"] == "noshow"
    assert by_id["APTACC100503"]["reschedules"] == 1
    assert by_id["APTACC100303"]["modifications"] == 1
    found = conflicts(table)
    assert set(found["kind"]) == {"location", "resource"}
    assert found["overlap_minutes"].to_list() == [15, 15]


def test_reschedule_moves_slot_and_removes_conflict() -> None:
    msgs = [siu("S12", "A", "2026-03-02T09:00"), siu("S12", "B", "2026-03-02T09:10", patient="MRN2",
                                                     sent="2026-03-01T09:00")]
    assert conflicts(appointments(msgs)).height == 2  # same room and same resource
    msgs.append(siu("S13", "B", "2026-03-02T10:00", patient="MRN2", sent="2026-03-01T10:00"))
    table = appointments(msgs)
    assert conflicts(table).height == 0
    b = table.filter(pl.col("placer_appointment_id") == "B").row(0, named=True)
    assert b["start_time"] == dt.datetime(2026, 3, 2, 10) and b["reschedules"] == 1


def test_patient_double_booked_on_two_rooms() -> None:
    msgs = [siu("S12", "A", "2026-03-02T09:00", room="CT1", resource="CT-1"),
            siu("S12", "B", "2026-03-02T09:20", room="MR1", resource="MR-1", modality="MR")]
    found = conflicts(appointments(msgs))
    assert found["kind"].to_list() == ["patient"] and found["shared"].to_list() == ["MRN1"]


def test_cancelled_and_noshow_do_not_conflict_and_count() -> None:
    msgs = [siu("S12", "A", "2026-03-02T09:00"), siu("S12", "B", "2026-03-02T09:00", patient="P2"),
            siu("S15", "B", "2026-03-02T09:00", patient="P2", sent="2026-03-01T12:00"),
            siu("S12", "C", "2026-03-02T11:00", patient="P3"),
            siu("S26", "C", "2026-03-02T11:00", patient="P3", sent="2026-03-02T12:00")]
    table = appointments(msgs)
    assert conflicts(table).height == 0
    stats = analytics(table, day_minutes=480).row(0, named=True)
    assert (stats["appointments"], stats["booked"], stats["cancelled"], stats["no_shows"]) == (3, 1, 1, 1)
    assert stats["booked_minutes"] == 30 and stats["utilisation"] == pytest.approx(30 / 480)
    assert stats["median_lead_time_hours"] == pytest.approx(25.0)  # 09:00 and 11:00 booked 08:00 day before


def test_messages_applied_in_message_time_order() -> None:
    late_cancel = siu("S15", "A", "2026-03-02T09:00", sent="2026-03-01T12:00")
    table = appointments([late_cancel, siu("S12", "A", "2026-03-02T09:00")])
    assert table["status"].to_list() == ["cancelled"]


def test_non_siu_messages_are_skipped() -> None:
    table = appointments([m for m in feed() if "|SIU^" not in m.split("\r")[0]])
    assert table.height == 0 and table.schema == pl.Schema(APPOINTMENT_SCHEMA)
    assert conflicts(table).height == 0 and analytics(table).height == 0


def test_siu_from_json_round_trip() -> None:
    text = siu("S12", "A1", "2026-03-02T09:00", 45)
    a = parse_message(text).typed()
    assert isinstance(a, Appointment)
    assert (a.placer_appointment_id, a.start, a.duration_minutes, a.location, a.resource_type) == (
        "A1", dt.datetime(2026, 3, 2, 9), 45, "CT1", "CT")


_OK = {"placer_appointment_id": "A", "start": "2026-03-02T09:00"}


@pytest.mark.parametrize("bad", [{"start": "2026-03-02T09:00"}, {"placer_appointment_id": "A"},
                                 {"placer_appointment_id": "A", "start": "tomorrow"},
                                 {**_OK, "colour": "red"}, {**_OK, "trigger": "S99"},
                                 {**_OK, "end": "2026-03-02T08:00"}])
def test_siu_from_json_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        siu_from_json(bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(1, 6), st.sampled_from(["R1", "R2"])),
                min_size=1, max_size=8))
def test_conflicts_match_brute_force(slots: list[tuple[int, int, str]]) -> None:
    msgs = [siu("S12", f"A{i}", (T0 + dt.timedelta(minutes=15 * s)).isoformat(), 15 * d, room=room,
                resource=f"X{i}", patient=f"P{i}") for i, (s, d, room) in enumerate(slots)]
    found = conflicts(appointments(msgs), kinds=["location"])
    expected = {(f"A{i}", f"A{j}") for i, (si, di, ri) in enumerate(slots) for j, (sj, dj, rj) in
                enumerate(slots) if f"A{i}" < f"A{j}" and ri == rj and si < sj + dj and sj < si + di}
    assert set(zip(found["appointment_a"], found["appointment_b"], strict=True)) == expected
