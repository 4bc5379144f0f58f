"""kit.hub.syncmap: every built-in transform, path get/set, mappings."""

from __future__ import annotations

import datetime as dt

import pytest

from kit.errors import InvalidInputError
from kit.hub.syncmap import (
    TRANSFORMS,
    Direction,
    FieldMapping,
    ResourceMapping,
    get_path,
    resolve_transform,
    set_path,
)

CASES: list[tuple[object, object, object]] = [
    ("date_to_iso", dt.date(2020, 1, 2), "2020-01-02"),
    ("date_to_iso", "2020-01-02T10:00:00", "2020-01-02"),
    ("iso_to_date", "2020-01-02", dt.date(2020, 1, 2)),
    ("datetime_to_iso", dt.datetime(2020, 1, 2, 3, 4, 5), "2020-01-02T03:04:05+00:00"),
    ("iso_to_datetime", "2020-01-02T03:04:05Z", dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    ("unix_to_iso", 0, "1970-01-01T00:00:00+00:00"),
    ("iso_to_unix", "1970-01-01T00:01:00Z", 60.0),
    ("trim", "  a b ", "a b"),
    ("collapse_spaces", " a   b ", "a b"),
    ("lower", "AbC", "abc"),
    ("upper", "AbC", "ABC"),
    ("capitalize", "aBC", "Abc"),
    ("title", "jane doe", "Jane Doe"),
    ("phone", "(555) 123-4567", "5551234567"),
    ("phone", "+41 44 123 45 67", "+41441234567"),
    ("phone", "0041 44 123", "+4144123"),
    ("gender", "M", "male"),
    ("gender", "2", "female"),
    ("gender", "Female", "female"),
    ("gender", "u", "unknown"),
    ("gender_to_hl7", "female", "F"),
    ("to_bool", "Yes", True),
    ("to_bool", "0", False),
    ("to_int", "42", 42),
    ("to_int", 3.0, 3),
    ("to_float", "2.5", 2.5),
    ("to_str", 5, "5"),
    (("round", 1), 2.46, 2.5),
    ("json_parse", '{"a": 1}', {"a": 1}),
    ("json_dump", {"b": 1, "a": [1]}, '{"a":[1],"b":1}'),
    ("full_name", ("Jane", "Doe"), "Jane Doe"),
    ("full_name", {"given": ["Jane", "Q"], "family": "Doe"}, "Jane Q Doe"),
    ("split_name", "Jane Q Doe", {"family": "Doe", "given": ["Jane", "Q"]}),
    ("split_name", "Doe, Jane", {"family": "Doe", "given": ["Jane"]}),
    ("strip_non_digits", "A-12 3", "123"),
    ("empty_to_none", "  ", None),
    (("default", "unknown"), None, "unknown"),
    (("default", "unknown"), "x", "x"),
    (("map_values", {"a": "A"}), "a", "A"),
    ("boolean_yes_no", True, "yes"),
    ("boolean_yes_no", "false", "no"),
    ("yes_no_boolean", "no", False),
    ("first", ["a", "b"], "a"),
    ("as_list", "a", ["a"]),
]


@pytest.mark.parametrize(("spec", "value", "expected"), CASES)
def test_transform(spec: object, value: object, expected: object) -> None:
    fn = resolve_transform(spec)  # type: ignore[arg-type]
    assert fn is not None
    assert fn(value) == expected


def test_every_transform_is_tested_and_passes_none() -> None:
    tested = {s if isinstance(s, str) else s[0] for s, _, _ in CASES}  # type: ignore[index]
    assert tested == set(TRANSFORMS)
    assert len(TRANSFORMS) >= 20
    for name in TRANSFORMS:
        if name in ("default", "empty_to_none"):
            continue
        args = {"round": (1,), "map_values": ({},)}.get(name, ())
        assert TRANSFORMS[name](*args)(None) is None, name


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ("gender", "x"),
        ("to_bool", "maybe"),
        ("to_int", 2.5),
        ("phone", "none"),
        (("map_values", {"a": 1}), "b"),
        ("json_parse", "{"),
    ],
)
def test_transform_failures_are_typed(spec: object, value: object) -> None:
    fm = FieldMapping("gender", "sex", transform=spec)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="sex"):
        fm.to_remote(value)


def test_unknown_transform() -> None:
    with pytest.raises(InvalidInputError, match="unknown transform"):
        resolve_transform("nope")
    with pytest.raises(InvalidInputError):
        resolve_transform(("round", 1, 2, 3))


def test_paths() -> None:
    r: dict = {"resourceType": "Patient"}
    set_path(r, "name[0].family", "Doe")
    set_path(r, "name[0].given", ["Jane"])
    set_path(r, "telecom[system=phone].value", "+1")
    set_path(r, "identifier[system=http://h.org/mrn].value", "M1")
    assert r["name"] == [{"family": "Doe", "given": ["Jane"]}]
    assert r["telecom"] == [{"system": "phone", "value": "+1"}]
    assert get_path(r, "identifier[system=http://h.org/mrn].value") == "M1"
    assert get_path(r, "telecom[system=email].value") is None
    assert get_path(r, "name[0].given") == ["Jane"]
    assert get_path(r, "name.where(family='Doe').given.first()") == "Jane"  # FHIRPath
    set_path(r, "telecom[system=phone].value", None)
    assert "telecom" not in r  # no half element {"system": "phone"} left behind (issue 8 #8)
    set_path(r, "birthDate", None)
    assert "birthDate" not in r
    with pytest.raises(InvalidInputError):
        set_path(r, "name.where(use='x').family", "y")


def test_field_mapping_validation() -> None:
    with pytest.raises(InvalidInputError, match="read-only"):
        FieldMapping("name.where(use='official').family", "family")
    fm = FieldMapping("name.where(use='official').family", "family", direction=Direction.TO_LOCAL)
    assert fm.reads_remote and not fm.writes_remote
    with pytest.raises(InvalidInputError):
        ResourceMapping("Patinet", ("mrn", "urn:mrn"))
    with pytest.raises(InvalidInputError):
        ResourceMapping(
            "Patient", ("mrn", "urn:mrn"), [FieldMapping("gender", "a"), FieldMapping("gender", "b")]
        )


def test_resource_mapping_roundtrip() -> None:
    m = ResourceMapping(
        "Patient",
        ("mrn", "http://h.org/mrn"),
        [
            FieldMapping("name[0].family", "family", transform="upper", reverse_transform="title"),
            FieldMapping("gender", "sex", transform="gender", reverse_transform="gender_to_hl7"),
            FieldMapping("birthDate", "dob", transform="date_to_iso", reverse_transform="iso_to_date"),
            FieldMapping("active", "active", direction=Direction.TO_REMOTE),
        ],
    )
    row = {"mrn": 7, "family": "doe", "sex": "F", "dob": dt.date(1970, 1, 2), "active": True}
    res = m.to_resource(row)
    assert res == {
        "resourceType": "Patient",
        "identifier": [{"system": "http://h.org/mrn", "value": "7"}],
        "name": [{"family": "DOE"}],
        "gender": "female",
        "birthDate": "1970-01-02",
        "active": True,
    }
    assert m.key_of(res) == "7"
    assert m.from_resource(res) == {"mrn": "7", "family": "Doe", "sex": "F", "dob": dt.date(1970, 1, 2)}
