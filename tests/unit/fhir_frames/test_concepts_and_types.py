"""One CodeableConcept rule in every column (issue 8 #6); wrong types raise FhirValidationError (7 #20)."""

from __future__ import annotations

from typing import Any

import pytest

from kit.errors import FhirValidationError
from kit.fhir.frames import SCHEMAS, to_frame
from tests.unit.fhir_frames.synthea import put as _put

# every concept column: where its CodeableConcept is, and its display column if it has one
CONCEPT_PATHS: dict[str, dict[str, tuple[str, str | None]]] = {
    "Patient": {"marital_status": ("maritalStatus", None), "language": ("communication[].language", None)},
    "Observation": {
        "category": ("category[]", None),
        "categories": ("category[]", None),
        "code": ("code", "code_display"),
        "value_code": ("valueCodeableConcept", None),
        "data_absent_reason": ("dataAbsentReason", None),
        "interpretation": ("interpretation[]", None),
    },
    "Condition": {
        "clinical_status": ("clinicalStatus", None),
        "verification_status": ("verificationStatus", None),
        "category": ("category[]", None),
        "code": ("code", "code_display"),
        "severity": ("severity", None),
        "body_site": ("bodySite[]", None),
    },
    "Procedure": {
        "category": ("category", None),
        "code": ("code", "code_display"),
        "reason_code": ("reasonCode[]", None),
        "body_site": ("bodySite[]", None),
        "outcome": ("outcome", None),
    },
    "Encounter": {
        "type_code": ("type[]", "type_display"),
        "service_type": ("serviceType", None),
        "reason_code": ("reasonCode[]", "reason_display"),
        "discharge_disposition": ("hospitalization.dischargeDisposition", None),
    },
    "DiagnosticReport": {
        "category": ("category[]", None),
        "code": ("code", "code_display"),
        "conclusion_codes": ("conclusionCode[]", None),
    },
    "ImagingStudy": {"procedure_code": ("procedureCode[]", None), "reason_code": ("reasonCode[]", None)},
    "MedicationRequest": {
        "medication_code": ("medicationCodeableConcept", "medication_display"),
        "route": ("dosageInstruction[].route", None),
        "reason_code": ("reasonCode[]", None),
    },
    "Appointment": {
        "service_type": ("serviceType[]", None),
        "appointment_type": ("appointmentType", None),
        "reason_code": ("reasonCode[]", None),
    },
    "ServiceRequest": {
        "category": ("category[]", None),
        "code": ("code", "code_display"),
        "reason_code": ("reasonCode[]", None),
        "body_site": ("bodySite[]", None),
    },
    "Practitioner": {"qualification": ("qualification[].code", None)},
    "DocumentReference": {"type_code": ("type", "type_display"), "category": ("category[]", None)},
}


def test_the_concept_table_covers_every_concept_column() -> None:
    assert set(CONCEPT_PATHS) == set(SCHEMAS)
    for rtype, cols in SCHEMAS.items():
        assert {c.name for c in cols if c.role == "concept"} == set(CONCEPT_PATHS[rtype]), rtype


@pytest.mark.parametrize("rtype", sorted(CONCEPT_PATHS))
@pytest.mark.parametrize("shape", ["text only", "coding without code"])
def test_a_text_only_concept_gives_its_text_in_every_concept_column(rtype: str, shape: str) -> None:
    resource: dict[str, Any] = {"resourceType": rtype, "id": "x"}
    for column, (path, _) in CONCEPT_PATHS[rtype].items():
        concept: dict[str, Any] = {"text": f"T:{column}"}
        if shape != "text only":
            concept["coding"] = [{"system": "http://s", "display": f"D:{column}"}]
        _put(resource, path, concept)
    row = to_frame([resource], rtype).row(0, named=True)
    for column, (path, display) in CONCEPT_PATHS[rtype].items():
        text = row[column]
        shared = [c for c, (p, _) in CONCEPT_PATHS[rtype].items() if p == path]
        assert (text[0] if isinstance(text, list) else text) in {f"T:{c}" for c in shared}, column
        if display is not None:
            assert row[display] == (text if shape == "text only" else f"D:{column}"), display


def test_components_follow_the_same_rule() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o",
        "valueCodeableConcept": {"text": "positive"},
        "component": [
            {
                "code": {"text": "Systolic"},
                "valueCodeableConcept": {"text": "high"},
                "interpretation": [{"text": "H!"}],
            }
        ],
    }
    row = to_frame([obs], "Observation").row(0, named=True)
    comp = row["components"][0]
    assert row["value_code"] == "positive"
    assert (comp["code"], comp["code_display"], comp["value_code"], comp["interpretation"]) == (
        "Systolic",
        "Systolic",
        "high",
        "H!",
    )


def test_a_coded_concept_keeps_code_system_and_display() -> None:
    enc = {
        "resourceType": "Encounter",
        "id": "e",
        "type": [
            {
                "coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Check up"}],
                "text": "Visit",
            }
        ],
    }
    row = to_frame([enc], "Encounter").row(0, named=True)
    assert (row["type_code"], row["type_display"]) == ("185349003", "Check up")


# ---------------------------------------------------------------- wrong JSON types (issue 7 #20)


@pytest.mark.parametrize(
    ("case", "column"),
    [
        (
            {"resourceType": "Observation", "id": "o", "valueQuantity": {"value": [1, [None]]}},
            "value_quantity",
        ),
        ({"resourceType": "Observation", "id": "o", "valueQuantity": {"value": True}}, "value_quantity"),
        ({"resourceType": "Observation", "id": "o", "valueQuantity": {"value": "5.0"}}, "value_quantity"),
        ({"resourceType": "Observation", "id": "o", "valueQuantity": {"value": 10**400}}, "value_quantity"),
        ({"resourceType": "Observation", "id": "o", "valueInteger": 2**70}, "value_integer"),
        (
            {"resourceType": "Observation", "id": "o", "component": [{"valueQuantity": {"value": 10**400}}]},
            "components",
        ),
        ({"resourceType": "Observation", "id": 5}, "id"),
        ({"resourceType": "Observation", "id": {"x": 1}}, "id"),
        ({"resourceType": "Observation", "id": "o", "status": ["final"]}, "status"),
        ({"resourceType": "Observation", "id": "o", "valueBoolean": "yes"}, "value_boolean"),
        ({"resourceType": "Observation", "id": "o", "hasMember": [{"reference": 7}]}, "has_member"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_or_null(case: dict[str, Any], column: str) -> None:
    with pytest.raises(FhirValidationError, match=f"Observation.{column}"):
        to_frame([case], "Observation")
    row = to_frame([case], "Observation", strict=False).row(0, named=True)
    assert row[column] is None or column in ("components", "has_member")


def test_non_string_id_in_a_urn_bundle() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "id": 17}},
            {
                "fullUrl": "urn:uuid:o",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "subject": {"reference": "urn:uuid:p"},
                },
            },
        ],
    }
    with pytest.raises(FhirValidationError, match="Patient.id"):
        to_frame(bundle, "Patient")
    assert to_frame(bundle, "Patient", strict=False)["id"].to_list() == [None]
    assert to_frame(bundle, "Observation")["patient_ref"].to_list() == ["urn:uuid:p"]  # not resolved


@pytest.mark.parametrize(
    "structure",
    [
        {"resourceType": "Patient", "id": "p", "name": [{"given": "Jane"}]},  # a string is not split
        {"resourceType": "Patient", "id": "p", "address": [{"line": "1 Main"}]},
        {"resourceType": "Observation", "id": "o", "code": "not a CodeableConcept"},
        {"resourceType": "Observation", "id": "o", "category": "laboratory"},
        {"resourceType": "Bundle", "entry": "x"},
        {"resourceType": "Bundle", "entry": [5]},
        {"resourceType": "Bundle", "entry": [{"resource": "x"}]},
        {"resourceType": "Bundle", "entry": [{"fullUrl": 5, "resource": {"resourceType": "Patient"}}]},
    ],
)
def test_structure_of_the_wrong_type_always_raises(structure: dict[str, Any]) -> None:
    for strict in (True, False):
        with pytest.raises(FhirValidationError):
            to_frame(
                [structure],
                structure["resourceType"] if structure["resourceType"] != "Bundle" else "Patient",
                strict=strict,
            )


def test_not_resources_at_all() -> None:
    for bad in (5, None, 1.5):
        with pytest.raises(FhirValidationError):
            to_frame(bad, "Patient")  # type: ignore[arg-type]
