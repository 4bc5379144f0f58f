"""Endoscopy detections back to PACS, EHR and HL7 through kit.results.deliver, verified (embedded stack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.endoscopy import procedures
from kit.endoscopy.detections import Detection, detections_result
from kit.endoscopy.store import capture_procedure
from kit.fhir.client import FhirClient, RetryPolicy
from kit.fhir.server import EmbeddedFhirServer
from kit.hl7.mllp import MLLPListener, MLLPSender
from kit.hl7.mllp import RetryPolicy as MllpRetry
from kit.results import Algorithm
from kit.results.deliver import TARGETS, deliver
from kit.results.readback import read_sr
from tests.integration.endoscopy_dicom.peers import clip_frames, items

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, PacsClient, FhirClient, MLLPSender, MLLPListener]]:
    with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as pacs, \
            EmbeddedFhirServer(tmp_path / "fhir.db", port=0) as server, \
            FhirClient(server.base_url, retries=RetryPolicy(max_attempts=1), timeout=10) as fhir, \
            MLLPListener(tmp_path / "mllp.db") as listener, \
            MLLPSender("127.0.0.1", listener.port, timeout=10, retry=MllpRetry(max_attempts=1)) as hl7:
        yield pacs, PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10), fhir, hl7, listener


def test_detections_of_a_captured_procedure_are_delivered_and_verified_everywhere(stack) -> None:  # type: ignore[no-untyped-def]
    server, pacs, fhir, hl7, listener = stack
    procedure = procedures.find_procedure(pacs, "ACC100102")
    cap = capture_procedure(pacs, procedure, clip_frames(), stills=[4, 20])
    mask = np.zeros((240, 320), bool)
    mask[100:140, 150:200] = True
    dets = [Detection(4, "polyp", 0.91, box=(150, 100, 200, 140), mask=mask, time=0.33),
            Detection(10, "polyp", 0.84, box=(152, 101, 205, 145), time=0.83),
            Detection(20, "polyp", 0.77, box=(10, 10, 50, 50), time=1.67)]
    result = detections_result(dets, cap, algorithm=Algorithm("polypnet", "1.0", {"threshold": 0.5}))
    sources = list(cap.datasets.values())
    report = deliver(result, sources=sources, pacs=pacs, fhir=fhir, hl7=hl7)
    assert {d.target: d.status for d in report.deliveries} == dict.fromkeys(TARGETS, "verified"), report.frame
    # the SR in the PACS is in the procedure's study, with its accession, and refers to the clip's frame 11
    found = pacs.find("IMAGE", study_instance_uid=procedure.study_instance_uid,
                      series_instance_uid=result.uid("sr-series"), sop_instance_uid=result.uid("sr"))
    assert found["sop_instance_uid"].to_list() == [result.uid("sr")]
    (sr,) = [d for d in (dcmread(f) for f in server.store.files_dir.rglob("*") if f.is_file())
             if d.SOPInstanceUID == result.uid("sr")]
    read = read_sr(sr)
    on_clip = [b for b in read.boxes if b.source_instance == cap.clip.sop_instance_uid]  # type: ignore[union-attr]
    assert [b.frame_number for b in on_clip] == [11]
    assert sr.AccessionNumber == "ACC100102" and sr.PatientID == "MRN1001"
    # the FHIR report and the ORU carry the procedure's identifiers
    assert listener.store is not None and listener.store.count() == 1
    reports = list(fhir.search("DiagnosticReport", identifier=f"urn:dicom:uid|urn:oid:{result.uid('sr')}"))
    assert len(reports) == 1
    # sending the same result again duplicates nothing
    again = deliver(result, sources=sources, pacs=pacs, fhir=fhir, hl7=hl7)
    assert again.ok and [d.identifier for d in again.deliveries] == [d.identifier for d in report.deliveries]
