"""DICOMweb in the embedded stack (`Stack`, `kit serve`) and `kit pacs ... --web`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import cli
from kit.dicom.dimse import PacsClient
from kit.dicom.web import DicomWebClient
from kit.examples import cohort as sample_cohort
from kit.examples.dicom import CT_SLICES
from kit.stack import Stack
from tests.conftest import stop_pid
from tests.integration.dicomweb_server.conftest import cohort, make_ct

CT = sample_cohort.studies(modality="CT")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack.ephemeral(services=("pacs", "dicomweb")) as running:
        yield running


def test_the_stack_serves_dicomweb_over_the_pacs_store(stack: Stack, tmp_path: Path) -> None:
    address = stack.addresses()["dicomweb"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/dicom-web", address)
    assert not address.endswith(":0/dicom-web")
    settings = stack.client_settings()
    assert settings.dicomweb.base == address
    web, dimse = DicomWebClient.from_settings(settings), PacsClient.from_settings(settings.pacs)
    by_qido = web.find("STUDY").sort("study_instance_uid")
    assert by_qido.to_dicts() == dimse.find("STUDY").sort("study_instance_uid").to_dicts()
    files = make_ct(tmp_path, 2, patient_id="MRN9501", seed=21)
    dimse.store(files)
    assert web.find("IMAGE", patient_id="MRN9501").height == 2
    assert stack.failures() == {}


def test_dicomweb_alone_opens_and_preloads_its_own_store() -> None:
    with Stack.ephemeral(services=("dicomweb",)) as alone:
        web = DicomWebClient.from_settings(alone.client_settings())
        assert web.find("IMAGE", study_instance_uid=CT[0].study_uid).height == CT_SLICES


def _invoke(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    with contextlib.chdir(cwd):  # no ./kit.toml of the developer's is read
        result = CliRunner().invoke(cli, args, env={"KIT_CONFIG": "", **env})
    return result.exit_code, result.stdout, result.stderr


def test_kit_pacs_web_defaults_to_the_embedded_dicomweb(stack: Stack, tmp_path: Path) -> None:
    env = {"KIT_STACK_DICOMWEB_PORT": str(stack.port("dicomweb")),
           "KIT_STACK_PACS_PORT": str(stack.port("pacs"))}
    code, out, err = _invoke(["pacs", "find", "--web", "--json"], env, tmp_path)
    assert code == 0, err
    code2, out2, err2 = _invoke(["pacs", "find", "--json"], env, tmp_path)
    assert code2 == 0, err2
    key = "study_instance_uid"
    assert sorted(json.loads(out), key=lambda r: r[key]) == sorted(json.loads(out2), key=lambda r: r[key])
    code, out, err = _invoke(["pacs", "echo", "--web"], env, tmp_path)
    assert code == 0 and "answered QIDO-RS" in out and stack.addresses()["dicomweb"] in out, err
    dest = tmp_path / "got"
    code, _, err = _invoke(["pacs", "get", "--web", "--study", CT[1].study_uid, "--out-dir", str(dest)], env,
                           tmp_path)
    assert code == 0, err
    assert len(list(dest.glob("*.dcm"))) == CT_SLICES
    make_ct(tmp_path / "new", 3, patient_id="MRN9502", seed=22)
    code, _, err = _invoke(["pacs", "store", "--web", str(tmp_path / "new")], env, tmp_path)
    assert code == 0 and "stored 3" in err
    code, out, err = _invoke(["pacs", "find", "--level", "image", "--patient-id", "MRN9502", "--json"], env,
                             tmp_path)
    assert code == 0 and len(json.loads(out)) == 3, err  # C-FIND finds what STOW-RS stored


@pytest.mark.parametrize("command", [["move", "--study", "1.2.3", "--out-dir", "x"], ["worklist"]])
@pytest.mark.parametrize("web", [["--web"], ["--base", "http://127.0.0.1:8042/dicom-web"]])
def test_subcommands_dicomweb_cannot_do_say_why(command: list[str], web: list[str], tmp_path: Path) -> None:
    code, _, err = _invoke(["pacs", *command, *web], {}, tmp_path)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"Error: kit pacs {command[0]} has no --web form: ")
    code, out, _ = _invoke(["pacs", command[0], "--help"], {}, tmp_path)
    assert code == 0 and "No --web:" in out and "--web " not in out.split("Options:")[1]


def test_kit_serve_prints_the_dicomweb_address_and_it_answers(tmp_path: Path) -> None:
    env = {**os.environ, "KIT_CONFIG": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "serve", "--pacs-port", "0",
                             "--dicomweb-port", "0", "--only", "pacs", "--only", "dicomweb",
                             "--data-dir", str(tmp_path / "stack")],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        assert lines[0].startswith("pacs  dicom://KIT@127.0.0.1:")
        match = re.fullmatch(r"dicomweb  (http://127\.0\.0\.1:(\d+)/dicom-web)", lines[1])
        assert match and match.group(2) != "0", lines
        code, out, err = _invoke(["pacs", "find", "--base", match.group(1), "--json"], {}, tmp_path)
        assert code == 0 and len(json.loads(out)) == len({p.parent.parent for p in cohort()}), err
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
