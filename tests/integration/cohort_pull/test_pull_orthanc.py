"""Cohort pulls against a real Orthanc: C-GET, WADO-RS and C-MOVE, the association cap counted by
a proxy right in front of Orthanc's ports."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kit.cohort import pull
from kit.config import CohortSettings, DicomWebSettings, PacsSettings, Settings, load_settings
from tests.conftest import free_port
from tests.integration.cohort_pull.helpers import CountingProxy, Study, folder_contents, make_studies
from tests.integration.conftest import OrthancServer

pytestmark = pytest.mark.orthanc


@pytest.fixture(scope="module")
def loaded(orthanc: OrthancServer,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[OrthancServer, list[Study]]:
    folder = tmp_path_factory.mktemp("orthanc-studies")
    studies = make_studies(folder, 6, prefix="ORT")
    for path in sorted(folder.rglob("*.dcm")):
        orthanc.upload(path)
    return orthanc, studies


@pytest.fixture
def proxy(loaded: tuple[OrthancServer, list[Study]],
          request: pytest.FixtureRequest) -> Iterator[CountingProxy]:
    server = loaded[0]
    port = server.http_port if getattr(request, "param", "dicom") == "http" else server.dicom_port
    front = CountingProxy(port)
    try:
        yield front
    finally:
        front.close()


def _settings(server: OrthancServer, dicom_port: int, http_port: int, **pacs: object) -> Settings:
    base = load_settings(env={})
    return dataclasses.replace(
        base, pacs=PacsSettings(host="127.0.0.1", port=dicom_port, called_aet=server.aet, timeout=20.0,
                                **pacs),  # type: ignore[arg-type]
        dicomweb=DicomWebSettings(base=f"http://127.0.0.1:{http_port}/dicom-web", timeout=20.0),
        cohort=CohortSettings(backoff=0.1, max_backoff=0.5))


def _cohort(studies: list[Study]) -> pl.DataFrame:
    return pl.DataFrame({"accession_number": [s.accession for s in studies[:4]] + ["NOSUCH", None],
                         "patient_id": [None] * 5 + [studies[4].patient_id]}, schema={
                             "accession_number": pl.String, "patient_id": pl.String})


def _check(report: pl.DataFrame, out: Path, studies: list[Study]) -> None:
    assert report["status"].to_list() == ["retrieved"] * 4 + ["failed", "retrieved"]
    assert "not found" in report["reason"][4]
    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies[:5]}


def test_c_get_from_orthanc_within_the_association_cap(loaded: tuple[OrthancServer, list[Study]],
                                                       proxy: CountingProxy, tmp_path: Path) -> None:
    server, studies = loaded
    settings = _settings(server, proxy.port, server.http_port)
    report = pull(_cohort(studies), tmp_path / "out", settings=settings, progress=False, max_associations=2)
    _check(report, tmp_path / "out", studies)
    assert 1 <= proxy.peak <= 2
    assert proxy.total == 1 + 6 + 5  # C-ECHO, a C-FIND per item, a C-GET per study


@pytest.mark.parametrize("proxy", ["http"], indirect=True)
def test_wado_from_orthanc_within_the_connection_cap(loaded: tuple[OrthancServer, list[Study]],
                                                     proxy: CountingProxy, tmp_path: Path) -> None:
    server, studies = loaded
    settings = _settings(server, server.dicom_port, proxy.port)
    report = pull(_cohort(studies), tmp_path / "out", settings=settings, method="wado", progress=False,
                  max_associations=2)
    _check(report, tmp_path / "out", studies)
    assert 1 <= proxy.peak <= 2


def test_c_move_from_orthanc(loaded: tuple[OrthancServer, list[Study]], tmp_path: Path) -> None:
    server, studies = loaded
    store_port = free_port()
    server.add_modality("KITSCU", "KITSCU", "127.0.0.1", store_port)
    settings = _settings(server, server.dicom_port, server.http_port, store_port=store_port)
    report = pull(_cohort(studies), tmp_path / "out", settings=settings, method="c-move", progress=False)
    _check(report, tmp_path / "out", studies)
