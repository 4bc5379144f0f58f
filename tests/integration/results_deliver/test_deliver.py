"""deliver() against real peers: kit's embedded FHIR server and MLLP listener, python-hl7's MLLP server,
a FastAPI EHR answering 422, and (when the SR/SEG encoders are present) the embedded PACS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kit.errors import InvalidInputError
from kit.fhir.client import FhirClient, RetryPolicy
from kit.fhir.server import EmbeddedFhirServer
from kit.hl7.mllp import MLLPListener, MLLPSender
from kit.hl7.mllp import RetryPolicy as MllpRetry
from kit.results.deliver import TARGETS, DeliveryReport, deliver
from kit.results.oru import control_id
from tests.integration.hl7_peer import PythonHl7Server
from tests.integration.results_fhir.test_fhir_roundtrip import serve_app
from tests.unit.results.samples import sample

pytestmark = pytest.mark.timeout(120)
FAST = RetryPolicy(max_attempts=1)
FHIR_HL7 = ("observation", "diagnostic_report", "oru")


@pytest.fixture
def fhir(tmp_path: Path) -> Iterator[FhirClient]:
    with EmbeddedFhirServer(tmp_path / "fhir.db", port=0) as server, \
            FhirClient(server.base_url, retries=FAST, timeout=10) as client:
        yield client


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[MLLPListener]:
    with MLLPListener(tmp_path / "mllp.db") as running:
        yield running


def _sender(port: int) -> MLLPSender:
    return MLLPSender("127.0.0.1", port, timeout=10, retry=MllpRetry(max_attempts=1))


def _statuses(report: DeliveryReport) -> dict[str, str]:
    return {d.target: d.status for d in report.deliveries}


def test_fhir_and_oru_are_verified_and_redelivery_duplicates_nothing(
        fhir: FhirClient, listener: MLLPListener) -> None:
    result = sample()
    with _sender(listener.port) as hl7:
        first = deliver(result, fhir=fhir, hl7=hl7, targets=FHIR_HL7)
        again = deliver(result, fhir=fhir, hl7=hl7, targets=FHIR_HL7)
    assert _statuses(first) == dict.fromkeys(FHIR_HL7, "verified"), first.frame
    assert first.ok and again.ok
    # the same resources (conditional create), the same MSH-10: nothing twice
    assert [d.identifier for d in again.deliveries] == [d.identifier for d in first.deliveries]
    assert first["oru"].identifier == control_id(result)
    assert len(first["observation"].identifier.split()) == 3  # two measurements and one label
    for part in ("measurement-1", "measurement-2", "label-1"):
        found = list(fhir.search("Observation", identifier=f"urn:kit:analysis-result|res-1/{part}"))
        assert len(found) == 1
    assert len(list(fhir.search("DiagnosticReport", identifier="urn:kit:analysis-result|res-1/report"))) == 1
    assert listener.store is not None and listener.store.count() == 1
    frame = first.frame
    assert frame.columns == ["result_id", "target", "status", "reason", "identifier", "seconds"]
    assert frame["target"].to_list() == list(FHIR_HL7) and (frame["seconds"] > 0).all()


def test_targets_without_a_client_are_skipped_with_the_reason() -> None:
    report = deliver(sample(), targets=FHIR_HL7)
    assert _statuses(report) == dict.fromkeys(FHIR_HL7, "skipped")
    assert report["oru"].reason == "no MLLP sender" and report["observation"].reason == "no FHIR client"
    assert not report.ok
    with pytest.raises(InvalidInputError, match="unknown target"):
        deliver(sample(), targets=["pdf"])


def test_a_fhir_422_fails_both_fhir_rows_and_the_oru_still_completes() -> None:
    app = FastAPI()

    @app.post("/fhir")
    async def refuse() -> JSONResponse:
        return JSONResponse({"resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "required", "diagnostics": "Observation.performer is required"}]},
            status_code=422, media_type="application/fhir+json")

    with serve_app(app) as base, FhirClient(base, retries=FAST, timeout=10) as ehr, \
            PythonHl7Server({}) as other, _sender(other.port) as hl7:
        report = deliver(sample(), fhir=ehr, hl7=hl7, targets=FHIR_HL7)
    assert _statuses(report) == {"observation": "failed", "diagnostic_report": "failed", "oru": "verified"}
    for target in ("observation", "diagnostic_report"):
        reason = report[target].reason or ""
        assert reason.startswith("OperationOutcomeError: HTTP 422") and "performer is required" in reason
        assert "\n" not in reason
    assert other.received and control_id(sample()) in other.received[0]


def test_an_hl7_ae_fails_the_oru_row_and_fhir_still_completes(fhir: FhirClient) -> None:
    result = sample(result_id="res-rejected")
    with PythonHl7Server({control_id(result): "AE"}) as other, _sender(other.port) as hl7:
        report = deliver(result, fhir=fhir, hl7=hl7, targets=FHIR_HL7)
    assert _statuses(report) == {"observation": "verified", "diagnostic_report": "verified", "oru": "failed"}
    assert (report["oru"].reason or "").startswith("NakError") and "AE" in (report["oru"].reason or "")
    assert report["oru"].identifier == control_id(result)  # the MSH-10 the receiver refused


@pytest.mark.parametrize(("severity", "status"), [("E", "failed"), ("F", "failed"), ("W", "verified")])
def test_an_aa_that_carries_an_error_fails_the_oru_row(severity: str, status: str) -> None:
    """An AA whose ERR says severity E was 'verified'; a warning is still an accept."""
    result = sample(result_id="res-err")
    err = f"ERR||OBX^1^5|207^Application internal error^HL70357|{severity}||||value not stored"
    with PythonHl7Server({}, {control_id(result): err}) as other, _sender(other.port) as hl7:
        report = deliver(result, hl7=hl7, targets=["oru"])
    assert report["oru"].status == status, report["oru"].reason
    if status == "failed":
        assert f"AA with an error of severity {severity}: value not stored" in (report["oru"].reason or "")


def test_a_fhir_server_that_reads_back_something_else_is_failed_with_the_difference() -> None:
    """A fault a conforming server does not produce: vread returns a changed value."""
    with serve_app(_games_server("changed-value")) as base, FhirClient(base, retries=FAST, timeout=10) as ehr:
        report = deliver(sample(), fhir=ehr, targets=["observation", "diagnostic_report"])
    assert report["observation"].status == "failed"
    assert "valueQuantity.value: sent 12.5, read 99.0" in (report["observation"].reason or "")
    # the report referenced urn:uuid fullUrls; the server's Type/id references are not a difference
    assert report["diagnostic_report"].status == "verified", report["diagnostic_report"].reason


def _games_server(game: str) -> FastAPI:
    """An EHR that stores what it is sent, then plays ``game`` with its transaction response or
    with the record: a fault a conforming server does not produce."""
    app = FastAPI()
    stored: dict[str, dict[str, Any]] = {}

    @app.post("/fhir")
    async def transaction(request: Request) -> JSONResponse:
        raw = (await request.body()).decode()
        for n, entry in enumerate(json.loads(raw)["entry"]):
            raw = raw.replace(entry["fullUrl"], f"{entry['resource']['resourceType']}/r{n}")
        entries = []
        for n, entry in enumerate(json.loads(raw)["entry"]):
            rtype = entry["resource"]["resourceType"]
            stored[f"{rtype}/r{n}"] = resource = dict(entry["resource"], id=f"r{n}")
            if game == "changed-value" and "valueQuantity" in resource:
                resource["valueQuantity"] = dict(resource["valueQuantity"], value=99.0)
            location = f"{rtype}/r{n}/_history/1"
            response: dict[str, Any] = {"status": "201 Created", "location": location}
            if game == "entry-error":
                response = {"status": "400 Bad Request", "location": location, "outcome": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "rejected"}]}}
            elif game == "type-swap" and rtype == "Observation":
                response["location"] = f"Basic/r{n}/_history/1"
            elif game == "elsewhere":
                response["location"] = f"https://other-hospital.example/fhir/{location}"
            entries.append({"response": response})
        return JSONResponse({"resourceType": "Bundle", "type": "transaction-response", "entry": entries},
                            media_type="application/fhir+json")

    @app.get("/fhir/{rtype}/{rid}/_history/{vid}")
    async def vread(rtype: str, rid: str, vid: str) -> JSONResponse:
        return JSONResponse(stored[f"{rtype}/{rid}"], media_type="application/fhir+json")

    @app.get("/fhir/{rtype}/{rid}")
    async def read(rtype: str, rid: str) -> JSONResponse:
        now = stored[f"{rtype}/{rid}"]
        if game == "later-version" and rtype == "Observation":  # version 2, made right after version 1
            now = dict(now, status="entered-in-error", meta={"versionId": "2"})
        return JSONResponse(now, media_type="application/fhir+json")

    return app


@pytest.mark.parametrize(("game", "says"), [
    ("later-version", "now: status: sent 'final', read 'entered-in-error'"),
    ("entry-error", "the server answered '400 Bad Request' for the Observation: rejected"),
    ("type-swap", "the server located the Observation as a Basic"),
    ("elsewhere", "the server located the Observation on another server"),
])
def test_a_transaction_response_or_record_that_is_not_what_was_sent_fails(game: str, says: str) -> None:
    """Each was 'verified': the entries' statuses and types and the location's server were not
    looked at, and only the version the response named was read back."""
    with serve_app(_games_server(game)) as base, FhirClient(base, retries=FAST, timeout=10) as ehr:
        report = deliver(sample(), fhir=ehr, targets=["observation"])
    assert report["observation"].status == "failed" and says in (report["observation"].reason or ""), \
        report["observation"].reason


def test_the_games_server_verifies_when_it_plays_none() -> None:
    with serve_app(_games_server("none")) as base, FhirClient(base, retries=FAST, timeout=10) as ehr:
        report = deliver(sample(), fhir=ehr, targets=["observation", "diagnostic_report"])
    assert report.ok, report.frame


def test_every_target_is_a_row_in_order() -> None:
    report = deliver(sample())
    assert [d.target for d in report.deliveries] == list(TARGETS)
