"""The sample cohort as one FHIR R4 transaction Bundle (``<out>/fhir/bundle.json``).

Built from :mod:`kit.examples.cohort` with the builders of
:mod:`kit.fhir.resources`; deterministic (ids are uuid5 of the cohort keys,
timestamps are fixed), so regenerating gives byte-identical output. Per patient:
a Patient (MRN identifier, name, gender, birthDate, telecom, address); per
study a ServiceRequest carrying the accession number (identifier type ACSN);
per performed study an Encounter and an ImagingStudy (``urn:dicom:uid``
StudyInstanceUID, accession identifier, one series whose modality and
numberOfInstances match the DICOM samples); a Procedure per endoscopy; an
Appointment per scheduled study; a Condition (lung nodule) for each CT with a
lesion; vital signs and a creatinine result per CT (heart rate, body weight
coded in LOINC and SNOMED CT, creatinine).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from kit.examples.cohort import COHORT, UID_PREFIX, Patient, Study
from kit.fhir.resources import bundle, codeable_concept, coding, deterministic_id, identifier, validate

__all__ = ["ACSN_SYSTEM", "MRN_SYSTEM", "SERIES_INSTANCES", "build_bundle", "generate"]

#: Identifier.system of the MRN (PatientID) and of accession numbers.
MRN_SYSTEM = f"urn:oid:{UID_PREFIX}1"
ACSN_SYSTEM = "http://hospital.example/accession"
#: Instances in series 1 of a performed study, as in the DICOM samples.
SERIES_INSTANCES = {"CT": 16, "MR": 12, "ES": 4}

_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_UCUM = "http://unitsofmeasure.org"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
_STAMP = "2026-01-01T00:00:00Z"


def _id(*parts: str) -> str:
    return deterministic_id("kit-sample-cohort", *parts)


def _ref(rtype: str, *parts: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{_id(rtype, *parts)}"}


def _when(s: Study, minutes: int = 0) -> str:
    t = dt.datetime.combine(s.date, s.time) + dt.timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + "+01:00"


def _patient(p: Patient) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": _id("Patient", p.mrn),
        "identifier": [identifier(MRN_SYSTEM, p.mrn, type_code="MR", use="usual")],
        "active": True,
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
        "telecom": [{"system": "phone", "value": p.phone, "use": "home"}],
        "gender": p.fhir_gender,
        "birthDate": p.birth_date.isoformat(),
        "address": [{"use": "home", "city": p.city, "country": "CH"}],
    }


def _service_request(p: Patient, s: Study) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": _id("ServiceRequest", s.key),
        "identifier": [identifier(ACSN_SYSTEM, s.accession, type_code="ACSN")],
        "status": "active" if s.scheduled else "completed",
        "intent": "order",
        "code": codeable_concept(coding(_DCM, s.modality), text=s.description),
        "subject": _ref("Patient", p.mrn),
        "authoredOn": _when(s, -7 * 24 * 60),
        "occurrenceDateTime": _when(s),
    }


def _encounter(p: Patient, s: Study) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": _id("Encounter", s.key),
        "status": "finished",
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"),
        "subject": _ref("Patient", p.mrn),
        "basedOn": [_ref("ServiceRequest", s.key)],
        "period": {"start": _when(s), "end": _when(s, 45)},
    }


def _imaging_study(p: Patient, s: Study) -> dict[str, Any]:
    n = SERIES_INSTANCES[s.modality]
    return {
        "resourceType": "ImagingStudy",
        "id": _id("ImagingStudy", s.key),
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{s.study_uid}"},
            identifier(ACSN_SYSTEM, s.accession, type_code="ACSN"),
        ],
        "status": "available",
        "modality": [coding(_DCM, s.modality)],
        "subject": _ref("Patient", p.mrn),
        "encounter": _ref("Encounter", s.key),
        "started": _when(s),
        "basedOn": [_ref("ServiceRequest", s.key)],
        "numberOfSeries": 1,
        "numberOfInstances": n,
        "description": s.description,
        "series": [
            {
                "uid": s.series_uid(1),
                "number": 1,
                "modality": coding(_DCM, s.modality),
                "numberOfInstances": n,
                "bodySite": {"display": s.body_part},
            }
        ],
    }


def _procedure(p: Patient, s: Study) -> dict[str, Any]:
    code = {"COLONOSCOPY": ("73761001", "Colonoscopy"), "GASTROSCOPY": ("1919006", "Gastroscopy")}
    snomed, display = code.get(s.description, ("423827005", "Endoscopy"))
    return {
        "resourceType": "Procedure",
        "id": _id("Procedure", s.key),
        "status": "completed",
        "code": codeable_concept(coding(_SNOMED, snomed, display), text=s.description),
        "subject": _ref("Patient", p.mrn),
        "encounter": _ref("Encounter", s.key),
        "basedOn": [_ref("ServiceRequest", s.key)],
        "performedPeriod": {"start": _when(s), "end": _when(s, 30)},
    }


def _appointment(p: Patient, s: Study) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": _id("Appointment", s.key),
        "status": "booked",
        "serviceType": [codeable_concept(coding(_DCM, s.modality), text=s.description)],
        "description": s.description,
        "start": _when(s),
        "end": _when(s, 30),
        "basedOn": [_ref("ServiceRequest", s.key)],
        "participant": [{"actor": _ref("Patient", p.mrn), "status": "accepted"}],
    }


def _condition(p: Patient, s: Study) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": _id("Condition", s.key, "nodule"),
        "clinicalStatus": codeable_concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")
        ),
        "verificationStatus": codeable_concept(
            coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")
        ),
        "category": [
            codeable_concept(
                coding("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis")
            )
        ],
        "code": codeable_concept(
            coding(_SNOMED, "427359005", "Solitary nodule of lung"),
            coding("http://hl7.org/fhir/sid/icd-10", "R91.1"),
            text="Lung nodule",
        ),
        "subject": _ref("Patient", p.mrn),
        "encounter": _ref("Encounter", s.key),
        "recordedDate": _when(s, 60),
    }


def _observation(
    p: Patient, s: Study, key: str, category: str, concept: dict[str, Any], value: float, unit: str, ucum: str
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": _id("Observation", s.key, key),
        "status": "final",
        "category": [codeable_concept(coding(_OBS_CAT, category))],
        "code": concept,
        "subject": _ref("Patient", p.mrn),
        "encounter": _ref("Encounter", s.key),
        "effectiveDateTime": _when(s, -15),
        "issued": _when(s, 120),
        "valueQuantity": {"value": value, "unit": unit, "system": _UCUM, "code": ucum},
    }


def _observations(p: Patient, s: Study) -> list[dict[str, Any]]:
    n = int(p.mrn[-2:])
    return [
        _observation(
            p,
            s,
            "heart-rate",
            "vital-signs",
            codeable_concept(coding(_LOINC, "8867-4", "Heart rate"), text="Heart rate"),
            60 + 3 * n,
            "beats/minute",
            "/min",
        ),
        _observation(
            p,
            s,
            "body-weight",
            "vital-signs",
            codeable_concept(
                coding(_LOINC, "29463-7", "Body weight"),
                coding(_SNOMED, "27113001", "Body weight"),
                text="Body weight",
            ),
            round(58.5 + 4.25 * n, 1),
            "kg",
            "kg",
        ),
        _observation(
            p,
            s,
            "creatinine",
            "laboratory",
            codeable_concept(
                coding(_LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma"), text="Creatinine"
            ),
            round(0.7 + 0.05 * n, 2),
            "mg/dL",
            "mg/dL",
        ),
    ]


def build_bundle() -> dict[str, Any]:
    """The cohort as a transaction Bundle (every entry a ``PUT Type/id``), each resource validated."""
    resources: list[dict[str, Any]] = []
    for p in COHORT:
        resources.append(_patient(p))
        for s in p.studies:
            resources.append(_service_request(p, s))
            if s.scheduled:
                resources.append(_appointment(p, s))
                continue
            resources.append(_encounter(p, s))
            resources.append(_imaging_study(p, s))
            if s.modality == "ES":
                resources.append(_procedure(p, s))
            if s.modality == "CT":
                resources.extend(_observations(p, s))
                if s.lesion is not None:
                    resources.append(_condition(p, s))
    for r in resources:
        validate(r)
    return bundle(resources, "transaction", id=_id("Bundle", "sample-cohort"), timestamp=_STAMP)


def generate(out_dir: Path) -> list[Path]:
    """Write ``out_dir/fhir/bundle.json`` (deterministic) and return its path in a list."""
    path = Path(out_dir) / "fhir" / "bundle.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(build_bundle(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return [path]
