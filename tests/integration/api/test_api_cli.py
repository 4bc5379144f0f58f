"""``kit api serve`` and ``kit api keys create`` as real subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kit.services.api_vault import new_fernet_key
from tests.conftest import stop_pid

pytestmark = pytest.mark.timeout(120)

KIT = [sys.executable, "-m", "kit.cli"]
ADMIN = "kit_cli-bootstrap-admin-" + "q" * 20


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    return {**env, "NO_COLOR": "1", **extra}


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *KIT,
            "api",
            "keys",
            "create",
            "--role",
            "write",
            "--label",
            "ci",
            "--workspace",
            str(tmp_path / "ws"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    assert re.fullmatch(r"kit_[A-Za-z0-9_-]{43}", key), proc.stdout
    assert "only time" in proc.stderr and key not in proc.stderr
    for f in (tmp_path / "ws").iterdir():
        assert key.encode() not in f.read_bytes(), f.name


def test_serve_prints_its_address_answers_and_stops_cleanly(tmp_path: Path) -> None:
    env = _env(KIT_API_FERNET_KEY=new_fernet_key(), KIT_API_ADMIN_KEY=ADMIN)
    proc = subprocess.Popen(
        [*KIT, "api", "serve", "--port", "0", "--workspace", str(tmp_path / "ws")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"api +(http://127\.0\.0\.1:\d+)/api/v1\n", line)
        assert match, line
        base = match.group(1)
        assert httpx.get(f"{base}/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{base}/openapi.json", timeout=10).json()["info"]["title"] == "kit integration API"
        listed = httpx.get(f"{base}/api/v1/integrations", headers={"X-API-Key": ADMIN}, timeout=10)
        assert listed.status_code == 200 and listed.json() == {"integrations": []}  # the env key is an admin
        assert httpx.get(f"{base}/api/v1/integrations", timeout=10).status_code == 401
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in err and "Traceback" not in err
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


def test_serve_without_a_fernet_key_says_how_to_make_one(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*KIT, "api", "serve", "--port", "0", "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: ConfigError: api.fernet_key")
    assert "KIT_API_FERNET_KEY" in lines[0] and "Fernet.generate_key" in lines[0]
