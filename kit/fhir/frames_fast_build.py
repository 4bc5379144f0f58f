"""Typed rows of the fast path to frames, batch by batch (pure: no sockets).

Behind :mod:`kit.fhir.frames_fast`, and kept equal to the slow path's column
building (:mod:`kit.fhir.frames_build`) by the tests of ``tests/unit/fhir_fast``.

Rows come flat, one after the other in one list, and are split into columns by
strided slices every :data:`BATCH` rows, while the batch's strings are still in
the CPU cache: the columns of one dtype (str and dates, float, int, bool) become
one polars series built straight from the Python values and sliced into columns
(no polars expression, no query plan, no hand-off to polars' thread pool; one
constructor call per dtype, not per column: ~10% of the whole fast path). What
needs polars expressions, dates and dateTimes parsed and list columns grouped
back from their items, is left for when :data:`MERGE` batches are
merged into one chunk (65,536 rows): then one query parses every date column of
the chunk, and each list column is grouped once. A busy machine is where this
matters: every query hands work to polars' threads and waits for them to be
scheduled, and per batch that was a dozen waits.

The values are the slow path's: the same series constructors, the same
date expressions and list grouping (:func:`kit.fhir.frames_build._list_items` /
:func:`~kit.fhir.frames_build._list_series`), on more rows at once. A strict
failure (a value that does not parse) raises :class:`~kit.errors.FhirValidationError`
from :meth:`Group.flush` or :meth:`Group.frame`, counted over a batch or a chunk:
the fast path then gives up, and the slow path reports it over the whole column.
"""

from __future__ import annotations

from typing import Any, Final

import polars as pl

from kit.fhir.frames_build import (
    _DT_FORMAT,
    _check,
    _date_expr,
    _datetime_expr,
    _list_items,
    _list_series,
    _scalar,
)
from kit.fhir.frames_columns import _SCALAR_DTYPES
from kit.fhir.frames_extract import GENERIC_SCHEMA, SCHEMAS, Col

__all__ = ["BATCH", "MERGE", "Group"]

#: rows of one resource type turned into series at a time
BATCH: Final = 1 << 10
#: batches merged into one contiguous chunk (a long frame comes in chunks of BATCH * MERGE rows)
MERGE: Final = 64

_LISTS: Final = ("list", "structs")
_DATES: Final = ("date", "datetime")
# a batch's deferred list column: its items (None when it has none) and the item count per row
Items = tuple[pl.DataFrame | None, list[int]]
# all-null series of a batch, by column name, kind and length (built once: the usual batch length)
_NULLS: dict[tuple[str, str, int], pl.Series] = {}


class Group:
    """Rows of one resource type, turned into series every :data:`BATCH` rows, into frames by chunks.

    ``flat`` holds the rows one after the other; :meth:`flush` turns them into
    one batch: a frame of the scalar columns (date columns still as the strings
    read) and the items of each list column. Every :data:`MERGE` batches are
    merged into one chunk with dates parsed and lists grouped (:meth:`frame`
    gives the whole frame, in chunks).
    """

    __slots__ = ("rtype", "cols", "flat", "width", "limit", "clean", "strict", "batches", "chunks",
                 "dates", "lists")

    def __init__(self, rtype: str, strict: bool) -> None:
        self.rtype = rtype
        self.cols = SCHEMAS.get(rtype, GENERIC_SCHEMA)
        self.width = len(self.cols)
        self.limit = BATCH * self.width
        self.flat: list[Any] = []
        self.clean = True  # every row came from a typed struct (scalars of the columns' JSON types)
        self.strict = strict
        self.batches: list[tuple[pl.DataFrame, list[Items]]] = []
        self.chunks: list[pl.DataFrame] = []
        self.dates = [c for c in self.cols if c.kind in _DATES]
        self.lists = [c for c in self.cols if c.kind in _LISTS]

    def flush(self) -> None:
        """The rows in ``flat`` as one batch (FhirValidationError: strict, a value of the wrong type)."""
        flat, self.flat = self.flat, []
        self.batches.append(_batch(self.cols, flat, self.rtype, self.strict, self.clean))
        self.clean = True
        if len(self.batches) >= MERGE:
            self._merge()

    def _merge(self) -> None:
        batches, self.batches = self.batches, []
        self.chunks.append(_chunk(self, batches))

    def frame(self) -> pl.DataFrame:
        """The frame of every row added (FhirValidationError: strict, a value that does not parse)."""
        if self.flat or not (self.batches or self.chunks):
            self.flush()
        if self.batches:
            self._merge()
        chunks, self.chunks = self.chunks, []
        return chunks[0] if len(chunks) == 1 else pl.concat(chunks, rechunk=False)


def _batch(cols: tuple[Col, ...], flat: list[Any], rtype: str, strict: bool,
           clean: bool) -> tuple[pl.DataFrame, list[Items]]:
    """One batch: the series of the scalar columns (dates as strings), the items of the list columns.

    The series are :func:`kit.fhir.frames_build._scalar`'s; a typed struct holds only
    str, bool, int64 and float scalars, so where the slow path's first ``pl.Series``
    attempt succeeds, it returns that series too (``clean``: no JSON type to re-check).
    The columns of one dtype are built as one series and sliced (one pass over the
    batch's values instead of one per column: the per-series overhead of polars'
    constructor is most of the cost at this size); if that series cannot be built,
    its columns are built one by one as before.
    """
    k = len(cols)
    n, bad = divmod(len(flat), k)
    if bad:
        raise ValueError("rows of another width")
    out: list[pl.Series | None] = [None] * k
    stacks: dict[str, tuple[list[int], list[Any]]] = {}  # dtype -> its columns, their values in turn
    items: list[Items] = []
    for j, col in enumerate(cols):
        values = flat[j::k]
        kind = col.kind
        if kind in _LISTS:
            items.append(_list_items(col, values, f"{rtype}.{col.name}", strict))
        elif n and values[0] is None and values.count(None) == n:
            out[j] = _nulls(col, n)
        elif kind == "str" or kind == "bool" or kind in _DATES or (clean and kind in ("int", "float")):
            key = "str" if kind in _DATES else kind
            stack = stacks.get(key)
            if stack is None:
                stack = stacks[key] = ([], [])
            stack[0].append(j)
            stack[1].extend(values)
        else:
            out[j] = _scalar(col, values, f"{rtype}.{col.name}", strict)
    for key, (where, values) in stacks.items():
        split = _split(_SCALAR_DTYPES[key], values, n, [cols[j].name for j in where])
        for i, j in enumerate(where):  # else a column (at least) of values of another JSON type
            out[j] = split[i] if split is not None else _one(cols[j], flat[j::k], rtype, strict)
    return pl.DataFrame([s for s in out if s is not None]), items  # the list columns come from items


def _split(dtype: Any, values: list[Any], n: int, names: list[str]) -> list[pl.Series] | None:
    """Columns of ``n`` values each, one after the other in ``values``, built as one series of
    ``dtype`` and sliced (zero-copy); None if a value does not take that dtype."""
    try:
        whole = pl.Series("", values, dtype=dtype)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        return None
    return [whole.slice(i * n, n).alias(name) for i, name in enumerate(names)]


def _one(col: Col, values: list[Any], rtype: str, strict: bool) -> pl.Series:
    """One scalar column of a batch (dates as strings): the series, or :func:`_scalar`'s answer."""
    try:
        return pl.Series(col.name, values, dtype=_batch_dtype(col))
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        return _scalar(Col(col.name) if col.kind in _DATES else col, values, f"{rtype}.{col.name}", strict)


def _nulls(col: Col, n: int) -> pl.Series:
    """An all-null series of ``n`` rows for a scalar column (dates as strings), cached."""
    key = (col.name, col.kind, n)
    hit = _NULLS.get(key)
    if hit is None:
        if len(_NULLS) >= 1024:
            _NULLS.clear()
        hit = _NULLS[key] = pl.Series(col.name, [None], dtype=_batch_dtype(col)).new_from_index(0, n)
    return hit


def _batch_dtype(col: Col) -> Any:
    """A scalar column's dtype in a batch: its own, but str for dates (parsed per chunk)."""
    return pl.Utf8 if col.kind in _DATES else col.dtype


def _chunk(group: Group, batches: list[tuple[pl.DataFrame, list[Items]]]) -> pl.DataFrame:
    """Batches merged: the dates parsed (one query for all), the list columns grouped, in schema order."""
    frames = [b[0] for b in batches]
    scalars = frames[0] if len(frames) == 1 else pl.concat(frames, rechunk=True)
    done: dict[str, pl.Series] = {}
    if group.dates:
        done.update(_dates(scalars, group.dates, group.rtype, group.strict))
    for j, col in enumerate(group.lists):
        parts = [b[1][j] for b in batches]
        found = [p[0] for p in parts if p[0] is not None]
        lens = parts[0][1] if len(parts) == 1 else [m for p in parts for m in p[1]]
        items = None if not found else found[0] if len(found) == 1 else pl.concat(found, rechunk=True)
        done[col.name] = _list_series(col, items, lens)
    return pl.DataFrame([done[c.name] if c.name in done else scalars.get_column(c.name) for c in group.cols])


def _dates(frame: pl.DataFrame, cols: list[Col], rtype: str, strict: bool) -> dict[str, pl.Series]:
    """The date and dateTime columns of ``frame`` parsed as :func:`kit.fhir.frames_build._scalar` parses them.

    Full dateTimes (the usual case) in one query for all the columns; the columns with
    values it leaves null (partial dates, no offset) then go the slow way, as there.
    """
    exprs = [pl.col(c.name).str.replace("Z", "+00:00", literal=True).str.to_datetime(
        _DT_FORMAT, strict=False, time_unit="us", time_zone="UTC") if c.kind == "datetime"
        else _date_expr(pl.col(c.name)).alias(c.name) for c in cols]
    parsed = frame.select(exprs)
    out = {}
    for c in cols:
        raw = frame.get_column(c.name)
        got = parsed.get_column(c.name)
        if c.kind == "datetime" and got.null_count() != raw.null_count():
            got = got.fill_null(raw.to_frame().select(_datetime_expr(pl.col(c.name))).to_series())
        out[c.name] = _check(raw, got, f"{rtype}.{c.name}", strict)
    return out
