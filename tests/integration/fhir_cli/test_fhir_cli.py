"""`kit fhir` as a real subprocess against an EmbeddedFhirServer preloaded with the sample cohort.

Checks the CLI contract of DESIGN.md: exit 0 on success, 1 on failure with one
line on stderr, 2 on misuse; tables, ``--json``, ``-o`` by extension, ``--max``,
and the server taken from the settings when ``--base`` is not given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kit import examples
from kit.examples import cohort
from kit.fhir.server import EmbeddedFhirServer
from tests.conftest import free_port

KIT = Path(sys.executable).with_name("kit")
MRNS = sorted(p.mrn for p in cohort.COHORT)
PERFORMED = cohort.studies()  # performed studies: one ImagingStudy each


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedFhirServer]:
    folder = tmp_path_factory.mktemp("fhir")
    srv = EmbeddedFhirServer(folder / "fhir.db", port=0, preload=examples.fhir_bundle(), export_delay=0.1)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def kit(*args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``kit`` script with no kit.toml and no inherited KIT_* settings."""
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    cmd = [str(KIT)] if KIT.exists() else [sys.executable, "-c", "import sys; from kit.cli import main; "
                                                                 "sys.exit(main())"]
    return subprocess.run([*cmd, *args], cwd=cwd, env={**base_env, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kit: error: "), proc.stderr
    return lines[0]


def test_metadata_table_json_and_csv(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = server.base_url
    proc = kit("fhir", "metadata", "--base", base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ImagingStudy" in proc.stdout and "resource_type" in proc.stdout
    assert proc.stderr.startswith("FHIR 4.0")

    proc = kit("fhir", "metadata", "--base", base, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cap = json.loads(proc.stdout)
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"].startswith("4.0")

    out = tmp_path / "cap.csv"
    proc = kit("fhir", "metadata", "--base", base, "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    frame = pl.read_csv(out)
    assert frame.columns == ["resource_type", "interactions", "search_params"]
    assert {"Patient", "Observation", "ImagingStudy"} <= set(frame["resource_type"])


def test_search_outputs_by_extension(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = server.base_url
    pq = tmp_path / "patients.parquet"
    proc = kit("fhir", "search", "Patient", "--count", "4", "--base", base, "-o", str(pq), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and f"wrote {len(MRNS)} Patient resources" in proc.stderr
    patients = pl.read_parquet(pq)
    assert sorted(patients["patient_id"]) == MRNS          # two pages of 4, nothing lost
    assert patients.schema["birth_date"] == pl.Date

    nd = tmp_path / "studies.ndjson"
    proc = kit("fhir", "search", "ImagingStudy", "--base", base, "-o", str(nd), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in nd.read_text().splitlines()]
    assert sorted(r["study_instance_uid"] for r in rows) == sorted(s.study_uid for s in PERFORMED)
    assert sorted(r["accession_number"] for r in rows) == sorted(s.accession for s in PERFORMED)

    csv = tmp_path / "obs.csv"
    proc = kit("fhir", "search", "Observation", "code=http://loinc.org|8867-4", "--base", base,
               "-o", str(csv), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    obs = pl.read_csv(csv)
    assert obs.height == len(MRNS)                          # one heart rate per patient visit
    assert set(obs["code"].cast(pl.String)) == {"8867-4"}
    assert obs["value_quantity"].dtype.is_numeric()


def test_search_json_and_max(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = server.base_url
    proc = kit("fhir", "search", "Observation", "--base", base, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    every = json.loads(proc.stdout)
    assert len(every) > 3
    proc = kit("fhir", "search", "Observation", "--count", "2", "--max", "3", "--base", base, "--json",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first3 = json.loads(proc.stdout)
    assert len(first3) == 3
    assert {r["id"] for r in first3} <= {r["id"] for r in every}
    proc = kit("fhir", "search", "Patient", "identifier=no-such-mrn", "--base", base, "--json", cwd=tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
    proc = kit("fhir", "search", "Patient", "--base", base, cwd=tmp_path)   # the table
    assert proc.returncode == 0 and all(m in proc.stdout for m in MRNS)


def test_read_and_create(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = server.base_url
    listing = json.loads(kit("fhir", "search", "Patient", "--base", base, "--json", cwd=tmp_path).stdout)
    first = min(listing, key=lambda r: r["patient_id"])
    proc = kit("fhir", "read", "Patient", first["id"], "--base", base, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    resource = json.loads(proc.stdout)
    assert resource["resourceType"] == "Patient" and resource["id"] == first["id"]
    assert resource["name"][0]["family"] == cohort.patient(MRNS[0]).family

    src = tmp_path / "obs.json"
    src.write_text(json.dumps({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5", "display": "Body temperature"}]},
        "subject": {"reference": f"Patient/{first['id']}"},
        "effectiveDateTime": "2026-04-01T08:00:00Z",
        "valueQuantity": {"value": 37.2, "unit": "Cel", "system": "http://unitsofmeasure.org",
                          "code": "Cel"}}))
    proc = kit("fhir", "create", str(src), "--base", base, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ref, _, version = proc.stdout.strip().partition(" version ")
    assert ref.startswith("Observation/") and version == "1"
    proc = kit("fhir", "read", "Observation", ref.split("/", 1)[1], "--base", base, "-o",
               str(tmp_path / "one.parquet"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    stored = pl.read_parquet(tmp_path / "one.parquet")
    assert stored.select("code", "value_quantity", "patient_ref").row(0) == ("8310-5", 37.2, first["id"])


def test_export_into_folder(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = server.base_url
    folder = tmp_path / "export"
    proc = kit("fhir", "export", "--type", "Patient", "--type", "ImagingStudy", "--out-dir", str(folder),
               "--base", base, "--json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    files = json.loads(proc.stdout)
    counts: dict[str, int] = {}
    for f in files:
        counts[f["resource_type"]] = counts.get(f["resource_type"], 0) + f["resources"]
    assert counts == {"Patient": len(MRNS), "ImagingStudy": len(PERFORMED)}
    assert sorted(pl.read_parquet(folder / "Patient.parquet")["patient_id"]) == MRNS
    assert f"exported {len(MRNS) + len(PERFORMED)} resources" in proc.stderr


def test_settings_give_the_server(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    proc = kit("fhir", "search", "Patient", "--json", cwd=tmp_path, env={"KIT_FHIR_BASE": server.base_url})
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["patient_id"] for r in json.loads(proc.stdout)) == MRNS
    toml = tmp_path / "kit.toml"
    toml.write_text(f'[fhir]\nbase = "{server.base_url}"\n')
    proc = kit("--config", str(toml), "fhir", "metadata", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resourceType"] == "CapabilityStatement"


def test_closed_port_exits_1(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/fhir/R4"
    for args in (("export", "--out-dir", str(tmp_path / "e")),):
        proc = kit("fhir", *args, "--base", closed, "--timeout", "5", cwd=tmp_path)
        assert proc.returncode == 1, (args, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("kit: error: PeerUnreachableError: ") and closed in last
        assert proc.stdout == ""


def test_closed_port_one_line_on_stderr(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/fhir/R4"
    proc = kit("fhir", "metadata", "--base", closed, cwd=tmp_path)
    assert proc.returncode == 1
    assert "PeerUnreachableError" in one_line_error(proc)


def test_failures_exit_1_with_one_line(server: EmbeddedFhirServer, tmp_path: Path) -> None:
    proc = kit("fhir", "read", "Patient", "no-such-id", "--base", server.base_url, cwd=tmp_path)
    assert proc.returncode == 1
    one_line_error(proc)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = kit("fhir", "create", str(bad), "--base", server.base_url, cwd=tmp_path)
    assert proc.returncode == 1 and "FhirValidationError" in one_line_error(proc)
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"resourceType": "Patient", "birthDate": "someday"}))
    proc = kit("fhir", "create", str(invalid), "--base", server.base_url, cwd=tmp_path)
    assert proc.returncode == 1 and "FhirValidationError" in one_line_error(proc)


@pytest.mark.parametrize("args", [
    ("search", "Patient", "noequals"),
    ("search", "Patient", "-o", "out.xlsx"),
    ("search", "Patient", "--max", "-1"),
    ("read", "Patient"),
    ("export", "--group", "g", "--patient", "--out-dir", "e"),
    ("export",),
    ("create", "missing.json"),
    ("frobnicate",),
])
def test_misuse_exits_2(server: EmbeddedFhirServer, tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = kit("fhir", *args, "--base", server.base_url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Usage:" in proc.stderr or "Error:" in proc.stderr
