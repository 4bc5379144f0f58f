"""kit.hub.Hub with a real Orthanc as the PACS: DICOMweb health probe, SR found by report_status."""

from __future__ import annotations

import dataclasses

import pytest

from kit.config import DicomWebSettings, PacsSettings, Settings
from kit.hub import Hub
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.hub.helpers import sample_study, sr_for


def _settings(orthanc: OrthancServer, *, web_port: int | None = None) -> Settings:
    base = orthanc.dicomweb if web_port is None else f"http://127.0.0.1:{web_port}/dicom-web"
    return dataclasses.replace(
        Settings(), pacs=PacsSettings(host="127.0.0.1", port=orthanc.dicom_port, called_aet=orthanc.aet),
        dicomweb=DicomWebSettings(base=base),
        # no EHR and no HL7 engine here: closed ports, reported as failed rows
        fhir=dataclasses.replace(Settings().fhir, base=f"http://127.0.0.1:{free_port()}/fhir/R4"),
        hl7=dataclasses.replace(Settings().hl7, port=free_port()))


def test_dicomweb_is_configured_by_its_base_and_probed_with_qido(orthanc: OrthancServer) -> None:
    hub = Hub.from_settings(_settings(orthanc))
    assert "pacs-dicomweb" in hub.connectors
    rows = {r["connector"]: r for r in hub.status().iter_rows(named=True)}
    assert rows["pacs-dicomweb"]["status"] == "ok", rows["pacs-dicomweb"]
    assert rows["pacs-dicomweb"]["address"] == orthanc.dicomweb
    assert rows["pacs-dimse"]["status"] == "ok" and rows["endoscopy"]["status"] == "ok"
    assert rows["ehr-fhir"]["status"] == rows["hl7-mllp"]["status"] == "failed"
    # a configuration naming other systems and no DICOMweb has none (the embedded defaults serve one)
    assert not Hub.from_settings(Settings(source="/site/kit.toml")).use_dicomweb


def test_dicomweb_on_a_closed_port_is_a_failed_row(orthanc: OrthancServer) -> None:
    rows = {r["connector"]: r for r in Hub.from_settings(
        _settings(orthanc, web_port=free_port()), probe_timeout=2.0).status().iter_rows(named=True)}
    assert rows["pacs-dicomweb"]["status"] == "failed"
    assert rows["pacs-dicomweb"]["reason"].startswith("PeerUnreachableError"), rows["pacs-dicomweb"]
    assert rows["pacs-dimse"]["status"] == "ok"


@pytest.mark.usefixtures("orthanc")
def test_report_status_finds_an_sr_in_orthanc(orthanc: OrthancServer) -> None:
    study = sample_study("MRN1005", "CT")
    orthanc.upload(study["path"])
    hub = Hub.from_settings(_settings(orthanc))
    row = hub.report_status([study["study_instance_uid"]]).row(0, named=True)
    assert row["has_sr"] is False and row["has_report"] is None  # no EHR: unknown, not False
    assert row["error"].startswith("fhir: PeerUnreachableError")
    sr = sr_for(study["path"])
    hub.pacs.store([sr])
    row = hub.report_status([study["study_instance_uid"]]).row(0, named=True)
    assert row["has_sr"] is True and row["has_report"] is True
    assert row["sr_instance_uids"] == [sr.SOPInstanceUID]
