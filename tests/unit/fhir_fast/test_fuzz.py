"""Hypothesis: the fast path raises only KitError and equals the slow path (issue 9 #1).

Two generators: resources of every type mutated at random paths with JSON of any
type (the strategy of ``tests/unit/fhir_frames/test_fuzz.py``), sent as Bundle
bytes, an NDJSON file and a JSON array; and a small valid Bundle with random
bytes flipped, inserted or deleted. Both paths must give equal frames or the same
error (type and message), strict or not, for ``to_frames`` and ``to_frame``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.fhir.frames import to_frame, to_frames
from tests.unit.fhir_fast.cohort import synthea_like
from tests.unit.fhir_fast.test_equal import outcome, same, slow
from tests.unit.fhir_frames.test_fuzz import mutated

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def both(source: Any, strict: bool, only: str | None) -> Any:
    if only is None:
        def fn() -> Any:
            return to_frames(source, strict=strict)
    else:
        def fn() -> Any:
            return to_frame(source, only, strict=strict)
    fast = outcome(fn)
    same(fast, slow(fn))
    return fast


@pytest.mark.usefixtures("observation_row")
@FUZZ
@given(resources=st.lists(mutated(), min_size=1, max_size=4), strict=st.booleans(),
       full_url=st.sampled_from([None, "urn:uuid:1", "http://h/fhir/Observation/9", ""]),
       only=st.sampled_from([None, "Observation", "Patient", "Basic", "ImagingStudy"]))
def test_mutated_resources_fast_equals_slow(resources: list[dict[str, Any]], strict: bool,
                                            full_url: str | None, only: str | None) -> None:
    entries = [{"resource": r} if full_url is None else {"fullUrl": f"{full_url}{i}", "resource": r}
               for i, r in enumerate(resources)]
    both(orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}), strict, only)
    both(orjson.dumps(resources), strict, only)
    fd, name = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\n".join(orjson.dumps(r) for r in resources) + b"\n")
        both(name, strict, only)
    finally:
        os.unlink(name)


BASE = orjson.dumps(synthea_like(1, 1, seed=3))
EDIT = st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, len(BASE) - 1),
                 st.sampled_from(list(b'{}[]",:0123456789.eE+-tfn \\u\xff\x00')))


@pytest.mark.usefixtures("observation_row")
@FUZZ
@given(edits=st.lists(EDIT, min_size=1, max_size=4), strict=st.booleans(),
       only=st.sampled_from([None, "Observation", "Encounter"]))
def test_mutated_bytes_fast_equals_slow(edits: list[tuple[str, int, int]], strict: bool,
                                        only: str | None) -> None:
    data = bytearray(BASE)
    for op, at, byte in edits:
        at %= len(data) or 1
        if op == "flip":
            data[at] = byte
        elif op == "insert":
            data.insert(at, byte)
        else:
            del data[at:at + 1]
    try:
        both(bytes(data), strict, only)
    except AssertionError:
        # the documented difference (kit.fhir.frames_fast): a number beyond the double range
        # where the frames do not read
        error = slow(lambda: to_frames(bytes(data), strict=strict))
        assert isinstance(error, tuple) and "infinity" in error[1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resources=st.lists(mutated(), min_size=1, max_size=6), strict=st.booleans(),
       chunk=st.integers(1, 600), batch_rows=st.integers(1, 3),
       only=st.sampled_from([None, "Observation", "Patient", "Basic"]))
def test_streamed_parquet_equals_in_memory(resources: list[dict[str, Any]], strict: bool, chunk: int,
                                           batch_rows: int, only: str | None) -> None:
    """kit.fhir.frames_stream.ndjson_to_parquet: the in-memory frames (or an error of the same class)."""
    import polars as pl

    from kit.errors import FhirValidationError
    from kit.fhir.frames_stream import _TYPE_NAME, ndjson_to_parquet

    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.join(tmp, "x.ndjson")
        with open(name, "wb") as fh:
            fh.write(b"\n".join(orjson.dumps(r) for r in resources) + b"\n")
        want = outcome(lambda: to_frames(name, strict=strict) if only is None
                       else {only: to_frame(name, only, strict=strict)})

        def streamed() -> Any:
            paths = ndjson_to_parquet(name, os.path.join(tmp, "out"), resource_type=only, strict=strict,
                                      chunk=chunk, batch_rows=batch_rows)
            return {rt: pl.read_parquet(p) for rt, p in paths.items()}

        got = outcome(streamed)
        if isinstance(want, dict) and not all(_TYPE_NAME.fullmatch(rt) for rt in want):
            assert isinstance(got, tuple) and got[0] is FhirValidationError  # it would name a file
        elif isinstance(want, tuple) or isinstance(got, tuple):  # an error: the same class (which bad
            assert isinstance(got, tuple) and isinstance(want, tuple)  # value it names is found block
            assert got[0] is want[0]  # by block, so with several it may be another one)
        else:
            same(got, want)
