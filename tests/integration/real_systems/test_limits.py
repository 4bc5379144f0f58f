"""`limit` on every query client (issue #14 item 5): at most N results, the rest not fetched
(C-CANCEL for C-FIND, QIDO `limit`, no further FHIR pages), a TruncatedResultWarning when the
limit cut the result and silence when it did not. Against the embedded PACS and Orthanc."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pydicom
import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.web import DicomWebClient
from kit.errors import TruncatedResultWarning
from kit.examples.dicom import generate
from kit.stack import Stack
from tests.integration.conftest import OrthancServer
from tests.integration.real_systems.conftest import run_kit, stack_env


@pytest.fixture
def pacs(stack: Stack) -> PacsClient:
    return PacsClient.from_settings(stack.client_settings())




@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES"])
def test_cfind_limit_cancels_and_warns(pacs: PacsClient, level: str) -> None:
    every = pacs.find(level)
    assert every.height > 2
    with pytest.warns(TruncatedResultWarning, match=f"C-FIND {level}: stopped at limit=2"):
        cut = pacs.find(level, limit=2)
    assert cut.height == 2 and cut.columns == every.columns
    assert set(map(repr, cut.rows())) <= set(map(repr, every.rows()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedResultWarning)  # a limit that cuts nothing is silent
        assert pacs.find(level, limit=every.height).height == every.height
    assert pacs.find(level).height == every.height   # the PACS still answers in full after a C-CANCEL


def test_worklist_limit(pacs: PacsClient) -> None:
    every = pacs.worklist()
    assert every.height > 1
    with pytest.warns(TruncatedResultWarning, match="C-FIND worklist: stopped at limit=1"):
        assert pacs.worklist(limit=1).height == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedResultWarning)
        assert pacs.worklist(limit=every.height).height == every.height
        assert pacs.worklist(limit=0).height == 0


def test_cli_pacs_limit_says_it_cut(stack: Stack, tmp_path: Path) -> None:
    for args in (("find", "--level", "series"), ("worklist",)):
        result = run_kit(tmp_path, "pacs", *args, "--limit", "1", "--json", env=stack_env(stack))
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == 1
        assert result.stderr.startswith("kit: warning: C-FIND "), result.stderr


@pytest.fixture(scope="module")
def orthanc_loaded(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> OrthancServer:
    for path in generate(tmp_path_factory.mktemp("cohort")):
        orthanc.upload(path)
    return orthanc


def test_qido_limit_against_orthanc(orthanc_loaded: OrthancServer) -> None:
    web = DicomWebClient(orthanc_loaded.dicomweb)
    every = web.find("SERIES")
    assert every.height > 3
    with pytest.warns(TruncatedResultWarning, match="QIDO-RS series: stopped at limit=3"):
        cut = web.find("SERIES", limit=3)
    assert cut.height == 3 and set(cut["series_instance_uid"]) <= set(every["series_instance_uid"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncatedResultWarning)
        assert web.find("SERIES", limit=every.height).height == every.height
    with pytest.warns(TruncatedResultWarning):
        instances = web.find("IMAGE", study_instance_uid=every["study_instance_uid"][0], limit=5)
    assert instances.height == 5
    assert all(pydicom.uid.UID(u).is_valid for u in instances["sop_instance_uid"])


def test_cfind_limit_against_orthanc(orthanc_loaded: OrthancServer) -> None:
    pacs = PacsClient("127.0.0.1", orthanc_loaded.dicom_port, called_aet=orthanc_loaded.aet, timeout=20)
    every = pacs.find("SERIES")
    with pytest.warns(TruncatedResultWarning, match="limit=2"):
        assert pacs.find("SERIES", limit=2).height == 2
    assert pacs.find("SERIES").height == every.height
