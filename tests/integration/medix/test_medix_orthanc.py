"""Medix against a real Orthanc: C-GET and WADO-RS, the full status sequence, every instance in the zip."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from kit.config import DicomWebSettings, PacsSettings, Settings
from kit.dicom.dimse import PacsClient
from kit.services.medix import MedixService
from tests.integration.conftest import OrthancServer
from tests.integration.hub.helpers import sample_study
from tests.integration.medix.helpers import GOOD, WebhookReceiver, client, request_download, zip_members

pytestmark = pytest.mark.orthanc

Factory = Callable[..., AbstractContextManager[MedixService]]


def _settings(orthanc: OrthancServer) -> Settings:
    return dataclasses.replace(Settings(), pacs=PacsSettings(host="127.0.0.1", port=orthanc.dicom_port,
                                                             called_aet=orthanc.aet, timeout=20),
                               dicomweb=DicomWebSettings(base=orthanc.dicomweb, timeout=20))


@pytest.mark.parametrize("mode", ["c-get", "wado"])
def test_orthanc_study_reports_every_status_and_zips_every_instance(
        orthanc: OrthancServer, medix_service: Factory, tmp_path: Path, mode: str) -> None:
    study = sample_study("MRN1005", "MR")
    sources = sorted(Path(study["path"]).parent.glob("*.dcm"))
    for path in sources:
        orthanc.upload(path)
    uid = study["study_instance_uid"]
    with WebhookReceiver() as hook, medix_service(_settings(orthanc), retrieve=mode) as service:
        job_id = request_download(service.address, uid, hook.url, {"X-Key": "k"})
        assert hook.wait_final() == GOOD
        assert hook.received[-1]["body"]["headers"] == {"X-Key": "k"}
        with client(service.address) as c:
            members = zip_members(c.get(f"/api/study/download/{job_id}/file").content, tmp_path)
    originals = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in sources}
    assert set(members) == set(originals) and len(members) == 12
    for sop, blob in members.items():
        got = pydicom.dcmread(BytesIO(blob))
        assert got.PixelData == originals[sop].PixelData and got.SOPInstanceUID == sop
    if mode == "c-get":  # byte for byte what a C-GET by hand from this Orthanc writes
        by_hand = PacsClient.from_settings(_settings(orthanc)).get(study_uid=uid, dest=tmp_path / "byhand")
        assert {r["sop_instance_uid"]: Path(r["path"]).read_bytes() for r in by_hand.iter_rows(named=True)} \
            == members


def test_orthanc_missing_study_is_request_failed(orthanc: OrthancServer, medix_service: Factory) -> None:
    with WebhookReceiver() as hook, medix_service(_settings(orthanc)) as service:
        request_download(service.address, "1.2.826.0.1.3680043.8.498.2", hook.url)
        assert hook.wait_final() == ["0", "1", "-4"]
