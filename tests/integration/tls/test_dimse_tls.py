"""DICOM over TLS: kit's PacsClient against a pynetdicom SCP built here with ``ssl_context``.

The SCP (Verification, CT Image Storage, Study Root C-FIND) runs in this process on an
ephemeral port of 127.0.0.1 with the session PKI's server certificate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from kit.config import PacsSettings, Settings, load_settings
from kit.dicom.dimse import PacsClient
from kit.errors import PeerError, TLSError
from kit.examples.cohort import studies
from kit.examples.dicom import base_dataset, write_dataset

from .conftest import Pki, client_context, server_context

pytestmark = pytest.mark.timeout(60)

SCP_AET = "TLSSCP"
STUDY = studies(modality="CT")[0]


@dataclasses.dataclass
class Scp:
    """A running TLS SCP: its port, the folder C-STORE writes into, the server to shut down."""

    port: int
    folder: Path
    server: ThreadedAssociationServer
    lock: threading.Lock


def _on_store(folder: Path, lock: threading.Lock) -> Any:
    def handler(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with lock:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000
    return handler


def _on_find(folder: Path, lock: threading.Lock) -> Any:
    def handler(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        with lock:
            files = [dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
        seen: set[str] = set()
        for ds in files:
            if query.get("PatientID") and ds.PatientID != query.PatientID:
                continue
            if ds.StudyInstanceUID in seen:
                continue
            seen.add(ds.StudyInstanceUID)
            match = Dataset()
            match.QueryRetrieveLevel = "STUDY"
            for keyword in query.dir():
                if keyword != "QueryRetrieveLevel":
                    setattr(match, keyword, ds.get(keyword, ""))
            yield 0xFF00, match
        yield 0x0000, None
    return handler



@contextlib.contextmanager
def running_scp(folder: Path, ssl_context: Any) -> Iterator[Scp]:
    """A pynetdicom SCP with TLS (``ssl_context``) on an ephemeral port; shut down on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    ae = AE(ae_title=SCP_AET)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
    for uid in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind):
        ae.add_supported_context(uid)
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=ssl_context,
                             evt_handlers=[(evt.EVT_C_STORE, _on_store(folder, lock)),
                                           (evt.EVT_C_FIND, _on_find(folder, lock))])
    assert server is not None
    try:
        yield Scp(int(server.server_address[1]), folder, server, lock)
    finally:
        server.shutdown()
        ae.shutdown()


@pytest.fixture
def scp(tmp_path: Path, pki: Pki) -> Iterator[Scp]:
    with running_scp(tmp_path / "received", server_context(pki)) as running:
        yield running


@pytest.fixture
def mtls_scp(tmp_path: Path, pki: Pki) -> Iterator[Scp]:
    with running_scp(tmp_path / "received-mtls", server_context(pki, require_client_cert=True)) as running:
        yield running


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small CT images of the cohort's first CT study."""
    folder = tmp_path_factory.mktemp("ct")
    paths = []
    for n in (1, 2):
        ds = base_dataset(STUDY, sop_class_uid=CTImageStorage, series_number=1, instance_number=n,
                          series_description="TLS test")
        pixels = (np.arange(16 * 16, dtype=np.int16).reshape(16, 16) * n)
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = pixels.tobytes()
        paths.append(write_dataset(ds, folder / f"ct{n}.dcm"))
    return paths


def client(port: int, ctx: Any, timeout: float = 10.0) -> PacsClient:
    return PacsClient("127.0.0.1", port, called_aet=SCP_AET, timeout=timeout, tls=ctx)


# -- the happy path ------------------------------------------------------------------------------

def test_echo_over_tls(scp: Scp, pki: Pki) -> None:
    took = client(scp.port, client_context(pki)).echo()
    assert 0 <= took < 10


def test_store_over_tls_lands_the_files(scp: Scp, pki: Pki, ct_files: list[Path]) -> None:
    stored = client(scp.port, client_context(pki)).store(ct_files)
    assert stored.height == 2
    assert stored["status"].to_list() == [0, 0]
    for path in ct_files:
        sent = dcmread(path)
        landed = scp.folder / f"{sent.SOPInstanceUID}.dcm"
        assert landed.is_file(), f"{landed.name} did not arrive"
        got = dcmread(landed)
        assert got.StudyInstanceUID == STUDY.study_uid
        assert got.PatientID == STUDY.mrn
        assert got.PixelData == sent.PixelData


def test_find_over_tls(scp: Scp, pki: Pki, ct_files: list[Path]) -> None:
    pacs = client(scp.port, client_context(pki))
    pacs.store(ct_files[:1])
    studies_frame = pacs.find("STUDY", patient_id=STUDY.mrn)
    assert studies_frame["study_instance_uid"].to_list() == [STUDY.study_uid]
    assert studies_frame["patient_id"].to_list() == [STUDY.mrn]
    assert pacs.find("STUDY", patient_id="NOSUCHMRN").height == 0


# -- failures ----------------------------------------------------------------------------------

def test_untrusted_server_certificate_is_a_typed_error(scp: Scp, pki: Pki) -> None:
    pacs = client(scp.port, client_context(pki, trust=pki.rogue_ca), timeout=5.0)
    start = time.monotonic()
    with pytest.raises(PeerError, match="TLS") as info:
        pacs.echo()
    assert time.monotonic() - start < 5.0
    assert info.value.peer == f"dicom://{SCP_AET}@127.0.0.1:{scp.port}"


def test_untrusted_server_certificate_raises_tls_error_as_documented(scp: Scp, pki: Pki) -> None:
    pacs = client(scp.port, client_context(pki, trust=pki.rogue_ca), timeout=5.0)
    with pytest.raises(PeerError) as info:
        pacs.echo()
    assert isinstance(info.value, TLSError), f"{type(info.value).__name__}: {info.value}"


def test_plain_client_to_tls_scp_fails_typed_and_scp_keeps_serving(scp: Scp, pki: Pki) -> None:
    plain = PacsClient("127.0.0.1", scp.port, called_aet=SCP_AET, timeout=5.0)
    start = time.monotonic()
    with pytest.raises(PeerError):
        plain.echo()
    assert time.monotonic() - start < 6.0
    # the SCP still answers TLS clients afterwards
    assert client(scp.port, client_context(pki)).echo() >= 0


def test_mutual_tls_scp_refuses_a_client_without_certificate(mtls_scp: Scp, pki: Pki) -> None:
    pacs = client(mtls_scp.port, client_context(pki), timeout=5.0)
    start = time.monotonic()
    with pytest.raises(PeerError):
        pacs.echo()
    assert time.monotonic() - start < 6.0
    assert client(mtls_scp.port, client_context(pki, with_cert=True)).echo() >= 0


# -- PacsClient.from_settings ----------------------------------------------------------------

def _settings(port: int, pki: Pki, **overrides: Any) -> Settings:
    fields: dict[str, Any] = dict(host="127.0.0.1", port=port, called_aet=SCP_AET, timeout=5.0, tls=True,
                                  tls_ca=str(pki.ca), tls_cert=str(pki.client_cert),
                                  tls_key=str(pki.client_key))
    fields.update(overrides)
    return Settings(pacs=PacsSettings(**fields))


def test_from_settings_with_tls_files_echoes_with_mutual_tls(mtls_scp: Scp, pki: Pki) -> None:
    pacs = PacsClient.from_settings(_settings(mtls_scp.port, pki))
    assert pacs.tls is not None
    assert pacs.echo() >= 0


def test_from_settings_read_from_kit_toml(tmp_path: Path, mtls_scp: Scp, pki: Pki,
                                          ct_files: list[Path]) -> None:
    toml = tmp_path / "kit.toml"
    toml.write_text(
        "[pacs]\n"
        f'host = "127.0.0.1"\nport = {mtls_scp.port}\ncalled_aet = "{SCP_AET}"\ntimeout = 5.0\n'
        f'tls = true\ntls_ca = "{pki.ca}"\ntls_cert = "{pki.client_cert}"\ntls_key = "{pki.client_key}"\n')
    pacs = PacsClient.from_settings(load_settings(toml, env={}))
    assert pacs.store(ct_files[:1])["status"].to_list() == [0]
    assert (mtls_scp.folder / f"{dcmread(ct_files[0]).SOPInstanceUID}.dcm").is_file()


def test_from_settings_without_client_cert_is_refused_by_mutual_tls(mtls_scp: Scp, pki: Pki) -> None:
    pacs = PacsClient.from_settings(_settings(mtls_scp.port, pki, tls_cert=None, tls_key=None))
    with pytest.raises(PeerError):
        pacs.echo()


def test_from_settings_with_a_missing_ca_file_is_a_tls_error(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(TLSError, match="cannot build the TLS context"):
        PacsClient.from_settings(_settings(11112, pki, tls_ca=str(tmp_path / "missing.pem")))


def test_from_settings_tls_false_builds_no_context(pki: Pki) -> None:
    assert PacsClient.from_settings(_settings(11112, pki, tls=False)).tls is None
