"""index_dicom(..., out=PATH) and `kit index -o X.parquet`: rows streamed to parquet chunk by chunk are
the in-memory index, row for row (many chunks, worker processes, bad files mid-stream); at most two
chunks per worker are in flight; a failed run leaves no partial file."""

from __future__ import annotations

from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import kit.dicom.index as index_mod
from kit.cli import cli
from kit.dicom.index import INDEX_SCHEMA, DicomIndexFile, index_dicom
from kit.errors import InvalidInputError, StoreError
from kit.examples import dicom_dir
from kit.examples.dicom import random_ct_files

from ._make import IMPLICIT, ct_dataset, with_sequences, write


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Three series of generated CT files, with non-DICOM and broken files sorted in between."""
    root = tmp_path / "in"
    for k in range(3):
        random_ct_files(root / f"s{k}", 7, patient_id=f"MRN90{k:02d}", seed=k, size=4)
    (root / "s0" / "00003.5.txt").write_text("not dicom")  # between 00003.dcm and 00004.dcm
    good = (root / "s1" / "00002.dcm").read_bytes()
    (root / "s1" / "00002.5.dcm").write_bytes(good[:300])  # truncated mid-header
    (root / "s2" / "00000.0.dcm").write_bytes(b"")
    write(ct_dataset(0, 1, 1), root / "s1" / "a" / "implicit.dcm", transfer_syntax=IMPLICIT)
    write(with_sequences(ct_dataset(1, 2, 1), undefined=True), root / "s2" / "seq.dcm")
    return root


def _same(streamed: DicomIndexFile, memory: Any) -> None:
    frame = pl.read_parquet(streamed.path)
    assert dict(frame.schema) == INDEX_SCHEMA
    assert_frame_equal(frame, memory.frame, check_exact=True)
    assert_frame_equal(streamed.skipped, memory.skipped, check_exact=True)
    assert streamed.rows == memory.frame.height
    assert_frame_equal(streamed.scan().collect(), memory.frame)


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_equals_in_memory_over_many_chunks(mixed: Path, tmp_path: Path, workers: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_SERIAL_BELOW", 2)  # worker processes even for a few files
    monkeypatch.setattr(index_mod, "_PART_ROWS", 4)  # many parquet parts
    memory = index_dicom(mixed, workers=workers, chunk_size=3)
    assert memory.frame.height == 23 and memory.skipped.height == 3
    assert memory.frame["path"].is_sorted() and memory.skipped["path"].is_sorted()
    assert_frame_equal(memory.frame, index_dicom(mixed, workers=1).frame, check_exact=True)
    streamed = index_dicom(mixed, workers=workers, chunk_size=3, out=tmp_path / "index.parquet")
    _same(streamed, memory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "index.parquet"]  # no parts left


def test_streamed_sample_cohort(tmp_path: Path) -> None:
    memory = index_dicom(dicom_dir(), workers=1)
    assert memory.frame.height > 20
    _same(index_dicom(dicom_dir(), workers=1, chunk_size=5, out=tmp_path / "cohort.parquet"), memory)


def test_nothing_indexable_still_writes_the_schema(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    result = index_dicom(tmp_path / "a.txt", out=tmp_path / "i.parquet")
    assert result.rows == 0 and result.skipped.height == 1
    assert dict(pl.read_parquet(result.path).schema) == INDEX_SCHEMA


class _Recording(ProcessPoolExecutor):
    """A pool that records how many submitted chunks had not been collected, at each submit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting: list[_Tracked] = []
        self.most = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.waiting = [f for f in self.waiting if not f.collected]
        tracked = _Tracked(super().submit(*args, **kwargs))
        self.waiting.append(tracked)
        self.most = max(self.most, len(self.waiting))
        return tracked


class _Tracked:
    def __init__(self, future: Future[Any]) -> None:
        self.future, self.collected = future, False

    def result(self, timeout: float | None = None) -> Any:
        self.collected = True
        return self.future.result(timeout)


def test_at_most_two_chunks_per_worker_in_flight(mixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pools: list[_Recording] = []
    make = index_mod._pool

    def recording(workers: int) -> _Recording:
        pool = _Recording(max_workers=workers, mp_context=make(workers)._mp_context)  # type: ignore[attr-defined]
        pools.append(pool)
        return pool

    monkeypatch.setattr(index_mod, "_pool", recording)
    monkeypatch.setattr(index_mod, "_SERIAL_BELOW", 2)
    monkeypatch.setattr(index_mod, "_CHUNK", 1)  # 26 chunks of one file
    result = index_dicom(mixed, workers=2)
    assert result.frame.height == 23
    assert len(pools) == 1 and 1 <= pools[0].most <= 4


def test_a_failed_run_leaves_no_file(mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "index.parquet"
    target.write_bytes(b"old")
    calls = []
    real = index_mod.index_chunk

    def failing(paths: list[str], reader: str = "auto") -> Any:
        calls.append(paths)
        if len(calls) == 3:
            raise RuntimeError("disk gone")
        return real(paths, reader)

    monkeypatch.setattr(index_mod, "index_chunk", failing)
    monkeypatch.setattr(index_mod, "_PART_ROWS", 1)
    with pytest.raises(RuntimeError, match="disk gone"):
        index_dicom(mixed, workers=1, chunk_size=2, out=target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "index.parquet"]
    for missing in (mixed, tmp_path / "in" / "s0" / "00003.5.txt"):  # rows, or none: the folder is not made
        with pytest.raises(StoreError, match="does not exist"):
            index_dicom(missing, workers=1, out=tmp_path / "missing" / "index.parquet")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(InvalidInputError):
        index_dicom(mixed, chunk_size=0)


def test_cli_index_parquet_streams(mixed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    real = index_mod.ParquetSink.write

    def counting(self: Any, df: pl.DataFrame) -> None:
        writes.append(df.height)
        real(self, df)

    monkeypatch.setattr(index_mod.ParquetSink, "write", counting)
    monkeypatch.setattr(index_mod, "_PART_ROWS", 5)
    monkeypatch.setattr(index_mod, "_CHUNK", 2)
    out = tmp_path / "index.parquet"
    result = CliRunner().invoke(cli, ["index", str(mixed), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 23 instances" in result.stderr and "00003.5.txt" in result.stderr
    assert len(writes) >= 4 and sum(writes) == 23  # written part by part, not as one frame
    assert_frame_equal(pl.read_parquet(out), index_dicom(mixed, workers=1).frame, check_exact=True)
    # nothing indexable: exit 1, the existing file is left as it was
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    failed = CliRunner().invoke(cli, ["index", str(tmp_path / "junk"), "-o", str(out)])
    assert failed.exit_code == 1 and "no DICOM found" in failed.stderr
    assert pl.read_parquet(out).height == 23
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "index.parquet", "junk"]
