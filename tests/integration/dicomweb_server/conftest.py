"""Fixtures for the DICOMweb tests: the embedded PACS + DICOMweb over one store, and the same
tests' second server, a real Orthanc with its DICOMweb plugin (``target``, parametrized)."""

from __future__ import annotations

import dataclasses
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit import examples
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.web_server import EmbeddedDicomWeb
from kit.examples.dicom import random_ct_files


@dataclasses.dataclass
class Embedded:
    """The embedded PACS and its DICOMweb server, sharing one store."""

    pacs: EmbeddedPACS
    web: EmbeddedDicomWeb

    @property
    def base(self) -> str:
        return self.web.base_url

    def dimse(self) -> PacsClient:
        return PacsClient("127.0.0.1", self.pacs.port, called_aet=self.pacs.aet, aet="KITSCU", timeout=20)


@dataclasses.dataclass
class Target:
    """A server under test: its DICOMweb root and a DIMSE client to the same server."""

    name: str
    base: str
    dimse: PacsClient


def cohort() -> list[Path]:
    """The sample cohort's DICOM files (the committed samples)."""
    return sorted(examples.dicom_dir().rglob("*.dcm"))


def start_embedded(folder: Path, *, preload: bool = True, **web_options: object) -> Embedded:
    """An embedded PACS (+ cohort) and a DICOMweb server over its store, on ephemeral ports."""
    pacs = EmbeddedPACS(folder, port=0)
    if preload:
        pacs.import_files(cohort())
    pacs.start()
    web = EmbeddedDicomWeb(pacs.store, port=0, **web_options)  # type: ignore[arg-type]
    try:
        web.start()
    except BaseException:
        pacs.close()
        raise
    return Embedded(pacs, web)


def stop_embedded(server: Embedded) -> None:
    server.web.stop()
    server.pacs.close()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    """The embedded PACS + DICOMweb with the cohort, one per module."""
    server = start_embedded(tmp_path_factory.mktemp("pacs"))
    try:
        yield server
    finally:
        stop_embedded(server)


@pytest.fixture(scope="module", params=["embedded", pytest.param("orthanc", marks=pytest.mark.orthanc)])
def target(request: pytest.FixtureRequest, embedded: Embedded) -> Target:
    """Each server the shared DicomWebClient tests run against, loaded with the cohort."""
    if request.param == "embedded":
        return Target("embedded", embedded.base, embedded.dimse())
    orthanc = request.getfixturevalue("orthanc")
    for path in cohort():
        orthanc.upload(path)
    dimse = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, aet="KITSCU", timeout=20)
    return Target("orthanc", orthanc.dicomweb, dimse)


def make_ct(folder: Path, count: int, *, patient_id: str = "MRN9001", study_uid: str | None = None,
            size: int = 16, seed: int = 0) -> list[Path]:
    """``count`` small CT files of one new study/series (random pixels, fresh UIDs)."""
    return random_ct_files(folder, count, patient_id=patient_id, study_uid=study_uid, size=size, seed=seed)



def multipart(parts: list[bytes], boundary: str = "kitboundary") -> tuple[bytes, str]:
    """A STOW-RS body of ``parts`` (each application/dicom) and its Content-Type."""
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(base: str, path: str, body: bytes, content_type: str, *,
         timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes; (status, headers, body)."""
    host_port = base.split("/")[2]
    prefix = "/" + base.split("/", 3)[3]
    conn = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        conn.request("POST", prefix + path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get(base: str, path: str, *, accept: str | None = None,
        timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """GET; (status, headers, body)."""
    host_port = base.split("/")[2]
    prefix = "/" + base.split("/", 3)[3]
    conn = http.client.HTTPConnection(host_port, timeout=timeout)
    try:
        conn.request("GET", prefix + path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()
