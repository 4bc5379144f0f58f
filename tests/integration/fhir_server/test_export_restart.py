"""$export jobs outlive the server: a restart answers for every job it acknowledged with 202.

The jobs lived in memory only: after a restart a finished job's status was 404 and its folder
stayed on disk for ever. Now a job's state is in its folder: a finished job keeps its manifest
and files, one the server was killed (SIGKILL, in a process of its own) during is an error
saying so, and a folder without state is removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kit.fhir.server import EmbeddedFhirServer
from tests.conftest import peer_env, stop_pid

pytestmark = pytest.mark.timeout(120)

_SLOW_SERVER = """
import sys, time
from kit.fhir.server import EmbeddedFhirServer
with EmbeddedFhirServer(sys.argv[1], export_delay=60.0) as s:
    print(s.base_url, flush=True)
    time.sleep(600)
"""


def _wait_done(client: httpx.Client, status_url: str) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.get(status_url)
        if r.status_code != 202:
            return r
        time.sleep(0.1)
    raise AssertionError(f"{status_url} still running")


def test_a_restart_answers_for_every_export_it_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "fhir.db"
    with EmbeddedFhirServer(db) as server, httpx.Client(timeout=30) as c:
        for _ in range(3):
            assert c.post(f"{server.base_url}/Patient", json={"resourceType": "Patient", "gender": "other"}
                          ).status_code == 201
        kicked = c.get(f"{server.base_url}/$export", params={"_type": "Patient"},
                       headers={"Prefer": "respond-async"})
        assert kicked.status_code == 202
        finished = kicked.headers["Content-Location"].rsplit("/", 1)[1]
        before = _wait_done(c, kicked.headers["Content-Location"]).json()
    # a server killed while it exports (in a process of its own)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SERVER, str(db)], stdout=subprocess.PIPE,
                            env=peer_env(), start_new_session=True, text=True)
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().strip()
        kicked = httpx.get(f"{base}/$export", headers={"Prefer": "respond-async"}, timeout=30)
        assert kicked.status_code == 202
        cut = kicked.headers["Content-Location"].rsplit("/", 1)[1]
        assert (tmp_path / "exports" / cut / "job.json").is_file()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        stop_pid(proc)
    (tmp_path / "exports" / "not-a-job").mkdir()
    (tmp_path / "exports" / "not-a-job" / "Patient.ndjson").write_bytes(b"{}\n")
    with EmbeddedFhirServer(db) as server, httpx.Client(timeout=30) as c:
        again = c.get(f"{server.base_url}/$export-status/{finished}")
        assert again.status_code == 200 and again.json() == before
        (output,) = before["output"]
        lines = c.get(f"{server.base_url}/$export-file/{finished}/Patient.ndjson").text.splitlines()
        assert len(lines) == output["count"] == 3
        stopped = c.get(f"{server.base_url}/$export-status/{cut}")
        assert stopped.status_code == 500 and "stopped during this export" in stopped.text
    assert not (tmp_path / "exports" / "not-a-job").exists()
