"""The fast path (kit.fhir.frames_fast) builds exactly the slow path's frames, or gives up to it (issue 9 #1).

Every comparison runs the same source through ``to_frames``/``to_frame`` twice:
once as shipped (bytes and files go the fast way) and once with the fast path
switched off, and asserts equal frames (names, order, dtypes, values) or the same
error. Where the input is well-formed, it also asserts that the fast path did
the work (``collect`` did not give up), so a fast path that silently falls back
cannot pass.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
import pytest
from polars.testing import assert_frame_equal

from kit.errors import FhirValidationError, KitError
from kit.fhir import frames, frames_fast, frames_fast_build
from kit.fhir.frames import RESOURCE_TYPES, to_frame, to_frames
from tests.unit.fhir_fast.cohort import synthea_like
from tests.unit.fhir_frames import test_frames as samples
from tests.unit.fhir_frames.test_fuzz import _rich

SAMPLE = Path(__file__).resolve().parents[3] / "data" / "samples" / "fhir" / "bundle.json"


def dumps(value: Any) -> bytes:
    """JSON bytes (the stdlib writes integers beyond 64 bits, which orjson refuses to)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except KitError as exc:
        return (type(exc), str(exc))


def slow(fn: Callable[[], Any]) -> Any:
    with mock.patch.object(frames, "_fast", return_value=None):
        return outcome(fn)


def same(a: Any, b: Any) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b)
        for k in a:
            assert_frame_equal(a[k], b[k])
    elif hasattr(a, "schema") and hasattr(b, "schema"):
        assert_frame_equal(a, b)
    else:
        assert a == b


def agree(source: Any, *, strict: bool = True, fast: bool = True) -> Any:
    """to_frames and to_frame of every type agree on both paths; with ``fast``, the fast path did it."""
    got = outcome(lambda: to_frames(source, strict=strict))
    same(got, slow(lambda: to_frames(source, strict=strict)))
    if fast:
        assert frames_fast.collect(source, None, strict) is not None
        assert isinstance(got, dict)
    types = list(got) if isinstance(got, dict) else []
    for rt in {*types, "Observation", "Patient", "Basic"}:
        one = outcome(lambda rt=rt: to_frame(source, rt, strict=strict))
        same(one, slow(lambda rt=rt: to_frame(source, rt, strict=strict)))
        if fast:
            assert frames_fast.collect(source, rt, strict) is not None
    return got


def write_ndjson(path: Path, resources: list[Any], *, end: bytes = b"\n") -> Path:
    data = b"\n".join(dumps(r) for r in resources) + end
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def every_source(bundle: dict[str, Any], tmp: Path) -> Iterator[Any]:
    """The same content as Bundle bytes, Bundle file, gzip file, NDJSON (+gz), and a JSON array."""
    data = dumps(bundle)
    yield data
    yield bytearray(data)
    (tmp / "b.json").write_bytes(data)
    yield tmp / "b.json"
    (tmp / "b.json.gz").write_bytes(gzip.compress(data))
    yield str(tmp / "b.json.gz")
    resources = [e["resource"] for e in bundle["entry"]]
    yield write_ndjson(tmp / "r.ndjson", resources)
    yield write_ndjson(tmp / "r.ndjson.gz", resources)
    yield dumps(resources)


# --------------------------------------------------------------------------- the sample cohort

@pytest.mark.usefixtures("observation_row")
def test_sample_cohort_every_source(tmp_path: Path) -> None:
    bundle = orjson.loads(SAMPLE.read_bytes())
    for source in every_source(bundle, tmp_path):
        got = agree(source)
        assert got["Patient"].height >= 5 and got["Observation"].height >= 10
    agree(SAMPLE)


@pytest.mark.parametrize("layout", [{}, {"indent": 2}, {"separators": (", ", ": ")}])
def test_bundle_laid_out_as_json_dumps_writes_it(layout: dict[str, Any], tmp_path: Path) -> None:
    """Spaces after the colons (json.dumps' default), or indented: the fast path, the same frames."""
    bundle = synthea_like(4, 2, seed=3)
    data = json.dumps(bundle, **layout).encode()
    (tmp_path / "b.json").write_bytes(data)
    for source in (data, tmp_path / "b.json"):
        same(agree(source), to_frames(dumps(bundle)))


def test_sample_cohort_equals_the_dict_path() -> None:
    """Bytes (fast) and the parsed dict (always the slow path) give the same frames."""
    same(to_frames(SAMPLE.read_bytes()), to_frames(orjson.loads(SAMPLE.read_bytes())))


# --------------------------------------------------------------------------- Synthea-shaped bundles

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.usefixtures("observation_row")
def test_synthea_like_bundles(seed: int, tmp_path: Path) -> None:
    bundle = synthea_like(12, 3, seed=seed)
    for source in every_source(bundle, tmp_path):
        got = agree(source)
        assert {"Patient", "Encounter", "Observation", "Condition", "Procedure", "MedicationRequest",
                "ImagingStudy", "DiagnosticReport", "DocumentReference", "Claim"} <= set(got)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.usefixtures("observation_row")
def test_synthea_like_roughed_up(seed: int, tmp_path: Path) -> None:
    """Missing and unknown fields, resourceType last, entries without id, odd value types."""
    bundle = synthea_like(8, 2, seed=100 + seed, odd=0.3)
    for source in every_source(bundle, tmp_path):
        agree(source, fast=False)  # an entry may give up (e.g. a removed resourceType): still equal
        agree(source, strict=False, fast=False)
    assert frames_fast.collect(dumps(bundle), None, True) is not None


def test_synthea_like_urns_resolve_on_the_fast_path() -> None:
    got = agree(dumps(synthea_like(3, 2, seed=9)))
    obs = got["Observation"]
    assert obs["encounter"].str.starts_with("Encounter/").all()
    assert obs["patient_ref"].is_in(got["Patient"]["id"].implode()).all()


# --------------------------------------------------------------------------- every column, every type

@pytest.mark.usefixtures("observation_row")
def test_rich_resources_of_every_type_fill_every_column_the_same() -> None:
    """Each type with every reference and concept column filled: a field missing from a struct shows."""
    rich = [_rich(t) for t in RESOURCE_TYPES]
    got = agree(dumps(rich))
    for rt in RESOURCE_TYPES:
        assert got[rt].height == 1
    extra = [samples.PATIENT, samples.OBS, samples.OBS_CONTAINED, samples.STUDY, samples.SR, samples.MED]
    agree(dumps({"resourceType": "Bundle", "entry": [{"resource": r} for r in rich + extra]}))


# --------------------------------------------------------------------------- edge cases, one by one

OBS = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "t"}}


def obs(**kw: Any) -> dict[str, Any]:
    return {**copy.deepcopy(OBS), **kw}


EDGES: dict[str, list[Any]] = {
    # an empty object is falsy to the slow path, a struct is not: these must still agree
    "empty period, then instant": [obs(effectivePeriod={}, effectiveInstant="2024-01-01T00:00:00Z")],
    "period with only unknown keys": [obs(effectivePeriod={"id": "x"}, effectiveInstant="2024-01-01")],
    "empty modality objects": [{"resourceType": "ImagingStudy", "id": "s", "series": [
        {"uid": "1", "modality": {}}, {"uid": "2", "modality": {"x": 1}}, {"uid": "3", "modality": None}]}],
    "empty subject and meta": [obs(subject={}, meta={}, valueQuantity={}, referenceRange=[{}])],
    "null extension": [obs(extension=None)],
    "contained patient": [samples.OBS_CONTAINED],
    "contained medication": [samples.MED],
    "big integers": [obs(valueInteger=2**63), obs(id="b", valueQuantity={"value": 2**64 + 1}),
                     obs(id="c", valueInteger=-(2**63))],
    "bool where a number belongs": [obs(valueQuantity={"value": True})],
    "number where a string belongs": [obs(status=5)],
    "string where an object belongs": [obs(code="x")],
    "bad datetime": [obs(effectiveDateTime="yesterday")],
    "partial dates": [obs(effectiveDateTime="2024"), obs(id="p", effectiveDateTime="2024-05")],
    "no id": [{"resourceType": "Observation", "code": {"text": "t"}}],
    "unknown type": [{"resourceType": "Basic", "id": "b", "subject": {"reference": "Patient/p"},
                      "extension": [{"url": "u", "valueInteger": 1}]}],
    "non-ascii": [obs(valueString="Grüße 𝄞", note=[{"text": "ü"}, {}])],
}


@pytest.mark.parametrize("name", list(EDGES))
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.usefixtures("observation_row")
def test_edge_cases(name: str, strict: bool, tmp_path: Path) -> None:
    resources = EDGES[name]
    bundle = {"resourceType": "Bundle", "entry": [
        {"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]}
    for source in every_source(bundle, tmp_path):
        agree(source, strict=strict, fast=False)


RAW_EDGES: dict[str, bytes] = {
    "duplicated resourceType": b'{"resourceType":"Patient","id":"x","resourceType":"Observation"}',
    "duplicated resourceType, same": b'{"resourceType":"Observation","id":"x","resourceType":"Observation"}',
    "duplicated id": b'{"resourceType":"Observation","id":"x","id":"y"}',
    "resourceType last": b'{"id":"x","status":"final","resourceType":"Observation"}',
    "whitespace": b' \r\n\t{ "resourceType" : "Observation" , "id" : "x" } \n',
    "invalid utf-8 in an unread field": b'{"resourceType":"Observation","id":"x","zz":"\xff"}',
    "surrogate in an unread field": b'{"resourceType":"Observation","id":"x","zz":"\xed\xa0\x80"}',
    "escaped surrogate": b'{"resourceType":"Observation","id":"x","zz":"\\ud800"}',
    "big integer in an unread field": b'{"resourceType":"Observation","zz":12345678901234567890123}',
    "trailing data": b'{"resourceType":"Observation","id":"x"} {}',
    "not an object": b'"Observation"',
    "null": b"null",
    "array with null": b'[null]',
    "empty array": b"[]",
    "deep nesting": b'{"resourceType":"Observation","id":"x","zz":' + b"[" * 2000 + b"]" * 2000 + b"}",
    "bundle entry not an object": b'{"resourceType":"Bundle","entry":[1]}',
    "bundle entry null resource": b'{"resourceType":"Bundle","entry":[{"resource":null,"fullUrl":5}]}',
    "bundle entry fullUrl not a string":
        b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient"},"fullUrl":5}]}',
    "bundle entry empty object": b'{"resourceType":"Bundle","entry":{}}',
    "nested bundle":
        b'{"resourceType":"Bundle","entry":[{"fullUrl":"urn:uuid:b","resource":{"resourceType":"Bundle",'
        b'"id":"b2","entry":[{"fullUrl":"urn:uuid:p","resource":{"resourceType":"Patient"}}]}},'
        b'{"resource":{"resourceType":"Observation","subject":{"reference":"urn:uuid:p"}}}]}',
    "restful fullUrl without id": b'{"resourceType":"Bundle","entry":[{"fullUrl":"http://h/fhir/Patient/p9",'
                                  b'"resource":{"resourceType":"Patient"}}]}',
    "no resourceType": b'{"id":"x"}',
    "escaped resourceType": b'{"resourceType":"Observ\\u0061tion","id":"x"}',
    # spaced as json.dumps writes by default (the first key is read from the first bytes, as a hint)
    "spaced, duplicated resourceType":
        b'{"resourceType": "Patient", "id": "x", "resourceType": "Observation"}',
    "spaced bundle, duplicated resourceType":
        b'{ "resourceType" : "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}], '
        b'"resourceType": "Observation"}',
    "spaced, a type no frame has, duplicated": b'{"resourceType": "Basic", "resourceType": "Patient"}',
    "spaced, unknown type": b'{\n  "resourceType": "NotAType",\n  "id": "x"\n}',
    "spaced, bundle in a bundle": b'{"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:b", '
                                  b'"resource": {"resourceType": "Bundle", "entry": [{"resource": '
                                  b'{"resourceType": "Patient", "id": "p"}}]}}]}',
}


@pytest.mark.parametrize("name", list(RAW_EDGES))
def test_raw_edge_cases(name: str, tmp_path: Path) -> None:
    data = RAW_EDGES[name]
    agree(data, fast=False)
    (tmp_path / "x.json").write_bytes(data)
    agree(tmp_path / "x.json", fast=False)
    (tmp_path / "x.ndjson").write_bytes(data.strip().replace(b"\n", b" ") + b"\n")
    agree(tmp_path / "x.ndjson", fast=False)


def test_known_difference_overflow_in_an_unread_field() -> None:
    """The one documented difference: orjson refuses 1e400 anywhere, the fast path only where it reads."""
    unread = b'{"resourceType":"Observation","id":"x","zz":1e400}'
    assert slow(lambda: to_frames(unread))[0] is FhirValidationError
    assert to_frames(unread)["Observation"]["id"].to_list() == ["x"]
    read = b'{"resourceType":"Observation","id":"x","valueQuantity":{"value":1e400}}'
    for fn in (lambda: to_frames(read), lambda: to_frame(read, "Observation")):
        assert outcome(fn) == slow(fn) and outcome(fn)[0] is FhirValidationError
    # to_frame of another type reads nothing of the Observation
    assert slow(lambda: to_frame(read, "Patient"))[0] is FhirValidationError
    assert to_frame(read, "Patient").height == 0


# --------------------------------------------------------------------------- NDJSON framing and batches

PA = b'{"resourceType":"Patient","id":"a"}'
PB = b'{"resourceType":"Patient","id":"b"}'
NDJSON_EDGES: dict[str, bytes] = {
    "blank lines and CRLF": b"\n" + PA + b"\r\n\r\n  \n" + PB + b"\n",
    "no final newline": PA + b"\n" + PB,
    "two values on a line": PA + b" " + PB + b"\n",
    "a value over two lines": b'{"resourceType":"Patient",\n"id":"a"}\n',
    "a bundle per line": b'{"resourceType":"Bundle","entry":[{"resource":' + PA + b"}]}\n",
    "vertical tab line": PA + b"\n\x0b\n",
    "bad line after good ones": PA + b'\n{"resourceType":"Observation","code":"x"}\n{',
}


@pytest.mark.parametrize("name", list(NDJSON_EDGES))
@pytest.mark.parametrize("suffix", [".ndjson", ".jsonl.gz"])
def test_ndjson_framing(name: str, suffix: str, tmp_path: Path) -> None:
    path = tmp_path / f"x{suffix}"
    data = NDJSON_EDGES[name]
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    agree(path, fast=False)


def test_chunks_and_batches_smaller_than_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines split across chunks (and longer than a chunk), frames built in many batches and joined."""
    bundle = synthea_like(6, 2, seed=5)
    path = write_ndjson(tmp_path / "r.ndjson", [e["resource"] for e in bundle["entry"]], end=b"")
    whole = to_frames(path)
    monkeypatch.setattr(frames_fast, "CHUNK", 700)
    monkeypatch.setattr(frames_fast_build, "BATCH", 7)
    got = agree(path)
    same(got, whole)
    assert got["Observation"].height > 3 * 7
    same(agree(dumps(bundle)), to_frames(bundle))


def test_batches_merged_into_contiguous_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partial frames of BATCH rows are merged every MERGE of them: same frames, few chunks."""
    bundle = synthea_like(6, 2, seed=8)
    whole = to_frames(bundle)
    monkeypatch.setattr(frames_fast_build, "BATCH", 5)
    monkeypatch.setattr(frames_fast_build, "MERGE", 3)
    got = agree(dumps(bundle))
    same(got, whole)
    obs = got["Observation"]
    assert obs.height > 2 * 15
    assert obs.n_chunks("all") == [-(-obs.height // 15)] * obs.width  # chunks of BATCH * MERGE rows


@pytest.mark.parametrize("strict", [True, False])
def test_bad_values_in_many_batches_report_as_the_slow_path(strict: bool, tmp_path: Path) -> None:
    """An error counting bad values counts them over the whole column, as the slow path does."""
    rs = [obs(id=str(i), effectiveDateTime="yesterday" if i % 3 else "2024-01-02") for i in range(3000)]
    got = agree(dumps(rs), strict=strict, fast=not strict)
    if strict:
        assert got[0] is FhirValidationError and "2000 value(s)" in got[1]


# --------------------------------------------------------------------------- UTF-8 checked in pieces

@pytest.mark.parametrize("tail", [
    "é".encode(),  # valid, two bytes: placed across a 64 KiB piece boundary below
    "€".encode(),  # valid, three bytes
    b"\xff",  # never valid
    b"\xc3",  # a character left open at the end of a piece, then ASCII
    b"\xed\xa0\x80",  # an encoded surrogate
])
@pytest.mark.parametrize("at", [(1 << 16) - 1, (1 << 16) - 2, 3 << 16])
def test_utf8_checked_across_pieces_as_orjson_checks_it(tail: bytes, at: int, tmp_path: Path) -> None:
    """Checked 64 KiB at a time (ASCII pieces skipped): a bad byte anywhere fails as on the slow path."""
    head = b'{"resourceType":"Observation","id":"x","zz":"'
    data = head + b"a" * (at - len(head)) + tail + b"a" * 1000 + b'"}'
    assert data.index(tail) == at
    (tmp_path / "x.json").write_bytes(data)
    (tmp_path / "x.ndjson").write_bytes(data + b"\n")
    for source in (data, tmp_path / "x.json", tmp_path / "x.ndjson"):
        got = agree(source, fast=False)
        assert isinstance(got, dict) == (tail in ("é".encode(), "€".encode()))


# --------------------------------------------------------------------------- columns built by dtype

@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(("bad", "stacked"), [
    ({"status": 5}, True),  # a str column (stacked with the other str and dateTime columns)
    ({"valueBoolean": "yes"}, True),  # a bool column
    ({"issued": 20240102}, True),  # a dateTime column (built as str in the batch)
    # int and float columns are stacked only in batches of typed rows: this one is not
    ({"valueInteger": 1.5}, False),
    ({"valueQuantity": {"value": True, "unit": "mg"}}, False),  # true is not a number
])
def test_a_bad_value_in_a_column_built_by_dtype(bad: dict[str, Any], stacked: bool, strict: bool,
                                                tmp_path: Path) -> None:
    """A batch's columns of one dtype are built as one series; a value of another JSON type in one
    of them builds that batch's columns one by one, as before: the slow path's frames or error."""
    rs = [obs(id=str(i), status="final", valueInteger=i, valueBoolean=bool(i % 2),
              issued="2024-01-02T00:00:00Z",
              valueQuantity={"value": i / 2, "unit": "mg"}) for i in range(40)]
    rs[17].update(bad)
    with mock.patch.object(frames_fast_build, "BATCH", 16), \
            mock.patch.object(frames_fast_build, "_one", wraps=frames_fast_build._one) as one:
        got = agree(dumps(rs), strict=strict, fast=not strict)
    assert one.called is stacked  # the batch holding it was built column by column
    if strict:
        assert got[0] is FhirValidationError
    else:
        assert got["Observation"].height == 40
