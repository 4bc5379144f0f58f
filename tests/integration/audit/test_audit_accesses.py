"""Must show: one of each access through kit's clients and services, each found with ``kit audit``.

Everything runs against real peers on loopback: the embedded stack (PACS with
C-MOVE destination, FHIR server, MLLP listener), the integration API and the
Medix service served over it, and Orthanc with its DICOMweb plugin. The log is
then read by the ``kit audit`` command as a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from kit import audit, examples
from kit.config import AuditSettings, MedixSettings, Secret, StackSettings
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.dicom.web import DicomWebClient
from kit.errors import KitError, OperationOutcomeError
from kit.examples import cohort
from kit.fhir.bulk import BulkExport
from kit.fhir.client import FhirClient
from kit.hl7.message import split_messages
from kit.hl7.sender import MLLPSender
from kit.services import audit as audit_log
from kit.services._auth import Role, new_key
from kit.services.api import serve as api_serve
from kit.services.medix import MedixService
from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.api.helpers import api_settings
from tests.integration.conftest import OrthancServer
from tests.integration.medix.helpers import TOKEN

pytestmark = pytest.mark.timeout(300)

KIT = [sys.executable, "-m", "kit.cli"]
MRN = "MRN1001"
STUDY = next(s for s in cohort.patient(MRN).studies if s.modality == "CT" and not s.scheduled)
MOVE_AET = "KITAUDIT"


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("audit") / "audit.db"
    log = audit_log.enable(path)
    try:
        yield path
    finally:
        audit_log.release(log)


@pytest.fixture(scope="module")
def stack(log_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int]]:
    store_port = free_port()
    settings = StackSettings(host="127.0.0.1", pacs_port=0, fhir_port=0, mllp_port=0, dicomweb_port=0,
                             video_port=0,
                             data_dir=str(tmp_path_factory.mktemp("stack")),
                             move_destinations={MOVE_AET: f"127.0.0.1:{store_port}"})
    with Stack(settings) as running:
        yield running, store_port


def kit_audit(log: Path, *args: str) -> list[dict[str, Any]]:
    """Rows of ``kit audit --json`` (the command as a subprocess)."""
    proc = subprocess.run([*KIT, "audit", "--log", str(log), "--json", *args], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(log.parent)})
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def one(rows: list[dict[str, Any]], action: str, *, side: str = "client", outcome: str = "ok",
        patient: str | None = None, study: str | None = None, who: str | None = None) -> dict[str, Any]:
    """The rows matching, asserted to exist; the last one."""
    found = [r for r in rows if r["action"] == action and r["side"] == side and r["outcome"] == outcome
             and (patient is None or patient in r["patient_ids"])
             and (study is None or study in r["study_uids"])
             and (who is None or r["who"] == who)]
    assert found, (f"no {side} {action} {outcome} patient={patient} study={study} who={who} in "
                   + json.dumps([(r["action"], r["side"], r["outcome"], r["who"], r["patient_ids"])
                                 for r in rows if r["action"] == action]))
    return found[-1]


def test_one_of_each_access_is_in_kit_audit(stack: tuple[Stack, int], log_path: Path,
                                            tmp_path: Path) -> None:
    running, store_port = stack
    settings = dataclasses.replace(running.client_settings(), audit=AuditSettings(path=str(log_path)))
    failed_before = audit.sink_failures()  # the count is per process: other tests' sinks failed on purpose
    # -- PACS: query, retrieve (C-GET, C-MOVE), store, worklist; and a failed retrieve
    pacs = PacsClient.from_settings(settings)
    found = pacs.find("STUDY", patient_id=MRN)
    assert STUDY.study_uid in found["study_instance_uid"].to_list()
    pacs.get(study_uid=STUDY.study_uid, dest=tmp_path / "get")
    pacs.move(study_uid=STUDY.study_uid, dest=tmp_path / "move", move_aet=MOVE_AET, store_port=store_port)
    new_file = _new_instance(tmp_path / "new.dcm", "MRN7001")
    pacs.store([new_file])
    pacs.worklist()
    missing = "1.2.3.999.1"
    with pytest.raises(RetrieveError):
        pacs.get(study_uid=missing, dest=tmp_path / "missing")
    # -- FHIR: search, read, create, update, delete, transaction, export; a failed read
    with FhirClient.from_settings(settings) as fhir:
        patient = next(iter(fhir.search("Patient", {"identifier": MRN})))
        ref = f"Patient/{patient['id']}"
        fhir.read("Patient", patient["id"])
        fhir.search("Observation", {"subject": ref})
        obs = fhir.create({"resourceType": "Observation", "status": "final", "subject": {"reference": ref},
                           "code": {"text": "audit test"}, "valueQuantity": {"value": 1.0}})
        obs["status"] = "amended"
        fhir.update(obs)
        fhir.delete("Observation", obs["id"])
        fhir.transaction([{"resource": {"resourceType": "Observation", "status": "final",
                                        "subject": {"reference": ref}, "code": {"text": "tx"}},
                           "request": {"method": "POST", "url": "Observation"}}])
        with pytest.raises(OperationOutcomeError):
            fhir.read("Patient", "no-such-patient")
        BulkExport(fhir).run(tmp_path / "export", types=["Patient"], poll_interval=0.1, progress=False)
    # -- HL7: send an ORU for MRN1002 to the embedded listener (its receipt is logged there too)
    oru = next(m for m in split_messages(examples.hl7_feed().read_bytes()) if "ORU^R01" in m
               and "MRN1002" in m)
    with MLLPSender("127.0.0.1", running.port("mllp"), timeout=30) as sender:
        sender.send(oru)
    # -- the integration API (its nested PACS/FHIR accesses are attributed to the key)
    api_ws = tmp_path / "api"
    api_conf = dataclasses.replace(api_settings(running), audit=AuditSettings(path=str(log_path)))
    server = api_serve(api_conf, port=0, workspace=api_ws)
    try:
        key = new_key()
        key_id = server.app.state.ctx.store.add_key(key, Role.READ, "audit test")
        with httpx.Client(base_url=server.address, headers={"X-API-Key": key}, timeout=120) as http:
            answer = http.get(f"/api/v1/integration/patient/{MRN}/all-systems")
            assert answer.status_code == 200, answer.text
            assert http.get("/api/v1/integration/status", headers={"X-API-Key": "x" * 40}).status_code == 401
    finally:
        server.stop()
    # -- Medix: report status of a study
    medix_conf = dataclasses.replace(settings, medix=MedixSettings(workspace=str(tmp_path / "medix")))
    with MedixService(medix_conf, token=Secret(TOKEN), port=0) as medix, \
            httpx.Client(base_url=medix.address, timeout=120) as http:
        answer = http.post("/api/study/report-status", json={"StudyInstanceUIDs": [STUDY.study_uid]},
                           headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text

    rows = kit_audit(log_path)
    assert audit.sink_failures() == failed_before, audit.sink_failures()
    me = audit.current_actor()
    assert me.startswith("user:")
    # PACS client side and the embedded PACS's side of each
    one(rows, "pacs.find", patient=MRN, study=STUDY.study_uid, who=me)
    one(rows, "pacs.find", side="server", patient=MRN)
    get = one(rows, "pacs.get", patient=MRN, study=STUDY.study_uid)
    assert get["count"] and get["count"] > 0 and get["target"] == pacs.address
    one(rows, "pacs.get", side="server", study=STUDY.study_uid, patient=MRN)
    one(rows, "pacs.move", patient=MRN, study=STUDY.study_uid)
    one(rows, "pacs.move", side="server", study=STUDY.study_uid)
    one(rows, "pacs.store", patient="MRN7001")
    one(rows, "pacs.store", side="server", patient="MRN7001", who=f"ae:{pacs.aet}")
    one(rows, "pacs.worklist", patient=MRN)
    one(rows, "pacs.worklist", side="server", patient=MRN)
    failed = one(rows, "pacs.get", outcome="failed", study=missing)
    assert failed["error"] == "RetrieveError"
    assert one(rows, "pacs.get", side="server", study=missing)["count"] == 0  # it served nothing
    # FHIR
    one(rows, "fhir.search", patient=MRN)  # the Patient found by identifier: its MRN and Patient/<id>
    one(rows, "fhir.read", patient=ref)
    one(rows, "fhir.read", side="server", patient=ref)
    one(rows, "fhir.search", patient=ref)
    for action in ("fhir.create", "fhir.update", "fhir.transaction"):
        one(rows, action, patient=ref)
        one(rows, action, side="server", patient=ref)
    one(rows, "fhir.delete")
    assert one(rows, "fhir.read", outcome="failed")["error"] == "OperationOutcomeError"
    assert one(rows, "fhir.export")["count"] >= len(cohort.COHORT)
    one(rows, "fhir.export", side="server")
    # HL7
    one(rows, "hl7.send", patient="MRN1002")
    one(rows, "hl7.receive", side="server", patient="MRN1002")
    # API: the request, who is the key; and what it did through the clients, as the key
    one(rows, "api.integration/patient/{patient_id}/all-systems", side="server", patient=MRN,
        who=f"key:{key_id}")
    one(rows, "pacs.find", patient=MRN, who=f"key:{key_id}")
    one(rows, "api.integration/status", side="server", outcome="failed", who="anonymous")
    # Medix
    medix_row = one(rows, "medix.study/report-status", side="server", study=STUDY.study_uid)
    assert medix_row["who"].startswith("token:") and TOKEN not in json.dumps(rows)

    # kit audit --patient answers "who accessed this patient", oldest first
    mine = kit_audit(log_path, "--patient", MRN)
    assert mine and all(MRN in r["patient_ids"] for r in mine)
    assert {"pacs.find", "pacs.get", "pacs.move", "fhir.search"} <= {r["action"] for r in mine}
    assert [r["seq"] for r in mine] == sorted(r["seq"] for r in mine)
    assert {r["action"] for r in kit_audit(log_path, "--action", "hl7")} == {"hl7.send", "hl7.receive"}

    # no PHI: names and birth dates of the sample patients are nowhere in the log's bytes
    raw = b"".join(p.read_bytes() for p in log_path.parent.glob(log_path.name + "*"))
    for person in cohort.COHORT:
        for value in (person.family, person.given, person.birth_date.strftime("%Y%m%d"),
                      person.birth_date.isoformat(), person.phone):
            assert value.encode() not in raw, f"{value!r} of {person.mrn} is in the audit log"
    assert b"Test^Audit" not in raw and b"audit test" not in raw  # a stored name, a resource's text
    assert audit_log.verify(log_path).ok


def test_dicomweb_accesses_are_in_kit_audit(orthanc: OrthancServer, log_path: Path, tmp_path: Path) -> None:
    web = DicomWebClient(orthanc.dicomweb, timeout=30)
    path = _new_instance(tmp_path / "web.dcm", "MRN7002")
    study = str(pydicom.dcmread(path).StudyInstanceUID)
    web.store([path])
    assert web.find("STUDY", patient_id="MRN7002").height == 1
    web.get(study, dest=tmp_path / "wado")
    with pytest.raises(KitError):
        web.get("1.2.3.999.2", dest=tmp_path / "none")
    rows = kit_audit(log_path, "--action", "dicomweb")
    one(rows, "dicomweb.stow", patient="MRN7002", study=study)
    one(rows, "dicomweb.qido", patient="MRN7002", study=study)
    one(rows, "dicomweb.wado", patient="MRN7002", study=study)
    one(rows, "dicomweb.wado", outcome="failed", study="1.2.3.999.2")


def test_a_failing_sink_does_not_break_the_access(stack: tuple[Stack, int], log_path: Path) -> None:
    running, _ = stack

    def broken(events: Any) -> None:
        raise OSError("disk full")

    audit.add_sink(broken)
    try:
        before = audit.sink_failures().get("test_a_failing_sink_does_not_break_the_access.<locals>.broken", 0)
        frame = PacsClient.from_settings(running.client_settings()).find("STUDY", patient_id=MRN)
        assert STUDY.study_uid in frame["study_instance_uid"].to_list()
        failures = audit.sink_failures()
        assert failures["test_a_failing_sink_does_not_break_the_access.<locals>.broken"] >= before + 2
    finally:
        audit.remove_sink(broken)
    # the other sink (the log) still got both sides of that find
    rows = kit_audit(log_path, "--action", "pacs.find")
    assert rows[-1]["patient_ids"] and MRN in rows[-1]["patient_ids"]


def _new_instance(path: Path, patient_id: str) -> Path:
    """A new CT instance (new study) of ``patient_id`` named Test^Audit, born 19991231."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.PatientID, ds.PatientName = patient_id, "Test^Audit"
    ds.PatientBirthDate, ds.PatientSex = "19991231", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260401", "101500", "ACCAUDIT1", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, 1
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(128)
    ds.save_as(path, enforce_file_format=True)
    return path
