"""kit.fhir.resources, kit.fhir.server_search (pure parts) and the sample FHIR bundle."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.errors import FhirValidationError
from kit.examples import cohort
from kit.examples.fhir import SERIES_INSTANCES, build_bundle, generate
from kit.fhir import resources as R
from kit.fhir.server_search import build_where, date_range, index_rows, parse_search


def test_validate_returns_an_equal_copy() -> None:
    p = {"resourceType": "Patient", "id": "p1", "birthDate": "1958-03-14", "name": [{"family": "X"}]}
    out = R.validate(p, resource_type="Patient")
    assert out == p and out is not p
    out["name"][0]["family"] = "Y"
    assert p["name"][0]["family"] == "X"


@pytest.mark.parametrize(
    ("bad", "code", "expression"),
    [
        ({"id": "x"}, "required", "resourceType"),
        ({"resourceType": "Nope"}, "not-supported", "resourceType"),
        ({"resourceType": "HumanName"}, "not-supported", "resourceType"),
        ({"resourceType": "Patient", "birthDate": "14.03.1958"}, "invalid", "Patient.birthDate"),
        ({"resourceType": "Patient", "foo": 1}, "structure", "Patient.foo"),
        ({"resourceType": "Observation", "status": "final"}, "required", "Observation.code"),
        ({"resourceType": "Patient", "name": [{"family": 3}]}, "invalid", "Patient.name[0].family"),
    ],
)
def test_validate_rejects_with_outcome_issues(bad: dict, code: str, expression: str) -> None:
    with pytest.raises(FhirValidationError) as info:
        R.validate(bad)
    issues = info.value.issues
    assert issues and all(i["severity"] == "error" for i in issues)
    assert any(i["code"] == code and expression in i.get("expression", []) for i in issues), issues
    outcome = R.operation_outcome(issues)
    R.validate(outcome, resource_type="OperationOutcome")


def test_validate_rejects_non_objects_and_wrong_type() -> None:
    with pytest.raises(FhirValidationError):
        R.validate([1, 2])  # type: ignore[arg-type]
    with pytest.raises(FhirValidationError, match="expected a Observation"):
        R.validate({"resourceType": "Patient"}, resource_type="Observation")


def test_operation_outcome_and_summary() -> None:
    oo = R.operation_outcome(
        [{"severity": "error", "code": "invalid", "diagnostics": "bad", "expression": "Patient.x"}]
    )
    assert oo["issue"][0]["expression"] == ["Patient.x"]
    assert R.outcome_message(oo) == "bad (Patient.x)"
    assert R.operation_outcome([])["issue"][0]["severity"] == "information"
    with pytest.raises(ValueError):
        R.issue("nope", "invalid", "x")


def test_references() -> None:
    assert R.reference({"resourceType": "Patient", "id": "a"}) == "Patient/a"
    with pytest.raises(FhirValidationError):
        R.reference({"resourceType": "Patient"})
    assert R.parse_reference("http://h/fhir/R4/Observation/9/_history/2") == ("Observation", "9")
    with pytest.raises(FhirValidationError):
        R.parse_reference("nothing")


def test_bundle_builder() -> None:
    b = R.bundle([{"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient"}], "transaction")
    assert [e["request"]["method"] for e in b["entry"]] == ["PUT", "POST"]
    assert b["entry"][1]["fullUrl"].startswith("urn:uuid:")
    R.validate(b)
    with pytest.raises(ValueError):
        R.bundle([], "nonsense")
    assert R.deterministic_id("a", "b") == R.deterministic_id("a", "b") != R.deterministic_id("a", "c")


def test_sample_bundle_is_valid_deterministic_and_consistent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = build_bundle()
    R.validate(b)
    assert b == build_bundle()
    (path,) = generate(tmp_path / "a")
    (again,) = generate(tmp_path / "b")
    assert path.read_bytes() == again.read_bytes()
    by_type: dict[str, list[dict]] = {}
    for e in b["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
        assert e["request"] == {
            "method": "PUT",
            "url": f"{e['resource']['resourceType']}/{e['resource']['id']}",
        }
    assert sorted(p["identifier"][0]["value"] for p in by_type["Patient"]) == sorted(
        p.mrn for p in cohort.COHORT
    )
    performed = cohort.studies(scheduled=False)
    studies = {i["value"]: s for s in by_type["ImagingStudy"] for i in s["identifier"]}
    for st_ in performed:
        img = studies[f"urn:oid:{st_.study_uid}"]
        assert studies[st_.accession] is img
        assert img["series"][0]["uid"] == st_.series_uid(1)
        assert img["series"][0]["numberOfInstances"] == SERIES_INSTANCES[st_.modality]
    assert len(by_type["Appointment"]) == len(cohort.studies(scheduled=True))
    assert len(by_type["Procedure"]) == len(cohort.studies(modality="ES"))
    assert len(by_type["Condition"]) == sum(1 for s in performed if s.lesion is not None)
    acsn = {
        i["value"]
        for r in by_type["ServiceRequest"]
        for i in r["identifier"]
        if i["type"]["coding"][0]["code"] == "ACSN"
    }
    assert acsn == {s.accession for s in cohort.studies(scheduled=None)}


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)))
def test_date_range_contains_the_instant_at_every_precision(when: dt.datetime) -> None:
    iso = when.strftime("%Y-%m-%dT%H:%M:%S.%f")
    for text in (
        when.strftime("%Y"),
        when.strftime("%Y-%m"),
        when.strftime("%Y-%m-%d"),
        when.strftime("%Y-%m-%dT%H:%M:%S") + "Z",
    ):
        lo, hi = date_range(text)
        assert lo <= iso <= hi
    lo, hi = date_range(when.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
    assert lo == when.strftime("%Y-%m-%dT%H:%M:%S.000000") and hi == when.strftime("%Y-%m-%dT%H:%M:%S.999999")


def test_date_range_zones_and_errors() -> None:
    assert date_range("2026-01-12T09:14:00+01:00")[0] == "2026-01-12T08:14:00.000000"
    assert date_range("2024-02") == ("2024-02-01T00:00:00.000000", "2024-02-29T23:59:59.999999")
    for bad in ("2026-13", "12/01/2026", "2026-02-30"):
        with pytest.raises(FhirValidationError):
            date_range(bad)


def test_index_rows_and_query_parsing() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "effectiveDateTime": "2026-01-12",
    }
    rows = index_rows(obs)
    assert ("patient", "Patient", "p1", None, None) in rows
    assert ("code", "http://loinc.org", "8867-4", None, None) in rows
    group = {"resourceType": "Observation", "subject": {"reference": "Group/g"}}
    assert not [r for r in index_rows(group) if r[0] == "patient"]
    q = parse_search(
        "Observation",
        [
            ("patient", "p1"),
            ("date", "ge2026-01,lt2020"),
            ("_count", "5"),
            ("_sort", "-date"),
            ("_include", "Observation:subject"),
        ],
    )
    assert q.count == 5 and q.sort == (("date", True),) and q.includes[0].param == "subject"
    sql, args = build_where(q)
    assert sql.count("r.id IN (SELECT i.id FROM idx i") == 2 and "Patient" in args and "p1" in args
    with pytest.raises(FhirValidationError):
        parse_search("Observation", [("nonsense", "1")])
    assert parse_search("Observation", [("nonsense", "1")], strict=False).conditions == ()
    with pytest.raises(FhirValidationError):
        parse_search("Observation", [("_count", "100000")])
    with pytest.raises(FhirValidationError):
        parse_search("Observation", [("_include", "Observation:code")])
