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
the vectorised date conversion.

Speed (the work is bound by memory latency, not by the interpreter): parsing
is orjson with the cyclic GC paused for the whole call (parse and column
building); a ``.json`` file is memory-mapped, an NDJSON file parsed line by line;
resources are streamed through the extractors in one pass and, when kit parsed
the JSON itself, each one is freed right after its row is taken, while still
in the CPU cache (objects the caller passes in are never modified); list
columns are built flat and regrouped in polars.
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import mmap
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
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


def _loads(data: bytes | bytearray | memoryview | str, source: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FhirValidationError(f"not JSON: {exc}", source=source) from exc


def _read_path(path: Path) -> Any:
    """The parsed content of a ``.json`` file, or an iterator over the parsed lines of an NDJSON file.

    NDJSON is read and parsed line by line, so each resource is parsed, used and
    freed while it is still in the CPU cache. A ``.json`` file is memory-mapped
    (prefaulted in one call) rather than copied into a bytes object.
    """
    name = path.name.lower()
    if name.endswith((".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")):
        return _ndjson(path)
    try:
        if name.endswith(".gz"):
            return _loads(gzip.decompress(path.read_bytes()), str(path))
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0 or not hasattr(mmap, "MAP_SHARED"):
                return _loads(fh.read(), str(path))
            m = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                          prot=mmap.PROT_READ)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"cannot read: {exc}", source=str(path)) from exc
    try:
        with memoryview(m) as view:
            return _loads(view, str(path))
    finally:
        m.close()


def _ndjson(path: Path) -> Iterator[Any]:
    loads = orjson.loads
    try:
        fh = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read: {exc}", source=str(path)) from exc
    with fh:
        n = 0
        try:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise FhirValidationError(f"not JSON: {exc}", source=f"{path}:{n}") from exc
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InvalidInputError(f"cannot read: {exc}", source=f"{path}:{n}") from exc


def _walk(item: Any, urns: dict[str, str], source: str, consume: bool) -> Iterator[Mapping[str, Any]]:
    """The resources in ``item`` (Bundles flattened), recording Bundle ``urn:`` fullUrls in ``urns``.

    With ``consume`` (only for JSON we parsed ourselves) each Bundle entry is
    dropped once yielded, so it is freed while still in the CPU cache instead of
    all at the end.
    """
    if item.__class__ is not dict and not isinstance(item, Mapping):
        raise FhirValidationError(f"not a FHIR resource (a {type(item).__name__})", source=source)
    rt = item.get("resourceType")
    if not isinstance(rt, str):
        raise FhirValidationError("resource without resourceType", source=source)
    if rt != "Bundle":
        yield item
        return
    entries: Any = item.get("entry") or ()
    for k, entry in enumerate(entries):
        res = entry.get("resource")
        if res is None:
            continue  # e.g. a DELETE in a transaction, or a search outcome without resource
        full = entry.get("fullUrl")
        if full and full.startswith("urn:") and res.get("id"):
            urns[full] = res["id"]
        if res.__class__ is dict and res.get("resourceType") != "Bundle":
            rt = res.get("resourceType")
            if not isinstance(rt, str):
                raise FhirValidationError("resource without resourceType", source=source)
            yield res
        else:
            yield from _walk(res, urns, source, consume)
        if consume:
            entries[k] = None


def _iter_resources(source: Source, urns: dict[str, str]) -> Iterator[Mapping[str, Any]]:
    """Stream the resources of ``source`` (see :func:`read_resources`)."""
    consume = True
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        data = _read_path(path)
        label = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = _loads(source, "bytes")  # orjson reads bytes, bytearray and memoryview as they are
        label = "bytes"
    else:
        data = source
        label = "input"
        consume = False  # the caller's objects: never modified
    if data.__class__ is dict or isinstance(data, Mapping):
        yield from _walk(data, urns, label, consume)
    elif consume and data.__class__ is list:  # a JSON array we parsed: free each item once used
        for k, item in enumerate(data):
            yield from _walk(item, urns, label, consume)
            data[k] = item = None
    else:
        for item in data:
            yield from _walk(item, urns, label, consume)


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
    urns: dict[str, str] = {}
    with _gc_paused():
        out = list(_iter_resources(source, urns))
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
    """A List column built flat (one row per item) and grouped back: far faster than nested lists.

    Struct items come either flattened into one tuple per row (the extractors:
    ``(f1, f2, f1, f2, ...)``, built while the resource is hot in the CPU cache
    and split here by C-level slicing) or as a list of dicts (FHIRPath columns).
    """
    n = len(values)
    inner = col.inner
    assert inner is not None
    if not any(values):
        return pl.Series(col.name, [None] * n, dtype=col.dtype)
    fields: list[Col] = []
    if isinstance(inner, pl.Struct):
        for f in inner.fields:
            kind, inner_dtype = _kind_of(f.dtype)
            fields.append(Col(f.name, kind, inner_dtype))
    else:
        fields.append(Col("_v", _kind_of(inner)[0]))
    names = [f.name for f in fields]
    k = len(names)
    sample = next(xs for xs in values if xs)
    flat: list[Sequence[Any]]
    if sample.__class__ is tuple:  # extractor output: struct fields flattened
        lens = [len(xs) // k if xs else 0 for xs in values]
        flat_values = list(chain.from_iterable(xs for xs in values if xs))
        if len(flat_values) != k * sum(lens):
            raise FhirValidationError(f"{what}: malformed struct items")
        flat = [flat_values[j::k] for j in range(k)]
    else:
        lens = [len(xs) if xs.__class__ is list else (0 if xs is None else -1) for xs in values]
        if min(lens) < 0:  # single items: wrap them
            values = [xs if xs is None or xs.__class__ is list else [xs] for xs in values]
            lens = [len(xs) if xs else 0 for xs in values]
        flat_items = list(chain.from_iterable(xs for xs in values if xs))
        if not isinstance(inner, pl.Struct):
            flat = [flat_items]
        else:
            try:
                flat = [[x.get(name) for x in flat_items] for name in names]
            except AttributeError as exc:
                raise FhirValidationError(f"{what}: malformed list item: {exc}") from exc
    items = pl.DataFrame([_scalar(f, acc, f"{what}.{f.name}", strict)
                          for f, acc in zip(fields, flat, strict=True)])
    value = pl.struct(names) if isinstance(inner, pl.Struct) else pl.col("_v")
    first = lens[0]
    if first and lens.count(first) == n:  # the same number of items in every row
        return items.select(value.alias(col.name)).to_series().reshape((n, first)).cast(col.dtype)
    row = pl.Series("_r", lens, dtype=pl.UInt32)
    rows = pl.select(pl.int_range(n, dtype=pl.UInt32).repeat_by(row).explode().drop_nulls()).to_series()
    grouped = items.with_columns(rows.alias("_r").set_sorted()).group_by(
        "_r", maintain_order=True).agg(value.alias(col.name))
    if grouped.height == n:  # no empty rows
        return grouped.get_column(col.name).cast(col.dtype)
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


class _Rows:
    """The extracted rows of one resource type (one tuple per resource, schema order)."""

    __slots__ = ("extract", "rows", "specs", "keep")

    def __init__(self, resource_type: str, extra: Sequence[ColumnSpec]) -> None:
        self.extract = EXTRACTORS.get(resource_type, generic_extract)
        self.rows: list[tuple[Any, ...]] = []
        self.specs = tuple(extra)
        names = {spec.name for spec in extra}
        base = SCHEMAS.get(resource_type, GENERIC_SCHEMA)
        self.keep = [i for i, c in enumerate(base) if c.name not in names]

    def add(self, r: Mapping[str, Any]) -> None:
        row = self.extract(r)
        if self.specs:
            row = tuple(row[i] for i in self.keep) + tuple(spec.evaluate(r) for spec in self.specs)
        self.rows.append(row)


def _collect(source: Source, extra: Mapping[str, Sequence[ColumnSpec]],
             only: str | None) -> tuple[dict[str, _Rows], dict[str, str]]:
    """Extract every resource of ``source`` (of type ``only`` if given) in one streaming pass.

    Each resource is read once, while it is hot in the CPU cache, and (for JSON
    we parsed) freed right after.
    """
    urns: dict[str, str] = {}
    groups: dict[str, _Rows] = {}
    if only is not None:
        groups[only] = _Rows(only, extra.get(only, ()))
    try:
        for r in _iter_resources(source, urns):
            rt = r["resourceType"]
            group = groups.get(rt)
            if group is None:
                if only is not None:
                    continue
                group = groups[rt] = _Rows(rt, extra.get(rt, ()))
            try:
                group.add(r)
            except (AttributeError, TypeError, KeyError, IndexError, ValueError) as exc:
                raise FhirValidationError(f"malformed {rt}: {exc!r}", source=f"{rt}/{r.get('id')}") from exc
    except (AttributeError, TypeError, KeyError, IndexError) as exc:  # a malformed Bundle entry
        raise FhirValidationError(f"malformed Bundle entry: {exc!r}") from exc
    return groups, urns


def _frame(resource_type: str, rows: list[tuple[Any, ...]], extra: Sequence[ColumnSpec],
           urns: Mapping[str, str], strict: bool) -> pl.DataFrame:
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
    groups, urns = _collect(resources, {resource_type: columns}, resource_type)
    return _frame(resource_type, groups.pop(resource_type).rows, columns, urns, strict)


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
    groups, urns = _collect(resources, extra, None)
    out = {}
    for rt in list(groups):
        rows = groups.pop(rt).rows  # each type's rows are freed once its frame is built
        out[rt] = _frame(rt, rows, extra.get(rt, ()), urns, strict)
        del rows
    return out


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
