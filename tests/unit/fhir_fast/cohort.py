"""Synthea-shaped transaction Bundles for the fast-path tests (deterministic from a seed).

Many patients, each with encounters; per encounter Observations (valueQuantity,
valueCodeableConcept, components, text-only codes, periods and instants),
Conditions, Procedures, MedicationRequests (coded and contained), ImagingStudies,
DiagnosticReports, DocumentReferences, Claims (no dedicated frame), all linked by
``urn:uuid:`` fullUrls as Synthea writes them. ``odd`` > 0 roughs the resources up:
missing fields, unknown fields (of every JSON type), empty objects, key orders with
``resourceType`` last, entries without ``id``, and values of odd but accepted types
(integers as decimals, big integers, non-ASCII text).
"""

from __future__ import annotations

import random
import uuid
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
HL7 = "http://terminology.hl7.org/CodeSystem"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
VITALS = [("8867-4", "Heart rate", "/min", 75), ("8310-5", "Body temperature", "Cel", 36.8),
          ("29463-7", "Body weight", "kg", 70), ("2339-0", "Glucose", "mg/dL", 95)]


def _cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


class _Gen:
    def __init__(self, seed: int, odd: float) -> None:
        self.rnd = random.Random(seed)
        self.odd = odd
        self.ns = uuid.UUID(int=seed + 1)

    def urn(self, name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(self.ns, name)}"

    def when(self, day: int, minute: int = 0) -> str:
        tz = self.rnd.choice(["Z", "+01:00", "-05:00", ".123+02:00"])
        hour = 8 + minute // 60 % 10
        return f"2021-{1 + day % 12:02d}-{1 + day % 28:02d}T{hour:02d}:{minute % 60:02d}:00{tz}"

    def rough(self, r: dict[str, Any]) -> dict[str, Any]:
        """Missing, unknown and reordered fields, with probability ``odd``."""
        rnd = self.rnd
        if rnd.random() < self.odd:
            keys = [k for k in r if k not in ("resourceType", "id")]
            if keys:
                r.pop(rnd.choice(keys))
        if rnd.random() < self.odd:
            r[rnd.choice(["_status", "text", "xUnknown", "modifierExtension"])] = rnd.choice(
                [{"div": "<div>x</div>", "status": "generated"}, [1, {"a": None}], 1e300, True, None,
                 "ü€𝄞", 2**70, -0.0, {}, []])
        if rnd.random() < self.odd:  # resourceType last: read through the keys, not the first bytes
            rt = r.pop("resourceType")
            r["resourceType"] = rt
        return r

    def bundle(self, patients: int, encounters: int) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []

        def add(name: str, r: dict[str, Any]) -> None:
            r = {"resourceType": r.pop("resourceType"), "id": str(uuid.uuid5(self.ns, name)), **r}
            r = self.rough(r)
            if self.rnd.random() < self.odd / 2:
                r.pop("id", None)  # keyed by its fullUrl
            entries.append({"fullUrl": self.urn(name), "resource": r,
                            "request": {"method": "POST", "url": r["resourceType"]}})

        for p in range(patients):
            self.patient(p, add)
            for e in range(encounters):
                self.encounter(p, e, add)
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    def patient(self, p: int, add: Any) -> None:
        rnd = self.rnd
        add(f"p{p}", {
            "resourceType": "Patient",
            "meta": {"lastUpdated": self.when(p)},
            "extension": [
                {"url": RACE, "extension": [{"url": "text", "valueString": "White"}]},
                {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                 "valueAddress": {"city": "Zürich", "country": "CH"}},
                {"url": "http://synthetichealth.github.io/synthea/disability-adjusted-life-years",
                 "valueDecimal": round(rnd.random() * 3, 6)}],
            "identifier": [
                {"system": "https://github.com/synthetichealth/synthea", "value": self.urn(f"p{p}")[9:]},
                {"type": _cc("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"),
                 "system": "http://hospital.smarthealthit.org", "value": f"MRN{p:05d}"},
                {"type": _cc("http://terminology.hl7.org/CodeSystem/v2-0203", "SS"),
                 "system": "http://hl7.org/fhir/sid/us-ssn", "value": f"999-{p % 90 + 10}-{p:04d}"}],
            "name": [{"use": "official", "family": rnd.choice(["Kub", "Müller", "O'Hara", "Ng"]),
                      "given": [rnd.choice(["Ana", "José", "Li"]), "M"], "prefix": ["Ms."]}],
            "telecom": [{"system": "phone", "value": f"555-{p:04d}", "use": "home"}],
            "gender": rnd.choice(["female", "male"]),
            "birthDate": rnd.choice([f"19{40 + p % 60}-0{1 + p % 9}-1{p % 10}", f"19{50 + p % 40}"]),
            **({"deceasedDateTime": self.when(p + 3)} if p % 7 == 3 else {"deceasedBoolean": p % 7 == 4}),
            "address": [{"line": [f"{p} Main St", "Apt 1"], "city": "Springfield", "state": "MA",
                         "postalCode": "01101", "country": "US"}],
            "maritalStatus": _cc("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married"),
            "communication": [{"language": _cc("urn:ietf:bcp:47", "en-US", "English")}],
            "multipleBirthBoolean": False,
        })

    def encounter(self, p: int, e: int, add: Any) -> None:
        rnd = self.rnd
        pat = {"reference": self.urn(f"p{p}")}
        enc = f"p{p}e{e}"
        eref = {"reference": self.urn(enc)}
        day = p * 31 + e
        add(enc, {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [_cc(SNOMED, "185349003", "Encounter for check up", "Encounter for check up")],
            "subject": pat, "participant": [{"individual": {"reference": "Practitioner?identifier=npi|1"}}],
            "period": {"start": self.when(day), "end": self.when(day, 30)},
            "reasonCode": [_cc(SNOMED, "72892002", "Normal pregnancy")] if e % 3 == 0 else [],
            "serviceProvider": {"reference": "Organization?identifier=synthea|x", "display": "Clinic"},
            "hospitalization": {"dischargeDisposition": {"text": "home"}} if e % 4 == 1 else {},
        })
        obs_names = []
        for o in range(rnd.randint(2, 6)):
            name = f"{enc}o{o}"
            obs_names.append(name)
            add(name, self.observation(o, pat, eref, day))
        add(f"{enc}panel", {
            "resourceType": "Observation", "status": "final",
            "category": [_cc("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")],
            "code": _cc(LOINC, "57698-3", "Lipid panel"), "subject": pat, "encounter": eref,
            "effectiveDateTime": self.when(day, 12),
            "hasMember": [{"reference": self.urn(n)} for n in obs_names],
            "derivedFrom": [{"reference": self.urn(obs_names[0])}],
        })
        add(f"{enc}c", {
            "resourceType": "Condition",
            "clinicalStatus": _cc(f"{HL7}/condition-clinical", "active"),
            "verificationStatus": _cc(f"{HL7}/condition-ver-status", "confirmed"),
            "category": [_cc(f"{HL7}/condition-category", "encounter-diagnosis")],
            "code": rnd.choice([_cc(SNOMED, "444814009", "Viral sinusitis"), {"text": "Hyperlipidemia"}]),
            "subject": pat, "encounter": eref,
            **rnd.choice([{"onsetDateTime": self.when(day)}, {"onsetPeriod": {"start": self.when(day)}},
                          {"onsetPeriod": {}, "onsetString": "childhood"}]),
            "recordedDate": self.when(day, 5),
            "note": [{"text": "seen"}, {"authorString": "dr"}] if e % 2 else [],
        })
        add(f"{enc}proc", {
            "resourceType": "Procedure", "status": "completed",
            "code": _cc(SNOMED, "430193006", "Medication reconciliation"), "subject": pat, "encounter": eref,
            "performedPeriod": {"start": self.when(day, 10), "end": self.when(day, 20)},
            "performer": [{"actor": {"reference": "Practitioner?identifier=npi|1"}}],
            "bodySite": [_cc(SNOMED, "368209003", "Right arm")],
        })
        med: dict[str, Any] = {
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": pat, "encounter": eref, "authoredOn": self.when(day, 15),
            "requester": {"reference": "Practitioner?identifier=npi|1"},
            "dosageInstruction": [{
                "sequence": 1, "text": "Take 1 tablet daily",
                "timing": {"repeat": {"frequency": 1, "period": rnd.choice([1, 0.5, 12]), "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": rnd.choice([1, 2.5, 81]), "unit": "mg"}}],
                "route": _cc(SNOMED, "26643006", "Oral")}],
        }
        if e % 2:
            med["contained"] = [{"resourceType": "Medication", "id": "m",
                                 "code": _cc(RXNORM, "313782", "Acetaminophen")}]
            med["medicationReference"] = {"reference": "#m"}
        else:
            med["medicationCodeableConcept"] = _cc(RXNORM, "834061", "Penicillin V")
        add(f"{enc}med", med)
        if e % 2 == 0:
            add(f"{enc}img", {
                "resourceType": "ImagingStudy", "status": "available",
                "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.840.99999.{p}.{e}"},
                               {"type": _cc("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN"),
                                "value": f"ACC{p}{e}"}],
                "subject": pat, "encounter": eref, "started": self.when(day, 40),
                "numberOfSeries": 2, "numberOfInstances": rnd.randint(1, 300),
                "procedureCode": [_cc(SNOMED, "241055006", "Mammogram")],
                "series": [{"uid": f"1.2.840.99999.{p}.{e}.1", "modality": {"system": "DCM", "code": "MG"}},
                           {"uid": f"1.2.840.99999.{p}.{e}.2", "modality": {}},
                           {"uid": f"1.2.840.99999.{p}.{e}.3", "modality": {"display": "no code"}}],
            })
        add(f"{enc}dr", {
            "resourceType": "DiagnosticReport", "status": "final",
            "category": [_cc("http://loinc.org", "LP29684-5", "Radiology")],
            "code": _cc(LOINC, "57698-3"), "subject": pat, "encounter": eref,
            "effectiveDateTime": self.when(day, 45), "issued": self.when(day, 50),
            "result": [{"reference": self.urn(n)} for n in obs_names],
            "presentedForm": [{"contentType": "text/plain", "data": "bm90ZQ=="}],
        })
        add(f"{enc}doc", {
            "resourceType": "DocumentReference", "status": "current",
            "type": _cc(LOINC, "34117-2", "History and physical note"), "subject": pat,
            "date": self.when(day, 55), "author": [{"reference": "Practitioner?identifier=npi|1"}],
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "size": 120}}],
            "context": {"encounter": [eref], "period": {"start": self.when(day), "end": self.when(day, 30)}},
        })
        add(f"{enc}claim", {
            "resourceType": "Claim", "status": "active", "patient": pat,
            "item": [{"sequence": 1, "encounter": [eref], "net": {"value": 129.16, "currency": "USD"}}],
            "total": {"value": 129.16, "currency": "USD"},
        })

    def observation(self, o: int, pat: dict[str, Any], eref: dict[str, Any], day: int) -> dict[str, Any]:
        rnd = self.rnd
        kind = rnd.randrange(6)
        obs: dict[str, Any] = {
            "resourceType": "Observation", "status": rnd.choice(["final", "amended"]),
            "category": [_cc("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")],
            "subject": pat, "encounter": eref, "issued": self.when(day, o),
        }
        if kind == 0:  # blood pressure with components
            obs["code"] = _cc(LOINC, "85354-9", "Blood pressure panel", "Blood pressure")
            obs["component"] = [
                {"code": _cc(LOINC, "8480-6", "Systolic"),
                 "valueQuantity": {"value": rnd.randint(100, 160), "unit": "mm[Hg]", "system": UCUM}},
                {"code": _cc(LOINC, "8462-4", "Diastolic"),
                 "valueQuantity": {"value": rnd.randint(60, 100), "code": "mm[Hg]", "system": UCUM},
                 "interpretation": [_cc(f"{HL7}/v3-ObservationInterpretation", "N")]},
                {"code": {"text": "position"}, "valueCodeableConcept": {"text": "sitting"}},
                {"code": _cc(LOINC, "8478-0"), "valueString": "n/a"}]
        elif kind == 1:  # coded value
            obs["code"] = _cc(LOINC, "72166-2", "Tobacco smoking status")
            obs["valueCodeableConcept"] = rnd.choice([_cc(SNOMED, "266919005", "Never smoked"),
                                                      {"text": "unknown"}])
        elif kind == 2:  # text-only code, period, string value
            obs["code"] = {"text": "free text observation"}
            obs["effectivePeriod"] = {"start": self.when(day), "end": self.when(day, 5)}
            obs["valueString"] = rnd.choice(["negative", "Grüße", ""])
        elif kind == 3:
            obs["code"] = _cc(LOINC, "2708-6", "Oxygen saturation")
            obs["effectiveInstant"] = self.when(day, 7)
            obs["valueInteger"] = rnd.randint(90, 100)
            obs["dataAbsentReason"] = {"text": "n/a"} if o % 2 else {}
            obs["note"] = [{"text": "on room air"}]
        else:  # vital sign with reference range and interpretation
            code, display, unit, mean = rnd.choice(VITALS)
            value = rnd.choice([round(rnd.gauss(mean, mean / 10), 2), int(mean), 10**20, 0])
            obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": display},
                                      {"system": SNOMED, "code": "x"}], "text": display}
            obs["effectiveDateTime"] = self.when(day, o)
            obs["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
            obs["referenceRange"] = [{"low": {"value": mean * 0.8}, "high": {"value": int(mean * 1.2)},
                                      "text": "normal"}]
            obs["interpretation"] = [_cc("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                         rnd.choice("LNH"))]
            obs["performer"] = [{"reference": "Practitioner?identifier=npi|1"}]
        if o % 5 == 4:
            obs["extension"] = [{"url": "http://x/device", "valueReference": {"reference": "Device/1"}}]
        return obs


def synthea_like(patients: int = 20, encounters: int = 3, *, seed: int = 0,
                 odd: float = 0.0) -> dict[str, Any]:
    """A transaction Bundle shaped like Synthea's output (see the module docstring)."""
    return _Gen(seed, odd).bundle(patients, encounters)
