"""``kit cohort pull`` as a subprocess against the embedded PACS: output, exit codes, one stderr line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl

from tests.integration.cohort_pull.helpers import CountingPACS, Study, folder_contents

KIT = [sys.executable, "-m", "kit.cli"]


def _kit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_COHORT_BACKOFF": "0.1", "NO_COLOR": "1"})
    return subprocess.run([*KIT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_pull_prints_json_and_exits_0(tmp_path: Path, pacs: CountingPACS,
                                      studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:3]
    cohort = tmp_path / "cohort.csv"
    # spaces around values and another spelling of the column are accepted
    cohort.write_text("Accession\n" + "\n".join(f" {s.accession} " for s in studies) + "\n")
    proc = _kit("cohort", "pull", str(cohort), "--out-dir", str(tmp_path / "out"), "--port", str(pacs.port),
                "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["retrieved"] * 3
    assert [r["accession_number"] for r in rows] == [s.accession for s in studies]
    assert folder_contents(tmp_path / "out") == {s.uid: set(s.sops) for s in studies}


def test_a_failed_study_exits_1_with_one_line_and_the_report_written(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:2]
    cohort = tmp_path / "cohort.csv"
    accessions = [studies[0].accession, "ANOSUCH", studies[1].accession]
    pl.DataFrame({"accession_number": accessions}).write_csv(cohort)
    report = tmp_path / "report.parquet"
    proc = _kit("cohort", "pull", str(cohort), "--out-dir", str(tmp_path / "out"), "--port", str(pacs.port),
                "-o", str(report), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: CohortError: 1 of 3"), proc.stderr
    assert "accession_number=ANOSUCH" in lines[0] and "not found" in lines[0]
    frame = pl.read_parquet(report)
    assert frame["status"].to_list() == ["retrieved", "failed", "retrieved"]
    assert pl.read_csv(tmp_path / "out" / "report.csv")["status"].to_list() == frame["status"].to_list()


def test_misuse_exits_2(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("accession_number\nA1\n")
    proc = _kit("cohort", "pull", str(cohort), "--out-dir", str(tmp_path / "out"), "--web", "--move",
                cwd=tmp_path)
    assert proc.returncode == 2 and "Error: --web retrieves by WADO-RS" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = _kit("cohort", "pull", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "kit cohort pull cohort.csv --out-dir" in proc.stdout
