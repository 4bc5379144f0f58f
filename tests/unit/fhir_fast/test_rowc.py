"""``kit.fhir._rowc`` (the Observation row in C) gives :func:`kit.fhir.frames_fast_types._observation`'s
row exactly -- the same values of the same types, in the same places -- on generated Observations of
every shape the typed decode takes; the shapes it leaves to Python go there whole; it leaks nothing;
and under CI=true it is built. The fast path's frames against the slow path's: test_equal.py and
test_fuzz.py (which run on the C row wherever it is built)."""

from __future__ import annotations

import gc
import sys
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kit.fhir import frames_fast_types as ft
from tests.conftest import require_built

try:
    from kit.fhir import _rowc
except ImportError:
    _rowc = None  # type: ignore[assignment]
needs_c = pytest.mark.skipif(_rowc is None, reason="kit.fhir._rowc is not built")
DECODE = ft.DECODERS["Observation"].decode


def test_the_c_row_is_built_and_used() -> None:
    require_built(_rowc, "kit.fhir._rowc")
    assert ft.ROW["Observation"] is _rowc.observation


def exact(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True would pass ``==``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# -- generated Observations ---------------------------------------------------------------------
_S = st.sampled_from(["", "x", "8867-4", "http://loinc.org", "Heart rate", "é", "#x", "Patient/p1"])
_OPT_S = st.none() | _S
_NUM = st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)


def _obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects holding any subset of ``fields`` (absent, null or a value)."""
    return st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in fields.items()})


_CODING = _obj(system=_S, code=_S, display=_S)
_CC = _obj(coding=st.lists(_CODING, max_size=3), text=_S)
_REF = _obj(reference=st.sampled_from(["Patient/p1", "Patient/p2/_history/3", "http://h/fhir/Patient/p3",
                                       "urn:uuid:1", "#pat", "", "Group/g", "Patient/"]),
            identifier=_obj(system=_S, value=_S), type=_S)
_QTY = _obj(value=_NUM, unit=_S, code=_S, system=_S)
_VALUE = _obj(value=_NUM, unit=_S)
_COMPONENT = _obj(code=_CC, valueQuantity=_QTY, valueCodeableConcept=_CC, valueString=_S,
                  interpretation=st.lists(_CC, max_size=2))
_PERIOD = st.dictionaries(st.sampled_from(["start", "end"]), st.none() | _S)
_OBSERVATION = _obj(
    id=_S, meta=_obj(lastUpdated=_S, versionId=_S), status=_S, category=st.lists(_CC, max_size=3),
    code=_CC, subject=_REF, encounter=_REF, effectiveDateTime=_S, effectivePeriod=_PERIOD,
    effectiveInstant=_S, issued=_S, valueQuantity=_QTY, valueCodeableConcept=_CC, valueString=_S,
    valueBoolean=st.booleans(), valueInteger=st.integers(-(2**63), 2**63 - 1), valueDateTime=_S,
    dataAbsentReason=_CC, interpretation=st.lists(_CC, max_size=2),
    referenceRange=st.lists(_obj(low=_VALUE, high=_VALUE, text=_S), max_size=2),
    performer=st.lists(_REF, max_size=2), hasMember=st.lists(_REF, max_size=2),
    derivedFrom=st.lists(_REF, max_size=2), note=st.lists(_obj(text=_S), max_size=2),
    component=st.lists(_COMPONENT, max_size=3),
    extension=st.lists(_obj(url=_S, valueString=_S), max_size=1),
    contained=st.lists(st.fixed_dictionaries({"resourceType": st.just("Patient"), "id": st.just("pat")}),
                       max_size=1),
)


@needs_c
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OBSERVATION)
def test_the_c_row_is_the_python_row(resource: dict[str, Any]) -> None:
    o = DECODE(orjson.dumps({"resourceType": "Observation", **resource}))
    event("code with codings" if (resource.get("code") or {}).get("coding") else "code without codings")
    event("components" if resource.get("component") else "no components")
    assert exact(_rowc.observation(o), ft._observation(o))


@needs_c
@pytest.mark.parametrize("resource", [
    {},  # every field absent
    {"subject": {"reference": "#pat"}, "contained": [{"resourceType": "Patient", "id": "pat",
                                                       "identifier": [{"value": "MRN1"}]}]},
    {"subject": {"reference": "Patient/p1", "identifier": {"value": "MRN2"}}},
    {"subject": {"identifier": {"value": "MRN3"}}},
    {"subject": {"reference": ""}},
    {"note": [{"text": "a"}, {"text": "b"}]},
    {"extension": [{"url": "u", "valueCoding": {"code": "c"}}]},
    {"note": []},  # empty: not a shape left to Python
    {"effectivePeriod": {}, "effectiveInstant": "2024-01-01T00:00:00Z"},
    {"effectivePeriod": {"end": "2024-01-02"}},
    {"effectiveDateTime": "", "effectivePeriod": {"start": "s"}},
    {"code": {"coding": [], "text": "t"}, "valueCodeableConcept": {"coding": [{"system": "s"}], "text": ""}},
    {"valueQuantity": {"value": 10**18, "unit": "", "code": "mg"}},
    {"valueQuantity": {"value": 1.5}}, {"valueQuantity": {}},
    {"referenceRange": [{"low": {}, "high": {"value": 2}, "text": ""}]},
])
def test_chosen_shapes(resource: dict[str, Any]) -> None:
    o = DECODE(orjson.dumps({"resourceType": "Observation", **resource}))
    assert exact(_rowc.observation(o), ft._observation(o))


@needs_c
def test_patient_references_are_noted_as_the_python_row_notes_them() -> None:
    ft._PREF.clear()
    o = DECODE(orjson.dumps({"resourceType": "Observation",
                             "subject": {"reference": "Patient/zz/_history/1"}}))
    assert _rowc.observation(o)[9:11] == ("Patient/zz/_history/1", "zz")
    assert ft._PREF == {"Patient/zz/_history/1": "zz"}
    assert _rowc.observation(o)[10] == "zz"  # now from the cache


@needs_c
def test_other_objects_go_to_the_python_extractor() -> None:
    with pytest.raises(AttributeError):  # what _observation does with a dict
        _rowc.observation({"resourceType": "Observation"})
    # a configuration refused leaves the one in use as it was
    with pytest.raises(ValueError, match="takes 11 classes"):
        _rowc.configure((ft.Observation,) * 3, ft._observation, ft._patient_ref, ft._PREF)
    classes = [ft.Observation, ft.CC, ft.Coding, ft.CodeCC, ft.Code, ft.Ref, ft.Quantity, ft.Value,
               ft.RefRange, ft.Meta, ft.Component]
    with pytest.raises(AttributeError):  # Head has no "meta"
        _rowc.configure((ft.Head, *classes[1:]), ft._observation, ft._patient_ref, ft._PREF)
    not_a_slot = type("Meta", (), {"lastUpdated": property(lambda self: "x")})
    with pytest.raises(TypeError, match="not an object slot"):
        _rowc.configure((*classes[:9], not_a_slot, classes[10]), ft._observation, ft._patient_ref, ft._PREF)
    assert exact(_rowc.observation(DECODE(b'{"resourceType":"Observation","id":"a"}')),
                 ft._observation(DECODE(b'{"resourceType":"Observation","id":"a"}')))


@needs_c
def test_no_leaks() -> None:
    """Every reference the C row takes it gives back: on the C path, the Python path and errors."""
    rich = DECODE(orjson.dumps({
        "resourceType": "Observation", "id": "o1", "meta": {"lastUpdated": "2024"}, "status": "final",
        "category": [{"coding": [{"code": "lab"}]}, {"text": "t"}],
        "code": {"coding": [{"system": "s", "code": "c", "display": "d"}, {"code": "c2"}], "text": "x"},
        "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e"},
        "effectivePeriod": {"start": "a", "end": "b"}, "valueQuantity": {"value": 1.5, "unit": "mg"},
        "referenceRange": [{"low": {"value": 1}, "high": {"value": 2}, "text": "r"}],
        "interpretation": [{"coding": [{"code": "N"}]}], "performer": [{"reference": "Practitioner/1"}],
        "hasMember": [{"reference": "Observation/2"}], "component": [
            {"code": {"coding": [{"code": "8480-6"}]}, "valueQuantity": {"value": 120, "unit": "mmHg"}},
            {"code": {"text": "t"}, "valueCodeableConcept": {"coding": [{"code": "x"}]},
             "interpretation": [{"text": "H"}]}]}))
    python = DECODE(orjson.dumps({"resourceType": "Observation", "note": [{"text": "n"}],
                                  "subject": {"reference": "#p"}}))
    fields = [rich.code, rich.code.coding, rich.component, rich.id, rich.status]
    before = [sys.getrefcount(x) for x in fields]
    _rowc.observation(rich), _rowc.observation(python)  # warm (caches)
    gc.collect()
    tracemalloc.start()
    try:
        snap = tracemalloc.take_snapshot()
        for _ in range(5000):
            _rowc.observation(rich)
            _rowc.observation(python)
            with pytest.raises(AttributeError):
                _rowc.observation(None)
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 32 * 1024, grown
    assert [sys.getrefcount(x) for x in fields] == before


@needs_c
def test_the_usual_shapes_stay_in_c() -> None:
    """Only the shapes named in _rowc.c go to Python: with a fallback that fails, the rest still works."""
    classes = (ft.Observation, ft.CC, ft.Coding, ft.CodeCC, ft.Code, ft.Ref, ft.Quantity, ft.Value,
               ft.RefRange, ft.Meta, ft.Component)

    def boom(o: Any) -> Any:
        raise LookupError("left to Python")

    usual = DECODE(orjson.dumps({
        "resourceType": "Observation", "id": "o", "category": [{"coding": [{"code": "lab"}]}, {"text": "t"}],
        "code": {"coding": [{"system": "s", "code": "c"}]}, "subject": {"reference": "Patient/p"},
        "valueCodeableConcept": {"coding": [{"code": "v"}]}, "dataAbsentReason": {"text": "d"},
        "interpretation": [{"coding": [{"code": "H"}]}], "referenceRange": [{"low": {"value": 1}}],
        "performer": [{"reference": "Practitioner/1"}], "derivedFrom": [{"reference": "Observation/2"}],
        "effectivePeriod": {"start": "s"}, "meta": {"lastUpdated": "l"}, "note": [],
        "component": [{"code": {"coding": [{"code": "x"}]}, "valueCodeableConcept": {"text": "y"},
                       "interpretation": [{"coding": [{"code": "L"}]}]}]}))
    _rowc.configure(classes, boom, ft._patient_ref, ft._PREF)
    try:
        assert exact(_rowc.observation(usual), ft._observation(usual))
        for left in ({"note": [{"text": "n"}]}, {"subject": {"reference": "#p"}},
                     {"extension": [{"url": "u", "valueString": "v"}]}):
            with pytest.raises(LookupError):
                _rowc.observation(DECODE(orjson.dumps({"resourceType": "Observation", **left})))
    finally:
        _rowc.configure(classes, ft._observation, ft._patient_ref, ft._PREF)
