"""A result's FHIR encoding against real servers: kit's embedded FHIR server, and one answering 422."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from kit.errors import OperationOutcomeError
from kit.examples.fhir import MRN_SYSTEM
from kit.fhir.client import FhirClient, RetryPolicy
from kit.fhir.frames import to_frame, with_patient_id
from kit.fhir.resources import parse_reference
from kit.fhir.server import EmbeddedFhirServer
from kit.results.fhir import (
    DICOM_UID_SYSTEM,
    diagnostic_report,
    encode_bundle,
    observation,
    parts,
    transaction_bundle,
)
from tests.integration.fhir_client.conftest import serve_app as fhir_client_app
from tests.unit.results.samples import sample, with_subject

pytestmark = pytest.mark.timeout(120)
FAST = RetryPolicy(max_attempts=2, backoff=0.05, max_backoff=0.2, max_total_wait=2.0)
SYSTEM = "urn:kit:analysis-result"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedFhirServer]:
    with EmbeddedFhirServer(tmp_path / "fhir.db", port=0) as running:
        yield running


@pytest.fixture
def client(server: EmbeddedFhirServer) -> Iterator[FhirClient]:
    with FhirClient(server.base_url, retries=FAST, timeout=10) as c:
        yield c


def _locations(response: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, id, version) of each entry of a transaction-response, from response.location."""
    out = []
    for e in response["entry"]:
        location = e["response"]["location"]
        rtype, rid, _, version = location.split("/")[-4:]
        out.append((rtype, rid, version))
    return out


def _count(client: FhirClient, rtype: str, value: str) -> int:
    return len(list(client.search(rtype, {"identifier": f"{SYSTEM}|{value}"})))


def test_bundle_posted_read_back_by_id_and_version_equal(client: FhirClient) -> None:
    patient = client.create({"resourceType": "Patient", "name": [{"family": "Moreau", "given": ["Alice"]}],
                             "identifier": [{"system": MRN_SYSTEM, "value": "MRN1001"}]})
    result = with_subject(sample(), fhir_patient=patient["id"])
    bundle = encode_bundle(result, sr_instance_uid=result.uid("sr"), seg_instance_uid=result.uid("seg"))
    response = client.transaction(bundle)
    where = _locations(response)
    assert [s for s in (e["response"]["status"] for e in response["entry"])] == ["201 Created"] * 4
    urls = {e["fullUrl"]: f"{t}/{i}" for e, (t, i, _) in zip(bundle["entry"], where, strict=True)}
    for sent, (rtype, rid, version) in zip(bundle["entry"], where, strict=True):
        got = client.vread(rtype, rid, version)
        assert got == client.read(rtype, rid)
        assert got["meta"]["versionId"] == version
        expected = dict(sent["resource"])
        if rtype == "DiagnosticReport":  # the server rewrote the urn:uuid references to the ids it gave
            expected["result"] = [{"reference": urls[r["reference"]]} for r in expected["result"]]
        assert {k: v for k, v in got.items() if k not in ("id", "meta")} == expected
    # the report's results resolve to the Observations created, and frames join them to the MRN
    report = client.read("DiagnosticReport", where[-1][1])
    assert [parse_reference(r["reference"]) for r in report["result"]] == [(t, i) for t, i, _ in where[:-1]]
    obs = to_frame(client.search("Observation", {"patient": patient["id"]}), "Observation")
    patients = to_frame([client.read("Patient", patient["id"])], "Patient")
    assert with_patient_id(obs, patients)["patient_id"].to_list() == ["MRN1001"] * 3
    # and the report is found from its SR's and SEG's SOP Instance UIDs
    for kind in ("sr", "seg"):
        token = f"{DICOM_UID_SYSTEM}|urn:oid:{result.uid(kind)}"
        found = list(client.search("DiagnosticReport", {"identifier": token}))
        assert [r["id"] for r in found] == [where[-1][1]]


def test_posting_the_same_result_twice_creates_nothing_new(client: FhirClient) -> None:
    result = sample()  # subject by MRN identifier only: no Patient needed on the server
    first = _locations(client.transaction(encode_bundle(result)))
    again = client.transaction(encode_bundle(result))
    assert [e["response"]["status"] for e in again["entry"]] == ["200 OK"] * 4
    assert _locations(again) == first  # same ids, still version 1
    for part in parts(result):
        rtype = "DiagnosticReport" if part == "report" else "Observation"
        assert _count(client, rtype, f"{result.result_id}/{part}") == 1
    assert len(list(client.search("Observation"))) == 3 and len(list(client.search("DiagnosticReport"))) == 1
    # another result is another set of resources
    client.transaction(encode_bundle(sample(result_id="res-2")))
    assert _count(client, "DiagnosticReport", "res-2/report") == 1
    assert _count(client, "DiagnosticReport", "res-1/report") == 1


def test_a_server_that_refuses_raises_operation_outcome_and_stores_nothing(client: FhirClient) -> None:
    result = sample()
    # two resources already claim the first Observation's identifier: the conditional create is ambiguous
    twin = {**encode_bundle(result)["entry"][0]["resource"]}
    client.create(twin)
    client.create(twin)
    with pytest.raises(OperationOutcomeError) as err:
        client.transaction(encode_bundle(result))
    assert err.value.status_code == 412 and err.value.issues
    # the transaction rolled back
    assert _count(client, "DiagnosticReport", f"{result.result_id}/report") == 0
    assert _count(client, "Observation", f"{result.result_id}/label-1") == 0


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """A test app on a free loopback port (the FHIR client tests' runner); yields its FHIR base."""
    with fhir_client_app(app) as origin:
        yield origin + "/fhir"


def test_a_422_operation_outcome_is_an_operation_outcome_error() -> None:
    """A profile-validating EHR refuses the Bundle (as a US Core server does for a missing must-support)."""
    app = FastAPI()
    received: list[dict[str, Any]] = []

    @app.post("/fhir")
    async def transaction(body: dict[str, Any]) -> JSONResponse:
        received.append(body)
        return JSONResponse({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing", "diagnostics": "Observation.performer is required",
            "expression": ["Bundle.entry[0].resource.performer"]}]}, status_code=422,
            media_type="application/fhir+json")

    with serve_app(app) as base, FhirClient(base, retries=FAST, timeout=10) as c:
        with pytest.raises(OperationOutcomeError) as err:
            c.transaction(encode_bundle(sample()))
    assert err.value.status_code == 422
    assert "Observation.performer is required" in str(err.value)
    assert err.value.issues[0]["expression"] == ["Bundle.entry[0].resource.performer"]
    assert received and received[0]["entry"][0]["request"]["method"] == "POST"


def test_helpers_post_in_one_transaction(client: FhirClient) -> None:
    patient = client.create({"resourceType": "Patient",
                             "identifier": [{"system": MRN_SYSTEM, "value": "M9"}]})
    hr = observation(patient["id"], "8867-4", 72, "/min", display="Heart rate")
    weight = observation(patient["id"], "29463-7", 80.5, "kg", display="Body weight")
    report = diagnostic_report(patient["id"], [hr, weight], conclusion="normal")
    response = client.transaction(transaction_bundle([hr, weight, report]))
    where = _locations(response)
    stored = client.read("DiagnosticReport", where[2][1])
    assert [parse_reference(r["reference"]) for r in stored["result"]] == [(t, i) for t, i, _ in where[:2]]
    values = [client.read("Observation", i)["valueQuantity"]["value"] for _, i, _ in where[:2]]
    assert values == [72.0, 80.5]
