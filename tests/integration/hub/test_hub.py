"""kit.hub.Hub against the embedded stack: status, a dead or silent peer, patient_view, report_status."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator

import polars as pl
import pytest

from kit.config import Settings
from kit.fhir.client import FhirClient
from kit.hl7.mllp import MLLPSender
from kit.hub import Hub
from kit.hub.manager import JOIN_COLUMNS, REPORT_COLUMNS, STATUS_COLUMNS
from kit.results import Algorithm, AnalysisResult, Code, Measurement, Subject
from kit.results.fhir import encode_bundle
from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.hub.helpers import sample_study, sr_for, studies

CONNECTORS = ["pacs-dimse", "pacs-dicomweb", "ehr-fhir", "hl7-mllp", "endoscopy"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack.ephemeral() as running:
        yield running


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.client_settings()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (backlog) but never reads or answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_status_all_ok(settings: Settings) -> None:
    status = Hub.from_settings(settings).status()
    assert status.schema == pl.Schema(dict(STATUS_COLUMNS))
    assert status["connector"].to_list() == CONNECTORS
    assert status["status"].to_list() == ["ok"] * 5, status
    assert status["reason"].null_count() == 5
    assert (status["latency_ms"] > 0).all()


@pytest.mark.parametrize("dead", ["pacs", "fhir", "hl7"])
def test_status_with_one_peer_on_a_closed_port(settings: Settings, dead: str) -> None:
    port = free_port()
    if dead == "fhir":
        changed = dataclasses.replace(settings, fhir=dataclasses.replace(
            settings.fhir, base=f"http://127.0.0.1:{port}/fhir/R4"))
    else:
        section = dataclasses.replace(getattr(settings, dead), port=port)
        changed = dataclasses.replace(settings, **{dead: section})
    start = time.perf_counter()
    status = Hub.from_settings(changed, probe_timeout=2.0).status()
    took = time.perf_counter() - start
    failed = {"pacs": {"pacs-dimse", "endoscopy"}, "fhir": {"ehr-fhir"}, "hl7": {"hl7-mllp"}}[dead]
    rows = {r["connector"]: r for r in status.iter_rows(named=True)}
    for name, row in rows.items():
        if name in failed:
            assert row["status"] == "failed"
            assert row["reason"].startswith("PeerUnreachableError"), row
        else:
            assert row["status"] == "ok" and row["reason"] is None, row
    assert took < 5.0


def test_status_with_a_silent_peer_is_bounded(settings: Settings, silent_port: int) -> None:
    changed = dataclasses.replace(
        settings, pacs=dataclasses.replace(settings.pacs, port=silent_port),
        fhir=dataclasses.replace(settings.fhir, base=f"http://127.0.0.1:{silent_port}/fhir/R4"))
    start = time.perf_counter()
    status = Hub.from_settings(changed, probe_timeout=1.0).status()
    took = time.perf_counter() - start
    rows = {r["connector"]: r for r in status.iter_rows(named=True)}
    for name in ("pacs-dimse", "endoscopy", "ehr-fhir"):
        assert rows[name]["status"] == "failed", rows[name]
        assert rows[name]["reason"].startswith("PeerTimeoutError"), rows[name]
    assert rows["hl7-mllp"]["status"] == "ok"
    assert took < 3.5, took  # 1 s probes in parallel, plus slack


def test_status_after_a_service_stops(settings: Settings) -> None:
    with Stack.ephemeral(services=("mllp",), preload=False) as own:
        changed = dataclasses.replace(settings, hl7=own.client_settings(settings).hl7)
        hub = Hub.from_settings(changed, probe_timeout=2.0)
        assert hub.status()["status"].to_list() == ["ok"] * 5
        own.services["mllp"].stop()
        rows = {r["connector"]: r for r in hub.status().iter_rows(named=True)}
    assert rows["hl7-mllp"]["status"] == "failed" and rows["hl7-mllp"]["reason"].startswith("PeerUnreachable")
    assert [rows[n]["status"] for n in ("pacs-dimse", "ehr-fhir", "endoscopy")] == ["ok"] * 3


def test_connect_all_and_disconnect_all(settings: Settings) -> None:
    hub = Hub.from_settings(settings)
    connected = hub.connect_all()
    assert connected["status"].to_list() == ["ok"] * 5
    first = hub.hl7
    hub.disconnect_all()
    hub.disconnect_all()  # idempotent
    assert hub.hl7 is not first  # rebuilt on next use
    hub.disconnect_all()
    closed = dataclasses.replace(settings.hl7, port=free_port())
    dead = Hub.from_settings(dataclasses.replace(settings, hl7=closed))
    rows = {r["connector"]: r for r in dead.connect_all().iter_rows(named=True)}
    assert rows["hl7-mllp"]["status"] == "failed" and rows["hl7-mllp"]["reason"].startswith("PeerUnreachable")
    dead.disconnect_all()


def test_endoscopy_worklist_is_the_es_worklist(settings: Settings) -> None:
    worklist = Hub.from_settings(settings).endoscopy_worklist()
    assert worklist.height > 0
    assert set(worklist["modality"].to_list()) == {"ES"}


def _adt(mrn: str, control_id: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|HIS|HOSP|KIT|KIT|20260101120000||ADT^A01^ADT_A01|{control_id}|P|2.5",
        "EVN|A01|20260101120000",
        f"PID|1||{mrn}^^^HOSP^MR||Test^Patient||19600101|F",
        "PV1|1|I|WARD^1^1"]) + "\r"


def test_patient_view_joins_pacs_fhir_and_hl7_on_identifiers(stack: Stack, settings: Settings) -> None:
    with MLLPSender(settings.hl7.host, settings.hl7.port, timeout=10) as sender:
        sender.send(_adt("MRN1001", "HUBV1"))
        sender.send(_adt("MRN1002", "HUBV2"))
    hub = Hub.from_settings(settings, hl7_store=stack.data_dir / "mllp.db")
    view = hub.patient_view("MRN1001")
    for name, frame in view.items():
        assert set(JOIN_COLUMNS) <= set(frame.columns), name
    truth = studies().filter(pl.col("patient_id") == "MRN1001")
    pacs = view["pacs"]
    assert sorted(pacs["study_instance_uid"].to_list()) == sorted(truth["study_instance_uid"].to_list())
    assert set(pacs["patient_id"].to_list()) == {"MRN1001"}
    assert view["fhir.Patient"]["patient_id"].to_list() == ["MRN1001"]
    imaging = view["fhir.ImagingStudy"]
    assert set(imaging["patient_id"].to_list()) == {"MRN1001"}
    joined = pacs.join(imaging, on=["study_instance_uid", "accession_number"], how="inner")
    assert joined.height == truth.height
    obs = view["fhir.Observation"]
    assert obs.height > 0 and set(obs["patient_id"].to_list()) == {"MRN1001"}
    assert view["fhir.DiagnosticReport"].height == 0
    messages = view["hl7.messages"]
    assert "HUBV1" in messages["control_id"].to_list() and "HUBV2" not in messages["control_id"].to_list()
    assert set(messages["patient_id"].to_list()) == {"MRN1001"}
    other = hub.patient_view("MRN1002")
    assert not set(other["pacs"]["study_instance_uid"].to_list()) & set(pacs["study_instance_uid"].to_list())
    unknown = hub.patient_view("MRN-NOBODY")
    assert unknown["pacs"].height == 0 and unknown["fhir.Patient"].height == 0


def test_report_status_diagnostic_report_in_the_ehr(settings: Settings) -> None:
    study = sample_study("MRN1002", "CT")
    hub = Hub.from_settings(settings)
    before = hub.report_status([study["study_instance_uid"]])
    assert before.schema == pl.Schema(dict(REPORT_COLUMNS))
    row = before.row(0, named=True)
    assert (row["has_sr"], row["has_diagnostic_report"], row["has_report"]) == (False, False, False)
    assert row["accession_number"] == study["accession_number"] and row["error"] is None
    result = AnalysisResult(
        subject=Subject("MRN1002", study["study_instance_uid"], study["accession_number"]),
        algorithm=Algorithm("hub-test", "1"), measurements=(Measurement(
            Code("81827009", "SCT", "Diameter"), 12.5, Code("mm", "UCUM", "millimeter")),),
        conclusion="one lesion")
    with FhirClient.from_settings(settings) as fhir:
        fhir.transaction(encode_bundle(result))
    view_dr = hub.patient_view("MRN1002")["fhir.DiagnosticReport"]
    assert view_dr["study_instance_uid"].to_list() == [study["study_instance_uid"]]
    after = hub.report_status([study["study_instance_uid"]]).row(0, named=True)
    assert (after["has_sr"], after["has_diagnostic_report"], after["has_report"]) == (False, True, True)
    assert len(after["diagnostic_report_ids"]) == 1


def test_report_status_sr_in_the_pacs(settings: Settings) -> None:
    study = sample_study("MRN1003", "CT")
    untouched = sample_study("MRN1004", "CT")
    hub = Hub.from_settings(settings)
    assert hub.report_status([study["study_instance_uid"]])["has_report"].to_list() == [False]
    sr = sr_for(study["path"])
    hub.pacs.store([sr])
    status = hub.report_status([study["study_instance_uid"], untouched["study_instance_uid"]])
    first, second = status.rows(named=True)
    assert (first["has_sr"], first["has_diagnostic_report"], first["has_report"]) == (True, False, True)
    assert first["sr_instance_uids"] == [sr.SOPInstanceUID]
    assert (second["has_sr"], second["has_report"]) == (False, False)


def test_report_status_with_a_dead_ehr_is_unknown_not_false(settings: Settings) -> None:
    study = sample_study("MRN1004", "CT")
    dead = dataclasses.replace(settings, fhir=dataclasses.replace(
        settings.fhir, base=f"http://127.0.0.1:{free_port()}/fhir/R4"))
    row = Hub.from_settings(dead).report_status([study["study_instance_uid"]]).row(0, named=True)
    assert row["has_sr"] is False and row["has_diagnostic_report"] is None and row["has_report"] is None
    assert row["error"].startswith("fhir: PeerUnreachableError")


def test_status_with_a_bad_tls_setting_is_a_failed_row(settings: Settings) -> None:
    pacs = dataclasses.replace(settings.pacs, tls=True, tls_ca="/no/such/ca.pem")
    bad = dataclasses.replace(settings, pacs=pacs)
    rows = {r["connector"]: r for r in Hub.from_settings(bad).status().iter_rows(named=True)}
    assert rows["pacs-dimse"]["status"] == rows["endoscopy"]["status"] == "failed"
    assert rows["pacs-dimse"]["reason"].startswith("TLSError"), rows["pacs-dimse"]
    assert rows["ehr-fhir"]["status"] == rows["hl7-mllp"]["status"] == "ok"


def test_send_results_delivers_and_report_status_sees_it(settings: Settings) -> None:
    """Live once kit.results.deliver (branch ``deliver``) is on main; skipped before."""
    pytest.importorskip("kit.results.deliver")
    study = sample_study("MRN1006", "CT")
    hub = Hub.from_settings(settings)
    assert hub.report_status([study["study_instance_uid"]])["has_report"].to_list() == [False]
    result = AnalysisResult(
        subject=Subject("MRN1006", study["study_instance_uid"], study["accession_number"]),
        algorithm=Algorithm("hub-test", "1"), measurements=(Measurement(
            Code("81827009", "SCT", "Diameter"), 3.0, Code("mm", "UCUM", "millimeter")),))
    report = hub.send_results(result, targets=["observation", "diagnostic_report", "oru"])
    frame = report.frame
    assert frame["target"].to_list() == ["observation", "diagnostic_report", "oru"]
    assert frame["status"].to_list() == ["verified"] * 3, frame
    row = hub.report_status([study["study_instance_uid"]]).row(0, named=True)
    assert (row["has_diagnostic_report"], row["has_report"]) == (True, True)
