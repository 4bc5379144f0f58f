"""A small transaction Bundle shaped like Synthea's output (issue 8 #4, #5).

Every entry has a ``urn:uuid:`` fullUrl and is POSTed; references between entries
are those urns (Observation.encounter, hasMember, derivedFrom, DiagnosticReport.result,
basedOn, performer...); organisations and practitioners outside the Bundle are
conditional references (``Organization?identifier=...``) as Synthea writes them.
``with_ids=False`` drops every ``id`` (only the fullUrl is left), as some exporters do.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

NS = uuid.UUID("6f1c1a52-5d2b-4a52-9c8e-3a0d6c2a9b11")
ORG = "Organization?identifier=https://github.com/synthetichealth/synthea|ef58ea08-d883-3957-8300"
NPI = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999994394"
LOINC = "http://loinc.org"


def uid(name: str) -> str:
    return str(uuid.uuid5(NS, name))


def ref(name: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{uid(name)}"}


def synthea_bundle(
    *, with_ids: bool = True, encounters: int = 3, obs_per_encounter: int = 4
) -> dict[str, Any]:
    """The Bundle; resources are named ``<type>-<n>`` and keyed by uuid5 of the name."""
    resources: list[tuple[str, dict[str, Any]]] = []

    def add(name: str, resource: dict[str, Any]) -> None:
        resources.append((name, resource))

    add(
        "patient",
        {
            "resourceType": "Patient",
            "identifier": [
                {"system": "https://github.com/synthetichealth/synthea", "value": uid("patient")},
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "system": "http://hospital.smarthealthit.org",
                    "value": "MRN-4711",
                },
            ],
            "name": [{"use": "official", "family": "Kub", "given": ["Ana"]}],
            "gender": "female",
            "birthDate": "1961-04-07",
            "generalPractitioner": [{"reference": NPI}],
            "managingOrganization": {"reference": ORG},
        },
    )
    add("practitioner", {"resourceType": "Practitioner", "name": [{"family": "Rau"}]})
    add("location", {"resourceType": "Location", "name": "Clinic"})
    for e in range(encounters):
        add(
            f"encounter-{e}",
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [
                    {
                        "coding": [
                            {
                                "system": "http://snomed.info/sct",
                                "code": "185349003",
                                "display": "Encounter for check up",
                            }
                        ],
                        "text": "Encounter for check up",
                    }
                ],
                "subject": ref("patient"),
                "participant": [{"individual": ref("practitioner")}],
                "location": [{"location": ref("location")}],
                "period": {
                    "start": f"2020-0{e + 1}-01T10:00:00-05:00",
                    "end": f"2020-0{e + 1}-01T10:30:00-05:00",
                },
                "serviceProvider": {"reference": ORG},
            },
        )
        add(
            f"servicerequest-{e}",
            {
                "resourceType": "ServiceRequest",
                "status": "completed",
                "intent": "order",
                "code": {"coding": [{"system": LOINC, "code": "57698-3"}]},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "requester": ref("practitioner"),
            },
        )
        for o in range(obs_per_encounter):
            add(
                f"obs-{e}-{o}",
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [{"coding": [{"code": "laboratory"}]}],
                    "code": {"coding": [{"system": LOINC, "code": "2093-3", "display": "Cholesterol"}]},
                    "subject": ref("patient"),
                    "encounter": ref(f"encounter-{e}"),
                    "effectiveDateTime": f"2020-0{e + 1}-01T10:10:00-05:00",
                    "valueQuantity": {"value": 180 + o, "unit": "mg/dL"},
                    "performer": [ref("practitioner")],
                },
            )
        add(
            f"panel-{e}",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "57698-3", "display": "Lipid panel"}]},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "hasMember": [ref(f"obs-{e}-{o}") for o in range(obs_per_encounter)],
                "derivedFrom": [ref(f"obs-{e}-0")],
            },
        )
        add(
            f"report-{e}",
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "57698-3"}]},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "performer": [ref("practitioner")],
                "basedOn": [ref(f"servicerequest-{e}")],
                "result": [ref(f"obs-{e}-{o}") for o in range(obs_per_encounter)],
            },
        )
        add(
            f"condition-{e}",
            {
                "resourceType": "Condition",
                "code": {"text": "Hyperlipidemia"},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "clinicalStatus": {"coding": [{"code": "active"}]},
            },
        )
        add(
            f"procedure-{e}",
            {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"coding": [{"code": "430193006"}]},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "performer": [{"actor": ref("practitioner")}],
            },
        )
        add(
            f"medication-{e}",
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"coding": [{"code": "314231"}]},
                "subject": ref("patient"),
                "encounter": ref(f"encounter-{e}"),
                "requester": ref("practitioner"),
            },
        )
        add(
            f"document-{e}",
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": ref("patient"),
                "author": [ref("practitioner")],
                "context": {"encounter": [ref(f"encounter-{e}")]},
                "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}],
            },
        )
        add(f"claim-{e}", {"resourceType": "Claim", "patient": ref("patient"), "status": "active"})
    entries = []
    for name, resource in resources:
        res = copy.deepcopy(resource)
        if with_ids:
            res = {"resourceType": res.pop("resourceType"), "id": uid(name), **res}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uid(name)}",
                "resource": res,
                "request": {"method": "POST", "url": res["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def put(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set ``value`` at a dotted path; ``name[]`` is a one-item array of objects."""
    node: Any = resource
    parts = path.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part.endswith("[]"):
            key = part[:-2]
            if last:
                node[key] = [value]
                return
            node = node.setdefault(key, [{}])[0]
        elif last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
