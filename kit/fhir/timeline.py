"""One patient's clinical events in time order, from FHIR frames (pure: no sockets).

:func:`timeline` stacks the typed frames of :mod:`kit.fhir.frames` (Encounter,
Observation, Condition, Procedure, ImagingStudy, DiagnosticReport,
MedicationRequest) into one long frame with a row per event::

    frames = client.search_frames("Patient", {"_revinclude": "Observation:subject"})
    events = timeline(frames, patient_ref="p1")

Columns (:data:`TIMELINE_SCHEMA`), sorted by ``patient_ref``, ``time`` (events
without a time last), ``kind``, ``code``:

============  =====================  ==============================================
column        dtype                  from
============  =====================  ==============================================
patient_ref   String                 the subject's logical Patient id
time          Datetime(us, UTC)      Encounter.period.start, Observation.effective
                                     (else issued), Condition.onset (else
                                     recordedDate), Procedure.performed,
                                     ImagingStudy.started, DiagnosticReport.effective
                                     (else issued), MedicationRequest.authoredOn
kind          String                 the resource type (:class:`TimelineKind`)
code          String                 the code (Encounter: type, else class;
                                     ImagingStudy: its modalities, comma-separated)
display       String                 the code's display (ImagingStudy: description)
value         String                 Observation: value with unit, or its
                                     components; Condition: clinical status;
                                     ImagingStudy: accession number;
                                     DiagnosticReport: conclusion;
                                     MedicationRequest: dosage text; others: status
============  =====================  ==============================================

Frames of other resource types (Patient, Practitioner, ...) are not events and
are left out; an event frame that lacks a column it needs raises
:class:`~kit.errors.InvalidInputError`. Events without a time are kept (time null).

:func:`patient_options` and :func:`timeline_lanes` shape what
:class:`kit.widgets.fhir.PatientTimeline` shows; the chart itself is drawn by
plotly (:func:`kit.widgets.charts.timeline_figure`). Written by hand: no
library builds a clinical timeline from FHIR frames.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Final

import polars as pl

from kit.errors import InvalidInputError

__all__ = [
    "KIND_COLOURS",
    "LANES_SCHEMA",
    "TIMELINE_SCHEMA",
    "TimelineKind",
    "patient_options",
    "timeline",
    "timeline_lanes",
]

_UTC = pl.Datetime("us", "UTC")

#: columns and dtypes of :func:`timeline`
TIMELINE_SCHEMA: Final[pl.Schema] = pl.Schema({
    "patient_ref": pl.String(), "time": _UTC, "kind": pl.String(), "code": pl.String(),
    "display": pl.String(), "value": pl.String(),
})

#: columns and dtypes of :func:`timeline_lanes`
LANES_SCHEMA: Final[pl.Schema] = pl.Schema({
    "time": _UTC, "kind": pl.String(), "lane": pl.Int8(), "colour": pl.String(), "code": pl.String(),
    "display": pl.String(), "value": pl.String(), "label": pl.String(),
})


class TimelineKind(enum.StrEnum):
    """The resource types that become timeline events (in lane order)."""

    ENCOUNTER = "Encounter"
    CONDITION = "Condition"
    PROCEDURE = "Procedure"
    OBSERVATION = "Observation"
    IMAGING_STUDY = "ImagingStudy"
    DIAGNOSTIC_REPORT = "DiagnosticReport"
    MEDICATION_REQUEST = "MedicationRequest"


#: lane colour of each kind in a chart (Vega's category10-like palette)
KIND_COLOURS: Final[dict[TimelineKind, str]] = {
    TimelineKind.ENCOUNTER: "#4c78a8", TimelineKind.CONDITION: "#e45756",
    TimelineKind.PROCEDURE: "#f58518", TimelineKind.OBSERVATION: "#54a24b",
    TimelineKind.IMAGING_STUDY: "#b279a2", TimelineKind.DIAGNOSTIC_REPORT: "#9d755d",
    TimelineKind.MEDICATION_REQUEST: "#72b7b2",
}


def _number(col: str) -> pl.Expr:
    """A float as text without a spurious ``.0`` (63.0 -> "63", 0.75 -> "0.75")."""
    x = pl.col(col)
    return (pl.when(x == x.floor()).then(x.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(x.cast(pl.String)))


def _observation_value() -> pl.Expr:
    quantity = pl.concat_str([_number("value_quantity"), pl.col("value_unit")], separator=" ",
                             ignore_nulls=True)
    quantity = pl.when(pl.col("value_quantity").is_not_null()).then(quantity)
    part = pl.element()
    comp_value = pl.concat_str([_component_number(), part.struct.field("value_unit")], separator=" ",
                               ignore_nulls=True)
    components = pl.col("components").list.eval(
        pl.concat_str([pl.coalesce(part.struct.field("code_display"), part.struct.field("code")),
                       pl.coalesce(pl.when(part.struct.field("value_quantity").is_not_null())
                                   .then(comp_value), part.struct.field("value_string"),
                                   part.struct.field("value_code"))],
                      separator=": ", ignore_nulls=True)).list.join("; ")
    components = pl.when(pl.col("components").list.len() > 0).then(components)
    return pl.coalesce(quantity, pl.col("value_string"), pl.col("value_code"),
                       pl.col("value_boolean").cast(pl.String), pl.col("value_integer").cast(pl.String),
                       pl.col("value_datetime").dt.strftime("%Y-%m-%dT%H:%M:%SZ"), components,
                       pl.col("data_absent_reason"))


def _component_number() -> pl.Expr:
    x = pl.element().struct.field("value_quantity")
    return (pl.when(x == x.floor()).then(x.cast(pl.Int64, strict=False).cast(pl.String))
            .otherwise(x.cast(pl.String)))


def _rules() -> dict[TimelineKind, tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr]]:
    """Per kind: the (time, code, display, value) expressions."""
    k = TimelineKind
    return {
        k.ENCOUNTER: (pl.col("period_start"), pl.coalesce("type_code", "class_code"),
                      pl.coalesce("type_display", "reason_display"), pl.col("status")),
        k.CONDITION: (pl.coalesce("onset", "recorded_date"), pl.col("code"), pl.col("code_display"),
                      pl.col("clinical_status")),
        k.PROCEDURE: (pl.col("performed"), pl.col("code"), pl.col("code_display"), pl.col("status")),
        k.OBSERVATION: (pl.coalesce("effective", "issued"), pl.col("code"), pl.col("code_display"),
                        _observation_value()),
        k.IMAGING_STUDY: (pl.col("started"), pl.col("modalities").list.join(","), pl.col("description"),
                          pl.col("accession_number")),
        k.DIAGNOSTIC_REPORT: (pl.coalesce("effective", "issued"), pl.col("code"), pl.col("code_display"),
                              pl.col("conclusion")),
        k.MEDICATION_REQUEST: (pl.col("authored_on"), pl.col("medication_code"),
                               pl.col("medication_display"), pl.col("dosage_text")),
    }


def timeline(frames: Mapping[str, pl.DataFrame], *,
             patient_ref: str | Iterable[str] | None = None) -> pl.DataFrame:
    """Stack event frames into one time-ordered frame (columns :data:`TIMELINE_SCHEMA`).

    Parameters
    ----------
    frames : mapping of str to polars.DataFrame
        Resource type -> frame as made by :func:`kit.fhir.frames.to_frame` /
        :func:`~kit.fhir.frames.to_frames` / ``FhirClient.search_frames`` or
        read back from a Bulk export's parquet. Types that are not a
        :class:`TimelineKind` are ignored.
    patient_ref : str or iterable of str, optional
        Keep only these patients' events (logical Patient ids).

    Returns
    -------
    polars.DataFrame
        One row per event, empty (with the schema) when there is none.

    Raises
    ------
    InvalidInputError
        An event frame lacks a column its kind needs.
    """
    wanted: list[str] | None
    if patient_ref is None:
        wanted = None
    elif isinstance(patient_ref, str):
        wanted = [patient_ref]
    else:
        wanted = list(patient_ref)
    rules = _rules()
    parts = []
    for resource_type, frame in frames.items():
        if resource_type not in TimelineKind.__members__.values():
            continue
        kind = TimelineKind(resource_type)
        time, code, display, value = rules[kind]
        if wanted is not None and "patient_ref" in frame.columns:
            frame = frame.filter(pl.col("patient_ref").is_in(wanted))
        try:
            part = frame.select(
                pl.col("patient_ref").cast(pl.String), time.cast(_UTC).alias("time"),
                pl.lit(kind.value, pl.String).alias("kind"), code.cast(pl.String).alias("code"),
                display.cast(pl.String).alias("display"), value.cast(pl.String).alias("value"))
        except pl.exceptions.ColumnNotFoundError as exc:
            raise InvalidInputError(f"the {resource_type} frame lacks a column the timeline needs: "
                                    f"{str(exc).splitlines()[0]}", source=resource_type) from exc
        except pl.exceptions.InvalidOperationError as exc:
            raise InvalidInputError(f"the {resource_type} frame has a column of the wrong type: "
                                    f"{str(exc).splitlines()[0]}", source=resource_type) from exc
        parts.append(part)
    if not parts:
        return pl.DataFrame(schema=TIMELINE_SCHEMA)
    return (pl.concat(parts, how="vertical")
            .sort(["patient_ref", "time", "kind", "code"], nulls_last=True))


def patient_options(patients: pl.DataFrame) -> list[tuple[str, str]]:
    """``(label, logical id)`` pairs for a patient picker, sorted by MRN.

    Parameters
    ----------
    patients : polars.DataFrame
        A Patient frame (:func:`kit.fhir.frames.to_frame`); needs ``id``; uses
        ``patient_id``, ``family``, ``given`` and ``birth_date`` when present.

    Returns
    -------
    list of (str, str)
        E.g. ``("MRN1001 · Moreau, Alice · 1958-03-14", "cb95ebb3-...")``.
    """
    if "id" not in patients.columns:
        raise InvalidInputError("the Patient frame needs an id column")
    cols = patients.columns
    sort_by = ["patient_id", "id"] if "patient_id" in cols else ["id"]
    options = []
    for row in patients.sort(sort_by, nulls_last=True).iter_rows(named=True):
        name = ", ".join(str(row[c]) for c in ("family", "given") if c in cols and row[c])
        label = " · ".join(str(v) for v in (row.get("patient_id"), name, row.get("birth_date")) if v)
        options.append((label or str(row["id"]), str(row["id"])))
    return options


def _check_events(events: pl.DataFrame) -> None:
    missing = [c for c in TIMELINE_SCHEMA if c not in events.columns]
    if missing:
        raise InvalidInputError(f"not a timeline frame: missing {missing}")


def timeline_lanes(events: pl.DataFrame) -> pl.DataFrame:
    """The timed events of ``events`` laid out for a strip chart: one lane per kind.

    Parameters
    ----------
    events : polars.DataFrame
        Output of :func:`timeline` (any subset of its rows).

    Returns
    -------
    polars.DataFrame
        :data:`LANES_SCHEMA`, in the order of ``events``: ``time``, ``kind``,
        ``lane`` (the kind's place in :class:`TimelineKind` order, 0 first),
        ``colour`` (:data:`KIND_COLOURS`), ``code``, ``display``, ``value`` and
        ``label`` (the hover text: time to the minute, code, display, value).
        Events without a time are left out (a table lists them).

    Raises
    ------
    InvalidInputError
        ``events`` is not a timeline frame.
    """
    _check_events(events)
    order = [k.value for k in TimelineKind]
    timed = events.filter(pl.col("time").is_not_null())
    label = pl.concat_str([pl.col("time").dt.strftime("%Y-%m-%d %H:%M"), pl.col("code"), pl.col("display"),
                           pl.col("value")], separator=" · ", ignore_nulls=True)
    return timed.select(
        pl.col("time"), pl.col("kind"),
        pl.col("kind").replace_strict(order, list(range(len(order))), return_dtype=pl.Int8).alias("lane"),
        pl.col("kind").replace_strict(order, [KIND_COLOURS[k] for k in TimelineKind],
                                      return_dtype=pl.String).alias("colour"),
        pl.col("code"), pl.col("display"), pl.col("value"), label.alias("label"),
    )
