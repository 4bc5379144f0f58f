"""kit._parquet.ParquetSink: chunks appended in order, published atomically, nothing left on failure."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kit._parquet import ParquetSink
from kit.errors import InvalidInputError, StoreError

SCHEMA = {"s": pl.String, "d": pl.Date, "t": pl.Time, "l": pl.List(pl.Float64), "i": pl.Int32}


def _chunk(k: int, n: int) -> pl.DataFrame:
    return pl.DataFrame({"s": [f"row {k}-{i}" if i % 3 else None for i in range(n)],
                         "d": [dt.date(2026, 1, 1 + i % 28) for i in range(n)],
                         "t": [dt.time(i % 24, 0) for i in range(n)],
                         "l": [[0.5 * i, float(k)] if i % 2 else None for i in range(n)],
                         "i": list(range(n))}, schema=SCHEMA)


def test_chunks_in_order_equal_the_whole(tmp_path: Path) -> None:
    chunks = [_chunk(k, n) for k, n in enumerate([5, 0, 1, 300, 7])]
    with ParquetSink(tmp_path / "x.parquet", SCHEMA) as sink:
        for c in chunks:
            sink.write(c)
        assert not (tmp_path / "x.parquet").exists()  # published only on close
    assert sink.rows == 313
    assert_frame_equal(pl.read_parquet(tmp_path / "x.parquet"), pl.concat(chunks), check_exact=True)
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_no_rows_writes_the_schema_and_failures_leave_the_target(tmp_path: Path) -> None:
    target = tmp_path / "x.parquet"
    ParquetSink(target, SCHEMA).close()
    assert dict(pl.read_parquet(target).schema) == SCHEMA and pl.read_parquet(target).height == 0
    with pytest.raises(RuntimeError), ParquetSink(target, SCHEMA) as sink:
        sink.write(_chunk(1, 10))
        raise RuntimeError("stop")
    assert pl.read_parquet(target).height == 0 and [p.name for p in tmp_path.iterdir()] == ["x.parquet"]
    sink = ParquetSink(target, SCHEMA)
    with pytest.raises(InvalidInputError, match="schema"):
        sink.write(_chunk(1, 3).drop("i"))
    with pytest.raises(StoreError, match="does not exist"):
        ParquetSink(tmp_path / "no" / "x.parquet", SCHEMA)
    assert not (tmp_path / "no").exists()
