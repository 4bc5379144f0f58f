"""Hypothesis: batches and chunks (kit.fhir.frames_fast_build) change nothing in the frames.

The fast path turns rows into series batch by batch and leaves dates and list
columns to the merge of several batches into a chunk. Here the batches and chunks
are a few rows long, so every column crosses many batch and chunk boundaries;
the resources carry dates valid, partial and broken, lists of every length (none,
empty, one, several) and values of the wrong JSON type. The frames (or the error:
type and message) must equal the slow path's, strict or not; only KitError leaves.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.fhir import frames_fast, frames_fast_build
from kit.fhir.frames import to_frame, to_frames
from tests.unit.fhir_fast.test_equal import outcome, same, slow

DATES = st.sampled_from([
    None, "2023-05-01T10:20:30Z", "2023-05-01T10:20:30.123+02:00", "2023-05-01T10:20:30-05:00",
    "2023-05", "2023", "2023-05-01", "2023-05-01T10:20:30", "yesterday", "", 5, True,
])
TEXT = st.one_of(st.none(), st.sampled_from(["a", "final", "http://loinc.org", "é€", ""]), st.integers(0, 3))
CODING = st.fixed_dictionaries({}, optional={"system": TEXT, "code": TEXT, "display": TEXT})
CONCEPT = st.fixed_dictionaries({}, optional={"coding": st.lists(CODING, max_size=3), "text": TEXT})
REF = st.fixed_dictionaries({}, optional={"reference": st.sampled_from(
    ["Patient/p1", "Patient/p2", "urn:uuid:1", "Practitioner/x", "#c", ""])})
QUANTITY = st.fixed_dictionaries({}, optional={
    "value": st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-5, 5),
                       st.just("7")),
    "unit": TEXT, "code": TEXT})
COMPONENT = st.fixed_dictionaries({}, optional={"code": CONCEPT, "valueQuantity": QUANTITY,
                                                "valueString": TEXT})
OBSERVATION = st.fixed_dictionaries({"resourceType": st.just("Observation")}, optional={
    "id": TEXT, "meta": st.fixed_dictionaries({}, optional={"lastUpdated": DATES}),
    "status": TEXT, "category": st.lists(CONCEPT, max_size=3), "code": CONCEPT, "subject": REF,
    "effectiveDateTime": DATES, "effectivePeriod": st.fixed_dictionaries({}, optional={
        "start": DATES, "end": DATES}),
    "issued": DATES, "valueQuantity": QUANTITY, "valueInteger": st.one_of(st.integers(-9, 9), st.just(1.5)),
    "valueBoolean": st.one_of(st.booleans(), st.just("true")), "hasMember": st.lists(REF, max_size=2),
    "component": st.lists(COMPONENT, max_size=3),
})
PATIENT = st.fixed_dictionaries({"resourceType": st.just("Patient")}, optional={
    "id": TEXT, "birthDate": DATES, "deceasedDateTime": DATES, "gender": TEXT,
    "identifier": st.lists(st.fixed_dictionaries({}, optional={"system": TEXT, "value": TEXT}), max_size=3),
    "name": st.lists(st.fixed_dictionaries({}, optional={
        "family": TEXT, "given": st.lists(TEXT, max_size=2)}), max_size=2),
})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resources=st.lists(st.one_of(OBSERVATION, OBSERVATION, PATIENT), min_size=1, max_size=14),
       batch=st.integers(1, 4), merge=st.integers(1, 3), strict=st.booleans(),
       only=st.sampled_from([None, "Observation"]))
def test_tiny_batches_and_chunks_fast_equals_slow(resources: list[dict[str, Any]], batch: int, merge: int,
                                                  strict: bool, only: str | None) -> None:
    bundle = orjson.dumps({"resourceType": "Bundle", "entry": [
        {"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]})

    def fn() -> Any:
        return to_frames(bundle, strict=strict) if only is None else to_frame(bundle, only, strict=strict)

    with mock.patch.object(frames_fast_build, "BATCH", batch), \
            mock.patch.object(frames_fast_build, "MERGE", merge):
        fast = outcome(fn)
    same(fast, slow(fn))


def test_the_fuzz_reaches_the_fast_path_across_batches() -> None:
    """The generator's clean resources go the fast path, in many batches and chunks (not all given up)."""
    resources = [{"resourceType": "Observation", "id": f"o{i}", "effectiveDateTime": "2023-05",
                  "category": [{"text": "a"}] * (i % 3), "component": [{"valueString": "x"}] * (i % 2)}
                 for i in range(11)]
    bundle = orjson.dumps({"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]})
    with mock.patch.object(frames_fast_build, "BATCH", 2), mock.patch.object(frames_fast_build, "MERGE", 2):
        found = frames_fast.collect(bundle, None, True)
        assert found is not None
        frame = found[0]["Observation"]
        assert frame.height == 11 and frame.n_chunks() == 3  # chunks of 4 rows
        same(frame, slow(lambda: to_frames(bundle))["Observation"])
