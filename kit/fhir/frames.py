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
decimals ``Float64``; integers ``Int64``.

Malformed input has one rule: it raises :class:`~kit.errors.FhirValidationError`
(naming the resource or the column and the value), never another exception and
never a silent coercion. A value of the wrong JSON type where a column takes a
scalar (a number or an object as ``id``, ``[1, [null]]`` or ``true`` or ``"5"`` as a
decimal) and a value that does not parse (``effectiveDateTime="yesterday"``)
raise; with ``strict=False`` such a cell becomes null instead. Structure of the
wrong type where the extractors must look inside (a string where FHIR has an
object or an array, a Bundle entry that is not an object) always raises.

CodeableConcepts follow one rule in every column (see
:mod:`kit.fhir.frames_extract`): the first coding's code, else the concept's
``text``; displays likewise fall back to ``text``.

Nothing is dropped silently: ``codings`` keeps every Coding of ``code``;
``categories``, ``results``, ``modalities``... keep every item; ``components``
keeps Observation.component as a list of structs; ``extensions`` keeps each
top-level extension as ``{url, value}`` (value as text, JSON for complex values);
``identifiers`` keeps every identifier. References to *contained* resources
(``#id``) are kept as written in the reference column and resolved where it
matters: a contained Patient gives ``patient_id``, a contained Medication gives
MedicationRequest's ``medication_*`` columns. Resource types without a dedicated
schema get a generic frame that keeps the whole resource as JSON (``resource``).

Bundles (transactions from Synthea and the like): ``urn:`` references resolve in
every reference column (``subject``, ``encounter``, ``performer``, ``results``,
``has_member``, ``based_on``..., lists included; ``Col.role == "ref"``) to
``<Type>/<id>`` of the entry with that ``fullUrl``, and in ``patient_ref`` to the
Patient's id. An entry whose resource has no ``id`` (only a ``fullUrl``) is keyed
by its fullUrl: its ``id`` cell holds the fullUrl (the id part of a RESTful one),
and references to it keep the fullUrl, so every join matches. Join a reference
column to the ``id`` of its target with :func:`reference_id`::

    obs.join(encounters, left_on=reference_id("encounter"), right_on="id")

Anything else: pass ``columns=[ColumnSpec("name", "FHIRPath", dtype), ...]``;
each path is compiled once with fhirpathpy (R4 model, so choice types work).

Written by hand (no library builds typed columnar frames from FHIR JSON at this
speed; fhiry flattens with pandas.json_normalize, fhir.resources validates into
pydantic models): the column extractors (:mod:`kit.fhir.frames_extract`) and
the vectorised date conversion.

Speed: JSON bytes and ``.json``/``.ndjson`` files without ``columns`` go the fast
path, :mod:`kit.fhir.frames_fast` (msgspec decodes only the fields the frames read;
NDJSON streamed in chunks; frames built in batches, so a long frame comes in
chunks), which gives the same frames and errors as the path below (tested) or
hands over to it. The path below (dicts, and the reference the fast path is
tested against) is bound by memory latency, not by the interpreter: parsing
is orjson with the cyclic GC paused for the whole call (parse and column
building); a ``.json`` file is memory-mapped, an NDJSON file parsed line by line;
resources are streamed through the extractors in one pass and, when kit parsed
the JSON itself, each one is freed right after its row is taken, while still
in the CPU cache (objects the caller passes in are never modified); list
columns are built flat and regrouped in polars.

Larger than memory: :func:`kit.fhir.frames_stream.ndjson_to_parquet` writes the
same frames for an NDJSON export of any size to parquet, one file per resource
type, holding one block of input and one batch of rows per type at a time.
"""

from __future__ import annotations

import dataclasses
import gc
import gzip
import mmap
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir.frames_build import _build, _kind_of, _short
from kit.fhir.frames_extract import EXTRACTORS, GENERIC_SCHEMA, SCHEMAS, Col, generic_extract

__all__ = [
    "RESOURCE_TYPES",
    "ColumnSpec",
    "read_resources",
    "reference_id",
    "schema",
    "to_frame",
    "to_frames",
    "with_patient_id",
]

#: resource types with a dedicated schema (others get the generic frame)
RESOURCE_TYPES: tuple[str, ...] = tuple(SCHEMAS)

Source = Mapping[str, Any] | Iterable[Mapping[str, Any]] | str | os.PathLike[str] | bytes


# --------------------------------------------------------------------------- FHIRPath columns

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


# fullUrl -> (resourceType, id or key, keyed by its fullUrl)
_Urns = dict[str, tuple[str, str, bool]]


def _entry_key(full: str, rtype: str) -> str:
    """The key of an entry without ``id``: the id part of a RESTful fullUrl, else the fullUrl."""
    head, _, tail = full.rstrip("/").rpartition("/")
    if tail and not full.startswith("urn:") and head.endswith("/" + rtype):
        return tail
    return full


def _walk(item: Any, urns: _Urns, source: str, consume: bool) -> Iterator[tuple[Mapping[str, Any], Any]]:
    """``(resource, key)`` for the resources in ``item`` (Bundles flattened); ``key`` is the
    fullUrl-derived id of an entry without ``id``, else None. Bundle ``urn:`` fullUrls go in ``urns``.

    With ``consume`` (only for JSON we parsed ourselves) each Bundle entry is
    dropped once yielded, so it is freed while still in the CPU cache instead of
    all at the end.
    """
    if item.__class__ is not dict and not isinstance(item, Mapping):
        raise FhirValidationError(f"not a FHIR resource (a {type(item).__name__})", source=source)
    rt = item.get("resourceType")
    if rt.__class__ is not str:
        raise FhirValidationError("resource without resourceType", source=source)
    if rt != "Bundle":
        yield item, None
        return
    entries: Any = item.get("entry") or ()
    if entries.__class__ is not list and not isinstance(entries, list | tuple):
        raise FhirValidationError(f"Bundle.entry is a {type(entries).__name__}, not an array", source=source)
    for k, entry in enumerate(entries):
        if entry.__class__ is not dict and not isinstance(entry, Mapping):
            raise FhirValidationError(f"Bundle.entry[{k}] is not an object", source=source)
        res = entry.get("resource")
        if res is None:
            continue  # e.g. a DELETE in a transaction, or a search outcome without resource
        if res.__class__ is not dict and not isinstance(res, Mapping):
            raise FhirValidationError(f"Bundle.entry[{k}].resource is not an object", source=source)
        rt = res.get("resourceType")
        if rt.__class__ is not str:
            raise FhirValidationError("resource without resourceType", source=source)
        key = None
        full = entry.get("fullUrl")
        if full is not None:
            if full.__class__ is not str:
                raise FhirValidationError(f"Bundle.entry[{k}].fullUrl is not a string", source=source)
            rid = res.get("id")
            if rid is None and full:
                key = _entry_key(full, rt)
            if full.startswith("urn:"):
                if rid.__class__ is str and rid:
                    urns[full] = (rt, rid, False)
                elif key is not None:
                    urns[full] = (rt, key, True)
        if rt != "Bundle":
            yield res, key
        else:
            yield from _walk(res, urns, source, consume)
        if consume and entries.__class__ is list:
            entries[k] = None


def _iter_resources(source: Source, urns: _Urns) -> Iterator[tuple[Mapping[str, Any], Any]]:
    """Stream ``(resource, key)`` from ``source`` (see :func:`read_resources` and :func:`_walk`)."""
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
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        for item in data:
            yield from _walk(item, urns, label, consume)
    else:
        raise FhirValidationError(f"not FHIR resources: a {type(data).__name__}", source=label)


def read_resources(source: Source) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """All resources in ``source`` (Bundles flattened) and the Bundle ``urn:`` fullUrl -> id map.

    An entry without ``id`` maps its fullUrl to its key (see the module docstring).

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
    urns: _Urns = {}
    with _gc_paused():
        out = [r for r, _ in _iter_resources(source, urns)]
    return out, {full: rid for full, (_, rid, _) in urns.items()}


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

    def add(self, r: Mapping[str, Any], key: Any) -> None:
        row = self.extract(r)
        if key is not None and 0 in self.keep:  # an entry without id: keyed by its fullUrl
            row = (key, *row[1:])
        if self.specs:
            row = tuple(row[i] for i in self.keep) + tuple(spec.evaluate(r) for spec in self.specs)
        self.rows.append(row)


_MALFORMED = (AttributeError, TypeError, KeyError, IndexError, ValueError, OverflowError, RecursionError)


def _collect(source: Source, extra: Mapping[str, Sequence[ColumnSpec]],
             only: str | None) -> tuple[dict[str, _Rows], _Urns]:
    """Extract every resource of ``source`` (of type ``only`` if given) in one streaming pass.

    Each resource is read once, while it is hot in the CPU cache, and (for JSON
    we parsed) freed right after.
    """
    urns: _Urns = {}
    return _gather(_iter_resources(source, urns), extra, only), urns


def _gather(items: Iterable[tuple[Mapping[str, Any], Any]], extra: Mapping[str, Sequence[ColumnSpec]],
            only: str | None) -> dict[str, _Rows]:
    """The rows of ``(resource, key)`` items per resource type (of type ``only`` if given)."""
    groups: dict[str, _Rows] = {}
    if only is not None:
        groups[only] = _Rows(only, extra.get(only, ()))
    try:
        for r, key in items:
            rt = r["resourceType"]
            group = groups.get(rt)
            if group is None:
                if only is not None:
                    continue
                group = groups[rt] = _Rows(rt, extra.get(rt, ()))
            try:
                group.add(r, key)
            except _MALFORMED as exc:
                raise FhirValidationError(f"malformed {rt}: {_short(exc)}",
                                          source=f"{rt}/{_short(r.get('id'))}") from exc
    except _MALFORMED as exc:  # a malformed Bundle entry
        raise FhirValidationError(f"malformed Bundle entry: {_short(exc)}") from exc
    return groups


class _Resolver:
    """Replacements for Bundle ``urn:`` references: in reference columns, and in ``patient_ref``."""

    def __init__(self, urns: _Urns) -> None:
        # an entry keyed by its fullUrl keeps it: references to it already equal its id
        self.refs = {full: f"{rt}/{rid}" for full, (rt, rid, keyed) in urns.items() if not keyed}
        self.patients = {full: rid if rt == "Patient" else None for full, (rt, rid, _) in urns.items()}

    def apply(self, frame: pl.DataFrame, cols: Sequence[Col]) -> pl.DataFrame:
        exprs = self.exprs(cols)
        return frame.with_columns(exprs) if exprs else frame

    def exprs(self, cols: Sequence[Col]) -> list[pl.Expr]:
        """The replacements for the columns ``cols`` of one frame (none when nothing to resolve)."""
        exprs = []
        for col in cols:
            if col.role == "ref" and self.refs:
                c = pl.col(col.name)
                exprs.append(c.list.eval(pl.element().replace(self.refs)) if col.kind == "list"
                             else c.replace(self.refs))
            elif col.name == "patient_ref" and self.patients:
                exprs.append(pl.col("patient_ref").replace(self.patients))
        return exprs


def _frame(resource_type: str, rows: list[tuple[Any, ...]], extra: Sequence[ColumnSpec],
           resolver: _Resolver | None, strict: bool) -> pl.DataFrame:
    cols = _columns_for(resource_type, extra)
    frame = _build(cols, rows, resource_type, strict)
    return resolver.apply(frame, cols) if resolver is not None else frame


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


def _fast(resources: Source, only: str | None, strict: bool) -> dict[str, pl.DataFrame] | None:
    """The frames from the fast path (JSON bytes and files; :mod:`kit.fhir.frames_fast`), or None."""
    if not isinstance(resources, (bytes, bytearray, memoryview, str, os.PathLike)):
        return None
    from kit.fhir import frames_fast  # msgspec: loaded on first use

    found = frames_fast.collect(resources, only, strict)
    if found is None:
        return None
    frames, urns = found
    if urns:
        resolver = _Resolver(urns)
        frames = {rt: resolver.apply(f, _columns_for(rt, ())) for rt, f in frames.items()}
    return frames


def _to_frame(resources: Source, resource_type: str, columns: Sequence[ColumnSpec],
              strict: bool) -> pl.DataFrame:
    if not columns:
        fast = _fast(resources, resource_type, strict)
        if fast is not None:
            return fast[resource_type]
    groups, urns = _collect(resources, {resource_type: columns}, resource_type)
    resolver = _Resolver(urns) if urns else None
    return _frame(resource_type, groups.pop(resource_type).rows, columns, resolver, strict)


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
    if not any(extra.values()):
        fast = _fast(resources, None, strict)
        if fast is not None:
            return fast
    groups, urns = _collect(resources, extra, None)
    resolver = _Resolver(urns) if urns else None
    out = {}
    for rt in list(groups):
        rows = groups.pop(rt).rows  # each type's rows are freed once its frame is built
        out[rt] = _frame(rt, rows, extra.get(rt, ()), resolver, strict)
        del rows
    return out


def reference_id(column: str | pl.Expr) -> pl.Expr:
    """The logical id a reference column points at, for joins on ``id``.

    ``Encounter/e1``, ``http://h/fhir/Encounter/e1`` and ``Encounter/e1/_history/2``
    give ``e1``; ``urn:...`` (an entry keyed by its fullUrl) and ``#contained`` are
    kept whole. For a list column, ``explode`` it first.

    Examples
    --------
    >>> obs.join(encounters, left_on=reference_id("encounter"), right_on="id")  # doctest: +SKIP
    """
    e = pl.col(column) if isinstance(column, str) else column
    whole = e.str.starts_with("urn:") | e.str.starts_with("#")
    return pl.when(whole).then(e).otherwise(
        e.str.replace(r"/_history/[^/]*$", "").str.extract(r"([^/]+)$", 1))


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
