"""HL7 v2 messages as polars tables, and a vectorised path for large files (pure).

:func:`to_frames` maps parsed messages to seven tables, :func:`read_file` does
the same for a file (one message per line group, MLLP dumps and FHS/BHS
batches). Columns are typed (``pl.Datetime`` in µs, wall-clock time as sent:
a timezone offset is dropped; ``pl.Date``; ``pl.Int32``/``pl.Float64``);
missing values are null. The cross-system join columns are ``patient_id``
(PID-3 first identifier, the MRN), ``accession_number`` and
``study_instance_uid``.

Tables and their columns (see :data:`SCHEMAS` for dtypes):

- ``messages``: one row per message (MSH, EVN-2 ``event_time``, first PID-3).
- ``patients``: one row per message with a PID.
- ``visits``: one row per message with a PV1.
- ``orders``: one row per ORC/OBR group of ORM^O01, OML^O21, ORU^R01.
  ``accession_number`` is OBR-18.1, else the filler order number (OBR-3.1,
  else ORC-3.1); ``study_instance_uid`` is ZDS-1.1.
- ``results``: one row per OBX of every message except MDM (whose OBX text is
  in ``documents``), with the parent OBR's order numbers, ``accession_number``
  (same rule, from the OBR) and ``service_code``, and the message's
  ``patient_id``. ``value`` is OBX-5 unescaped, components joined by ``^`` and
  repetitions by ``~``; ``value_numeric`` is OBX-5 as a number for NM;
  ``observation_time`` is OBX-14, else the parent OBR-7.
- ``appointments``: one row per SIU^S12-S15/S26; ``appointment_id`` is SCH-1
  (placer id), else SCH-2 (filler id), both also kept as columns.
- ``documents``: one row per MDM^T02/T04, ``text`` the OBX lines joined by LF.
- ``skipped``: nothing is dropped without a trace. A message that cannot be
  read (``table`` = ``"messages"``: in no table), or that belongs to a table but
  cannot give a row there (an SIU without SCH-1/SCH-2, an appointment ending
  before it starts, an ORU^R01 without PID-3, a PID without PID-3, ...) gets one
  row with ``message_number`` (1-based position in the input; null for data
  before the first MSH), ``control_id``, ``message_type``, ``table`` and
  ``reason``. The other messages are read as usual. Only
  :class:`~kit.errors.KitError` subclasses leave this module.

``messages.reused_control_id`` is true for a message whose sender (MSH-3, MSH-4)
and control id (MSH-10) were already seen earlier in the input with other
content (see :func:`kit.hl7.message.content_hash`).

Scale (written by hand: no library does it): :func:`read_file` builds every
table without a Python object per field. The file is split into segment lines
once (:func:`kit.hl7.frames_fast.lines_frame`), and polars string kernels split
fields and components for every line at once, every table in
:mod:`kit.hl7.frames_fast`; escapes other than the simple ones are resolved by
:func:`kit.hl7.message.flatten`, once per distinct value. Messages that do not use the
standard ``|^~\\&`` delimiters, or hold a line that is not a valid segment, take
the message-by-message path -- the same rows either way (``read_file(...,
vectorised=False)`` is the per-message path, and the tests and fuzz tests hold
them equal). Files larger than memory: :mod:`kit.hl7.archive` reads them a
chunk of messages at a time, to the same rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from kit.errors import HL7ParseError, InvalidInputError, KitError
from kit.hl7.message import (
    STANDARD_ENCODING,
    Encoding,
    Message,
    content_hash,
    decode,
    flatten,
    group_messages,
    parse_message,
    segment_lines,
)
from kit.hl7.typed import (
    MDM_TRIGGERS,
    SIU_TRIGGERS,
    Appointment,
    Document,
    Order,
    OrderMessage,
    PatientInfo,
    ResultReport,
    TypedMessage,
    Visit,
    parse_dtm,
)

__all__ = ["SCHEMAS", "TABLES", "empty_frames", "read_file", "to_frames"]

_DTM = pl.Datetime("us")

#: Every table's columns and dtypes, in order.
SCHEMAS: dict[str, dict[str, Any]] = {
    "messages": {
        "control_id": pl.String, "message_type": pl.String, "trigger": pl.String,
        "message_time": _DTM, "event_time": _DTM, "sending_application": pl.String,
        "sending_facility": pl.String, "receiving_application": pl.String,
        "receiving_facility": pl.String, "version": pl.String, "processing_id": pl.String,
        "patient_id": pl.String, "segment_count": pl.Int32, "reused_control_id": pl.Boolean,
    },
    "patients": {
        "control_id": pl.String, "message_time": _DTM, "patient_id": pl.String,
        "assigning_authority": pl.String, "identifier_type": pl.String, "family": pl.String,
        "given": pl.String, "birth_date": pl.Date, "sex": pl.String, "street": pl.String,
        "city": pl.String, "state": pl.String, "postal_code": pl.String, "country": pl.String,
        "phone": pl.String,
    },
    "visits": {
        "control_id": pl.String, "message_type": pl.String, "patient_id": pl.String,
        "patient_class": pl.String, "location": pl.String, "room": pl.String, "bed": pl.String,
        "attending_doctor_id": pl.String, "attending_doctor_family": pl.String,
        "attending_doctor_given": pl.String, "hospital_service": pl.String, "visit_number": pl.String,
        "admit_time": _DTM, "discharge_time": _DTM,
    },
    "orders": {
        "control_id": pl.String, "message_type": pl.String, "patient_id": pl.String,
        "order_control": pl.String, "placer_order_number": pl.String,
        "filler_order_number": pl.String, "accession_number": pl.String, "service_code": pl.String,
        "service_text": pl.String, "service_system": pl.String, "order_status": pl.String,
        "result_status": pl.String, "modality": pl.String, "ordered_time": _DTM,
        "observation_time": _DTM, "study_instance_uid": pl.String,
    },
    "results": {
        "control_id": pl.String, "patient_id": pl.String, "accession_number": pl.String,
        "placer_order_number": pl.String, "filler_order_number": pl.String, "service_code": pl.String,
        "set_id": pl.Int32, "value_type": pl.String, "observation_code": pl.String,
        "observation_text": pl.String, "observation_system": pl.String, "observation_sub_id": pl.String,
        "value": pl.String, "value_numeric": pl.Float64, "units": pl.String,
        "reference_range": pl.String, "abnormal_flags": pl.String, "result_status": pl.String,
        "observation_time": _DTM,
    },
    "appointments": {
        "control_id": pl.String, "trigger": pl.String, "patient_id": pl.String,
        "appointment_id": pl.String, "placer_appointment_id": pl.String, "filler_appointment_id": pl.String,
        "accession_number": pl.String, "start_time": _DTM, "end_time": _DTM,
        "duration_minutes": pl.Int32, "status": pl.String, "reason": pl.String,
        "appointment_type": pl.String, "service_code": pl.String, "service_text": pl.String,
        "resource_id": pl.String, "resource_type": pl.String, "location": pl.String,
        "personnel_id": pl.String,
    },
    "documents": {
        "control_id": pl.String, "trigger": pl.String, "patient_id": pl.String,
        "unique_document_number": pl.String, "document_type": pl.String, "activity_time": _DTM,
        "completion_status": pl.String, "availability_status": pl.String,
        "accession_number": pl.String, "text": pl.String,
    },
    "skipped": {
        "message_number": pl.Int64, "control_id": pl.String, "message_type": pl.String,
        "table": pl.String, "reason": pl.String,
    },
}

#: Table names, in the order :func:`to_frames` returns them.
TABLES: tuple[str, ...] = tuple(SCHEMAS)

# results columns as read from the message (strings), before typing
_RESULT_RAW = ["control_id", "patient_id", "accession_number", "placer_order_number",
               "filler_order_number", "service_code", "set_id", "value_type", "observation_code",
               "observation_text", "observation_system", "observation_sub_id", "value", "units",
               "reference_range", "abnormal_flags", "result_status", "observation_time", "obr_time"]


def empty_frames(tables: Iterable[str] = TABLES) -> dict[str, pl.DataFrame]:
    """Empty tables with their schemas."""
    return {t: pl.DataFrame(schema=SCHEMAS[t]) for t in tables}


def _check_tables(tables: Sequence[str] | None) -> tuple[str, ...]:
    """The wanted tables in :data:`TABLES` order; ``skipped`` is always included."""
    if tables is None:
        return TABLES
    if isinstance(tables, str):
        tables = [tables]
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise InvalidInputError(f"unknown HL7 table(s) {unknown}; known: {list(TABLES)}")
    return tuple(t for t in TABLES if t in tables or t == "skipped")


_INT32 = (-(2 ** 31), 2 ** 31 - 1)


def _skip(number: int | None, m: Message | None, table: str, reason: object) -> dict[str, Any]:
    text = str(reason) if isinstance(reason, KitError | str) else f"{type(reason).__name__}: {reason}"
    return {"message_number": number, "control_id": m.control_id if m is not None else None,
            "message_type": m.message_type if m is not None else None, "table": table,
            "reason": text[:1000]}


def _skipped_frame(rows: list[dict[str, Any]] | list[pl.DataFrame]) -> pl.DataFrame:
    """The ``skipped`` table from rows or from partial tables: one row per distinct skip, in input order."""
    if rows and isinstance(rows[0], pl.DataFrame):
        df = pl.concat([r for r in rows if isinstance(r, pl.DataFrame)], how="vertical")
    else:
        df = _frame([r for r in rows if isinstance(r, dict)], "skipped")
    return df.unique(maintain_order=True).sort("message_number", nulls_last=False, maintain_order=True)


# -- raw-field helpers shared by both paths ------------------------------------------------------
def _comp(raw: str, enc: Encoding, n: int) -> str:
    """Component ``n`` of the first repetition, unescaped (subcomponents joined by ``&``)."""
    parts = raw.split(enc.repetition, 1)[0].split(enc.component)
    return flatten(parts[n - 1], enc, components=False) if n <= len(parts) else ""


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=None) if value is not None else None


def _frame(rows: list[dict[str, Any]], table: str) -> pl.DataFrame:
    schema = SCHEMAS[table]
    df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return df.with_columns(pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c)
                           for c, t in schema.items() if t == pl.String)


# -- message-by-message path ---------------------------------------------------------------------
def _result_rows(m: Message) -> list[list[str]]:
    """results rows as strings (columns ``_RESULT_RAW``) for one message."""
    if m.message_code == "MDM":
        return []
    enc = m.encoding
    control_id = _comp(m.msh.field(10), enc, 1)
    pid = m.segment("PID")
    patient_id = _comp(pid.field(3), enc, 1) if pid else ""
    obr = ["", "", "", "", ""]
    rows = []
    for seg in m.segments():
        if seg.name == "OBR":
            filler = _comp(seg.field(3), enc, 1)
            obr = [_comp(seg.field(18), enc, 1) or filler, _comp(seg.field(2), enc, 1), filler,
                   _comp(seg.field(4), enc, 1), _comp(seg.field(7), enc, 1)]
        elif seg.name == "OBX":
            f = seg.field
            rows.append([control_id, patient_id, *obr[:4], _comp(f(1), enc, 1), _comp(f(2), enc, 1),
                         _comp(f(3), enc, 1), _comp(f(3), enc, 2), _comp(f(3), enc, 3),
                         _comp(f(4), enc, 1), flatten(f(5), enc), _comp(f(6), enc, 1), flatten(f(7), enc),
                         flatten(f(8), enc), _comp(f(11), enc, 1), _comp(f(14), enc, 1), obr[4]])
    return rows


def _dtm_expr(col: str) -> pl.Expr:
    """HL7 DTM strings to Datetime (µs, offset dropped); invalid values become null."""
    s = pl.col(col).str.strip_chars()
    main = s.str.extract(r"^(\d{4}(?:\d{2}){0,5})(?:\.\d+)?(?:[+-]\d{4})?$")
    filled = pl.concat_str([main, pl.lit("0101000000").str.slice(main.str.len_chars() - 4)])
    frac = s.str.extract(r"^\d{14}\.(\d{1,6})").str.pad_end(6, "0").cast(pl.Int64, strict=False)
    base = filled.str.strptime(_DTM, "%Y%m%d%H%M%S", strict=False)
    return (base + pl.duration(microseconds=frac.fill_null(0))).alias(col)


def _dtm_series(values: pl.Series) -> pl.Series:
    """:func:`_dtm_expr` of a column: plain ``YYYYMMDDHHMMSS`` values (what it reduces to for
    them) parsed at once, :func:`_dtm_expr` itself only on the other non-null values."""
    plain = values.str.contains(r"^[0-9]{14}$").fill_null(False)
    out = values.str.strptime(_DTM, "%Y%m%d%H%M%S", strict=False)
    rest = values.is_not_null() & ~plain
    if rest.any():
        odd = values.filter(rest).to_frame("v").select(_dtm_expr("v"))["v"]
        out = out.scatter(rest.arg_true(), odd)
    return out.alias(values.name)


def _type_results(df: pl.DataFrame) -> pl.DataFrame:
    """Typed ``results`` from the string columns ``_RESULT_RAW``."""
    strings = [c for c in _RESULT_RAW if c not in ("set_id", "observation_time", "obr_time")]
    df = df.with_columns(pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c)
                         for c in [*strings, "set_id", "observation_time", "obr_time"])
    obs, obr = _dtm_series(df["observation_time"]), _dtm_series(df["obr_time"])
    return df.with_columns(
        pl.col("set_id").str.strip_chars().cast(pl.Int32, strict=False),
        pl.when(pl.col("value_type") == "NM")
        .then(pl.col("value").str.strip_chars().cast(pl.Float64, strict=False))
        .otherwise(None).alias("value_numeric"),
        obs.fill_null(obr).alias("observation_time"),
    ).select(list(SCHEMAS["results"]))


def _results_of_rows(rows: list[list[str]]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=dict.fromkeys(_RESULT_RAW, pl.String), orient="row") if rows \
        else pl.DataFrame(schema=dict.fromkeys(_RESULT_RAW, pl.String))
    return _type_results(df)


def _patient_row(control_id: str, time: dt.datetime | None, p: PatientInfo) -> dict[str, Any]:
    row = dataclasses.asdict(p)
    return {"control_id": control_id, "message_time": time, **row}


def _visit_row(m: Message, patient_id: str, v: Visit) -> dict[str, Any]:
    row = dataclasses.asdict(v)
    row["admit_time"], row["discharge_time"] = _naive(v.admit_time), _naive(v.discharge_time)
    return {"control_id": m.control_id, "message_type": m.message_type, "patient_id": patient_id, **row}


def _order_row(m: Message, patient_id: str, o: Order) -> dict[str, Any]:
    return {
        "control_id": m.control_id, "message_type": m.message_type, "patient_id": patient_id,
        "order_control": o.order_control, "placer_order_number": o.placer_order_number,
        "filler_order_number": o.filler_order_number,
        "accession_number": o.accession_number or o.filler_order_number,
        "service_code": o.service_code, "service_text": o.service_text, "service_system": o.service_system,
        "order_status": o.order_status, "result_status": o.result_status, "modality": o.modality,
        "ordered_time": _naive(o.ordered_time), "observation_time": _naive(o.observation_time),
        "study_instance_uid": o.study_instance_uid,
    }


def _appointment_row(m: Message, a: Appointment) -> dict[str, Any]:
    return {
        "control_id": m.control_id, "trigger": a.trigger,
        "patient_id": a.patient.patient_id if a.patient else None, "appointment_id": a.appointment_id,
        "placer_appointment_id": a.placer_appointment_id, "filler_appointment_id": a.filler_appointment_id,
        "accession_number": a.accession_number, "start_time": _naive(a.start), "end_time": _naive(a.end),
        "duration_minutes": a.duration_minutes, "status": a.status, "reason": a.reason,
        "appointment_type": a.appointment_type, "service_code": a.service_code,
        "service_text": a.service_text, "resource_id": a.resource_id, "resource_type": a.resource_type,
        "location": a.location, "personnel_id": a.personnel_id,
    }


def _document_row(m: Message, d: Document) -> dict[str, Any]:
    return {
        "control_id": m.control_id, "trigger": d.trigger, "patient_id": d.patient.patient_id,
        "unique_document_number": d.unique_document_number, "document_type": d.document_type,
        "activity_time": _naive(d.activity_time), "completion_status": d.completion_status,
        "availability_status": d.availability_status, "accession_number": d.accession_number,
        "text": d.text,
    }


def _as_message(item: Message | str | bytes) -> Message:
    return item if isinstance(item, Message) else parse_message(item)


def to_frames(messages: Iterable[Message | str | bytes], *,
              tables: Sequence[str] | None = None) -> dict[str, pl.DataFrame]:
    """Parsed (or raw) messages as typed tables.

    Parameters
    ----------
    messages : iterable of Message, str or bytes
        Raw items are parsed with :func:`kit.hl7.message.parse_message`.
    tables : sequence of str, optional
        Which tables to build (default all of :data:`TABLES`); ``skipped`` is
        always included.

    Returns
    -------
    dict of str to polars.DataFrame
        Table name to frame, with the columns of :data:`SCHEMAS` (empty frames
        keep their schema). A message that cannot be read, or cannot give the
        row of a table it belongs to, is a row of ``skipped`` with the reason.

    Raises
    ------
    kit.errors.InvalidInputError
        An unknown table name.
    """
    wanted = _check_tables(tables)
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in wanted if t not in ("results", "skipped")}
    results: list[list[str]] | None = [] if "results" in wanted else None
    skipped: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str], str] = {}
    for number, item in enumerate(messages, 1):
        try:
            m = _as_message(item)
        except KitError as exc:
            skipped.append(_skip(number, None, "messages", exc))
            continue
        _rows_of(m, number, rows, skipped, seen)
        if results is not None:
            try:
                results.extend(_result_rows(m))
            except Exception as exc:  # noqa: BLE001 - any failure of one message becomes a skipped row
                skipped.append(_skip(number, m, "results", exc))
    out = {t: _frame(rows[t], t) for t in rows}
    if results is not None:
        out["results"] = _results_of_rows(results)
    out["skipped"] = _skipped_frame(skipped)
    return {t: out[t] for t in wanted}


def _check_ints(row: dict[str, Any], table: str) -> dict[str, Any]:
    for column, dtype in SCHEMAS[table].items():
        value = row.get(column)
        if dtype == pl.Int32 and value is not None and not _INT32[0] <= value <= _INT32[1]:
            raise HL7ParseError(f"{column} {value} is out of range")
    return row


class _Lazy:
    """The typed view of one message, built once on first use."""

    def __init__(self, m: Message) -> None:
        self.m = m
        self._view: TypedMessage | None = None

    def view(self) -> TypedMessage:
        if self._view is None:
            self._view = self.m.typed()
        return self._view


def _messages_rows(m: Message, lazy: _Lazy, seen: dict[tuple[str, str, str], str]) -> list[dict[str, Any]]:
    key = (m.sending_application, m.sending_facility, m.control_id)
    digest = content_hash(m)
    first = seen.setdefault(key, digest)
    patient = PatientInfo.of(m)
    return [{
        "control_id": m.control_id, "message_type": m.message_type, "trigger": m.trigger,
        "message_time": _naive(parse_dtm(m.get("MSH-7"))), "event_time": _naive(parse_dtm(m.get("EVN-2"))),
        "sending_application": m.sending_application, "sending_facility": m.sending_facility,
        "receiving_application": m.receiving_application, "receiving_facility": m.receiving_facility,
        "version": m.version, "processing_id": m.processing_id,
        "patient_id": patient.patient_id if patient else "", "segment_count": len(m.segments()),
        "reused_control_id": first != digest}]


def _patients_rows(m: Message, lazy: _Lazy) -> list[dict[str, Any]]:
    if m.segment("PID") is None:
        return []
    patient = PatientInfo.of(m)
    if patient is None:
        raise HL7ParseError("PID-3 patient identifier is empty", segment="PID", field=3)
    return [_patient_row(m.control_id, _naive(parse_dtm(m.get("MSH-7"))), patient)]


def _visits_rows(m: Message, lazy: _Lazy) -> list[dict[str, Any]]:
    visit = Visit.of(m)
    if visit is None:
        return []
    patient = PatientInfo.of(m)
    return [_visit_row(m, patient.patient_id if patient else "", visit)]


def _orders_rows(m: Message, lazy: _Lazy) -> list[dict[str, Any]]:
    if m.message_type not in ("ORM^O01", "OML^O21", "ORU^R01"):
        return []
    view = lazy.view()
    if not isinstance(view, OrderMessage | ResultReport):
        raise HL7ParseError(f"{m.message_type} without a PID-3 patient identifier", segment="PID", field=3)
    if not view.orders:
        raise HL7ParseError(f"{m.message_type} without an ORC or OBR segment", segment="OBR")
    return [_order_row(m, view.patient.patient_id, o) for o in view.orders]


def _appointments_rows(m: Message, lazy: _Lazy) -> list[dict[str, Any]]:
    if m.message_code != "SIU" or m.trigger not in SIU_TRIGGERS:
        return []
    view = lazy.view()
    if not isinstance(view, Appointment):
        raise HL7ParseError("SIU without an appointment id (SCH-1 placer and SCH-2 filler are empty)",
                            segment="SCH", field=1)
    return [_appointment_row(m, view)]


def _documents_rows(m: Message, lazy: _Lazy) -> list[dict[str, Any]]:
    if m.message_code != "MDM" or m.trigger not in MDM_TRIGGERS:
        return []
    view = lazy.view()
    if not isinstance(view, Document):
        raise HL7ParseError(f"{m.message_type} without a PID-3 patient identifier or TXA-12 document number",
                            segment="TXA", field=12)
    return [_document_row(m, view)]


_BUILDERS: dict[str, Callable[[Message, _Lazy], list[dict[str, Any]]]] = {
    "patients": _patients_rows, "visits": _visits_rows, "orders": _orders_rows,
    "appointments": _appointments_rows, "documents": _documents_rows,
}


def _rows_of(m: Message, number: int, rows: dict[str, list[dict[str, Any]]],
             skipped: list[dict[str, Any]], seen: dict[tuple[str, str, str], str]) -> None:
    """Add the rows of one message to each wanted table, or a ``skipped`` row per table it cannot reach."""
    lazy = _Lazy(m)
    for table, out in rows.items():
        try:
            built = (_messages_rows(m, lazy, seen) if table == "messages" else _BUILDERS[table](m, lazy))
            out.extend(_check_ints(row, table) for row in built)
        except Exception as exc:  # noqa: BLE001 - one message's failure is a skipped row, never an abort
            skipped.append(_skip(number, m, table, exc))


# -- vectorised path for files -------------------------------------------------------------------
_STANDARD_MSH = "MSH|^~\\&|"
_FIELD_OK = r"^[A-Z][A-Z0-9]{2}(\||$)"


_SIMPLE_ESCAPES = {"\\F\\": "|", "\\S\\": "^", "\\T\\": "&", "\\R\\": "~", "\\E\\": "\\",
                   "\\.br\\": "\n"}
# a value made only of plain characters and the escapes above: replace_many (leftmost-first,
# left to right) then resolves it exactly as unescape() would
_ONLY_SIMPLE = r"^(?:[^\\]|\\(?:[FSTRE]|\.br)\\)*$"


def _escaped(series: pl.Series, fn: Callable[[str], str]) -> pl.Series:
    """Resolve escapes: simple ones with a polars kernel, the rest (hex, .sp, unknown) with ``fn``.

    Only the values holding the escape character are looked at; ``series`` is not changed
    (a new series is returned when any value holds one)."""
    mask = series.str.contains("\\", literal=True).fill_null(False)
    if not mask.any():
        return series
    where = mask.arg_true()
    values = series.gather(where)
    simple = values.str.contains(_ONLY_SIMPLE)
    out = values.str.replace_many(list(_SIMPLE_ESCAPES), list(_SIMPLE_ESCAPES.values()))
    if not simple.all():
        odd = values.filter(~simple).to_list()
        resolved = {v: fn(v) for v in set(odd)}
        out = out.scatter((~simple).arg_true(), [resolved[v] for v in odd])
    return series.clone().scatter(where, out)


def _flat_whole(v: str) -> str:
    return flatten(v, STANDARD_ENCODING)


def _flat_comp(v: str) -> str:
    return flatten(v, STANDARD_ENCODING, components=False)


def _leading_skip(line: str) -> dict[str, Any]:
    return _skip(None, None, "messages", f"data before the first MSH segment: {line[:20]!r}")


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read HL7 file: {exc}", source=str(path)) from exc


def read_file(path: str | Path, *, tables: Sequence[str] | None = None,
              vectorised: bool = True) -> dict[str, pl.DataFrame]:
    """Read an HL7 v2 file into typed tables.

    Every table is built by the vectorised path of :mod:`kit.hl7.frames_fast`
    (see the module docstrings). Ask only for
    the tables you need to read millions of messages fast.

    Parameters
    ----------
    path : str or Path
        Messages separated by newlines (segments by CR, LF or CRLF), MLLP
        framed, or in FHS/BHS batches; UTF-8 (a byte-order mark is fine), else Latin-1.
    tables : sequence of str, optional
        Which tables to build (default all of :data:`TABLES`); ``skipped`` is always included.
    vectorised : bool
        Build the tables with the vectorised paths (default) or message by
        message (the reference the fast paths are tested against; same rows).

    Returns
    -------
    dict of str to polars.DataFrame
        As :func:`to_frames`: a message that cannot be read is a row of
        ``skipped`` with its reason, and the rest of the file is read.

    Raises
    ------
    kit.errors.InvalidInputError
        The file cannot be read, or an unknown table name.
    """
    wanted = _check_tables(tables)
    data = _read_bytes(path)
    if vectorised:
        from kit.hl7.frames_fast import read_tables  # it builds on this module

        return read_tables(data, wanted)
    groups = list(group_messages(segment_lines(decode(data))))
    leading = [_leading_skip(g[1][0]) for g in groups if g[0]]
    frames = to_frames(["\r".join(g[1]) + "\r" for g in groups if not g[0]], tables=wanted)
    frames["skipped"] = _skipped_frame([_skipped_frame(leading), frames["skipped"]])
    return frames
