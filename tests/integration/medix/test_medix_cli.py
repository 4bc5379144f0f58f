"""``kit medix serve`` as a real subprocess: its address line, SIGTERM, kill -9 mid-job and restart."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.stack import Stack
from tests.conftest import free_port, stop_pid
from tests.integration.medix.helpers import (
    GOOD,
    TOKEN,
    ThrottleProxy,
    WebhookReceiver,
    client,
    make_study,
    request_download,
)


def _env(pacs_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_PACS_HOST": "127.0.0.1", "KIT_PACS_PORT": str(pacs_port), "KIT_PACS_CALLED_AET": "KIT",
                "KIT_MEDIX_WEBHOOK_BACKOFF": "0.05", "KIT_MEDIX_WEBHOOK_BACKOFF_MAX": "0.2",
                "KIT_MEDIX_MIN_FREE_BYTES": "0", **extra})
    return env


def _serve(tmp: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start `kit medix serve`; the process and the address it printed."""
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "kit.cli", "medix", "serve", "--port", str(port),
                             "--token-file", str(token), "--workspace", str(tmp / "ws")],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("medix "):
        stop_pid(proc)  # type: ignore[arg-type]
        raise AssertionError(f"no address line: {line!r}; stderr {proc.stderr.read().decode()!r}")
    return proc, line.split()[1]


@pytest.fixture
def slow_pacs(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """An embedded PACS with an 80-instance study behind a 1 MB/s link: (study UID, proxy port)."""
    study, files = make_study(tmp_path / "study", 80)
    with Stack.ephemeral(services=("pacs",), preload=False) as own:
        own.services["pacs"].import_files(files)  # type: ignore[attr-defined]
        proxy = ThrottleProxy(("127.0.0.1", own.port("pacs")), rate=1 << 20)
        try:
            yield study, proxy.port
        finally:
            proxy.close()


def test_serve_prints_its_address_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc, address = _serve(tmp_path, 0, _env(free_port()))
    try:
        assert address.startswith("http://127.0.0.1:")
        with client(address) as c:
            assert c.get("/health").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert b"stopped" in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_resumes", [2, 0])
def test_kill_9_mid_export_then_restart(tmp_path: Path, slow_pacs: tuple[str, int], max_resumes: int) -> None:
    """Resumed (default): the job completes, each status reported once in order, one zip.
    With max_resumes = 0 it fails with ExportFailed (it had reached ExportStarted)."""
    study, pacs_port = slow_pacs
    port = free_port()
    env = _env(pacs_port, KIT_MEDIX_MAX_RESUMES=str(max_resumes))
    killed = threading.Event()
    with WebhookReceiver() as hook:
        proc, address = _serve(tmp_path, port, env)
        try:
            def on_status(status: str) -> None:
                if status == "2" and not killed.is_set():
                    killed.set()
                    os.kill(proc.pid, signal.SIGKILL)  # mid-export, by PID

            hook.on_status = on_status
            job_id = request_download(address, study, hook.url)
            proc.wait(60)
            assert killed.is_set() and proc.returncode == -signal.SIGKILL
        finally:
            stop_pid(proc)  # type: ignore[arg-type]
        assert hook.statuses() == ["0", "1", "2"]
        proc, again = _serve(tmp_path, port, env)
        try:
            assert again == address
            final = hook.wait_final(timeout=90)
            deduped = [s for i, s in enumerate(final) if i == 0 or final[i - 1] != s]  # at least once
            with client(address) as c:
                job = c.get(f"/api/study/download/{job_id}").json()
                zipped = c.get(f"/api/study/download/{job_id}/file")
        finally:
            stop_pid(proc)  # type: ignore[arg-type]
    files = sorted(p.name for p in (tmp_path / "ws" / "files").iterdir())
    if max_resumes:
        assert deduped == GOOD and max(final.count(s) for s in GOOD) <= 2, final
        assert job["State"] == "done" and job["Statuses"] == GOOD
        assert files == [f"{job_id}.zip"]  # one zip, no partial one beside it
        (tmp_path / "got.zip").write_bytes(zipped.content)
        with zipfile.ZipFile(tmp_path / "got.zip") as archive:
            assert len(archive.namelist()) == 80 and archive.testzip() is None
    else:
        assert deduped == ["0", "1", "2", "-3"], final
        assert job["State"] == "failed" and "restart" in job["Error"]
        assert files == [] and zipped.status_code == 409


def test_a_dead_worker_exits_1_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kit.cli import cli

    class Crash(BaseException):
        """A bug killing the worker thread (a fault no peer can produce)."""

    def crash(self: object) -> None:
        raise Crash("worker bug")

    monkeypatch.setattr("kit.services.medix_worker.ExportWorkers._loop", crash)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("KIT_")]:
        monkeypatch.delenv(key)
    result = CliRunner().invoke(cli, ["medix", "serve", "--port", "0", "--token-file", str(token),
                                      "--workspace", str(tmp_path / "ws")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("kit: ")]
    assert lines == [lines[0]] and lines[0].startswith("kit: error: ServiceFailedError: the Medix service "
                                                        "stopped"), result.stderr
