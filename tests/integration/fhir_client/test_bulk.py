"""Bulk Data $export end to end against the embedded server, resuming interrupted runs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from kit.errors import BulkExportError, PeerDisconnectedError
from kit.fhir.bulk import STATE_FILE, BulkExport
from kit.fhir.client import FhirClient
from kit.fhir.server import EmbeddedFhirServer
from tests.integration.fhir_client.conftest import FAST_RETRY, serve_app

N_PATIENTS = 12
N_OBS = 240


@pytest.fixture(scope="module")
def loaded(fhir_server: EmbeddedFhirServer) -> EmbeddedFhirServer:
    entries = []
    for i in range(N_PATIENTS):
        entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
                        "resource": {"resourceType": "Patient", "identifier": [
                            {"system": "http://h.example/mrn", "value": f"MRN{i:04d}"}],
                            "birthDate": f"19{50 + i}-01-01"},
                        "request": {"method": "POST", "url": "Patient"}})
    for j in range(N_OBS):
        entries.append({"resource": {
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "heart rate"},
            "valueQuantity": {"value": 60 + j % 40, "unit": "/min"},
            "subject": {"reference": f"urn:uuid:00000000-0000-4000-8000-{j % N_PATIENTS:012d}"}},
            "request": {"method": "POST", "url": "Observation"}})
    with FhirClient(fhir_server.base_url) as c:
        c.transaction(entries)
    return fhir_server


class Recording(httpx.BaseTransport):
    """The real HTTP transport, recording requests; optionally cutting the n-th file download short."""

    def __init__(self, break_download: str | None = None, after: int = 3000) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, str, str | None]] = []
        self.break_download = break_download
        self.after = after
        self.downloads = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path, request.headers.get("Range")))
        response = self.inner.handle_request(request)
        if "$export-file" in request.url.path:
            self.downloads += 1
            if self.break_download and self.break_download in request.url.path:
                response.stream = _CutShort(response.stream, self.after)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self.inner.close()


class _CutShort(httpx.SyncByteStream):
    """A connection reset after ``limit`` bytes (a fault a loopback peer does not produce on demand)."""

    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.limit:
                yield chunk[: self.limit - sent]
                raise httpx.ReadError("connection reset by peer")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _client(server: EmbeddedFhirServer, transport: httpx.BaseTransport | None = None) -> FhirClient:
    return FhirClient(server.base_url, retries=FAST_RETRY, timeout=10, transport=transport)


def test_export_end_to_end(loaded: EmbeddedFhirServer, tmp_path: Path) -> None:
    with _client(loaded) as c:
        result = BulkExport(c).run(tmp_path, types=["Patient", "Observation"], poll_interval=0.1,
                                   progress=False)
        searched = c.search_frame("Observation", _count=100)
    assert set(result.parquet) == {"Patient", "Observation"}
    assert result.frame("Patient").height == N_PATIENTS
    obs = result.frame("Observation")
    assert obs.height == N_OBS == searched.height
    assert obs.schema["value_quantity"] == pl.Float64
    assert sorted(obs["id"].to_list()) == sorted(searched["id"].to_list())
    assert sorted(result.frame("Patient")["patient_id"].to_list())[:2] == ["MRN0000", "MRN0001"]
    assert result.files["resources"].sum() == N_PATIENTS + N_OBS
    assert result.errors == [] and not result.manifest.error
    for path in result.files["path"]:
        assert Path(path).is_file() and not Path(path + ".part").exists()
    with pytest.raises(Exception, match="no Condition"):
        result.frame("Condition")


def test_group_export(loaded: EmbeddedFhirServer, tmp_path: Path) -> None:
    with _client(loaded) as c:
        patients = list(c.search("Patient", _count=50))[:2]
        group = c.create({"resourceType": "Group", "type": "person", "actual": True, "member": [
            {"entity": {"reference": f"Patient/{p['id']}"}} for p in patients]})
        result = BulkExport(c).run(tmp_path, "group", group_id=group["id"],
                                   types=["Patient", "Observation"], poll_interval=0.1, progress=False)
    assert sorted(result.frame("Patient")["id"].to_list()) == sorted(p["id"] for p in patients)
    assert result.frame("Observation").height == 2 * N_OBS // N_PATIENTS


def test_resume_after_interrupted_download(loaded: EmbeddedFhirServer, tmp_path: Path) -> None:
    first = Recording(break_download="Patient", after=500)
    with _client(loaded, first) as c, pytest.raises(PeerDisconnectedError, match="run again to resume"):
        BulkExport(c).run(tmp_path, types=["Patient", "Observation"], poll_interval=0.1, progress=False)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["manifest"] is not None
    done = [f["path"] for f in state["files"].values() if f["done"]]
    partial = [f["path"] for f in state["files"].values() if not f["done"]]
    assert done == ["Observation.000.ndjson"] and partial == ["Patient.000.ndjson"]
    assert (tmp_path / (partial[0] + ".part")).stat().st_size == 500
    assert [f["bytes"] for f in state["files"].values() if not f["done"]] == [500]

    second = Recording()
    with _client(loaded, second) as c:
        result = BulkExport(c).run(tmp_path, types=["Patient", "Observation"], poll_interval=0.1,
                                   progress=False)
    paths = [p for _, p, _ in second.requests]
    assert not any(p.endswith("$export") for p in paths)  # no second kick-off
    assert not any("$export-status" in p for p in paths)  # the manifest was kept
    downloads = [(p, rng) for _, p, rng in second.requests if "$export-file" in p]
    assert len(downloads) == 1  # the finished file was not fetched again
    assert downloads[0][1] == "bytes=500-"  # the partial one continued where it broke
    assert result.frame("Observation").height == N_OBS
    assert result.frame("Patient").height == N_PATIENTS


def test_resume_polling_after_timeout(loaded: EmbeddedFhirServer, tmp_path: Path) -> None:
    first = Recording()
    with _client(loaded, first) as c, pytest.raises(BulkExportError, match="still running"):
        BulkExport(c).run(tmp_path, types=["Patient", "Observation"], timeout=0.05, poll_interval=0.1,
                          progress=False)
    status_url = json.loads((tmp_path / STATE_FILE).read_text())["status_url"]
    assert status_url and sum(p.endswith("$export") for _, p, _ in first.requests) == 1

    second = Recording()
    with _client(loaded, second) as c:
        result = BulkExport(c).run(tmp_path, types=["Patient", "Observation"], poll_interval=0.1,
                                   progress=False)
    assert not any(p.endswith("$export") for _, p, _ in second.requests)
    assert result.frame("Observation").height == N_OBS
    with _client(loaded) as c, pytest.raises(Exception, match="different export"):
        BulkExport(c).run(tmp_path, types=["Patient"], progress=False)


def test_cancel(loaded: EmbeddedFhirServer) -> None:
    with _client(loaded) as c:
        job = BulkExport(c).kickoff(types=["Observation", "Patient"])
        job.cancel()
        with pytest.raises(BulkExportError, match="gone") as err:
            job.wait(timeout=5, poll_interval=0.1, progress=False)
    assert err.value.status_code == 404


def _manifest_app(count: int) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/$export")
    async def kickoff(request: Request) -> Response:
        assert request.headers["prefer"] == "respond-async"
        return Response(status_code=202, headers={"Content-Location": f"{request.base_url}fhir/status/1"})

    @app.get("/fhir/status/1")
    async def status(request: Request) -> Response:
        base = f"{request.base_url}fhir/files"
        return JSONResponse({"transactionTime": "2024-01-01T00:00:00Z", "request": "x",
                             "requiresAccessToken": True,
                             "output": [{"type": "Patient", "url": f"{base}/p.ndjson", "count": count}],
                             "error": [{"type": "OperationOutcome", "url": f"{base}/err.ndjson"}]})

    @app.get("/fhir/files/p.ndjson")
    async def patients() -> Response:
        return Response(b'{"resourceType":"Patient","id":"a"}\n{"resourceType":"Patient","id":"b"}\n',
                        media_type="application/fhir+ndjson")

    @app.get("/fhir/files/err.ndjson")
    async def errors() -> Response:
        return Response(json.dumps({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Observation/9 unreadable"}]}),
            media_type="application/fhir+ndjson")

    return app


def test_manifest_errors_are_surfaced(tmp_path: Path) -> None:
    with serve_app(_manifest_app(count=2)) as origin, FhirClient(origin + "/fhir") as c:
        with pytest.raises(BulkExportError, match="Observation/9 unreadable"):
            BulkExport(c).run(tmp_path / "a", poll_interval=0.1, progress=False)
        result = BulkExport(c).run(tmp_path / "b", poll_interval=0.1, progress=False, fail_on_errors=False)
    assert result.errors[0]["diagnostics"] == "Observation/9 unreadable"
    assert result.frame("Patient")["id"].to_list() == ["a", "b"]


def test_count_mismatch_is_an_error(tmp_path: Path) -> None:
    with serve_app(_manifest_app(count=3)) as origin, FhirClient(origin + "/fhir") as c:
        with pytest.raises(BulkExportError, match="had 2 resources, the manifest says 3"):
            BulkExport(c).run(tmp_path, poll_interval=0.1, progress=False, fail_on_errors=False)
