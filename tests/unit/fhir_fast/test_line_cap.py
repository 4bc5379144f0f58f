"""ndjson_to_parquet refuses an NDJSON line longer than ``max_line`` without reading it whole.

A hostile export can hold one multi-GB line; the chunked reader used to join such a
line whole before looking at it. The cap is a parameter, so the long line made here
stays small (a few KB against a cap of 1,000 bytes).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pytest

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir import frames_fast
from kit.fhir.frames_stream import MAX_LINE, ndjson_to_parquet
from tests.unit.fhir_fast.test_equal import dumps
from tests.unit.fhir_fast.test_stream import assert_same, lines_of, written

CAP = 1000


def long_line(size: int) -> bytes:
    """A valid Patient resource of exactly ``size`` bytes (a long name)."""
    head = b'{"resourceType":"Patient","id":"big","name":[{"text":"'
    tail = b'"}]}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def export(tmp_path: Path, line: bytes, name: str = "x.ndjson") -> tuple[Path, int]:
    """Good lines, ``line``, good lines again; and the line number of ``line``."""
    good = [dumps(r) for r in lines_of(3) if len(dumps(r)) <= CAP]
    data = b"\n".join([*good, line, *good]) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path, len(good) + 1


@pytest.mark.parametrize("name", ["x.ndjson", "x.ndjson.gz"])
@pytest.mark.parametrize("chunk", [64, 300, 1 << 20])  # the long line across reads, or inside one read
def test_a_line_longer_than_max_line_raises_naming_file_and_line(name: str, chunk: int,
                                                                  tmp_path: Path) -> None:
    path, number = export(tmp_path, long_line(CAP + 1), name)
    with pytest.raises(FhirValidationError) as err:
        ndjson_to_parquet(path, tmp_path / "out", chunk=chunk, max_line=CAP)
    assert err.value.source == f"{path}:{number}"
    assert f"longer than {CAP:,} bytes" in str(err.value)
    assert list((tmp_path / "out").iterdir()) == []  # no scratch, no partial result


@pytest.mark.parametrize("chunk", [64, 300, 1 << 20])
def test_a_line_of_exactly_max_line_is_read(chunk: int, tmp_path: Path) -> None:
    path, _ = export(tmp_path, long_line(CAP))
    got = written(ndjson_to_parquet(path, tmp_path / "capped", chunk=chunk, max_line=CAP))
    assert_same(got, written(ndjson_to_parquet(path, tmp_path / "default", chunk=chunk)))
    assert got["Patient"].filter(id="big").height == 1


def test_the_long_line_is_never_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line 1,000 times the cap: reading stops after about the cap, not after the line."""
    path, _ = export(tmp_path, long_line(CAP * 1000))
    read = [0]
    real_open = open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        fh = real_open(*args, **kwargs)
        raw_read = fh.read

        def counted(n: int = -1) -> bytes:
            data: bytes = raw_read(n)
            read[0] += len(data)
            return data

        fh.read = counted
        return fh

    monkeypatch.setattr(frames_fast, "open", counting_open, raising=False)
    with pytest.raises(FhirValidationError):
        ndjson_to_parquet(path, tmp_path / "out", max_line=CAP)
    assert read[0] < path.read_bytes().index(b"xxx") + 3 * CAP


def test_the_default_cap_and_a_bad_cap() -> None:
    assert MAX_LINE == 64 << 20
    with pytest.raises(InvalidInputError):
        ndjson_to_parquet("x.ndjson", "out", max_line=0)
