"""`kit serve`, `kit status` and `kit demo` as a user runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import stop_pid
from tests.integration.cli.test_cli_items import KIT, start_serve


def _env(tmp_path: Path) -> dict[str, str]:
    # Run from an empty folder so no ./kit.toml of the developer's is picked up.
    return {**os.environ, "KIT_CONFIG": "", "PYTHONUNBUFFERED": "1"}


def _start_serve(tmp_path: Path, data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    return start_serve(tmp_path, _env(tmp_path), "--pacs-port", "0", "--fhir-port", "0", "--mllp-port", "0",
                       "--dicomweb-port", "0", "--video-port", "0", "--data-dir", str(data_dir), *extra)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    data_dir = tmp_path / "stack"
    proc, addresses = _start_serve(tmp_path, data_dir)
    try:
        yield proc, addresses, data_dir
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


def _kit(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KIT, *args], cwd=tmp_path, env=env or _env(tmp_path), capture_output=True,
                          text=True, timeout=timeout)


def _status_env(tmp_path: Path, addresses: dict[str, str]) -> dict[str, str]:
    pacs = re.match(r"dicom://(\w+)@([\d.]+):(\d+)", addresses["pacs"])
    mllp = re.match(r"mllp://([\d.]+):(\d+)", addresses["mllp"])
    assert pacs and mllp
    return {**_env(tmp_path), "KIT_PACS_HOST": pacs.group(2), "KIT_PACS_PORT": pacs.group(3),
            "KIT_PACS_CALLED_AET": pacs.group(1), "KIT_FHIR_BASE": addresses["fhir"],
            "KIT_HL7_HOST": mllp.group(1), "KIT_HL7_PORT": mllp.group(2),
            "KIT_DICOMWEB_BASE": addresses["dicomweb"]}


def test_serve_prints_addresses_on_loopback_and_stops_on_sigterm(
        served: tuple[subprocess.Popen[str], dict[str, str], Path], tmp_path: Path) -> None:
    proc, addresses, _ = served
    assert addresses["pacs"].startswith("dicom://KIT@127.0.0.1:")
    assert re.match(r"http://127\.0\.0\.1:\d+/fhir/R4$", addresses["fhir"])
    assert addresses["mllp"].startswith("mllp://127.0.0.1:")
    assert all(not a.endswith(":0") for a in addresses.values())

    status = _kit(tmp_path, "status", "--json", env=_status_env(tmp_path, addresses))
    assert status.returncode == 0, status.stderr
    rows = {r["service"]: r for r in json.loads(status.stdout)}
    assert set(rows) >= {"pacs", "dicomweb", "fhir", "mllp"}, rows
    assert all(r["ok"] for r in rows.values()), rows

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_status_fails_with_one_line_when_nothing_answers(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    env = {**_env(tmp_path), "KIT_PACS_PORT": str(port), "KIT_FHIR_BASE": f"http://127.0.0.1:{port}/fhir/R4",
           "KIT_HL7_PORT": str(port), "KIT_PACS_TIMEOUT": "3", "KIT_FHIR_TIMEOUT": "3",
           "KIT_ENDOSCOPY_STREAM_URL": f"http://127.0.0.1:{port}/live.ts", "KIT_ENDOSCOPY_TIMEOUT": "3"}
    result = _kit(tmp_path, "status", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    # the environment names the systems and no DICOMweb: none is probed
    assert result.stderr.strip() == "kit: error: not answering: pacs, fhir, mllp, video"


def test_serve_keeps_what_it_stored_across_a_restart(tmp_path: Path) -> None:
    from kit.dicom.dimse import PacsClient
    from kit.examples import dicom_dir

    data_dir = tmp_path / "stack"
    proc, addresses = _start_serve(tmp_path, data_dir, "--no-preload")
    try:
        pacs = re.match(r"dicom://(\w+)@([\d.]+):(\d+)", addresses["pacs"])
        assert pacs
        files = sorted((dicom_dir() / "MRN1002").rglob("*.dcm"))
        client = PacsClient(pacs.group(2), int(pacs.group(3)), called_aet=pacs.group(1), timeout=10)
        assert client.find("STUDY").height == 0
        client.store(files)
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
    proc, addresses = _start_serve(tmp_path, data_dir, "--no-preload")
    try:
        pacs = re.match(r"dicom://(\w+)@([\d.]+):(\d+)", addresses["pacs"])
        assert pacs
        client = PacsClient(pacs.group(2), int(pacs.group(3)), called_aet=pacs.group(1), timeout=10)
        images = client.find("IMAGE", patient_id="MRN1002")
        assert images.height == len(files)
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = _kit(tmp_path, "demo", "--json", timeout=300)
    rows = json.loads(result.stdout)
    steps = {row["step"]: row["result"] for row in rows if row["target"] is None}
    assert steps["C-GET one CT study"] == "16 instances"
    assert re.match(r"\d+ patients, \d+ orders, [1-9]\d* results", steps["HL7 store -> frames"])
    assert steps["index headers"].startswith("16 instances")
    assert "6 patients" in steps["FHIR search"]
    joined = re.match(r"(\d+) of (\d+) PACS studies", steps["join PACS x FHIR on study_instance_uid"])
    assert joined and joined.group(1) == joined.group(2) != "0"
    acked = re.match(r"(\d+) of (\d+) messages acknowledged AA", steps["HL7 feed over MLLP"])
    assert acked and acked.group(1) == acked.group(2) != "0"
    # the first CT study is MRN1001's, with its 18 mm lesion: found within one voxel (2.5 mm)
    analysed = steps["analyse CT (kit.results.analysis)"]
    found = re.match(r"Soft-tissue lesion in the lung, ([\d.]+) mm", analysed)
    assert found and abs(float(found.group(1)) - 18.0) <= 2.5
    targets = {row["target"]: row for row in rows if row["target"] is not None}
    assert list(targets) == ["sr", "seg", "observation", "diagnostic_report", "oru"]
    assert all(row["step"] == f"deliver {t}" and row["result"] == row["status"] for t, row in targets.items())
    for name in ("observation", "diagnostic_report", "oru"):
        assert targets[name]["status"] == "verified", targets[name]
    assert re.fullmatch(r"[0-9A-F]{20}", targets["oru"]["identifier"])
    assert re.fullmatch(r"DiagnosticReport/[^/]+/_history/1", targets["diagnostic_report"]["identifier"])
    assert result.returncode == 0, result.stderr
    assert targets["sr"]["status"] == targets["seg"]["status"] == "verified", (targets["sr"], targets["seg"])
    assert re.fullmatch(r"[0-9.]+", targets["sr"]["identifier"])


def test_demo_prints_a_table_per_target(tmp_path: Path) -> None:
    result = _kit(tmp_path, "demo", timeout=300)
    lines = result.stdout.splitlines()
    for target in ("sr", "seg", "observation", "diagnostic_report", "oru"):
        assert any(line.startswith(f"│ {target} ") for line in lines), result.stdout
    assert any("analyse CT" in line for line in lines)
    assert result.returncode == 0, result.stderr
    assert sum("verified" in line for line in lines) == 5


def test_misuse_exits_2(tmp_path: Path) -> None:
    assert _kit(tmp_path, "serve", "--pacs-port", "notaport").returncode == 2
    assert _kit(tmp_path, "no-such-command").returncode == 2


def _served_toml(addresses: dict[str, str]) -> str:
    """A kit.toml naming a running `kit serve` as the site's systems (sections of its own, not [stack])."""
    pacs = re.match(r"dicom://(\w+)@([\d.]+):(\d+)", addresses["pacs"])
    mllp = re.match(r"mllp://([\d.]+):(\d+)", addresses["mllp"])
    assert pacs and mllp
    return (f'[pacs]\nhost = "{pacs.group(2)}"\nport = {pacs.group(3)}\ncalled_aet = "{pacs.group(1)}"\n'
            f'[fhir]\nbase = "{addresses["fhir"]}"\n'
            f'[hl7]\nhost = "{mllp.group(1)}"\nport = {mllp.group(2)}\n')


def test_demo_runs_against_the_configured_systems_not_an_embedded_stack(tmp_path: Path) -> None:
    # issue 14.1: with a kit.toml the main job uses the systems it names (here a separately started
    # `kit serve`), says so first, and starts no stack of its own.
    proc, addresses = _start_serve(tmp_path, tmp_path / "site")
    try:
        work = tmp_path / "work"
        work.mkdir()
        (work / "kit.toml").write_text(_served_toml(addresses), encoding="utf-8")
        result = _kit(work, "demo", "--json", timeout=300)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        first = rows[0]
        assert first["step"].startswith("configured systems (") and "kit.toml" in first["step"]
        for service in ("pacs", "fhir", "mllp"):
            assert addresses[service] in first["result"]
        assert not any(row["step"] == "start embedded stack" for row in rows)
        steps = {row["step"]: row["result"] for row in rows if row["target"] is None}
        assert steps["C-GET one CT study"] == "16 instances"
        assert steps["HL7 feed sent -> frames"].startswith("6 patients")
        statuses = {row["target"]: row["status"] for row in rows if row["target"] is not None}
        assert statuses == dict.fromkeys(("sr", "seg", "observation", "diagnostic_report", "oru"), "verified")

        embedded = _kit(work, "demo", "--embedded", "--json", timeout=300)
        assert embedded.returncode == 0, embedded.stderr
        first = json.loads(embedded.stdout)[0]
        assert first["step"] == "start embedded stack" and addresses["pacs"] not in first["result"]
    finally:
        stop_pid(proc)  # type: ignore[arg-type]
