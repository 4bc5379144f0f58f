"""FHIR R4 resources as typed polars frames, fast (pure: no sockets).

:func:`to_frame` and :func:`to_frames` turn resources (an iterable of dicts, a
Bundle dict, JSON bytes, or a path to a ``.json`` Bundle / ``.ndjson`` file as
written by Bulk Data ``$export``) into :class:`polars.DataFrame` s with stable,
documented, typed columns, one frame per resource type. Every frame has the full
schema even when empty (``schema(resource_type)``).

Join columns (the same names in the PACS and HL7 frames):

* ``patient_id`` — the MRN. In the Patient frame it is the identifier whose
  type code is ``MR``, else whose system contains ``mrn``, else the first. In
  other frames it is filled only when the subject reference carries a logical
  ``identifier`` or points at a contained Patient; otherwise join through the
  Patient's logical id::

      obs.join(patients.select("id", "patient_id"), left_on="patient_ref", right_on="id")

  or call :func:`with_patient_id` (``patient_ref`` is the id of a
  ``Patient/<id>`` reference, relative, absolute or versioned).
* ``accession_number`` (ImagingStudy, ServiceRequest, DiagnosticReport,
  Appointment) — the identifier with type code ``ACSN`` (else a system
  containing ``accession``).
* ``study_instance_uid`` (ImagingStudy) — identifier system ``urn:dicom:uid``,
  ``urn:oid:`` prefix stripped.

Types: FHIR ``date`` -> ``pl.Date`` (partial dates ``YYYY``/``YYYY-MM`` become
the first day of the period); ``dateTime``/``instant`` -> ``pl.Datetime("us",
"UTC")`` (offsets applied; a date or a time without offset is taken as UTC);
decimals ``Float64``; integers ``Int64``. A value that does not parse raises
:class:`~kit.errors.FhirValidationError` (``strict=False`` makes it null instead).

Nothing is dropped silently: ``codings`` keeps every Coding of ``code``;
``categories``, ``results``, ``modalities``... keep every item; ``components``
keeps Observation.component as a list of structs; ``extensions`` keeps each
top-level extension as ``{url, value}`` (value as text, JSON for complex values);
``identifiers`` keeps every identifier. References to *contained* resources
(``#id``) are kept as written in the reference column and resolved where it
matters: a contained Patient gives ``patient_id``, a contained Medication gives
MedicationRequest's ``medication_*`` columns. Resource types without a dedicated
schema get a generic frame that keeps the whole resource as JSON (``resource``).
``urn:uuid:`` references inside a Bundle resolve to the entry's logical id.

Anything else: pass ``columns=[ColumnSpec("name", "FHIRPath", dtype), ...]``;
each path is compiled once with fhirpathpy (R4 model, so choice types work).

Written by hand (no library builds typed columnar frames from FHIR JSON at this
speed; fhiry flattens with pandas.json_normalize, fhir.resources validates into
pydantic models): the column extractors (:mod:`kit.fhir.frames_extract`) and
the vectorised date conversion. Parsing is orjson with the cyclic GC paused.
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir.frames_extract import EXTRACTORS, GENERIC_SCHEMA, SCHEMAS, Col, generic_extract

__all__ = [
    "RESOURCE_TYPES",
    "ColumnSpec",
    "read_resources",
    "schema",
    "to_frame",
    "to_frames",
    "with_patient_id",
]

#: resource types with a dedicated schema (others get the generic frame)
RESOURCE_TYPES: tuple[str, ...] = tuple(SCHEMAS)

Source = Mapping[str, Any] | Iterable[Mapping[str, Any]] | str | os.PathLike[str] | bytes


# --------------------------------------------------------------------------- FHIRPath columns

def _kind_of(dtype: Any) -> tuple[str, pl.DataType | None]:
    """Column kind and (for lists) inner dtype of a polars dtype."""
    if isinstance(dtype, type):
        dtype = dtype()
    if isinstance(dtype, pl.List):
        inner = dtype.inner
        if isinstance(inner, type):
            inner = inner()
        return ("structs" if isinstance(inner, pl.Struct) else "list"), inner
    if dtype == pl.Utf8:
        return "str", None
    if dtype.is_float():
        return "float", None
    if dtype.is_integer():
        return "int", None
    if dtype == pl.Boolean:
        return "bool", None
    if dtype == pl.Date:
        return "date", None
    if isinstance(dtype, pl.Datetime):
        return "datetime", None
    raise InvalidInputError(f"ColumnSpec dtype {dtype} is not supported "
                            "(use Utf8, Float64, Int64, Boolean, Date, Datetime or List of them)")


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """An extra frame column computed with a FHIRPath expression.

    Parameters
    ----------
    name : str
        Column name (snake_case by convention).
    fhirpath : str
        FHIRPath expression evaluated on each resource, e.g.
        ``"Patient.extension.where(url='http://x/race').valueString"``.
    dtype : polars.DataType
        Column type. A ``pl.List(...)`` keeps every result; a scalar type takes
        the first result (null when there is none).

    The expression is compiled once, when the spec is made; a syntax error
    raises :class:`~kit.errors.InvalidInputError`.
    """

    name: str
    fhirpath: str
    dtype: Any = pl.Utf8
    _col: Col = dataclasses.field(init=False, repr=False, compare=False)
    _fn: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        import fhirpathpy
        from fhirpathpy.models import models

        if not self.name or not self.name.replace("_", "a").isalnum():
            raise InvalidInputError(f"ColumnSpec name {self.name!r} is not a plain identifier")
        dtype = self.dtype() if isinstance(self.dtype, type) else self.dtype
        kind, inner = _kind_of(dtype)
        try:
            fn = fhirpathpy.compile(self.fhirpath, models["r4"])
        except Exception as exc:  # fhirpathpy raises bare Exceptions on bad syntax
            raise InvalidInputError(f"bad FHIRPath {self.fhirpath!r}: {exc}", source=self.name) from exc
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "_col", Col(self.name, kind, inner))
        object.__setattr__(self, "_fn", fn)

    def evaluate(self, resource: Mapping[str, Any]) -> Any:
        """The column's value for one resource (a list for List dtypes)."""
        try:
            found = self._fn(resource, {})
        except Exception as exc:  # evaluation errors from fhirpathpy are untyped
            raise FhirValidationError(f"FHIRPath {self.fhirpath!r} failed: {exc}",
                                      source=str(resource.get("id"))) from exc
        values = [_plain(v) for v in found]
        if self._col.kind in ("list", "structs"):
            return values or None
        return values[0] if values else None


def _plain(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool, dict)):
        return v
    if isinstance(v, list):
        return orjson.dumps(v).decode()
    return str(v)  # fhirpathpy date/time/quantity objects


# --------------------------------------------------------------------------- input

@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC (JSON trees make it run constantly for nothing)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loads(data: bytes | str, source: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FhirValidationError(f"not JSON: {exc}", source=source) from exc


def _read_path(path: Path) -> Any:
    name = path.name.lower()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read: {exc}", source=str(path)) from exc
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
        name = name[:-3]
    if name.endswith((".ndjson", ".jsonl")):
        out = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                out.append(_loads(line, f"{path}:{n}"))
        return out
    return _loads(raw, str(path))


def _flatten(item: Any, out: list[Mapping[str, Any]], urns: dict[str, str], source: str) -> None:
    if not isinstance(item, Mapping):
        raise FhirValidationError(f"not a FHIR resource (a {type(item).__name__})", source=source)
    rt = item.get("resourceType")
    if not isinstance(rt, str):
        raise FhirValidationError("resource without resourceType", source=source)
    if rt != "Bundle":
        out.append(item)
        return
    for entry in item.get("entry") or ():
        res = entry.get("resource")
        if res is None:
            continue  # e.g. a DELETE in a transaction, or a search outcome without resource
        full = entry.get("fullUrl")
        if full and full.startswith("urn:") and res.get("id"):
            urns[full] = res["id"]
        _flatten(res, out, urns, source)


def read_resources(source: Source) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """All resources in ``source`` (Bundles flattened) and the Bundle ``urn:`` fullUrl -> id map.

    Parameters
    ----------
    source : dict, iterable of dicts, bytes, str or path
        A resource, a Bundle, an iterable of resources/Bundles, JSON bytes, or a
        path to a ``.json`` file (Bundle, resource or array) or ``.ndjson`` /
        ``.jsonl`` file (optionally ``.gz``).

    Raises
    ------
    FhirValidationError
        Not JSON, or an item without ``resourceType``.
    """
    out: list[Mapping[str, Any]] = []
    urns: dict[str, str] = {}
    with _gc_paused():
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            data = _read_path(path)
            label = str(path)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = _loads(bytes(source), "bytes")
            label = "bytes"
        else:
            data = source
            label = "input"
        if isinstance(data, Mapping):
            _flatten(data, out, urns, label)
        else:
            for item in data:
                _flatten(item, out, urns, label)
    return out, urns


# --------------------------------------------------------------------------- building columns

_DT_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%z"


def _datetime_fast(raw: pl.Series) -> pl.Series:
    """Full FHIR dateTimes/instants (the usual case) in one pass; partial ones go the slow way."""
    out = raw.str.replace("Z", "+00:00", literal=True).str.to_datetime(
        _DT_FORMAT, strict=False, time_unit="us", time_zone="UTC")
    if out.null_count() != raw.null_count():
        out = out.fill_null(raw.to_frame().select(_datetime_expr(pl.col(raw.name))).to_series())
    return out


def _datetime_expr(s: pl.Expr) -> pl.Expr:
    s = s.str.replace(r"Z$", "+00:00")
    n = s.str.len_bytes()
    s = (pl.when(n == 4).then(s + "-01-01T00:00:00+00:00")
         .when(n == 7).then(s + "-01T00:00:00+00:00")
         .when(n == 10).then(s + "T00:00:00+00:00")
         .when(s.str.contains(r"[+-]\d\d:\d\d$")).then(s)
         .otherwise(s + "+00:00"))
    return s.str.to_datetime(_DT_FORMAT, strict=False, time_unit="us", time_zone="UTC")


def _date_expr(s: pl.Expr) -> pl.Expr:
    n = s.str.len_bytes()
    s = (pl.when(n == 4).then(s + "-01-01").when(n == 7).then(s + "-01")
         .otherwise(s.str.slice(0, 10)))
    return s.str.to_date("%Y-%m-%d", strict=False)


def _check(raw: pl.Series, out: pl.Series, what: str, strict: bool) -> pl.Series:
    if strict and out.null_count() != raw.null_count():
        bad = raw.filter(out.is_null() & raw.is_not_null())
        raise FhirValidationError(f"{what}: {bad.len()} value(s) are not valid, e.g. {bad[0]!r}")
    return out


def _scalar(col: Col, values: Sequence[Any], what: str, strict: bool) -> pl.Series:
    kind = col.kind
    if kind in ("date", "datetime"):
        raw = _scalar(Col(col.name), values, what, strict)
        if kind == "datetime":
            return _check(raw, _datetime_fast(raw), what, strict)
        return _check(raw, raw.to_frame().select(_date_expr(pl.col(col.name))).to_series(), what, strict)
    dtype = col.dtype
    try:
        return pl.Series(col.name, values, dtype=dtype)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        if kind == "str":
            values = [v if v is None or isinstance(v, str) else orjson.dumps(v).decode() for v in values]
            return pl.Series(col.name, values, dtype=dtype)
    raw_count = sum(v is not None for v in values)
    out = pl.Series(col.name, values, dtype=dtype, strict=False)
    if strict and len(out) - out.null_count() != raw_count:
        bad = next(v for v, o in zip(values, out.to_list(), strict=True) if v is not None and o is None)
        raise FhirValidationError(f"{what}: not a {kind}: {bad!r}")
    return out


def _listed(col: Col, values: Sequence[Any], what: str, strict: bool) -> pl.Series:
    """A List column built flat (one row per item) and grouped back: far faster than nested lists."""
    n = len(values)
    if not any(values):
        return pl.Series(col.name, [None] * n, dtype=col.dtype)
    inner = col.inner
    assert inner is not None
    fields: list[Col] = []
    if isinstance(inner, pl.Struct):
        for f in inner.fields:
            k, i = _kind_of(f.dtype)
            fields.append(Col(f.name, k, i))
    else:
        fields.append(Col("_v", _kind_of(inner)[0]))
    names = [f.name for f in fields]
    try:
        items = [x if x is None or x.__class__ is list else [x] for x in values]
        rows = [i for i, xs in enumerate(items) if xs for _ in xs]
        flat_items = [x for xs in items if xs for x in xs]
        if isinstance(inner, pl.Struct):
            flat = [[x.get(name) for x in flat_items] for name in names]
        else:
            flat = [flat_items]
    except AttributeError as exc:
        raise FhirValidationError(f"{what}: malformed list item: {exc}") from exc
    frame = pl.DataFrame([pl.Series("_r", rows, dtype=pl.UInt32)]
                         + [_scalar(f, acc, f"{what}.{f.name}", strict) for f, acc in zip(fields, flat,
                                                                                          strict=True)])
    value = pl.struct(names) if isinstance(inner, pl.Struct) else pl.col("_v")
    grouped = frame.group_by("_r", maintain_order=True).agg(value.alias(col.name))
    full = pl.DataFrame({"_r": pl.arange(0, n, eager=True, dtype=pl.UInt32)}).join(
        grouped, on="_r", how="left", maintain_order="left")
    return full.get_column(col.name).cast(col.dtype)


def _build(cols: Sequence[Col], rows: list[tuple[Any, ...]], resource_type: str,
           strict: bool) -> pl.DataFrame:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [() for _ in cols]
    series = []
    for col, values in zip(cols, columns, strict=True):
        what = f"{resource_type}.{col.name}"
        if col.kind in ("list", "structs"):
            series.append(_listed(col, values, what, strict))
        else:
            series.append(_scalar(col, values, what, strict))
    return pl.DataFrame(series)


def _columns_for(resource_type: str, extra: Sequence[ColumnSpec]) -> tuple[Col, ...]:
    base = SCHEMAS.get(resource_type, GENERIC_SCHEMA)
    if not extra:
        return base
    names = {spec.name for spec in extra}
    return tuple(c for c in base if c.name not in names) + tuple(spec._col for spec in extra)


def _frame(resource_type: str, resources: Sequence[Mapping[str, Any]], extra: Sequence[ColumnSpec],
           urns: Mapping[str, str], strict: bool) -> pl.DataFrame:
    extract = EXTRACTORS.get(resource_type, generic_extract)
    r: Mapping[str, Any] | None = None
    try:
        rows = [extract(r) for r in resources]
        if extra:
            base = SCHEMAS.get(resource_type, GENERIC_SCHEMA)
            names = {spec.name for spec in extra}
            keep = [i for i, c in enumerate(base) if c.name not in names]
            rows = [tuple(row[i] for i in keep) + tuple(spec.evaluate(r) for spec in extra)
                    for row, r in zip(rows, resources, strict=True)]
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        rid = r.get("id") if isinstance(r, Mapping) else None
        raise FhirValidationError(f"malformed {resource_type}: {exc!r}",
                                  source=f"{resource_type}/{rid}") from exc
    frame = _build(_columns_for(resource_type, extra), rows, resource_type, strict)
    if urns and "patient_ref" in frame.columns:
        frame = frame.with_columns(pl.col("patient_ref").replace(dict(urns)))
    return frame


# --------------------------------------------------------------------------- public API

def schema(resource_type: str, columns: Sequence[ColumnSpec] = ()) -> pl.Schema:
    """Column names and dtypes of the frame :func:`to_frame` returns for ``resource_type``."""
    return pl.Schema({c.name: c.dtype for c in _columns_for(resource_type, columns)})


def _check_type(resource_type: str) -> None:
    if resource_type in SCHEMAS:
        return
    from kit.fhir.resources import is_resource_type

    if not is_resource_type(resource_type):
        raise InvalidInputError(f"{resource_type!r} is not a FHIR R4 resource type")


def to_frame(resources: Source, resource_type: str, *, columns: Sequence[ColumnSpec] = (),
             strict: bool = True) -> pl.DataFrame:
    """One typed frame with the resources of ``resource_type`` found in ``resources``.

    Parameters
    ----------
    resources : dict, iterable of dicts, bytes, str or path
        See :func:`read_resources`.
    resource_type : str
        E.g. ``"Observation"``. Types without a dedicated schema get the generic
        frame (``id``, ``resource`` JSON, ...).
    columns : sequence of ColumnSpec
        Extra FHIRPath columns, appended (a spec named like a built-in column replaces it).
    strict : bool
        Raise on values that do not parse as their column type (default); if
        False they become null.

    Returns
    -------
    polars.DataFrame
        The full schema (:func:`schema`) even when no resource matches.

    Raises
    ------
    FhirValidationError
        Malformed input or (strict) a value that does not parse.
    InvalidInputError
        ``resource_type`` is not a FHIR resource type.
    """
    _check_type(resource_type)
    with _gc_paused():  # the parsed JSON dies inside (by refcount) before the GC resumes
        return _to_frame(resources, resource_type, columns, strict)


def _to_frame(resources: Source, resource_type: str, columns: Sequence[ColumnSpec],
              strict: bool) -> pl.DataFrame:
    items, urns = read_resources(resources)
    picked = [r for r in items if r.get("resourceType") == resource_type]
    return _frame(resource_type, picked, columns, urns, strict)


def to_frames(resources: Source, *, columns: Mapping[str, Sequence[ColumnSpec]] | None = None,
              strict: bool = True) -> dict[str, pl.DataFrame]:
    """One typed frame per resource type found in ``resources`` (see :func:`to_frame`).

    Parameters
    ----------
    resources : dict, iterable of dicts, bytes, str or path
        See :func:`read_resources`.
    columns : mapping of resource type to ColumnSpecs, optional
        Extra FHIRPath columns per resource type.
    strict : bool
        As in :func:`to_frame`.

    Returns
    -------
    dict of str to polars.DataFrame
        Keyed by resourceType, in order of first appearance.
    """
    with _gc_paused():  # the parsed JSON dies inside (by refcount) before the GC resumes
        return _to_frames(resources, columns or {}, strict)


def _to_frames(resources: Source, extra: Mapping[str, Sequence[ColumnSpec]],
               strict: bool) -> dict[str, pl.DataFrame]:
    items, urns = read_resources(resources)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in items:
        rt = r["resourceType"]
        group = groups.get(rt)
        if group is None:
            group = groups[rt] = []
        group.append(r)
    return {rt: _frame(rt, group, extra.get(rt, ()), urns, strict) for rt, group in groups.items()}


def with_patient_id(frame: pl.DataFrame, patients: pl.DataFrame) -> pl.DataFrame:
    """Fill ``patient_id`` (the MRN) of ``frame`` from a Patient frame, joining ``patient_ref`` -> ``id``.

    A ``patient_id`` already present (from a logical or contained reference) is kept.
    """
    if "patient_ref" not in frame.columns:
        raise InvalidInputError("frame has no patient_ref column")
    lookup = patients.select(pl.col("id").alias("patient_ref"), pl.col("patient_id").alias("_mrn"))
    lookup = lookup.unique("patient_ref", keep="first")
    joined = frame.join(lookup, on="patient_ref", how="left", maintain_order="left")
    if "patient_id" in frame.columns:
        joined = joined.with_columns(pl.coalesce("patient_id", "_mrn").alias("patient_id")).drop("_mrn")
    else:
        joined = joined.rename({"_mrn": "patient_id"})
    return joined.select([*frame.columns] + ([] if "patient_id" in frame.columns else ["patient_id"]))
