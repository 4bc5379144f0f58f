"""Hypothesis: FHIR frames raise only KitError on any input, and every input path agrees (issue 7 #20).

Rich resources of every supported type (and one generic type) are mutated at random
paths with random JSON of any type; the frame builders must either build frames or
raise a KitError, with ``strict`` on and off; and a list of dicts, an NDJSON file and
a Bundle as JSON bytes must give equal frames (or the same error).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kit.errors import KitError
from kit.fhir.frames import RESOURCE_TYPES, to_frame, to_frames
from tests.unit.fhir_frames import test_frames as samples
from tests.unit.fhir_frames.synthea import put, synthea_bundle
from tests.unit.fhir_frames.test_bundle_refs import REF_PATHS
from tests.unit.fhir_frames.test_concepts_and_types import CONCEPT_PATHS


def _rich(rtype: str) -> dict[str, Any]:
    """A resource with every reference and concept column of its schema filled."""
    r: dict[str, Any] = {
        "resourceType": rtype,
        "id": f"{rtype.lower()}-1",
        "meta": {"lastUpdated": "2024-01-02T03:04:05Z"},
        "extension": [{"url": "http://x/e", "valueString": "v"}],
        "identifier": [{"system": "urn:mrn", "value": "M1", "type": {"coding": [{"code": "MR"}]}}],
    }
    for path, _ in CONCEPT_PATHS[rtype].values():
        put(r, path, {"coding": [{"system": "http://s", "code": "c", "display": "d"}], "text": "t"})
    if rtype == "Appointment":
        r["participant"] = [
            {"actor": {"reference": f"{t}/x"}} for t in ("Patient", "Practitioner", "Location")
        ]
    for path in REF_PATHS[rtype].values():
        if path == "participant[].actor":
            continue
        if path.endswith("*"):
            r[path[:-1]] = [{"reference": "Observation/1"}, {"reference": "Observation/2"}]
        else:
            put(r, path, {"reference": "Patient/p1"})
    return r


TEMPLATES: list[dict[str, Any]] = [
    *(_rich(t) for t in RESOURCE_TYPES),
    *(e["resource"] for e in synthea_bundle(encounters=1, obs_per_encounter=1)["entry"]),
    samples.PATIENT,
    samples.OBS,
    samples.OBS_CONTAINED,
    samples.STUDY,
    samples.SR,
    samples.MED,
    {"resourceType": "Basic", "id": "b", "subject": {"reference": "Patient/p1"}, "code": {"text": "t"}},
]

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
    | st.sampled_from(["2024-01-01", "2024-01-01T10:00:00+02:00", "urn:uuid:x", "Patient/p1", "#c", ""])
)
# values of every JSON type, and the shapes that broke the frames before (a list where a number
# belongs, an object where a string belongs, an integer beyond 64 bits in Python input...)
NASTY = st.sampled_from(
    [
        [1, [None]],
        [None],
        [],
        {},
        {"x": 1},
        [{"a": 1}],
        5,
        0,
        -1.5,
        True,
        False,
        "",
        "x",
        "5.0",
        None,
        2**63 - 1,
        [["a"]],
        {"coding": "x"},
        {"reference": 7},
    ]
)
JSON = NASTY | st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["coding", "code", "text", "reference", "value", "system", "display", "start", "end"]
            )
            | TEXT,
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if prefix or k != "resourceType":
                yield (*prefix, k)
                yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    resource = copy.deepcopy(draw(st.sampled_from(TEMPLATES)))
    paths = list(_paths(resource))
    leaves = [p for p in paths if not isinstance(_at(resource, p), dict | list)]  # where types matter most
    for _ in range(draw(st.integers(1, 6))):
        path = draw(st.sampled_from(leaves if leaves and draw(st.integers(0, 3)) else paths))
        node: Any = resource
        try:
            for step in path[:-1]:
                node = node[step]
            if isinstance(node, dict) != isinstance(path[-1], str):
                continue  # an earlier mutation turned a list into an object or back: no such key now
            if draw(st.booleans()) and isinstance(node, dict):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = copy.deepcopy(draw(JSON))  # NASTY values are shared objects
        except (KeyError, IndexError, TypeError):  # an earlier mutation replaced the parent
            continue
    return resource


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except KitError as exc:
        return type(exc)


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    resources=st.lists(mutated(), min_size=1, max_size=3),
    strict=st.booleans(),
    full_url=st.none() | st.just("urn:uuid:1") | JSON,
)
def test_only_kit_errors(resources: list[dict[str, Any]], strict: bool, full_url: Any) -> None:
    _outcome(lambda: to_frames(resources, strict=strict))
    for rtype in {r["resourceType"] for r in resources}:
        _outcome(lambda rtype=rtype: to_frame(resources, rtype, strict=strict))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"fullUrl": full_url, "resource": r} for r in resources],
    }
    _outcome(lambda: to_frames(bundle, strict=strict))
    _outcome(lambda: to_frames([bundle, *resources], strict=strict))


def _same(a: Any, b: Any) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b)
        for k in a:
            assert_frame_equal(a[k], b[k])
    else:
        assert a == b


@FUZZ
@given(resources=st.lists(mutated(), min_size=1, max_size=4), strict=st.booleans())
def test_ndjson_bundle_and_list_paths_agree(resources: list[dict[str, Any]], strict: bool) -> None:
    lines = [orjson.dumps(r) for r in resources]
    as_list = [orjson.loads(line) for line in lines]  # exactly what the files hold
    bundle = orjson.dumps(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in as_list]}
    )
    fd, name = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(b"\n".join(lines) + b"\n")
        from_list = _outcome(lambda: to_frames(as_list, strict=strict))
        _same(from_list, _outcome(lambda: to_frames(name, strict=strict)))
        _same(from_list, _outcome(lambda: to_frames(bundle, strict=strict)))
    finally:
        os.unlink(name)
    if isinstance(from_list, dict):
        for rtype, frame in from_list.items():
            assert frame.schema == to_frame([], rtype).schema
            assert frame.height == sum(r["resourceType"] == rtype for r in as_list)


def test_fuzz_templates_cover_every_type() -> None:
    assert {t["resourceType"] for t in TEMPLATES} >= set(RESOURCE_TYPES)
    frames = to_frames(TEMPLATES)  # the templates themselves are valid
    assert all(isinstance(f, pl.DataFrame) for f in frames.values())


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_rich_templates_fill_their_columns(rtype: str) -> None:
    row = to_frame([_rich(rtype)], rtype).row(0, named=True)
    assert all(row[c] is not None for c in REF_PATHS[rtype])
    assert all(row[c] is not None for c in CONCEPT_PATHS[rtype])


@pytest.mark.parametrize("value", [[1, [None]], {"x": 1}, True, "5.0", [["a"]], 2**70], ids=repr)
def test_every_leaf_of_every_template_with_a_wrong_type(value: Any) -> None:
    """Deterministic sweep: each scalar leaf of each template replaced by a value of the wrong type."""
    for template in TEMPLATES:
        for path in _paths(template):
            if isinstance(_at(template, path), dict | list):
                continue
            resource = copy.deepcopy(template)
            _at(resource, path[:-1])[path[-1]] = copy.deepcopy(value)
            for strict in (True, False):
                _outcome(lambda r=resource, s=strict: to_frame([r], r["resourceType"], strict=s))
