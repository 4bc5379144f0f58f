"""`kit status` probes every configured service, DICOMweb included (issue #14 item 9)."""

from __future__ import annotations

import json
from pathlib import Path

from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.real_systems.conftest import run_kit, stack_env


def test_status_names_a_dead_dicomweb_base(stack: Stack, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": dead, "KIT_DICOMWEB_TIMEOUT": "3"}
    result = run_kit(tmp_path, "status", env=env)
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip() == "kit: error: not answering: dicomweb"
    assert dead in result.stdout


def test_status_probes_a_live_dicomweb(stack: Stack, orthanc: OrthancServer, tmp_path: Path) -> None:
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": orthanc.dicomweb}
    result = run_kit(tmp_path, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"pacs", "dicomweb", "fhir", "mllp"}
    assert rows["dicomweb"]["ok"] and rows["dicomweb"]["address"] == orthanc.dicomweb
