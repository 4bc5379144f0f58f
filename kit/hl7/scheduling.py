"""Scheduling from SIU messages: appointments, conflicts, analytics (pure).

:func:`appointments` replays SIU^S12 (new), S13 (rescheduled), S14 (modified),
S15 (cancelled) and S26 (no-show) in message-time order into one row per
appointment: ``appointment_id`` is the SCH-1 placer id, else the SCH-2 filler id
(many scheduling systems send only the filler id); a later message naming either
id of a known appointment updates it. :func:`replay` also returns the SIU messages
that could not be applied (not HL7, no SCH-1/SCH-2, an end before the start), one
``skipped`` row each with the reason, so nothing disappears without a trace. :func:`conflicts` finds
overlapping active slots that share a room (AIL-3), a piece of equipment /
modality resource (AIG-3) or a patient. :func:`analytics` summarises per
modality (AIG-4 resource type) and day. :func:`siu_from_json` turns a plain
dict (e.g. from a booking system with no HL7) into an SIU message with
:func:`kit.hl7.build.build_siu`.

Written by hand: no HL7 library models appointment state over a feed; the
SIU fields are read through :meth:`kit.hl7.message.Message.typed`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from kit.errors import InvalidInputError, KitError
from kit.hl7.build import build_siu
from kit.hl7.frames import SCHEMAS
from kit.hl7.message import Message, parse_message
from kit.hl7.typed import SIU_TRIGGERS, Appointment, Header, PatientInfo

__all__ = ["APPOINTMENT_SCHEMA", "STATUSES", "analytics", "appointments", "conflicts", "replay",
           "siu_from_json"]

log = logging.getLogger(__name__)

_DTM = pl.Datetime("us")

#: Appointment status after each trigger.
STATUSES = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled", "S26": "noshow"}

#: Columns of :func:`appointments`.
APPOINTMENT_SCHEMA: dict[str, Any] = {
    "appointment_id": pl.String, "placer_appointment_id": pl.String, "filler_appointment_id": pl.String,
    "patient_id": pl.String,
    "accession_number": pl.String, "start_time": _DTM, "end_time": _DTM, "duration_minutes": pl.Int32,
    "status": pl.String, "modality": pl.String, "resource_id": pl.String, "location": pl.String,
    "personnel_id": pl.String, "service_code": pl.String, "service_text": pl.String,
    "booked_time": _DTM, "updated_time": _DTM, "lead_time_hours": pl.Float64,
    "reschedules": pl.Int32, "modifications": pl.Int32, "last_trigger": pl.String,
}


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=None) if value is not None and value.tzinfo is not None else value


def _as_appointment(item: Message | str | bytes | Appointment) -> Appointment | None:
    """The appointment of an SIU item; None for other messages. Raises HL7ParseError for a bad SIU."""
    if isinstance(item, Appointment):
        return item
    m = item if isinstance(item, Message) else parse_message(item)
    if m.message_code != "SIU" or m.trigger not in SIU_TRIGGERS:
        return None
    typed = m.typed()
    if not isinstance(typed, Appointment):
        raise InvalidInputError("SIU without an appointment id (SCH-1 placer and SCH-2 filler are empty)",
                                source=f"{m.message_type} {m.control_id!r}")
    return typed


def appointments(messages: Iterable[Message | str | bytes | Appointment]) -> pl.DataFrame:
    """The current state of every appointment after replaying the SIU messages.

    Parameters
    ----------
    messages : iterable of Message, str, bytes or Appointment
        Any HL7 messages; non-SIU ones are ignored. Applied in MSH-7 order
        (stable: messages without a time keep their position).

    Returns
    -------
    polars.DataFrame
        One row per appointment, columns :data:`APPOINTMENT_SCHEMA`.
        ``appointment_id`` is SCH-1 (placer), else SCH-2 (filler). ``status`` is
        ``booked``, ``cancelled`` or ``noshow``; ``booked_time`` is the MSH-7
        of the first message seen for it; ``lead_time_hours`` is start minus
        booked time; ``modality`` is AIG-4 (resource type). Items that cannot be
        applied are logged as warnings; :func:`replay` returns them as a table.
    """
    table, skipped = replay(messages)
    for row in skipped.iter_rows(named=True):
        log.warning("SIU message %s skipped: %s", row["message_number"], row["reason"])
    return table


def replay(messages: Iterable[Message | str | bytes | Appointment]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`appointments`, plus the items that could not be applied.

    Returns
    -------
    (polars.DataFrame, polars.DataFrame)
        The appointments table, and a table with the columns of
        ``kit.hl7.frames.SCHEMAS["skipped"]`` (``table`` is ``"appointments"``):
        one row per item that is not HL7 or is an SIU that gives no valid
        appointment, with the reason.
    """
    events: list[Appointment] = []
    skipped: list[dict[str, Any]] = []
    for number, item in enumerate(messages, 1):
        try:
            a = _as_appointment(item)
        except KitError as exc:
            m = item if isinstance(item, Message) else None
            skipped.append({"message_number": number, "control_id": m.control_id if m else None,
                            "message_type": m.message_type if m else None, "table": "appointments",
                            "reason": str(exc)})
            continue
        if a is not None:
            events.append(a)
    return _replay(events), pl.DataFrame(skipped, schema=SCHEMAS["skipped"])


def _replay(events: list[Appointment]) -> pl.DataFrame:
    order = sorted(range(len(events)), key=lambda i: (
        _naive(events[i].header.timestamp) or dt.datetime.min, i))
    state: dict[str, dict[str, Any]] = {}
    known: dict[tuple[str, str], str] = {}  # ("placer"|"filler", id) -> the appointment's key
    for i in order:
        a = events[i]
        when = _naive(a.header.timestamp)
        ids = [(kind, v) for kind, v in (("placer", a.placer_appointment_id),
                                         ("filler", a.filler_appointment_id)) if v]
        key = next((known[k] for k in ids if k in known), a.appointment_id)
        for k in ids:
            known.setdefault(k, key)
        row = state.get(key)
        if row is None:
            row = state[key] = {"appointment_id": key, "booked_time": when, "reschedules": 0,
                                "modifications": 0}
        elif a.trigger == "S13":
            row["reschedules"] += 1
        elif a.trigger == "S14":
            row["modifications"] += 1
        patient = a.patient.patient_id if a.patient is not None else None
        updates = {
            "placer_appointment_id": a.placer_appointment_id or None,
            "filler_appointment_id": a.filler_appointment_id or None, "patient_id": patient,
            "accession_number": a.accession_number or None, "start_time": _naive(a.start),
            "end_time": _naive(a.end), "duration_minutes": a.duration_minutes,
            "modality": a.resource_type or None, "resource_id": a.resource_id or None,
            "location": a.location or None, "personnel_id": a.personnel_id or None,
            "service_code": a.service_code or None, "service_text": a.service_text or None,
        }
        for name, value in updates.items():  # a later message without a value keeps the old one
            if value is not None or name not in row:
                row[name] = value
        row["status"] = STATUSES[a.trigger]
        row["updated_time"] = when
        row["last_trigger"] = a.trigger
    rows = list(state.values())
    for row in rows:
        start, booked = row.get("start_time"), row.get("booked_time")
        row["lead_time_hours"] = (start - booked).total_seconds() / 3600 if start and booked else None
        minutes = row.get("duration_minutes")
        if minutes is not None and not -(2 ** 31) <= minutes < 2 ** 31:
            row["duration_minutes"] = None  # no Int32 holds it (a start and end centuries apart)
    return pl.DataFrame(rows, schema=APPOINTMENT_SCHEMA).sort("start_time", "appointment_id",
                                                             nulls_last=True)


#: resource kinds checked by :func:`conflicts` and the appointment column each uses
CONFLICT_KEYS = {"location": "location", "resource": "resource_id", "patient": "patient_id"}


def conflicts(table: pl.DataFrame, *, kinds: Iterable[str] = tuple(CONFLICT_KEYS)) -> pl.DataFrame:
    """Pairs of active appointments whose slots overlap on the same room, equipment or patient.

    Parameters
    ----------
    table : polars.DataFrame
        From :func:`appointments`.
    kinds : iterable of str
        Any of ``"location"`` (AIL room), ``"resource"`` (AIG equipment) and ``"patient"``.

    Returns
    -------
    polars.DataFrame
        ``kind``, ``shared`` (the room/resource/patient id), ``appointment_a``,
        ``appointment_b`` (``appointment_id`` values, a < b), ``start_a``, ``end_a``,
        ``start_b``, ``end_b``, ``overlap_minutes`` (Int32). Cancelled and
        no-show appointments and those without a start and end are ignored.
    """
    kinds = tuple(kinds)
    unknown = set(kinds) - set(CONFLICT_KEYS)
    if unknown:
        raise ValueError(f"unknown conflict kinds {sorted(unknown)}; expected {sorted(CONFLICT_KEYS)}")
    active = table.filter((pl.col("status") == "booked") & pl.col("start_time").is_not_null()
                          & pl.col("end_time").is_not_null())
    parts = []
    for kind in kinds:
        col = CONFLICT_KEYS[kind]
        side = active.select(pl.col(col).alias("shared"), "appointment_id", "start_time", "end_time") \
            .filter(pl.col("shared").is_not_null())
        pairs = side.join(side, on="shared", suffix="_b").filter(
            (pl.col("appointment_id") < pl.col("appointment_id_b"))
            & (pl.col("start_time") < pl.col("end_time_b")) & (pl.col("start_time_b") < pl.col("end_time")))
        parts.append(pairs.select(
            pl.lit(kind).alias("kind"), "shared", pl.col("appointment_id").alias("appointment_a"),
            pl.col("appointment_id_b").alias("appointment_b"), pl.col("start_time").alias("start_a"),
            pl.col("end_time").alias("end_a"), pl.col("start_time_b").alias("start_b"),
            pl.col("end_time_b").alias("end_b"),
            ((pl.min_horizontal("end_time", "end_time_b") - pl.max_horizontal("start_time", "start_time_b"))
             .dt.total_minutes().cast(pl.Int32)).alias("overlap_minutes")))
    schema: dict[str, Any] = {"kind": pl.String, "shared": pl.String, "appointment_a": pl.String,
                              "appointment_b": pl.String, "start_a": _DTM, "end_a": _DTM, "start_b": _DTM,
                              "end_b": _DTM, "overlap_minutes": pl.Int32}
    if not parts:
        return pl.DataFrame(schema=schema)
    return pl.concat(parts).cast(schema).sort("kind", "shared", "start_a")  # type: ignore[arg-type]


def analytics(table: pl.DataFrame, *, day_minutes: int = 600) -> pl.DataFrame:
    """Per modality and day: bookings, utilisation, median lead time, cancellations, no-shows.

    Parameters
    ----------
    table : polars.DataFrame
        From :func:`appointments`.
    day_minutes : int
        Bookable minutes per modality per day (default 600 = 10 hours).

    Returns
    -------
    polars.DataFrame
        ``modality``, ``day`` (Date, of the start time), ``appointments``
        (all), ``booked``, ``cancelled``, ``no_shows`` (UInt32),
        ``booked_minutes`` (Int64, active appointments only),
        ``utilisation`` (booked_minutes / day_minutes, Float64),
        ``median_lead_time_hours`` (Float64, over all appointments of the day).
    """
    if day_minutes <= 0:
        raise ValueError("day_minutes must be positive")
    return (table.filter(pl.col("start_time").is_not_null())
            .with_columns(pl.col("modality").fill_null("unknown"),
                          pl.col("start_time").dt.date().alias("day"))
            .group_by("modality", "day")
            .agg(pl.len().alias("appointments"),
                 (pl.col("status") == "booked").sum().alias("booked"),
                 (pl.col("status") == "cancelled").sum().alias("cancelled"),
                 (pl.col("status") == "noshow").sum().alias("no_shows"),
                 pl.col("duration_minutes").filter(pl.col("status") == "booked").sum().cast(pl.Int64)
                 .alias("booked_minutes"),
                 pl.col("lead_time_hours").median().alias("median_lead_time_hours"))
            .with_columns((pl.col("booked_minutes") / day_minutes).alias("utilisation"))
            .select("modality", "day", "appointments", "booked", "cancelled", "no_shows", "booked_minutes",
                    "utilisation", "median_lead_time_hours")
            .sort("day", "modality"))


_JSON_KEYS = {
    "trigger", "placer_appointment_id", "filler_appointment_id", "patient_id", "family", "given",
    "birth_date", "sex", "start", "end", "duration_minutes", "status", "reason", "appointment_type",
    "accession_number", "service_code", "service_text", "resource_id", "modality", "location",
    "personnel_id", "control_id", "sending_application", "sending_facility", "receiving_application",
    "receiving_facility", "timestamp",
}


def _when(data: Mapping[str, Any], key: str) -> dt.datetime | None:
    value = data.get(key)
    if value is None or isinstance(value, dt.datetime):
        return value
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise InvalidInputError(f"{key} is not an ISO 8601 date-time: {value!r}", source="siu_from_json") \
            from exc


def siu_from_json(data: Mapping[str, Any], *, validate: bool = False) -> str:
    """An SIU message (ER7) from a plain dict, for booking systems that speak no HL7.

    Parameters
    ----------
    data : mapping
        Keys (only ``start`` and ``placer_appointment_id`` or
        ``filler_appointment_id`` are required):
        ``trigger`` (``S12`` default, ``S13``, ``S14``, ``S15``, ``S26``),
        ``placer_appointment_id``, ``filler_appointment_id``, ``patient_id``,
        ``family``, ``given``, ``birth_date`` (ISO date), ``sex``, ``start``,
        ``end`` (ISO date-times) or ``duration_minutes``, ``status``,
        ``reason``, ``appointment_type``, ``accession_number``,
        ``service_code``, ``service_text``, ``resource_id``, ``modality``
        (AIG-4), ``location`` (AIL-3), ``personnel_id``, ``control_id``
        (default: random), ``sending_application`` (default ``KIT``),
        ``sending_facility``, ``receiving_application``,
        ``receiving_facility``, ``timestamp`` (MSH-7, default now).
    validate : bool
        Validate the result with hl7apy (see :func:`kit.hl7.build.validate_er7`).

    Returns
    -------
    str
        The SIU message, segments ended by CR.

    Raises
    ------
    kit.errors.InvalidInputError
        Unknown keys, missing required keys or invalid values.
    """
    unknown = set(data) - _JSON_KEYS
    if unknown:
        raise InvalidInputError(f"unknown keys {sorted(unknown)}", source="siu_from_json")
    if not data.get("start"):
        raise InvalidInputError("start is required", source="siu_from_json")
    if not data.get("placer_appointment_id") and not data.get("filler_appointment_id"):
        raise InvalidInputError("placer_appointment_id or filler_appointment_id is required",
                                source="siu_from_json")
    start = _when(data, "start")
    end = _when(data, "end")
    s = {k: str(v) for k, v in data.items() if v is not None}
    try:
        if end is None and data.get("duration_minutes") is not None and start is not None:
            end = start + dt.timedelta(minutes=int(data["duration_minutes"]))
        patient = None
        if s.get("patient_id"):
            birth = dt.date.fromisoformat(s["birth_date"]) if s.get("birth_date") else None
            patient = PatientInfo(s["patient_id"], s.get("family", ""), s.get("given", ""), birth,
                                  s.get("sex", ""))
        header = Header(s.get("control_id") or uuid.uuid4().hex[:20],
                        _when(data, "timestamp") or dt.datetime.now().astimezone(),
                        s.get("sending_application", "KIT"), s.get("sending_facility", ""),
                        s.get("receiving_application", ""), s.get("receiving_facility", ""))
        trigger = s.get("trigger", "S12")
        appointment = Appointment(
            header, trigger, s.get("placer_appointment_id", ""), s.get("filler_appointment_id", ""), patient,
            start, end, s.get("status", STATUSES.get(trigger, "booked").capitalize()), s.get("reason", ""),
            s.get("appointment_type", ""), s.get("accession_number", ""), s.get("service_code", ""),
            s.get("service_text", ""), s.get("resource_id", ""), s.get("modality", ""),
            s.get("location", ""), s.get("personnel_id", ""))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(str(exc), source="siu_from_json") from exc
    return build_siu(appointment, validate=validate)
