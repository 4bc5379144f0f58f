"""Bundle references resolve in every reference column; entries without id are keyed by fullUrl.

Issue 8 #4 and #5, on a Synthea-shaped transaction Bundle (tests/unit/fhir_frames/synthea.py).
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from kit.fhir.frames import SCHEMAS, reference_id, to_frame, to_frames, with_patient_id
from tests.unit.fhir_frames.synthea import NPI, ORG, synthea_bundle, uid
from tests.unit.fhir_frames.synthea import put as _put

N_ENC, N_OBS = 3, 4


def _matches(left: pl.DataFrame, column: str, right: pl.DataFrame) -> tuple[int, int]:
    """(rows of ``left`` with a reference in ``column``, of which join ``right.id``)."""
    refs = (
        left.select(pl.col(column)).explode(column)
        if left.schema[column] == pl.List(pl.Utf8)
        else left.select(column)
    )
    refs = refs.drop_nulls()
    joined = refs.join(right.select("id"), left_on=reference_id(column), right_on="id", how="inner")
    return refs.height, joined.height


@pytest.mark.parametrize("with_ids", [True, False])
def test_every_synthea_join_matches(with_ids: bool) -> None:
    f = to_frames(synthea_bundle(with_ids=with_ids, encounters=N_ENC, obs_per_encounter=N_OBS))
    obs, enc, rep = f["Observation"], f["Encounter"], f["DiagnosticReport"]
    assert obs.height == N_ENC * (N_OBS + 1)
    assert _matches(obs, "encounter", enc) == (obs.height, obs.height)
    assert _matches(rep, "results", obs) == (N_ENC * N_OBS, N_ENC * N_OBS)
    assert _matches(obs, "has_member", obs) == (N_ENC * N_OBS, N_ENC * N_OBS)
    assert _matches(obs, "derived_from", obs) == (N_ENC, N_ENC)
    assert _matches(rep, "based_on", f["ServiceRequest"]) == (N_ENC, N_ENC)
    for frame, column in (
        (rep, "encounter"),
        (f["Condition"], "encounter"),
        (f["Procedure"], "encounter"),
        (f["MedicationRequest"], "encounter"),
        (f["DocumentReference"], "encounter"),
        (f["ServiceRequest"], "encounter"),
    ):
        assert _matches(frame, column, enc) == (N_ENC, N_ENC), column
    pract = f["Practitioner"]
    for frame, column in (
        (obs.filter(pl.col("performer").is_not_null()), "performer"),
        (rep, "performer"),
        (f["Procedure"], "performer"),
        (f["MedicationRequest"], "requester"),
        (f["DocumentReference"], "author"),
        (enc, "participant"),
    ):
        n, m = _matches(frame, column, pract)
        assert n == m and n > 0, column
    assert _matches(enc, "location", f["Location"]) == (N_ENC, N_ENC)
    # every patient_ref joins the Patient, so with_patient_id fills the MRN everywhere
    for rtype in (
        "Observation",
        "Encounter",
        "DiagnosticReport",
        "Condition",
        "Procedure",
        "MedicationRequest",
        "DocumentReference",
        "ServiceRequest",
        "Claim",
    ):
        filled = with_patient_id(f[rtype], f["Patient"])
        assert filled["patient_id"].to_list() == ["MRN-4711"] * f[rtype].height, rtype
        assert _matches(f[rtype], "subject", f["Patient"])[1] == f[rtype].height
    # references outside the Bundle are kept as written
    assert enc["service_provider"].to_list() == [ORG] * N_ENC
    assert f["Patient"]["general_practitioner"].to_list() == [NPI]


def test_resolved_references_name_type_and_id() -> None:
    f = to_frames(synthea_bundle())
    o = f["Observation"].row(0, named=True)
    assert o["encounter"] == f"Encounter/{uid('encounter-0')}"
    assert o["subject"] == f"Patient/{uid('patient')}" and o["patient_ref"] == uid("patient")
    assert o["performer"] == f"Practitioner/{uid('practitioner')}"
    assert f["DiagnosticReport"]["results"][0].to_list() == [
        f"Observation/{uid(f'obs-0-{i}')}" for i in range(N_OBS)
    ]


def test_entries_without_id_are_keyed_by_full_url() -> None:
    f = to_frames(synthea_bundle(with_ids=False))
    assert f["Patient"]["id"].to_list() == [f"urn:uuid:{uid('patient')}"]
    assert f["Observation"]["id"].null_count() == 0
    assert f["Observation"]["encounter"][0] == f"urn:uuid:{uid('encounter-0')}"
    restful = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "http://h.example/fhir/Patient/p9", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "http://h.example/fhir/Other/p8", "resource": {"resourceType": "Patient"}},
        ],
    }
    assert to_frame(restful, "Patient")["id"].to_list() == ["p9", "http://h.example/fhir/Other/p8"]


def test_patient_ref_to_a_urn_that_is_not_a_patient_is_null() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:g1", "resource": {"resourceType": "Group", "id": "g1"}},
            {"resource": {"resourceType": "Observation", "id": "o", "subject": {"reference": "urn:uuid:g1"}}},
        ],
    }
    row = to_frame(bundle, "Observation").row(0, named=True)
    assert row["subject"] == "Group/g1" and row["patient_ref"] is None


# every reference column: where it comes from ("name[]" = a one-item array, "name*" = an array of refs)
REF_PATHS: dict[str, dict[str, str]] = {
    "Patient": {
        "general_practitioner": "generalPractitioner[]",
        "managing_organization": "managingOrganization",
    },
    "Observation": {
        "subject": "subject",
        "encounter": "encounter",
        "performer": "performer[]",
        "has_member": "hasMember*",
        "derived_from": "derivedFrom*",
    },
    "Condition": {"subject": "subject", "encounter": "encounter"},
    "Procedure": {"subject": "subject", "encounter": "encounter", "performer": "performer[].actor"},
    "Encounter": {
        "subject": "subject",
        "participant": "participant[].individual",
        "location": "location[].location",
        "service_provider": "serviceProvider",
    },
    "DiagnosticReport": {
        "subject": "subject",
        "encounter": "encounter",
        "performer": "performer[]",
        "results": "result*",
        "imaging_study": "imagingStudy*",
        "based_on": "basedOn*",
    },
    "ImagingStudy": {
        "subject": "subject",
        "encounter": "encounter",
        "based_on": "basedOn*",
        "endpoint": "endpoint[]",
    },
    "MedicationRequest": {
        "medication_reference": "medicationReference",
        "subject": "subject",
        "encounter": "encounter",
        "requester": "requester",
    },
    "Appointment": {
        "subject": "participant[].actor",
        "practitioner": "participant[].actor",
        "location": "participant[].actor",
        "based_on": "basedOn*",
    },
    "ServiceRequest": {
        "subject": "subject",
        "encounter": "encounter",
        "requester": "requester",
        "performer": "performer[]",
    },
    "Practitioner": {},
    "DocumentReference": {"subject": "subject", "author": "author[]", "encounter": "context.encounter[]"},
}


def test_the_reference_table_covers_every_reference_column() -> None:
    assert set(REF_PATHS) == set(SCHEMAS)
    for rtype, cols in SCHEMAS.items():
        assert {c.name for c in cols if c.role == "ref"} == set(REF_PATHS[rtype]), rtype


@pytest.mark.parametrize("rtype", sorted(REF_PATHS))
def test_every_reference_column_resolves_urns(rtype: str) -> None:
    targets = {
        "Patient": "pt",
        "Encounter": "en",
        "Practitioner": "pr",
        "Location": "lo",
        "Organization": "or",
        "Observation": "ob",
        "Endpoint": "ep",
        "Medication": "me",
        "ServiceRequest": "sr",
        "ImagingStudy": "is",
    }
    entries = [
        {"fullUrl": f"urn:uuid:{rid}", "resource": {"resourceType": t, "id": f"id-{rid}"}}
        for t, rid in targets.items()
    ]
    guess = {
        "subject": "Patient",
        "encounter": "Encounter",
        "location": "Location",
        "results": "Observation",
        "has_member": "Observation",
        "derived_from": "Observation",
        "imaging_study": "ImagingStudy",
        "based_on": "ServiceRequest",
        "endpoint": "Endpoint",
        "medication_reference": "Medication",
        "service_provider": "Organization",
        "managing_organization": "Organization",
    }
    resource: dict[str, Any] = {"resourceType": rtype, "id": "x"}
    expected = {}
    for column, path in REF_PATHS[rtype].items():
        target = guess.get(column, "Practitioner")
        reference = {"reference": f"urn:uuid:{targets[target]}"}
        if rtype == "Appointment" and path == "participant[].actor":
            resource.setdefault("participant", []).append({"actor": {**reference, "type": target}})
        elif path.endswith("*"):
            resource[path[:-1]] = [reference, reference]
        else:
            _put(resource, path, reference)
        want = f"{target}/id-{targets[target]}"
        expected[column] = [want, want] if path.endswith("*") else want
    row = to_frame(
        {"resourceType": "Bundle", "type": "collection", "entry": [*entries, {"resource": resource}]}, rtype
    ).row(-1, named=True)
    assert row["id"] == "x"
    assert {c: row[c] for c in expected} == expected
    if "patient_ref" in row:
        assert row["patient_ref"] == "id-pt"
