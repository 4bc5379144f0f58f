"""``kit pacs`` against Orthanc: echo, find, get, store, worklist and failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from kit.cli import cli
from kit.examples.dicom import CT_SLICES
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.pacs_client.conftest import cohort_study, make_ct

pytestmark = pytest.mark.orthanc


def _run(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.stdout, result.stderr


def _dimse(o: OrthancServer) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(o.dicom_port), "--called-aet", o.aet]


def test_echo_and_find(loaded: OrthancServer, tmp_path: Path) -> None:
    code, out, _ = _run(["pacs", "echo", *_dimse(loaded)])
    assert code == 0 and "C-ECHO" in out
    code, out, err = _run(["pacs", "find", "--patient-id", "MRN1001", "--json", *_dimse(loaded)])
    assert code == 0, err
    rows = json.loads(out)
    assert {r["patient_id"] for r in rows} == {"MRN1001"}
    code, _, err = _run(["pacs", "find", "--study-date", "20260101-20260131", "--web",
                         "--base", loaded.dicomweb, "-o", str(tmp_path / "s.parquet")])
    assert code == 0, err
    assert pl.read_parquet(tmp_path / "s.parquet").schema["study_date"] == pl.Date


def test_get_and_store(loaded: OrthancServer, tmp_path: Path) -> None:
    study = cohort_study("CT", 5)
    code, _, err = _run(["pacs", "get", "--study", study.study_uid, "--out-dir", str(tmp_path / "g"),
                         *_dimse(loaded)])
    assert code == 0, err
    assert len(list((tmp_path / "g").glob("*.dcm"))) == CT_SLICES
    make_ct(tmp_path / "new", 3, patient_id="MRN9301")
    code, _, err = _run(["pacs", "store", str(tmp_path / "new"), *_dimse(loaded)])
    assert code == 0 and "stored 3" in err


def test_store_walks_folders_as_kit_index_does(loaded: OrthancServer, tmp_path: Path) -> None:
    """A link to a file of the same folder was sent twice, a broken link and a FIFO passed
    without a word (rglob + is_file); now each file goes once and the rest is named on stderr."""
    folder = tmp_path / "walk"
    make_ct(folder, 2, patient_id="MRN9302")
    first = sorted(folder.rglob("*.dcm"))[0]
    (folder / "again.dcm").symlink_to(first)
    (folder / "gone.dcm").symlink_to(folder / "missing.dcm")
    os.mkfifo(folder / "pipe.dcm")
    code, _, err = _run(["pacs", "store", str(folder), *_dimse(loaded)])
    assert code == 0, err
    assert "stored 2" in err
    assert "skipped" in err and "gone.dcm" in err and "pipe.dcm" in err
    assert err.count("kit: skipped") == 3  # the second name of the file, the broken link, the FIFO


def test_failures_exit_1_with_one_line(tmp_path: Path) -> None:
    code, _, err = _run(["pacs", "echo", "--host", "127.0.0.1", "--port", str(free_port()),
                         "--timeout", "3"])
    assert code == 1
    assert err.startswith("kit: error: PeerUnreachableError") and err.count("\n") == 1
    code, _, err = _run(["pacs", "find", "--level", "bogus"])
    assert code == 2
