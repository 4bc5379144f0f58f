"""deliver() of the shipped analysis's result to the embedded PACS (SR, SEG), FHIR server and MLLP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.examples.cohort import studies
from kit.examples.dicom import ct_datasets
from kit.fhir.client import FhirClient, RetryPolicy
from kit.fhir.server import EmbeddedFhirServer
from kit.hl7.mllp import MLLPListener, MLLPSender
from kit.hl7.mllp import RetryPolicy as MllpRetry
from kit.results import deliver as deliver_module
from kit.results.analysis import analyse_ct
from kit.results.deliver import TARGETS, deliver
from kit.results.oru import control_id

pytestmark = pytest.mark.timeout(180)
STUDY = next(s for s in studies(modality="CT") if s.lesion is not None)


@pytest.fixture(scope="module")
def sources() -> list:  # type: ignore[type-arg]
    return ct_datasets(STUDY)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, FhirClient, MLLPSender, MLLPListener]]:
    with EmbeddedPACS(tmp_path / "pacs", port=0) as pacs, \
            EmbeddedFhirServer(tmp_path / "fhir.db", port=0) as server, \
            FhirClient(server.base_url, retries=RetryPolicy(max_attempts=1), timeout=10) as fhir, \
            MLLPListener(tmp_path / "mllp.db") as listener, \
            MLLPSender("127.0.0.1", listener.port, timeout=10, retry=MllpRetry(max_attempts=1)) as hl7:
        yield pacs, fhir, hl7, listener


def test_every_target_is_verified_and_redelivery_stores_nothing_twice(sources, peers) -> None:  # type: ignore[no-untyped-def]
    pacs, fhir, hl7, listener = peers
    client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
    result = analyse_ct(sources)
    first = deliver(result, sources=sources, pacs=client, fhir=fhir, hl7=hl7)
    assert {d.target: d.status for d in first.deliveries} == dict.fromkeys(TARGETS, "verified"), first.frame
    assert first["sr"].identifier == result.uid("sr") and first["seg"].identifier == result.uid("seg")
    assert first["oru"].identifier == control_id(result)
    again = deliver(result, sources=sources, pacs=client, fhir=fhir, hl7=hl7)
    assert again.ok and [d.identifier for d in again.deliveries] == [d.identifier for d in first.deliveries]
    stored = client.find("IMAGE", study_instance_uid=result.subject.study_instance_uid,
                         series_instance_uid="*", sop_instance_uid="*")
    uids = stored["sop_instance_uid"].to_list()
    assert uids.count(result.uid("sr")) == 1 and uids.count(result.uid("seg")) == 1
    assert len(uids) == 2  # the empty PACS holds only the SR and the SEG
    assert listener.store is not None and listener.store.count() == 1
    # the FHIR report names the SR and SEG by UID
    report = list(fhir.search("DiagnosticReport", identifier=f"urn:dicom:uid|urn:oid:{result.uid('sr')}"))
    assert len(report) == 1


def test_a_pacs_that_refuses_fails_sr_and_seg_and_the_others_complete(sources, peers) -> None:  # type: ignore[no-untyped-def]
    pacs, fhir, hl7, _ = peers
    wrong = PacsClient("127.0.0.1", pacs.port, called_aet="NOTKIT", timeout=10)
    result = analyse_ct(sources)
    report = deliver(result, sources=sources, pacs=wrong, fhir=fhir, hl7=hl7)
    statuses = {d.target: d.status for d in report.deliveries}
    assert statuses == {"sr": "failed", "seg": "failed", "observation": "verified",
                        "diagnostic_report": "verified", "oru": "verified"}
    for target in ("sr", "seg"):
        reason = report[target].reason or ""
        assert reason.startswith("AssociationRejectedError") and "called AE title not recognised" in reason
        assert report[target].identifier == result.uid(target)  # what failed to arrive, to look for later


def test_a_dicom_failure_status_fails_that_target_with_the_status(sources, peers, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The PACS answers 0xA900 to an SR without PatientID (its check); SEG, FHIR and ORU still complete."""
    pacs, fhir, hl7, _ = peers
    client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
    encode = deliver_module._Dicom.encode_sr

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        ds = encode(*args, **kwargs)
        del ds.PatientID
        return ds

    monkeypatch.setattr(deliver_module._Dicom, "encode_sr", staticmethod(broken))
    report = deliver(analyse_ct(sources), sources=sources, pacs=client, fhir=fhir, hl7=hl7)
    statuses = {d.target: d.status for d in report.deliveries}
    assert statuses == {"sr": "failed", "seg": "verified", "observation": "verified",
                        "diagnostic_report": "verified", "oru": "verified"}, report.frame
    reason = report["sr"].reason or ""
    assert reason.startswith("RetrieveError") and "A900" in reason.upper(), reason
