"""FhirClient against the embedded FHIR server over real HTTP: CRUD, paging, include, bundles."""

from __future__ import annotations

import uuid

import polars as pl
import pytest

from kit.errors import FhirError, FhirValidationError, OperationOutcomeError
from kit.fhir.client import BatchError, FhirClient, SearchMode

MRN = "http://hospital.example.org/mrn"


def _patient(family: str, mrn: str | None = None) -> dict:
    p = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], "gender": "female",
         "birthDate": "1960-02-03"}
    if mrn:
        p["identifier"] = [{"system": MRN, "value": mrn,
                            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "MR"}]}}]
    return p


def test_capabilities(client: FhirClient) -> None:
    cap = client.capabilities()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"].startswith("4.0")


def test_create_read_vread_update_delete(client: FhirClient) -> None:
    created = client.create(_patient("Crud"), validate=True)
    pid = created["id"]
    assert created["meta"]["versionId"] == "1"
    assert client.read("Patient", pid)["name"][0]["family"] == "Crud"

    changed = {**created, "gender": "male"}
    updated = client.update(changed, if_match=1)
    assert updated["meta"]["versionId"] == "2"
    assert client.vread("Patient", pid, 1)["gender"] == "female"
    assert client.vread("Patient", pid, "2")["gender"] == "male"

    with pytest.raises(FhirError) as stale:  # version-aware update with an old version
        client.update({**changed, "gender": "other"}, if_match=1)
    assert stale.value.status_code == 412

    client.delete("Patient", pid)
    with pytest.raises(FhirError) as gone:
        client.read("Patient", pid)
    assert gone.value.status_code in (404, 410)


def test_read_missing_is_an_error_not_empty(client: FhirClient) -> None:
    with pytest.raises(FhirError) as err:
        client.read("Patient", "does-not-exist")
    assert err.value.status_code == 404


def test_conditional_create_returns_the_existing_resource(client: FhirClient) -> None:
    mrn = uuid.uuid4().hex[:10]
    first = client.create(_patient("Cond", mrn), if_none_exist={"identifier": f"{MRN}|{mrn}"})
    second = client.create(_patient("Cond", mrn), if_none_exist=f"identifier={MRN}|{mrn}")
    assert second["id"] == first["id"]
    found = list(client.search("Patient", identifier=f"{MRN}|{mrn}"))
    assert [r["id"] for r in found] == [first["id"]]


def test_invalid_resource_is_refused_before_sending(client: FhirClient) -> None:
    bad = {"resourceType": "Patient", "gender": "sometimes", "birthDate": "yesterday"}
    with pytest.raises(FhirValidationError) as err:
        client.create(bad, validate=True)
    assert err.value.issues
    assert any("Patient.birthDate" in (i.get("expression") or [""])[0] for i in err.value.issues)


def test_invalid_resource_refused_by_the_server_is_an_operation_outcome(client: FhirClient) -> None:
    with pytest.raises(OperationOutcomeError) as err:
        client.create({"resourceType": "Patient", "birthDate": "yesterday"})
    assert err.value.status_code in (400, 422)
    assert err.value.issues and err.value.issues[0]["severity"] in ("error", "fatal")


def test_search_follows_every_page(client: FhirClient) -> None:
    family = "Page" + uuid.uuid4().hex[:8]
    ids = {client.create(_patient(family))["id"] for _ in range(23)}
    found = [r["id"] for r in client.search("Patient", family=family, _count=5)]
    assert sorted(found) == sorted(ids)  # all 5 pages, no duplicates
    assert len(list(client.search("Patient", {"family": family, "_count": 5}, max_results=7))) == 7
    assert list(client.search("Patient", family=family, max_results=0)) == []
    frame = client.search_frame("Patient", family=family, _count=4)
    assert frame.height == 23
    assert frame.schema["birth_date"] == pl.Date


def test_include_entries_are_marked(client: FhirClient) -> None:
    mrn = uuid.uuid4().hex[:10]
    patient = client.create(_patient("Incl", mrn))
    uids = [f"1.2.826.0.1.3680043.8.498.{n}{uuid.uuid4().int % 10**12}" for n in range(3)]
    for uid in uids:
        client.create({"resourceType": "ImagingStudy", "status": "available",
                       "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
                       "subject": {"reference": f"Patient/{patient['id']}"}})
    entries = list(client.search_entries("ImagingStudy", subject=f"Patient/{patient['id']}",
                                         _include="ImagingStudy:subject", _count=2))
    matches = [e for e in entries if e.mode is SearchMode.MATCH]
    includes = [e for e in entries if e.mode is SearchMode.INCLUDE]
    assert len(matches) == 3
    assert [e.resource["id"] for e in includes] == [patient["id"]]  # once, though on 2 pages
    frames = client.search_frames("ImagingStudy", subject=f"Patient/{patient['id']}",
                                  _include="ImagingStudy:subject")
    assert frames["Patient"]["patient_id"].to_list() == [mrn]
    assert sorted(frames["ImagingStudy"]["study_instance_uid"].to_list()) == sorted(uids)
    rev = list(client.search_entries("Patient", _id=patient["id"], _revinclude="ImagingStudy:subject"))
    assert [e.mode for e in rev].count(SearchMode.INCLUDE) == 3


def test_transaction_resolves_references_all_or_nothing(client: FhirClient) -> None:
    mrn = uuid.uuid4().hex[:10]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": _patient("Tx", mrn),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
                      "code": {"text": "weight"}, "valueQuantity": {"value": 70.5, "unit": "kg"},
                      "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    result = client.transaction(bundle, validate=True)
    assert result["type"] == "transaction-response"
    assert all(e["response"]["status"].startswith("201") for e in result["entry"])
    pid = next(e["response"]["location"] for e in result["entry"]
               if e["response"]["location"].startswith("Patient/")).split("/")[1]
    obs = list(client.search("Observation", subject=f"Patient/{pid}"))
    assert len(obs) == 1 and obs[0]["subject"]["reference"] == f"Patient/{pid}"

    failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _patient("TxFail" + mrn), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/no-such-thing"}},
        {"resource": {"resourceType": "Patient", "birthDate": "bad"},
         "request": {"method": "POST", "url": "Patient"}}]}
    with pytest.raises(FhirError):
        client.transaction(failing)
    assert list(client.search("Patient", family="TxFail" + mrn)) == []  # nothing applied


def test_batch_reports_failed_entries(client: FhirClient) -> None:
    family = "Batch" + uuid.uuid4().hex[:8]
    entries = [{"resource": _patient(family), "request": {"method": "POST", "url": "Patient"}},
               {"request": {"method": "GET", "url": "Patient/no-such-patient"}}]
    with pytest.raises(BatchError) as err:
        client.batch(entries)
    assert err.value.bundle["type"] == "batch-response"
    assert err.value.issues[0]["expression"] == ["Bundle.entry[1]"]
    assert len(list(client.search("Patient", family=family))) == 1  # the good entry was applied
    ok = client.batch([{"request": {"method": "GET", "url": f"Patient?family={family}"}}])
    assert ok["entry"][0]["response"]["status"].startswith("200")


def test_bundle_entries_need_requests(client: FhirClient) -> None:
    with pytest.raises(FhirValidationError):
        client.batch([{"resource": _patient("NoRequest")}])
