"""Medix jobs against the embedded PACS: the status sequence, failures, the zip byte for byte, webhooks."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from kit.config import StackSettings
from kit.dicom.dimse import PacsClient
from kit.services.medix import MedixService
from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.hub.helpers import sample_study, sr_for
from tests.integration.medix.helpers import (
    GOOD,
    ThrottleProxy,
    WebhookReceiver,
    client,
    dataset_bytes,
    make_study,
    request_download,
    zip_members,
)

Factory = Callable[..., AbstractContextManager[MedixService]]


def _wait_job(service: MedixService, job_id: str, states: tuple[str, ...] = ("done", "failed"),
              timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with client(service.address) as c:
        while True:
            job: dict[str, Any] = c.get(f"/api/study/download/{job_id}").json()
            if job["State"] in states:
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)


def test_good_study_reports_every_status_in_order_and_the_zip_holds_every_instance_byte_for_byte(
        stack: Stack, medix_service: Factory, tmp_path: Path) -> None:
    study = sample_study("MRN1002", "MR")["study_instance_uid"]
    headers = {"X-Platform-Key": "platform-secret-1", "X-Trace": "t-42"}
    with WebhookReceiver() as hook, medix_service(stack.client_settings()) as service:
        job_id = request_download(service.address, study, hook.url, headers)
        assert hook.wait_final() == GOOD
        for record in hook.received:  # the protocol's body, the headers echoed and sent as HTTP headers
            body = record["body"]
            assert body["headers"] == headers
            assert record["headers"]["X-Platform-Key"] == "platform-secret-1"
            assert record["headers"]["X-Trace"] == "t-42"
            assert ("File" in body) is (body["Status"] == "5")
        file_url = hook.received[-1]["body"]["File"]
        assert file_url == f"{service.address}/api/study/download/{job_id}/file"
        with client(service.address) as c:
            answer = c.get(file_url)
            job = c.get(f"/api/study/download/{job_id}").json()
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
        assert job["Statuses"] == GOOD and job["WebhooksDelivered"] == 6 and "headers" not in str(job)
        members = zip_members(answer.content, tmp_path)

    stored = [i for i in stack.services["pacs"].store.instances()  # type: ignore[attr-defined]
              if i.study_instance_uid == study]
    assert len(stored) == 12 and set(members) == {i.sop_instance_uid for i in stored}
    for inst in stored:  # every element as the PACS stores it (C-GET may send another transfer syntax)
        got = pydicom.dcmread(BytesIO(members[inst.sop_instance_uid]))
        kept = pydicom.dcmread(inst.path)
        assert got == kept and got.PixelData == kept.PixelData
        if got.file_meta.TransferSyntaxUID == kept.file_meta.TransferSyntaxUID:
            assert dataset_bytes(members[inst.sop_instance_uid]) == dataset_bytes(inst.path.read_bytes())
    by_hand = PacsClient.from_settings(stack.client_settings()).get(study_uid=study, dest=tmp_path / "byhand")
    for row in by_hand.iter_rows(named=True):  # and the whole file exactly as a C-GET by hand writes it
        assert members[row["sop_instance_uid"]] == Path(row["path"]).read_bytes()


def test_missing_study_is_request_failed(stack: Stack, medix_service: Factory) -> None:
    with WebhookReceiver() as hook, medix_service(stack.client_settings()) as service:
        job_id = request_download(service.address, "1.2.826.0.1.3680043.8.498.1", hook.url)
        assert hook.wait_final() == ["0", "1", "-4"]
        job = _wait_job(service, job_id)
        assert job["State"] == "failed" and "no instances" in job["Error"]
        with client(service.address) as c:
            assert c.get(f"/api/study/download/{job_id}/file").status_code == 409


def test_unreachable_pacs_is_request_failed(stack: Stack, medix_service: Factory) -> None:
    base = stack.client_settings()
    dead = dataclasses.replace(base, pacs=dataclasses.replace(base.pacs, port=free_port(), timeout=3))
    with WebhookReceiver() as hook, medix_service(dead) as service:
        request_download(service.address, sample_study("MRN1001", "CT")["study_instance_uid"], hook.url)
        assert hook.wait_final() == ["0", "1", "-4"]


def test_pacs_going_away_mid_export_is_export_failed(medix_service: Factory, tmp_path: Path) -> None:
    study, files = make_study(tmp_path / "big", 120)  # ~4 MB, through a 1 MB/s link: seconds of export
    with Stack.ephemeral(services=("pacs",), preload=False) as own:
        own.services["pacs"].import_files(files)  # type: ignore[attr-defined]
        proxy = ThrottleProxy(("127.0.0.1", own.port("pacs")), rate=1 << 20)
        base = own.client_settings()
        slow = dataclasses.replace(base, pacs=dataclasses.replace(base.pacs, port=proxy.port))
        try:
            with WebhookReceiver() as hook, medix_service(slow) as service:
                stopped = threading.Event()

                def on_status(status: str) -> None:
                    if status == "2" and not stopped.is_set():
                        stopped.set()
                        own.services["pacs"].stop()  # the PACS goes away mid-export

                hook.on_status = on_status
                job_id = request_download(service.address, study, hook.url)
                assert hook.wait_final() == ["0", "1", "2", "-3"]
                job = _wait_job(service, job_id)
                assert stopped.is_set() and job["State"] == "failed"
                assert not list((service.workspace / "files").iterdir())  # no partial zip left
                assert not list((service.workspace / "exports").iterdir())
        finally:
            proxy.close()


def test_export_over_the_disk_bound_is_export_failed(stack: Stack, medix_service: Factory) -> None:
    study = sample_study("MRN1001", "CT")["study_instance_uid"]
    with WebhookReceiver() as hook, \
            medix_service(stack.client_settings(), max_export_bytes=50_000) as service:
        job_id = request_download(service.address, study, hook.url)
        assert hook.wait_final() == ["0", "1", "2", "-3"]
        assert "bound" in _wait_job(service, job_id)["Error"]
        assert not list((service.workspace / "exports").iterdir())


def test_c_move_retrieve_reports_every_status(tmp_path: Path, medix_service: Factory) -> None:
    store_port = free_port()
    settings = StackSettings(pacs_port=0, fhir_port=0, mllp_port=0, data_dir=str(tmp_path / "stack"),
                             move_destinations={"KITSCU": f"127.0.0.1:{store_port}"})
    with Stack(settings, services=("pacs",)) as own:
        base = own.client_settings()
        moving = dataclasses.replace(base, pacs=dataclasses.replace(base.pacs, aet="KITSCU",
                                                                     store_port=store_port))
        study = sample_study("MRN1003", "CT")["study_instance_uid"]
        with WebhookReceiver() as hook, medix_service(moving, retrieve="c-move") as service:
            job_id = request_download(service.address, study, hook.url)
            assert hook.wait_final() == GOOD
            assert _wait_job(service, job_id)["Instances"] == 16


def test_webhook_failing_first_times_is_retried_and_delivered_in_order(
        stack: Stack, medix_service: Factory) -> None:
    study = sample_study("MRN1003", "ES")["study_instance_uid"]
    with WebhookReceiver(fail_first=3) as hook, medix_service(stack.client_settings()) as service:
        request_download(service.address, study, hook.url)
        assert hook.wait_final() == GOOD  # every status once, in order, after the refusals
        assert [r["body"]["Status"] for r in hook.failed] == ["0", "0", "0"]
        gaps = [b["at"] - a["at"] for a, b in zip(hook.failed, hook.failed[1:] + hook.received[:1],
                                                  strict=True)]
        assert all(g >= 0.04 for g in gaps), gaps  # backoff between attempts


def test_webhook_given_up_after_its_attempts_then_next_status_goes(stack: Stack,
                                                                   medix_service: Factory) -> None:
    study = sample_study("MRN1003", "ES")["study_instance_uid"]
    with WebhookReceiver(fail_first=2) as hook, \
            medix_service(stack.client_settings(), webhook_attempts=2) as service:
        job_id = request_download(service.address, study, hook.url)
        assert hook.wait_final() == GOOD[1:]  # ProcessStarted given up after 2 attempts; the rest in order
        job = _wait_job(service, job_id)
        assert "status 0 not delivered" in job["WebhookError"]


def test_hanging_webhook_never_blocks_the_job(stack: Stack, medix_service: Factory) -> None:
    study = sample_study("MRN1003", "ES")["study_instance_uid"]
    with WebhookReceiver(hang=4.0) as hook, \
            medix_service(stack.client_settings(), webhook_timeout=0.3, webhook_attempts=2) as service:
        started = time.monotonic()
        job_id = request_download(service.address, study, hook.url)
        job = _wait_job(service, job_id, timeout=20)
        assert job["State"] == "done" and time.monotonic() - started < 4.0  # before the first hang ended
        with client(service.address) as c:
            assert c.get(f"/api/study/download/{job_id}/file").status_code == 200
            assert c.get("/health").status_code == 200


def test_a_webhook_trickling_its_answer_is_cut_off(stack: Stack, medix_service: Factory) -> None:
    """Each byte of the answer inside ``webhook_timeout``: only the whole-attempt bound ends it."""
    study = sample_study("MRN1003", "ES")["study_instance_uid"]
    with WebhookReceiver(trickle=True) as hook, \
            medix_service(stack.client_settings(), webhook_timeout=0.3, webhook_attempts=2) as service:
        started = time.monotonic()
        job_id = request_download(service.address, study, hook.url)
        given_up = "status 0 not delivered: no answer within 0.3s (each step) or 0.9s (in all)"
        with client(service.address) as c:
            while given_up not in str(c.get(f"/api/study/download/{job_id}").json()["WebhookError"]):
                assert time.monotonic() - started < 20  # a trickle of 10,000 bytes lasts 200 s
                time.sleep(0.05)
        assert [r["body"]["Status"] for r in hook.failed][:2] == ["0", "0"]  # tried twice, given up


def test_report_status_finds_an_sr_in_the_pacs(stack: Stack, medix_service: Factory) -> None:
    with_sr = sample_study("MRN1004", "CT")
    without = sample_study("MRN1006", "CT")["study_instance_uid"]
    PacsClient.from_settings(stack.client_settings()).store([sr_for(with_sr["path"])])
    with medix_service(stack.client_settings()) as service, client(service.address) as c:
        answer = c.post("/api/study/report-status",
                        json={"StudyInstanceUIDs": [with_sr["study_instance_uid"], without]})
    assert answer.status_code == 200
    rows = {r["StudyInstanceUID"]: r for r in answer.json()["Studies"]}
    assert rows[with_sr["study_instance_uid"]]["HasReport"] is True
    assert rows[with_sr["study_instance_uid"]]["HasSR"] is True
    assert rows[without]["HasReport"] is False and rows[without]["Error"] is None


def test_queue_is_bounded(medix_service: Factory, tmp_path: Path) -> None:
    study, files = make_study(tmp_path / "q", 60)
    with Stack.ephemeral(services=("pacs",), preload=False) as own:
        own.services["pacs"].import_files(files)  # type: ignore[attr-defined]
        proxy = ThrottleProxy(("127.0.0.1", own.port("pacs")), rate=1 << 20)
        base = own.client_settings()
        slow = dataclasses.replace(base, pacs=dataclasses.replace(base.pacs, port=proxy.port))
        try:
            with WebhookReceiver() as hook, medix_service(slow, max_jobs=1, max_queue=2) as service, \
                    client(service.address) as c:
                body = {"StudyInstanceUID": study, "WebhookUri": hook.url}
                codes = [c.post("/api/study/download", json=body).status_code for _ in range(3)]
                assert codes == [202, 202, 429]
                assert hook.wait_for(lambda s: s.count("5") == 2, timeout=90).count("0") == 2
                assert c.post("/api/study/download", json=body).status_code == 202  # room again
        finally:
            proxy.close()


@pytest.mark.parametrize("where", ["export", "webhook"])
def test_a_dead_worker_makes_the_service_unhealthy(stack: Stack, medix_service: Factory,
                                                   monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    class Crash(BaseException):
        """What no job or peer raises: a bug killing the thread (a fault a real peer cannot produce)."""

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash("worker bug")

    if where == "export":
        monkeypatch.setattr("kit.services.medix_worker.ExportWorkers.run", crash)
    else:
        monkeypatch.setattr("kit.services.medix_worker.JobStore.due", crash)
    with WebhookReceiver() as hook, medix_service(stack.client_settings()) as service, \
            client(service.address) as c:
        assert c.get("/health").status_code == 200 or where == "webhook"
        study = sample_study("MRN1003", "ES")["study_instance_uid"]
        body = {"StudyInstanceUID": study, "WebhookUri": hook.url}
        first = c.post("/api/study/download", json=body)
        assert first.status_code in (202, 503)
        deadline = time.monotonic() + 10
        while service.failure is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.failure is not None
        health = c.get("/health")
        assert health.status_code == 503 and "Crash" in health.json()["reason"]
        refused = c.post("/api/study/download", json=body)
        assert refused.status_code == 503  # never accepted into a void


def test_a_zip_kept_past_keep_hours_is_deleted_and_its_download_is_gone(
        stack: Stack, medix_service: Factory) -> None:
    study = sample_study("MRN1002", "MR")["study_instance_uid"]
    with WebhookReceiver() as hook, medix_service(stack.client_settings(), keep_hours=1.0) as service:
        job_id = request_download(service.address, study, hook.url, {})
        assert hook.wait_final() == GOOD
        workers, store = service.workers, service.store
        assert workers is not None and store is not None
        zipped = service.files / f"{job_id}.zip"
        assert zipped.is_file()
        now = time.time()
        assert workers.sweep(now + 1800) == 0 and zipped.is_file()  # half an hour on: kept
        workers._next_sweep = 0.0
        assert workers.sweep(now + 3700) == 1 and not zipped.exists()  # over an hour: deleted
        workers._next_sweep = 0.0
        assert workers.sweep(now + 7200) == 0  # deleted once, forgotten
        with client(service.address) as c:
            gone = c.get(f"/api/study/download/{job_id}/file")
            job = c.get(f"/api/study/download/{job_id}").json()
        assert gone.status_code == 410 and "no longer kept" in gone.text
        assert job["State"] == "done" and job["Statuses"] == GOOD  # the job's record stays


def test_keep_hours_zero_keeps_every_zip(stack: Stack, medix_service: Factory) -> None:
    study = sample_study("MRN1002", "MR")["study_instance_uid"]
    with WebhookReceiver() as hook, medix_service(stack.client_settings(), keep_hours=0.0) as service:
        job_id = request_download(service.address, study, hook.url, {})
        assert hook.wait_final() == GOOD
        assert service.workers is not None
        assert service.workers.sweep(time.time() + 10 * 365 * 86400) == 0
        assert (service.files / f"{job_id}.zip").is_file()
