"""Columns of the FHIR frames from extracted values: typed, checked, lists regrouped (pure).

Split out of :mod:`kit.fhir.frames` (which uses it, as :mod:`kit.fhir.frames_fast`
does): scalar columns with their JSON types checked (a wrong type raises
:class:`~kit.errors.FhirValidationError`, or with ``strict=False`` becomes null),
FHIR dates and dateTimes converted in one vectorised pass, and list columns built
flat (one row per item) and regrouped in polars. Written by hand: no library
builds typed columns from FHIR's JSON types with these rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import polars as pl

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir.frames_columns import Col

__all__: list[str] = []  # internal to kit.fhir.frames and kit.fhir.frames_fast


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


_INT64 = (-(2**63), 2**63)


def _fits(kind: str, v: Any) -> bool:
    """Whether ``v`` is a JSON value of the type a ``kind`` column holds (bool is not a number)."""
    cls = v.__class__
    if kind == "str":
        return cls is str or isinstance(v, str)
    if kind == "bool":
        return cls is bool
    if cls is bool or not isinstance(v, (int, float)):
        return False
    if kind == "int":
        return isinstance(v, int) and _INT64[0] <= v < _INT64[1]
    return isinstance(v, float) or -(2**1023) < v < 2**1023  # a float column: float(v) must not overflow


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(col: Col, values: Sequence[Any], what: str, strict: bool) -> pl.Series:
    kind = col.kind
    if kind in ("date", "datetime"):
        raw = _scalar(Col(col.name), values, what, strict)
        if kind == "datetime":
            return _check(raw, _datetime_fast(raw), what, strict)
        return _check(raw, raw.to_frame().select(_date_expr(pl.col(col.name))).to_series(), what, strict)
    dtype = col.dtype
    try:
        out = pl.Series(col.name, values, dtype=dtype)
    except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError):
        pass
    else:  # polars takes true/false as numbers: the one coercion left to catch
        if kind not in ("int", "float") or not any(v.__class__ is bool for v in values):
            return out
    # values of the wrong JSON type: FhirValidationError, or (strict=False) null
    bad = [i for i, v in enumerate(values) if v is not None and not _fits(kind, v)]
    if strict and bad:
        raise FhirValidationError(f"{what}: not a {kind}: {_short(values[bad[0]])}")
    clean = list(values)
    for i in bad:
        clean[i] = None
    return pl.Series(col.name, clean, dtype=dtype)


_FIELDS: dict[int, tuple[Any, tuple[Col, ...]]] = {}


def _fields_of(inner: pl.DataType) -> tuple[Col, ...]:
    """The item columns of a list column's inner dtype (cached: dtype comparisons are slow)."""
    hit = _FIELDS.get(id(inner))
    if hit is not None and hit[0] is inner:  # the cache holds ``inner``, so its id is not reused
        return hit[1]
    if isinstance(inner, pl.Struct):
        fields = tuple(Col(f.name, *_kind_of(f.dtype)) for f in inner.fields)
    else:
        fields = (Col("_v", _kind_of(inner)[0]),)
    if len(_FIELDS) >= 256:
        _FIELDS.clear()
    _FIELDS[id(inner)] = (inner, fields)
    return fields


def _listed(col: Col, values: Sequence[Any], what: str, strict: bool) -> pl.Series:
    """A List column built flat (one row per item) and grouped back: far faster than nested lists.

    Struct items come either flattened into one tuple per row (the extractors:
    ``(f1, f2, f1, f2, ...)``, built while the resource is hot in the CPU cache
    and split here by C-level slicing) or as a list of dicts (FHIRPath columns).
    """
    items, lens = _list_items(col, values, what, strict)
    return _list_series(col, items, lens)


def _list_items(col: Col, values: Sequence[Any], what: str,
                strict: bool) -> tuple[pl.DataFrame | None, list[int]]:
    """The items of a List column, one row per item (None when there are none), and the count per row.

    :func:`_list_series` groups them back; items and counts of consecutive row
    ranges, concatenated, group into the column of all those rows.
    """
    n = len(values)
    inner = col.inner
    assert inner is not None
    if not any(values):
        return None, [0] * n
    fields = _fields_of(inner)
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
    return items, lens


def _list_series(col: Col, items: pl.DataFrame | None, lens: list[int]) -> pl.Series:
    """The List column of :func:`_list_items`' items and counts (rows without items are null)."""
    n = len(lens)
    inner = col.inner
    if items is None or not items.height:
        return pl.Series(col.name, [None], dtype=col.dtype).new_from_index(0, n) if n else \
            pl.Series(col.name, [], dtype=col.dtype)
    first = lens[0]
    if first and lens.count(first) == n:  # the same number of items in every row
        return _as_items(col, items).reshape((n, first)).cast(col.dtype)
    # the rows with items, grouped (reshaped when they all have as many), then put in place by
    # one gather: the rows without items are null
    filled = [i for i, m in enumerate(lens) if m]
    counts = [lens[i] for i in filled]
    if counts.count(counts[0]) == len(counts):
        lists = _as_items(col, items).reshape((len(counts), counts[0]))
    else:
        value = pl.struct(items.columns) if isinstance(inner, pl.Struct) else pl.col("_v")
        row = pl.Series("_r", counts, dtype=pl.UInt32)
        rows = pl.select(pl.int_range(len(counts), dtype=pl.UInt32).repeat_by(row).explode()).to_series()
        lists = items.with_columns(rows.alias("_r").set_sorted()).group_by(
            "_r", maintain_order=True).agg(value.alias(col.name)).get_column(col.name)
    lists = lists.cast(col.dtype)
    if len(counts) == n:
        return lists
    where = [len(counts)] * n
    for j, i in enumerate(filled):
        where[i] = j
    # one chunk: a gather from a list column of two chunks copies row by row, ~10x slower
    return pl.concat([lists, pl.Series(col.name, [None], dtype=col.dtype)], rechunk=True).gather(where)


def _as_items(col: Col, items: pl.DataFrame) -> pl.Series:
    """The items as one series named like the column: structs of the fields, or the scalars."""
    if isinstance(col.inner, pl.Struct):
        return items.to_struct(col.name)
    return items.to_series().alias(col.name)


def _build(cols: Sequence[Col], rows: list[tuple[Any, ...]], resource_type: str,
           strict: bool) -> pl.DataFrame:
    columns: list[Sequence[Any]] = list(zip(*rows, strict=True)) if rows else [() for _ in cols]
    series = []
    for col, values in zip(cols, columns, strict=True):
        what = f"{resource_type}.{col.name}"
        try:
            if col.kind in ("list", "structs"):
                series.append(_listed(col, values, what, strict))
            else:
                series.append(_scalar(col, values, what, strict))
        except (TypeError, ValueError, OverflowError, pl.exceptions.PolarsError) as exc:
            raise FhirValidationError(f"{what}: malformed values ({type(exc).__name__}: {exc})") from exc
    return pl.DataFrame(series)
