"""``kit cohort export`` and ``kit cohort verify`` as subprocesses against the embedded stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kit.cohort.manifest import MANIFEST_NAME
from kit.deid.pseudonyms import ReidentificationMap
from tests.integration.cohort_export.conftest import KEY, Sources

KIT = [sys.executable, "-m", "kit.cli"]


def _kit(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    clean.update({"NO_COLOR": "1", **(env or {})})
    return subprocess.run([*KIT, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _config(folder: Path, sources: Sources) -> None:
    s = sources.settings
    (folder / "kit.toml").write_text(
        f'[pacs]\nhost = "{s.pacs.host}"\nport = {s.pacs.port}\ncalled_aet = "{s.pacs.called_aet}"\n'
        f'[fhir]\nbase = "{s.fhir.base}"\n[api]\nhl7_store = "{sources.hl7_store}"\n', encoding="utf-8")


def test_export_then_verify_then_a_changed_file_fails_verify(sources: Sources, tmp_path: Path) -> None:
    _config(tmp_path, sources)
    (tmp_path / "project.key").write_text(KEY + "\n")
    (tmp_path / "cohort.csv").write_text("accession_number\nACC100201\n")
    proc = _kit("cohort", "export", "--key-file", "project.key", "--out-dir", "dataset",
                "--cohort", "cohort.csv", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["studies"] == 1 and counts["patients"] == 1 and counts["hl7_messages"] > 0
    assert KEY not in proc.stdout + proc.stderr
    reid = tmp_path / "dataset.reid-map.parquet"
    assert ReidentificationMap.load(reid).pseudonym("accession_number", "ACC100201")  # type: ignore[arg-type]
    assert not list((tmp_path / "dataset").rglob("*reid*"))
    proc = _kit("cohort", "verify", "dataset", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == ""
    manifest = json.loads((tmp_path / "dataset" / MANIFEST_NAME).read_bytes())
    assert proc.stdout.startswith(f"{len(manifest['files'])} files verified in dataset")
    # a changed file, a removed one: exit 1, one stderr line naming them
    target = tmp_path / "dataset" / "hl7" / "results.parquet"
    target.write_bytes(target.read_bytes() + b"\x00")
    (tmp_path / "dataset" / "datalist.json").unlink()
    proc = _kit("cohort", "verify", "dataset", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines == ["kit: error: VerificationError: dataset differs from its manifest: 1 missing "
                     "(datalist.json); 1 changed (hl7/results.parquet)"], proc.stderr


def test_misuse_and_failures(sources: Sources, tmp_path: Path) -> None:
    proc = _kit("cohort", "export", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "kit cohort export --out-dir dataset --cohort cohort.csv" in proc.stdout
    proc = _kit("cohort", "verify", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "kit cohort verify dataset" in proc.stdout
    (tmp_path / "project.key").write_text(KEY)
    proc = _kit("cohort", "export", "--key-file", "project.key", "--out-dir", "d", "--map", "d/map.parquet",
                cwd=tmp_path)
    assert proc.returncode == 2 and "must not be written inside" in proc.stderr
    proc = _kit("cohort", "export", "--out-dir", "d", cwd=tmp_path)  # no key
    assert proc.returncode == 1 and "KIT_DEID_KEY" in proc.stderr and not (tmp_path / "d").exists()
    # a PACS that does not answer: exit 1, one line, the folder not even created
    from tests.conftest import free_port

    proc = _kit("cohort", "export", "--key-file", "project.key", "--out-dir", "d", "--port", str(free_port()),
                cwd=tmp_path)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("kit: error: ") and not (tmp_path / "d").exists()
    assert not list(tmp_path.glob(".d.kit-export-pull"))
    proc = _kit("cohort", "verify", "nowhere", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "kit: error: VerificationError: nowhere is not a folder"
    (tmp_path / "empty").mkdir()
    proc = _kit("cohort", "verify", "empty", cwd=tmp_path)
    assert proc.returncode == 1 and "has no manifest.json" in proc.stderr
