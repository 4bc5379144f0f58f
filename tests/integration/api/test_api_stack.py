"""The integration REST API on the embedded stack: every seed endpoint does its work, verified."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import polars as pl
import pydicom
import pytest
from pydicom.uid import generate_uid

from kit import examples
from kit.fhir.client import FhirClient
from kit.hl7.store import MessageStore
from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.api.helpers import RunningApi, running_api
from tests.integration.hub.helpers import sample_study

pytestmark = pytest.mark.timeout(240)

PREFIX = "/api/v1/integration"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack.ephemeral() as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    with running_api(stack, tmp_path_factory.mktemp("api") / "ws") as running:
        yield running


def test_status_shows_each_connector_and_connect_all_opens_them(api: RunningApi) -> None:
    with api.client("read") as c:
        rows = c.get(f"{PREFIX}/status").json()["connectors"]
    assert {r["connector"] for r in rows} == {"pacs-dimse", "pacs-dicomweb", "ehr-fhir", "hl7-mllp",
                                              "endoscopy"}
    assert all(r["status"] == "ok" and r["latency_ms"] >= 0 for r in rows), rows
    with api.client("write") as c:
        opened = c.post(f"{PREFIX}/connect-all")
        assert opened.status_code == 200
        assert {r["connector"]: r["status"] for r in opened.json()["connectors"]} == {
            "pacs-dimse": "ok",
            "pacs-dicomweb": "ok",
            "ehr-fhir": "ok",
            "hl7-mllp": "ok",
            "endoscopy": "ok",
        }
        assert c.post(f"{PREFIX}/disconnect-all").json()["disconnected"]
        for path in ("pacs/connect", "ehr/connect"):
            assert c.post(f"{PREFIX}/{path}").json()["status"] == "ok", path


def test_patient_all_systems_returns_frames_for_a_sample_patient(api: RunningApi) -> None:
    with api.client("read") as c:
        answer = c.get(f"{PREFIX}/patient/MRN1001/all-systems")
    assert answer.status_code == 200, answer.text
    sources = answer.json()["sources"]
    assert {"pacs", "fhir.Patient", "fhir.Observation", "fhir.ImagingStudy"} <= set(sources)
    pacs = sources["pacs"]["rows"]
    assert pacs and {r["patient_id"] for r in pacs} == {"MRN1001"}
    assert sample_study("MRN1001", "CT")["study_instance_uid"] in {r["study_instance_uid"] for r in pacs}
    assert sources["fhir.Patient"]["rows"][0]["patient_id"] == "MRN1001"
    assert all(r["patient_id"] == "MRN1001" for r in sources["fhir.Observation"]["rows"])
    with api.client("read") as c:  # a patient nobody knows: empty frames, not an error
        none = c.get(f"{PREFIX}/patient/NOSUCHMRN/all-systems").json()["sources"]
    assert none["pacs"]["rows"] == []


def test_send_results_delivers_and_verifies(api: RunningApi) -> None:
    ct = sample_study("MRN1001", "CT")
    body = {
        "study_instance_uid": ct["study_instance_uid"],
        "result_id": "api-test-result-1",
        "algorithm": {"name": "api-test", "version": "1.0"},
        "measurements": [
            {
                "name": {"value": "410668003", "scheme": "SCT", "meaning": "Length"},
                "value": 12.5,
                "unit": "mm",
            }
        ],
        "conclusion": "A 12.5 mm lesion.",
    }
    with api.client("write") as c:
        answer = c.post(f"{PREFIX}/patient/MRN1001/send-results", json=body)
    assert answer.status_code == 200, answer.text
    rows = {r["target"]: r for r in answer.json()["deliveries"]}
    assert {t: rows[t]["status"] for t in ("sr", "observation", "diagnostic_report", "oru")} == dict.fromkeys(
        ("sr", "observation", "diagnostic_report", "oru"), "verified"
    ), rows
    assert rows["seg"]["status"] == "skipped"  # no regions in a JSON result
    with api.client("read") as c:  # the SR is in the PACS now
        found = c.get(f"{PREFIX}/pacs/find-studies", params={"study_instance_uid": ct["study_instance_uid"]})
    assert found.json()["studies"][0]["study_instance_uid"] == ct["study_instance_uid"]
    with api.client("write") as c:  # the study is another patient's: refused before anything is sent
        wrong = c.post(f"{PREFIX}/patient/MRN1002/send-results", json=body)
        missing = c.post(
            f"{PREFIX}/patient/MRN1001/send-results", json={**body, "study_instance_uid": "1.2.3.4"}
        )
    assert wrong.status_code == 422 and "another patient" in wrong.json()["detail"]
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"


def test_create_observation_and_diagnostic_report_land_in_the_fhir_server(api: RunningApi) -> None:
    obs = {
        "patient_id": "MRN1001",
        "code": "8867-4",
        "display": "Heart rate",
        "value_quantity": 71,
        "unit": "/min",
        "effective": "2026-02-03T10:00:00+00:00",
    }
    with api.client("write") as c:
        made = c.post(f"{PREFIX}/ehr/create-observation", json=obs)
        assert made.status_code == 201, made.text
        oid = made.json()["id"]
        report = c.post(
            f"{PREFIX}/ehr/create-diagnostic-report",
            json={
                "patient_id": "MRN1001",
                "observation_ids": [oid],
                "conclusion": "Normal heart rate.",
                "observations": [
                    {"code": "8310-5", "display": "Body temperature", "value_quantity": 36.8, "unit": "Cel"}
                ],
            },
        )
        assert report.status_code == 201, report.text
        patient = c.get(f"{PREFIX}/ehr/patient/MRN1001").json()["patients"][0]
    with FhirClient.from_settings(api.settings) as fhir:
        stored = fhir.read("Observation", oid)
        dr = fhir.read("DiagnosticReport", report.json()["diagnostic_report"]["id"])
    assert (
        stored["valueQuantity"]["value"] == 71
        and stored["subject"]["reference"] == f"Patient/{patient['id']}"
    )
    assert dr["conclusion"] == "Normal heart rate."
    refs = {r["reference"] for r in dr["result"]}
    assert f"Observation/{oid}" in refs and len(refs) == 2
    assert report.json()["observations"][0]["reference"] in refs
    with api.client("write") as c:  # an unknown patient, an invalid value: 404 and 422, nothing written
        assert (
            c.post(f"{PREFIX}/ehr/create-observation", json={**obs, "patient_id": "NOSUCHMRN"}).status_code
            == 404
        )
        assert (
            c.post(f"{PREFIX}/ehr/create-observation", json={**obs, "value_string": "also"}).status_code
            == 422
        )


def _new_instance() -> tuple[bytes, str, str]:
    path = sorted((examples.dicom_dir() / "MRN1002").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


def test_pacs_store_image_and_find_studies(api: RunningApi) -> None:
    data, sop, study = _new_instance()
    with api.client("write") as c:
        stored = c.post(
            f"{PREFIX}/pacs/store-image", content=data, headers={"Content-Type": "application/dicom"}
        )
        assert stored.status_code == 201, stored.text
        assert stored.json()["sop_instance_uid"] == sop and stored.json()["verified"] is True
        garbage = c.post(
            f"{PREFIX}/pacs/store-image",
            content=b"not dicom" * 50,
            headers={"Content-Type": "application/dicom"},
        )
        assert garbage.status_code == 422, garbage.text
        found = c.get(f"{PREFIX}/pacs/find-studies", params={"patient_id": "MRN1002", "limit": 1})
        assert found.status_code == 200
        assert len(found.json()["studies"]) == 1 and found.json()["truncated"] is True
        every = c.get(f"{PREFIX}/pacs/find-studies", params={"patient_id": "MRN1002"}).json()
        assert study in {s["study_instance_uid"] for s in every["studies"]} and every["truncated"] is False
        assert c.get(f"{PREFIX}/pacs/find-studies", params={"study_date": "20260230"}).status_code == 422


def test_json_siu_reaches_the_mllp_listener_with_aa_and_shows_in_appointments(
    api: RunningApi, stack: Stack
) -> None:
    body = {
        "placer_appointment_id": "API-APPT-1",
        "patient_id": "MRN1001",
        "family": "Moreau",
        "given": "Alice",
        "start": "2026-03-10T09:00:00",
        "duration_minutes": 30,
        "modality": "MR",
        "location": "MR-1",
        "control_id": "APISIU0001",
    }
    with api.client("write") as c:
        sent = c.post("/api/v1/scheduling/siu", json=body)
        assert sent.status_code == 201, sent.text
        assert sent.json()["ack_code"] == "AA" and sent.json()["control_id"] == "APISIU0001"
        again = c.post("/api/v1/scheduling/siu", json=body)
        assert again.status_code == 409  # the same control id twice
    with MessageStore(stack.data_dir / "mllp.db") as store:
        stored = store.messages().filter(pl.col("control_id") == "APISIU0001")
    assert stored.height == 1 and stored["message_type"][0].startswith("SIU^S12")
    with api.client("read") as c:
        day = c.get("/api/v1/scheduling/appointments", params={"date": "2026-03-10", "modality": "MR"}).json()
        other = c.get(
            "/api/v1/scheduling/appointments", params={"date": "2026-03-10", "modality": "CT"}
        ).json()
        stats = c.get(
            "/api/v1/scheduling/analytics", params={"date_from": "2026-03-10", "date_to": "2026-03-10"}
        ).json()
    rows = day["appointments"]
    assert [r["appointment_id"] for r in rows] == ["API-APPT-1"]  # once, though in the log and the store
    assert rows[0]["patient_id"] == "MRN1001" and rows[0]["duration_minutes"] == 30
    assert other["appointments"] == []
    assert stats["analytics"] == [
        {
            "modality": "MR",
            "day": "2026-03-10",
            "appointments": 1,
            "booked": 1,
            "cancelled": 0,
            "no_shows": 0,
            "booked_minutes": 30,
            "utilisation": 0.05,
            "median_lead_time_hours": stats["analytics"][0]["median_lead_time_hours"],
        }
    ]


def test_endoscopy_connect_stream_and_send_analysis(api: RunningApi, stack: Stack) -> None:
    es = sample_study("MRN1001", "ES")
    live = stack.services["video"].address            # [endoscopy] stream_url: the stack's live stream
    with api.client("write") as c:
        probe = c.post(f"{PREFIX}/endoscopy/connect").json()
        stream = c.get(f"{PREFIX}/endoscopy/video-stream", params={"frames": 14})
    assert probe["worklist"]["status"] == "ok"
    assert probe["stream"]["url"] == live and probe["stream"]["scheme"] == "http"
    assert probe["stream"]["reachable"] is True and probe["stream"]["latency_ms"] > 0
    assert probe["stream"]["frame"]["shape"] == [240, 320, 3]
    assert probe["capture"] == {"available": True, "reason": None}
    assert stream.status_code == 200, stream.text
    answer = stream.json()
    frames = answer["frames"]
    assert len(frames) == 14 and answer["stream"]["complete"] is True and answer["stream"]["url"] == live
    assert all(f["shape"] == [240, 320, 3] and 0 < f["mean"] < 255 for f in frames)
    assert [f["index"] for f in frames] == sorted({f["index"] for f in frames})
    assert [f["timestamp"] for f in frames] == sorted(f["timestamp"] for f in frames)
    assert answer["stream"]["nominal_fps"] == 12.0
    assert {p["accession_number"] for p in answer["procedures"]} == {"ACC100102", "ACC100302", "ACC100602"}
    with api.client("read") as c:
        for bad in (0, 31, "x"):
            refused = c.get(f"{PREFIX}/endoscopy/video-stream", params={"frames": bad})
            assert refused.status_code == 422, (bad, refused.text)
    body = {
        "patient_id": "MRN1001",
        "study_instance_uid": es["study_instance_uid"],
        "findings": [{"finding": {"value": "68496003", "scheme": "SCT", "meaning": "Polyp"}, "score": 0.91}],
        "conclusion": "One polyp seen.",
    }
    with api.client("write") as c:
        sent = c.post(f"{PREFIX}/endoscopy/send-analysis", json=body)
    assert sent.status_code == 200, sent.text
    assert {r["target"]: r["status"] for r in sent.json()["deliveries"]} == {
        "observation": "verified",
        "diagnostic_report": "verified",
        "oru": "verified",
    }


def test_endoscopy_stream_override_and_streams_that_give_no_video(stack: Stack, tmp_path: Path) -> None:
    live = urlsplit(stack.services["video"].address)
    # [api] endoscopy_stream overrides [endoscopy] stream_url; its credentials are never shown
    secret = f"http://user:pw@{live.netloc}{live.path}"
    with running_api(stack, tmp_path / "ws", endoscopy_stream=secret) as api, api.client("read") as c:
        answer = c.get(f"{PREFIX}/endoscopy/video-stream", params={"patient_id": "MRN1001", "frames": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stream"]["url"] == f"http://***@{live.netloc}{live.path}"
    assert "pw" not in answer.text
    assert len(answer.json()["frames"]) == 2
    assert {p["patient_id"] for p in answer.json()["procedures"]} == {"MRN1001"}
    # a port that accepts but sends no video (the FHIR server), and a closed port: said, never 200 and empty
    fhir = f"http://127.0.0.1:{stack.port('fhir')}/fhir/R4/metadata"
    closed = f"rtsp://127.0.0.1:{free_port()}/scope1"
    for url, status in ((fhir, 502), (closed, 502)):
        with running_api(stack, tmp_path / f"ws{status}{len(url)}", endoscopy_stream=url) as api:
            with api.client("write") as c:
                probe = c.post(f"{PREFIX}/endoscopy/connect").json()
                started = time.monotonic()
                read = c.get(f"{PREFIX}/endoscopy/video-stream")
                took = time.monotonic() - started
        assert probe["stream"]["reachable"] is False and probe["stream"]["reason"], probe
        assert probe["capture"]["available"] is False
        assert read.status_code == status, (url, read.text)
        assert read.headers["content-type"].startswith("application/problem+json")
        assert "the endoscopy video stream" in read.json()["detail"]
        assert took < api.settings.endoscopy.timeout + 5, took