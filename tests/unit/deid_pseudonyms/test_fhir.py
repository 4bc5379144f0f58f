"""kit.deid.fhir: FHIR resources de-identified by type, consistent with DICOM and HL7."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.deid.fhir import FhirDeidentifier
from kit.deid.policy import BirthDate, DeidPolicy, TextField
from kit.deid.pseudonyms import Pseudonymiser
from kit.errors import FhirValidationError, KitError
from kit.fhir.frames import to_frames, with_patient_id
from kit.fhir.resources import validate

KEY = "unit-test-key-0123456789"
MRN = "MRN-4711"
DIV = '<div xmlns="http://www.w3.org/1999/xhtml">'


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": "pat-1",
        "identifier": [{"system": "urn:ssn", "value": "756.1234.5678.97"},
                       {"system": "http://h/mrn", "value": MRN, "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"family": "Zeller", "given": ["Hanna"]}],
        "telecom": [{"system": "phone", "value": "+41 79 555 1234"}],
        "address": [{"city": "Chur", "line": ["Bahnhofstrasse 1"]}],
        "birthDate": "1961-04-05",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                      "valueDateTime": "1961-04-05T06:30:00+01:00"}]},
        "contact": [{"name": {"family": "Zeller", "given": ["Otto"]}, "relationship": [{"text": "son"}]}],
        "text": {"status": "generated", "div": DIV + "Hanna Zeller</div>"},
        "gender": "female", "vendorExtraField": "Hanna",
    }


def _study() -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy", "id": "img-1", "status": "available",
        "subject": {"reference": "http://ehr.example/fhir/Patient/pat-1/_history/3",
                    "display": "Hanna Zeller"},
        "started": "2026-01-12T09:14:00+01:00",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"},
                       {"system": "http://h/accession", "value": "ACC-9"}],
        "series": [{"uid": "1.2.3.4.5.1", "modality": {"code": "CT"},
                    "instance": [{"uid": "1.2.3.4.5.1.1",
                                  "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.2"}}]}],
        "note": [{"text": "Hanna said hello", "time": "2026-01-12"}],
    }


def test_patient_and_references() -> None:
    p = Pseudonymiser(KEY)
    d = FhirDeidentifier(p)
    pat, study = d.resources([_patient(), _study()])
    shift = p.date_shift(MRN)
    assert pat["identifier"] == [{"system": "http://h/mrn", "value": p.patient_id(MRN),
                                  "type": {"coding": [{"code": "MR"}]}}]  # the SSN is removed
    for gone in ("name", "telecom", "address", "birthDate", "_birthDate", "text", "vendorExtraField"):
        assert gone not in pat
    assert pat["contact"] == [{"relationship": [{"text": "son"}]}]
    assert pat["id"] == p.resource_id("pat-1")
    assert study["subject"] == {"reference": f"Patient/{pat['id']}"}  # absolute, versioned -> relative
    assert study["started"] == (dt.date(2026, 1, 12) + shift).isoformat() + "T09:14:00+01:00"
    assert study["identifier"][0]["value"] == "urn:oid:" + p.uid("1.2.3.4.5")
    assert study["identifier"][1]["value"] == p.accession_number("ACC-9")
    assert study["series"][0]["uid"] == p.uid("1.2.3.4.5.1")
    assert study["series"][0]["instance"][0]["uid"] == p.uid("1.2.3.4.5.1.1")
    assert study["series"][0]["instance"][0]["sopClass"]["code"] == "1.2.840.10008.5.1.4.1.1.2"
    assert study["note"][0]["text"] == "Hanna said hello"  # free text: the scrubber's, none here
    # the note and the contact's relationship text (CodeableConcept.text) go to a scrubber when given
    assert d.counts["text_unscrubbed"] == 2 and d.counts["narrative_removed"] == 1
    text = orjson.dumps([pat, study]).decode()
    for secret in ("Zeller", "756.1234", "1961", "pat-1", "ehr.example", "79 555", "Chur", "ACC-9"):
        assert secret not in text
    validate(pat)
    validate(study)
    frames = to_frames([pat, study])
    joined = with_patient_id(frames["ImagingStudy"], frames["Patient"])
    assert joined["patient_id"].to_list() == [p.patient_id(MRN)]
    assert joined["study_instance_uid"].to_list() == [p.uid("1.2.3.4.5")]


def test_birth_year_policy_and_scrubber_seam() -> None:
    p = Pseudonymiser(KEY)
    seen: list[TextField] = []

    def scrub(text: str, field: TextField) -> str:
        seen.append(field)
        return text.replace("Hanna", "[NAME]").replace("Zeller", "[NAME]")

    d = FhirDeidentifier(p, policy=DeidPolicy(BirthDate.YEAR), scrub=scrub)
    pat, study = d.resources([_patient(), _study()])
    assert pat["birthDate"] == str((dt.date(1961, 4, 5) + p.date_shift(MRN)).year)
    assert "_birthDate" not in pat
    assert pat["text"]["div"] == DIV + "[NAME] [NAME]</div>"
    assert study["note"][0]["text"] == "[NAME] said hello"
    by_path = {f.path: f for f in seen}
    assert by_path["ImagingStudy.note.text"].facts is not None
    assert "Zeller^Hanna" in by_path["ImagingStudy.note.text"].facts.names
    assert by_path["Patient.text.div"].kind == "xhtml"


def test_bundle_urls_and_conditional_references() -> None:
    p = Pseudonymiser(KEY)
    bundle = {"resourceType": "Bundle", "type": "transaction", "timestamp": "2026-01-01T00:00:00Z",
              "link": [{"relation": "self", "url": f"http://x/Patient?identifier={MRN}"}],
              "entry": [
                  {"fullUrl": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000001", "resource": _patient(),
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={MRN}"}},
                  {"fullUrl": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000002",
                   "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                "subject": {"reference": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000001"},
                                "performer": [{"reference": f"Practitioner?identifier={MRN}"}],
                                "contained": [{"resourceType": "Practitioner", "id": "dr",
                                               "name": [{"family": "Who"}]}],
                                "effectiveDateTime": "2026-01-12"},
                   "request": {"method": "POST", "url": "Observation"}}]}
    original = copy.deepcopy(bundle)
    out = FhirDeidentifier(p).resources([bundle])[0]
    assert bundle == original  # the input is not modified
    pat_url = out["entry"][0]["fullUrl"]
    assert pat_url == "urn:uuid:" + p.resource_id("0f0e0d0c-0000-4000-8000-000000000001")
    obs = out["entry"][1]["resource"]
    assert obs["subject"]["reference"] == pat_url
    assert "performer" not in obs and "link" not in out
    assert out["entry"][0]["request"] == {"method": "POST", "url": "Patient"}
    assert obs["effectiveDateTime"] == (dt.date(2026, 1, 12) + p.date_shift(MRN)).isoformat()
    assert obs["contained"][0] == {"resourceType": "Practitioner", "id": p.resource_id("dr")}
    assert out["timestamp"].startswith((dt.date(2026, 1, 1) + p.date_shift("")).isoformat())
    assert MRN not in orjson.dumps(out).decode()
    frames = to_frames(out)
    assert with_patient_id(frames["Observation"], frames["Patient"])["patient_id"].to_list() == \
        [p.patient_id(MRN)]


def test_ndjson_and_subject_identifier() -> None:
    p = Pseudonymiser(KEY)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"identifier": {"system": "urn:other", "value": MRN}}, "issued": "2026-01-12T10:00:00Z"}
    lines = orjson.dumps(obs) + b"\n\n" + orjson.dumps(_patient()) + b"\n"
    out = [orjson.loads(line) for line in FhirDeidentifier(p).ndjson(lines).splitlines()]
    assert out[0]["subject"]["identifier"]["value"] == p.patient_id(MRN)
    assert out[0]["issued"] == (dt.date(2026, 1, 12) + p.date_shift(MRN)).isoformat() + "T10:00:00Z"
    with pytest.raises(FhirValidationError):
        FhirDeidentifier(p).ndjson(b"{not json\n")


@pytest.mark.parametrize("bad", [
    [], "Patient", {"resourceType": "Nope"}, {"resourceType": "Patient", "name": "Zeller"},
    {"resourceType": "Patient", "identifier": {"value": "x"}},
    {"resourceType": "Observation", "effectiveDateTime": 20260112},
    {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": 5}}]},
])
def test_malformed_input_raises_a_validation_error(bad: Any) -> None:
    with pytest.raises(FhirValidationError):
        FhirDeidentifier(Pseudonymiser(KEY)).resources([bad])


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=12)
                     | st.sampled_from(["2026-01-12", "2026-01-12T09:14:00Z", "Patient/p1", "urn:uuid:x",
                                        MRN]),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["reference", "value", "system", "start", "text",
                                                        "div", "identifier", "uid", "url", "id"]), inner,
                                       max_size=3), max_leaves=12)
_KEYS = st.sampled_from(["id", "identifier", "subject", "name", "birthDate", "effectiveDateTime", "started",
                         "series", "text", "note", "entry", "contained", "extension", "meta", "period",
                         "issued", "valueString", "bogus"])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["Patient", "Observation", "ImagingStudy", "Bundle", "Encounter"]),
       st.dictionaries(_KEYS, _JSON, max_size=6))
def test_fuzz_only_kit_errors_and_output_reads(rtype: str, body: dict[str, Any]) -> None:
    resource = {"resourceType": rtype, **body}
    before = copy.deepcopy(resource)
    try:
        out = FhirDeidentifier(Pseudonymiser(KEY)).resources([resource])
    except KitError:
        return
    assert resource == before  # never modified
    assert FhirDeidentifier(Pseudonymiser(KEY)).resources([resource]) == out  # deterministic
    data = orjson.dumps(out)
    try:
        to_frames(orjson.loads(data))
    except KitError:
        pass
