"""Typed rows of the fast path to frames, batch by batch (pure: no sockets).

Behind :mod:`kit.fhir.frames_fast`, and kept equal to the slow path's column
building (:mod:`kit.fhir.frames_build`) by the tests of ``tests/unit/fhir_fast``.

Rows come flat, one after the other in one list, and are split into columns by
strided slices every :data:`BATCH` rows, while the batch's strings are still in
the CPU cache: each column becomes a polars series built straight from the
Python values (no polars expression, no query plan, no hand-off to polars'
thread pool). What needs polars expressions, dates and dateTimes parsed and list
columns grouped back from their items, is left for when :data:`MERGE` batches are
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
    """
    k = len(cols)
    n, bad = divmod(len(flat), k)
    if bad:
        raise ValueError("rows of another width")
    series = []
    items: list[Items] = []
    for j, col in enumerate(cols):
        values = flat[j::k]
        kind = col.kind
        what = f"{rtype}.{col.name}"
        if kind in _LISTS:
            items.append(_list_items(col, values, what, strict))
            continue
        dtype = pl.Utf8() if kind in _DATES else col.dtype
        if n and values[0] is None and not any(values) and values.count(None) == n:
            series.append(pl.Series(col.name, [None], dtype=dtype).new_from_index(0, n))  # all null
        elif kind == "str" or kind == "bool" or kind in _DATES or (clean and kind in ("int", "float")):
            try:
                series.append(pl.Series(col.name, values, dtype=dtype))
            except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
                series.append(_scalar(Col(col.name) if kind in _DATES else col, values, what, strict))
        else:
            series.append(_scalar(col, values, what, strict))
    return pl.DataFrame(series), items


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
