"""ndjson_to_parquet (kit.fhir.frames_stream): the in-memory frames, in bounded memory (issue 9 #5).

Every comparison reads each written parquet file back and asserts it equals
``to_frames(path)[type]`` (names, order, dtypes, values), or that both raise the
same error. The inputs are many blocks long (a small ``chunk``) and spilled in
many batches (a small ``batch_rows``), with Bundles on some lines (``urn:``
references resolved across blocks) and roughed-up resources that send some
blocks down the slow path.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir import frames_fast, frames_stream
from kit.fhir.frames import to_frame, to_frames
from kit.fhir.frames_stream import ndjson_to_parquet
from tests.unit.fhir_fast.cohort import synthea_like
from tests.unit.fhir_fast.test_equal import SAMPLE, dumps, outcome, write_ndjson


def lines_of(seed: int, odd: float = 0.0) -> list[Any]:
    """Resources of a Synthea-shaped Bundle, one per line, plus two whole Bundles (urn: references)."""
    bundle = synthea_like(8, 2, seed=seed, odd=odd)
    resources: list[Any] = [e["resource"] for e in bundle["entry"]]
    small = synthea_like(2, 1, seed=seed + 50, odd=odd)
    return resources[:40] + [small] + resources[40:] + [synthea_like(1, 1, seed=seed + 60)]


def written(paths: dict[str, Path]) -> dict[str, pl.DataFrame]:
    return {rt: pl.read_parquet(p) for rt, p in paths.items()}


def assert_same(got: dict[str, pl.DataFrame], want: dict[str, pl.DataFrame]) -> None:
    assert list(got) == list(want)
    for rt in want:
        assert_frame_equal(got[rt], want[rt])


class Spy:
    """Counts spilled batches and the most rows one type held in memory."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spills = 0
        self.most_held = 0
        self.blocks: list[int] = []
        flush, add = frames_stream._Spill.flush, frames_stream._Spill.add
        collect_block = frames_fast.collect_block

        def spy_flush(spill: Any) -> None:
            self.spills += bool(spill.parts)
            flush(spill)

        def spy_add(spill: Any, frame: pl.DataFrame) -> None:
            add(spill, frame)
            self.most_held = max(self.most_held, spill.rows)

        def spy_block(block: bytes, *args: Any) -> Any:
            self.blocks.append(len(block))
            return collect_block(block, *args)

        monkeypatch.setattr(frames_stream._Spill, "flush", spy_flush)
        monkeypatch.setattr(frames_stream._Spill, "add", spy_add)
        monkeypatch.setattr(frames_fast, "collect_block", spy_block)


@pytest.mark.parametrize("suffix", [".ndjson", ".jsonl.gz"])
@pytest.mark.parametrize("seed", [0, 1])
def test_multi_block_output_equals_the_in_memory_frames(seed: int, suffix: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ndjson(tmp_path / f"export{suffix}", lines_of(seed))
    want = to_frames(path)
    spy = Spy(monkeypatch)
    paths = ndjson_to_parquet(path, tmp_path / "out", chunk=2048, batch_rows=16)
    assert_same(written(paths), want)
    assert {"Patient", "Observation", "Encounter", "Claim"} <= set(paths)
    assert all(p == tmp_path / "out" / f"{rt}.parquet" for rt, p in paths.items())
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == sorted(f"{rt}.parquet" for rt in paths)
    # bounded: many blocks, many spills, never much more than a batch held per type
    longest = max(len(dumps(x)) for x in lines_of(seed)) + 1
    assert len(spy.blocks) > 10 and max(spy.blocks) <= 2048 + longest
    assert spy.spills > len(paths)
    assert spy.most_held < 16 + 64
    # the urn: references inside the Bundle lines were resolved (blocks apart), as in memory
    assert written(paths)["Observation"]["encounter"].str.starts_with("Encounter/").sum() >= 2


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("strict", [True, False])
def test_roughed_up_blocks_mix_fast_and_slow_and_still_equal(seed: int, strict: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_ndjson(tmp_path / "rough.ndjson", lines_of(200 + seed, odd=0.3))
    want = outcome(lambda: to_frames(path, strict=strict))
    calls: list[bool] = []
    collect_block = frames_fast.collect_block

    def spy(block: bytes, *args: Any) -> Any:
        got = collect_block(block, *args)
        calls.append(got is not None)
        return got

    monkeypatch.setattr(frames_fast, "collect_block", spy)
    got = outcome(lambda: written(ndjson_to_parquet(path, tmp_path / "out", chunk=1500, batch_rows=10,
                                                    strict=strict)))
    if isinstance(want, dict):
        assert_same(got, want)
    else:
        assert got == want
    assert len(calls) > 5


@pytest.mark.parametrize("only", ["Observation", "Patient", "Basic", "ImagingStudy"])
def test_one_type(only: str, tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "export.ndjson", lines_of(3))
    paths = ndjson_to_parquet(path, tmp_path / "out", resource_type=only, chunk=4096, batch_rows=8)
    assert list(paths) == [only]
    assert_frame_equal(pl.read_parquet(paths[only]), to_frame(path, only))


def test_sample_cohort(tmp_path: Path) -> None:
    import orjson

    bundle = orjson.loads(SAMPLE.read_bytes())
    path = write_ndjson(tmp_path / "cohort.ndjson", [e["resource"] for e in bundle["entry"]] * 5)
    assert_same(written(ndjson_to_parquet(path, tmp_path / "out", chunk=3000, batch_rows=20)),
                to_frames(path))


BAD_LINES = {
    "not JSON": b"{",
    "a number": b"5",
    "no resourceType": b'{"id":"x"}',
    "bad date": b'{"resourceType":"Observation","id":"o","effectiveDateTime":"yesterday"}',
    "string as code": b'{"resourceType":"Observation","id":"o","code":"x"}',
    "invalid UTF-8": b'{"resourceType":"Patient","id":"\xff"}',
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_a_bad_line_deep_in_the_file_fails_as_in_memory_and_leaves_nothing(name: str, tmp_path: Path) -> None:
    good = write_ndjson(tmp_path / "good.ndjson", lines_of(4)).read_bytes()
    path = tmp_path / "bad.ndjson"
    path.write_bytes(good + BAD_LINES[name] + b"\n" + good)
    want = outcome(lambda: to_frames(path))
    assert isinstance(want, tuple) and want[0] is FhirValidationError
    got = outcome(lambda: ndjson_to_parquet(path, tmp_path / "out", chunk=2048, batch_rows=16))
    assert got == want
    assert list((tmp_path / "out").iterdir()) == []  # no scratch, no partial result


def test_strict_false_nulls_a_bad_value_as_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    good = write_ndjson(tmp_path / "g.ndjson", lines_of(5)).read_bytes()
    path.write_bytes(BAD_LINES["bad date"] + b"\n" + good)
    assert_same(written(ndjson_to_parquet(path, tmp_path / "out", strict=False, chunk=1024)),
                to_frames(path, strict=False))


def test_misuse_and_unreadable_input_raise_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet(tmp_path / "bundle.json", tmp_path / "out")
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet(tmp_path / "missing.ndjson", tmp_path / "out")
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet(write_ndjson(tmp_path / "a.ndjson", lines_of(0)), tmp_path / "out", chunk=0)
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet(tmp_path / "a.ndjson", tmp_path / "out", resource_type="NotAType")
    truncated = tmp_path / "t.ndjson.gz"
    truncated.write_bytes(gzip.compress(write_ndjson(tmp_path / "b.ndjson", lines_of(0)).read_bytes())[:-40])
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet(truncated, tmp_path / "out2", chunk=1024)
    assert list((tmp_path / "out2").iterdir()) == []


def test_a_failed_write_leaves_the_previous_result_whole(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fails half-way (mocked: a real one cannot be made to) renames nothing and cleans up."""
    path = write_ndjson(tmp_path / "export.ndjson", lines_of(6))
    out = tmp_path / "out"
    first = ndjson_to_parquet(path, out, chunk=4096)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    sink = pl.LazyFrame.sink_parquet
    calls = [0]

    def failing(self: pl.LazyFrame, target: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            Path(target).write_bytes(b"PAR1 half")  # a partial file, then the disk is full
            raise OSError(28, "No space left on device")
        return sink(self, target, *args, **kwargs)

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", failing)
    other = write_ndjson(tmp_path / "other.ndjson", lines_of(7))  # a new export: other content
    with pytest.raises(InvalidInputError, match="No space left"):
        ndjson_to_parquet(other, out, chunk=4096)
    assert calls[0] == 3 and len(first) > 3
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("rtype", ["../../evil", "/tmp/evil", "Patient/../x", "a b", "", "É"])
def test_a_resource_type_that_is_no_plain_name_names_no_file(rtype: str, tmp_path: Path) -> None:
    """resourceType names the output file: a path or odd name raises, and nothing is written anywhere."""
    good = write_ndjson(tmp_path / "good.ndjson", lines_of(1)).read_bytes()
    path = tmp_path / "x" / "export.ndjson"
    path.parent.mkdir()
    path.write_bytes(good + dumps({"resourceType": rtype, "id": "1"}) + b"\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(FhirValidationError):
        ndjson_to_parquet(path, tmp_path / "x" / "out", chunk=1024)
    assert sorted(tmp_path.rglob("*")) == sorted([*before, tmp_path / "x" / "out"])
    assert list((tmp_path / "x" / "out").iterdir()) == []


def test_several_files_stream_into_one_parquet_per_type_as_their_frames_concatenated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kit.fhir.frames_stream import files_to_parquet

    monkeypatch.setattr(frames_stream, "CHUNK", 4096)  # many blocks per file
    files = [write_ndjson(tmp_path / f"part{i}.ndjson", lines_of(seed=i)) for i in range(3)]
    got = written(files_to_parquet(files, tmp_path / "out"))
    per_file = [to_frames(f) for f in files]
    types = sorted({rt for frames in per_file for rt in frames})
    assert list(got) == types and "Observation" in got
    for rt in types:
        want = pl.concat([frames[rt] for frames in per_file if rt in frames], how="vertical_relaxed")
        assert_frame_equal(got[rt], want)
    only = written(files_to_parquet(files, tmp_path / "obs", resource_type="Observation"))
    assert list(only) == ["Observation"]
    assert_frame_equal(only["Observation"], got["Observation"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{rt}.parquet" for rt in types]


def test_a_bad_file_among_several_leaves_the_earlier_result_whole(tmp_path: Path) -> None:
    from kit.fhir.frames_stream import files_to_parquet

    good = write_ndjson(tmp_path / "good.ndjson", lines_of(seed=1))
    first = files_to_parquet([good], tmp_path / "out")
    before = {rt: p.read_bytes() for rt, p in first.items()}
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b'{"resourceType": "Patient", "id": "p1"}\n{not json\n')
    with pytest.raises(FhirValidationError, match="not JSON"):
        files_to_parquet([good, bad], tmp_path / "out")
    assert {rt: p.read_bytes() for rt, p in first.items()} == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in first.values())
