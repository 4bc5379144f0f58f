"""`kit fhir` against the embedded server: metadata, create, read, search (all pages), export."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from kit.cli import cli
from kit.fhir.server import EmbeddedFhirServer
from tests.conftest import free_port


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"KIT_CONFIG": ""})
    return result.exit_code, result.stdout, result.stderr


def test_cli_round_trip(fhir_server: EmbeddedFhirServer, tmp_path: Path) -> None:
    base = fhir_server.base_url
    code, out, err = _run("fhir", "metadata", "--base", base)
    assert code == 0, err
    assert "Patient" in out and "FHIR 4.0" in err

    patient = tmp_path / "p.json"
    patient.write_text(json.dumps({"resourceType": "Patient", "name": [{"family": "Cli"}],
                                   "identifier": [{"system": "http://h/mrn", "value": "CLI1"}]}))
    code, out, err = _run("fhir", "create", str(patient), "--base", base)
    assert code == 0, err
    ref = out.split()[0]
    assert ref.startswith("Patient/") and out.strip().endswith("version 1")
    for _ in range(4):
        assert _run("fhir", "create", str(patient), "--base", base)[0] == 0

    code, out, err = _run("fhir", "read", "Patient", ref.split("/")[1], "--base", base, "--json")
    assert code == 0 and json.loads(out)["name"][0]["family"] == "Cli"

    target = tmp_path / "patients.parquet"
    code, out, err = _run("fhir", "search", "Patient", "family=Cli", "--count", "2", "--base", base,
                          "-o", str(target))
    assert code == 0, err
    assert pl.read_parquet(target).height == 5  # three pages of two
    code, out, err = _run("fhir", "search", "Patient", "family=Cli", "--max", "3", "--base", base, "--json")
    assert code == 0 and len(json.loads(out)) == 3

    code, out, err = _run("fhir", "export", "--type", "Patient", "--out-dir", str(tmp_path / "exp"),
                          "--base", base, "--json")
    assert code == 0, err
    files = json.loads(out)
    assert files[0]["resource_type"] == "Patient" and files[0]["resources"] >= 5
    assert (tmp_path / "exp" / "Patient.parquet").is_file()


def test_cli_failures_exit_1_with_one_line(fhir_server: EmbeddedFhirServer, tmp_path: Path) -> None:
    code, out, err = _run("fhir", "read", "Patient", "nope", "--base", fhir_server.base_url)
    assert code == 1 and err.startswith("kit: error:") and len(err.strip().splitlines()) == 1
    code, out, err = _run("fhir", "metadata", "--base", f"http://127.0.0.1:{free_port()}/fhir")
    assert code == 1 and "PeerUnreachableError" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"resourceType": "Patient", "birthDate": "someday"}))
    code, out, err = _run("fhir", "create", str(bad), "--base", fhir_server.base_url)
    assert code == 1 and "FhirValidationError" in err
    code, out, err = _run("fhir", "search", "Patient", "noequals", "--base", fhir_server.base_url)
    assert code == 2
