"""kit.results.fhir: an AnalysisResult as validated FHIR R4 Observations, a DiagnosticReport, a Bundle."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

import orjson
import polars as pl
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import FhirValidationError, InvalidInputError, KitError
from kit.examples.fhir import ACSN_SYSTEM, MRN_SYSTEM
from kit.fhir.frames import reference_id, to_frames
from kit.results import Code, Label, Measurement
from kit.results.fhir import (
    DICOM_UID_SYSTEM,
    diagnostic_report,
    encode_bundle,
    encode_fhir,
    full_url,
    observation,
    parts,
    transaction_bundle,
    urn_of,
)
from tests.unit.results.samples import (
    CONCLUSION,
    CREATED,
    DIAMETER,
    LUNG,
    MM,
    STUDY,
    results,
    sample,
    with_subject,
)

UCUM = "http://unitsofmeasure.org"


def r4b_valid(resource: dict[str, Any]) -> None:
    """Validate with fhir.resources.R4B directly (not through kit's wrapper)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_one_observation_per_finding_and_one_report_all_valid_r4b() -> None:
    r = sample()
    out = encode_fhir(r, sr_instance_uid="1.2.3.4", seg_instance_uid="1.2.3.5")
    assert [x["resourceType"] for x in out] == ["Observation"] * 3 + ["DiagnosticReport"]
    for resource in out:
        r4b_valid(resource)
        assert "id" not in resource
        assert resource["status"] == "final"
    d, v, lb, report = out
    assert d["code"]["coding"] == [{"system": "http://snomed.info/sct", "code": "81827009",
                                    "display": "Diameter"}]
    assert d["valueQuantity"] == {"value": 12.5, "unit": "millimeter", "system": UCUM, "code": "mm"}
    assert v["valueQuantity"] == {"value": 0.0001, "unit": "milliliter", "system": UCUM, "code": "mL"}
    assert d["bodySite"]["coding"][0]["code"] == LUNG.value and "bodySite" not in v
    assert d["component"][0]["valueCodeableConcept"]["coding"][0]["code"] == "52988006"
    assert d["effectiveDateTime"] == CREATED.isoformat() == report["effectiveDateTime"]
    assert d["category"][0]["coding"][0]["code"] == "imaging"
    assert d["method"]["coding"][0] == {"system": "urn:kit:algorithm", "version": "1.2.0",
                                        "code": "lesion-finder", "display": "lesion-finder 1.2.0"}
    assert lb["valueCodeableConcept"]["coding"][0] == {"system": "urn:kit:codes", "code": "S-1",
                                                       "display": "Solid | ^ ~ \\ & nodule"}
    assert lb["component"][0]["valueQuantity"]["value"] == 0.93
    assert report["conclusion"] == CONCLUSION
    assert report["code"]["coding"][0]["code"] == "18748-4"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["result"] == [{"reference": full_url(r, p)} for p in parts(r)[:-1]]
    # subject and study by identifier when no FHIR ids are known
    assert d["subject"] == {"type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": "MRN1001"}}
    study = {"type": "ImagingStudy", "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"}}
    assert d["derivedFrom"] == [study] and report["imagingStudy"] == [study]
    # the report names its SR and SEG twins and the accession number
    ids = {(i["system"], i["value"]) for i in report["identifier"]}
    assert {(DICOM_UID_SYSTEM, "urn:oid:1.2.3.4"), (DICOM_UID_SYSTEM, "urn:oid:1.2.3.5"),
            (ACSN_SYSTEM, "ACC1001"), ("urn:kit:analysis-result", "res-1/report")} == ids
    assert report["basedOn"][0]["identifier"]["value"] == "ACC1001"


def test_known_fhir_ids_give_literal_references() -> None:
    r = with_subject(sample(), fhir_patient="p-1", fhir_imaging_study="is-1")
    for resource in encode_fhir(r):
        assert resource["subject"] == {"reference": "Patient/p-1"}
    report = encode_fhir(r)[-1]
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/is-1"}]
    assert encode_fhir(r)[0]["derivedFrom"] == [{"reference": "ImagingStudy/is-1"}]


def test_identifiers_are_deterministic_and_per_result() -> None:
    a, b = encode_bundle(sample()), encode_bundle(sample())
    assert orjson.dumps(a) == orjson.dumps(b)
    c = encode_bundle(sample(result_id="res-2"))
    values = [e["resource"]["identifier"][0]["value"] for e in a["entry"]]
    assert values == ["res-1/measurement-1", "res-1/measurement-2", "res-1/label-1", "res-1/report"]
    other = [e["resource"]["identifier"][0]["value"] for e in c["entry"]]
    assert not set(values) & set(other)
    assert not {e["fullUrl"] for e in a["entry"]} & {e["fullUrl"] for e in c["entry"]}
    assert len({e["fullUrl"] for e in a["entry"]}) == 4


def test_bundle_entries_are_conditional_creates() -> None:
    bundle = encode_bundle(sample())
    r4b_valid(bundle)
    assert bundle["type"] == "transaction"
    for e in bundle["entry"]:
        assert e["fullUrl"].startswith("urn:uuid:")
        req = e["request"]
        assert req["method"] == "POST" and req["url"] == e["resource"]["resourceType"]
        value = e["resource"]["identifier"][0]["value"]
        assert req["ifNoneExist"] == f"identifier=urn%3Akit%3Aanalysis-result%7C{value.replace('/', '%2F')}"


def test_bundle_references_resolve_in_frames() -> None:
    r = sample()
    frames = to_frames(encode_bundle(r))
    obs, reports = frames["Observation"], frames["DiagnosticReport"]
    joined = (reports.select("results").explode("results")
              .join(obs, left_on=reference_id("results"), right_on="id", how="left"))
    assert joined.height == 3 and joined["code"].null_count() == 0
    assert joined["code"].to_list() == ["81827009", "118565006", "F-1"]
    assert joined["value_quantity"].to_list()[:2] == [12.5, 0.0001]
    assert joined["value_unit"].to_list()[:2] == ["millimeter", "milliliter"]
    assert obs["patient_id"].to_list() == ["MRN1001"] * 3
    assert reports["patient_id"].to_list() == ["MRN1001"]
    assert reports["accession_number"].to_list() == ["ACC1001"]
    assert reports["conclusion"].to_list() == [CONCLUSION]
    # the label's score is a component the frames keep
    comps = obs.filter(pl.col("code") == "F-1")["components"].to_list()[0]
    assert comps[0]["value_quantity"] == 0.93


def test_a_code_fhir_cannot_carry_raises_fhir_validation_error() -> None:
    bad = sample(measurements=(Measurement(Code("a  b", "LN", "Spaced"), 1.0, MM),))
    with pytest.raises(FhirValidationError) as err:
        encode_fhir(bad)
    assert "code" in str(err.value)
    with pytest.raises(FhirValidationError):
        encode_bundle(bad)


def test_bad_uids_and_objects_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="sr_instance_uid"):
        encode_fhir(sample(), sr_instance_uid="not a uid")
    with pytest.raises(InvalidInputError):
        encode_fhir({"result_id": "x"})  # type: ignore[arg-type]


def test_label_without_score_has_no_component_and_no_conclusion_no_field() -> None:
    r = sample(labels=(Label(DIAMETER, LUNG),), conclusion=None)
    out = encode_fhir(r)
    assert "component" not in out[2] and "conclusion" not in out[-1]


# -- helpers -------------------------------------------------------------------------------------------
def test_observation_helper_number_text_code() -> None:
    o = observation("p1", "8867-4", 72, "/min", display="Heart rate",
                    effective=dt.datetime(2026, 1, 1, 9, tzinfo=dt.UTC), study_instance_uid=STUDY)
    r4b_valid(o)
    assert o["valueQuantity"] == {"value": 72.0, "unit": "/min", "system": UCUM, "code": "/min"}
    assert o["code"]["coding"] == [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
    assert o["subject"] == {"reference": "Patient/p1"}
    assert o["effectiveDateTime"] == "2026-01-01T09:00:00+00:00"
    assert o["derivedFrom"][0]["identifier"]["value"] == f"urn:oid:{STUDY}"
    assert observation("Patient/p1", DIAMETER, "small")["valueString"] == "small"
    assert observation(f"{MRN_SYSTEM}|MRN1", "x", DIAMETER)["subject"] == {
        "type": "Patient", "identifier": {"system": MRN_SYSTEM, "value": "MRN1"}}
    assert observation("p1", "x", 1.5, effective=dt.date(2026, 1, 2))["effectiveDateTime"] == "2026-01-02"


@pytest.mark.parametrize("kwargs", [
    {"value": True}, {"value": float("nan")}, {"value": float("inf")}, {"value": "text", "unit": "mm"},
    {"value": 1.0, "effective": dt.datetime(2026, 1, 1)}, {"value": 1.0, "patient": ""},
    {"value": 1.0, "patient": "|MRN"}, {"value": 1.0, "study_instance_uid": "x"},
    {"value": [1]},
])
def test_observation_helper_rejects_with_kit_errors(kwargs: dict[str, Any]) -> None:
    args = {"patient": "p1", "code": "8867-4", **kwargs}
    with pytest.raises(InvalidInputError):
        observation(**args)


def test_observation_helper_invalid_fhir_is_fhir_validation_error() -> None:
    with pytest.raises(FhirValidationError):
        observation("p1", " bad code", 1.0)
    with pytest.raises(FhirValidationError):
        observation("p1", "x", 1.0, effective="yesterday")


def test_diagnostic_report_references_by_id_or_content_urn() -> None:
    stored = {**observation("p1", "8867-4", 72, "/min"), "id": "o-1"}
    fresh = observation("p1", "29463-7", 80.5, "kg")
    report = diagnostic_report("p1", [stored, fresh], conclusion="ok", study_instance_uid=STUDY)
    r4b_valid(report)
    assert report["result"] == [{"reference": "Observation/o-1"}, {"reference": urn_of(fresh)}]
    assert report["conclusion"] == "ok" and report["imagingStudy"][0]["type"] == "ImagingStudy"
    assert urn_of(fresh) == urn_of(copy.deepcopy(fresh)) != urn_of(stored)
    bundle = transaction_bundle([stored, fresh, report])
    r4b_valid(bundle)
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "POST", "POST"]
    assert bundle["entry"][1]["fullUrl"] == report["result"][1]["reference"]
    frames = to_frames(bundle)
    joined = (frames["DiagnosticReport"].select("results").explode("results")
              .join(frames["Observation"], left_on=reference_id("results"), right_on="id"))
    assert sorted(joined["value_quantity"].to_list()) == [72.0, 80.5]
    with pytest.raises(FhirValidationError):
        diagnostic_report("p1", [{"resourceType": "Patient"}])


# -- fuzz -------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(results())
def test_any_valid_result_encodes_and_round_trips(result: Any) -> None:
    bundle = encode_bundle(result)  # validated inside; raises only on invalid FHIR
    frames = to_frames(bundle)
    obs = frames.get("Observation")
    n_m = len(result.measurements)
    if n_m:
        assert obs is not None
        got = obs.head(n_m)
        assert got["value_quantity"].to_list() == [m.value for m in result.measurements]
        assert got["code"].to_list() == [m.name.value for m in result.measurements]
        assert got["code_system"].to_list() == [m.name.system for m in result.measurements]
        assert [q["code"] for q in (e["resource"]["valueQuantity"] for e in bundle["entry"][:n_m])] == \
            [m.unit.value for m in result.measurements]
    if result.labels:
        assert obs is not None
        want = [lb.value.value for lb in result.labels]
        assert obs.tail(len(result.labels))["value_code"].to_list() == want
    report = frames["DiagnosticReport"]
    assert report["conclusion"].to_list() == [result.conclusion]
    assert report["results"].list.len().fill_null(0).to_list() == [n_m + len(result.labels)]
    want_pid = None if result.subject.fhir_patient else result.subject.patient_id
    assert report["patient_id"].to_list() == [want_pid]
    assert orjson.dumps(encode_bundle(result)) == orjson.dumps(bundle)


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=40))
def test_arbitrary_codes_encode_or_raise_a_kit_error(value: str, meaning: str) -> None:
    try:
        code = Code(value, "LN", meaning)
    except InvalidInputError:
        return
    try:
        encode_fhir(sample(measurements=(Measurement(code, 1.0, MM),)))
    except KitError:
        pass
    try:
        observation("p1", value, 1.0, display=meaning)
    except KitError:
        pass


def test_result_with_only_a_conclusion() -> None:
    r = dataclasses.replace(sample(), measurements=(), labels=())
    out = encode_fhir(r)
    assert [x["resourceType"] for x in out] == ["DiagnosticReport"]
    assert "result" not in out[0]
