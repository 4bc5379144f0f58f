"""The monitor as a service: a dead worker is loud; /metrics on the integration API and on
``kit monitor serve`` (a subprocess that stops on SIGTERM); hostile clients; the dashboard widget."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import httpx
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kit.errors import InvalidInputError, ServiceFailedError, StoreError
from kit.hub import Hub
from kit.hub.monitor import Monitor
from kit.services.api_metrics import serve_monitor
from kit.stack import Stack
from tests.conftest import stop_pid, wait_until
from tests.integration.api.helpers import running_api

KIT = [sys.executable, "-m", "kit.cli"]


def names(text: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


class BrokenHub:
    """A Hub whose probe has a bug (a fault no real peer can produce): it raises a non-kit error."""

    connectors = ("ehr-fhir",)

    def __init__(self) -> None:
        self.calls = 0

    def status(self) -> pl.DataFrame:
        self.calls += 1
        raise RuntimeError("a bug in a probe")

    def disconnect_all(self) -> None:
        pass


def test_a_worker_that_dies_makes_the_monitor_unhealthy_loudly(stack: Stack, tmp_path: Path) -> None:
    broken = BrokenHub()
    monitor = Monitor(stack.client_settings(), hub=broken, workspace=tmp_path / "a", interval=0.1)
    server = serve_monitor(monitor)
    try:
        monitor.start()
        wait_until(lambda: monitor.failure is not None and not monitor.running)
        assert broken.calls == 1  # it did not carry on as if nothing happened
        assert not monitor.healthy and not monitor.running
        with pytest.raises(ServiceFailedError, match="RuntimeError: a bug in a probe") as info:
            monitor.check()
        assert info.value.service == "monitor"
        with pytest.raises(ServiceFailedError):
            monitor.run_once()
        health = httpx.get(f"{server.address}/health", timeout=10)
        assert health.status_code == 503 and "a bug in a probe" in health.json()["reason"]
        assert "kit_monitor_up 0.0" in monitor.metrics_text().decode()
    finally:
        server.stop()
        monitor.close()


def test_a_store_that_fails_under_the_worker_makes_it_unhealthy(stack: Stack, tmp_path: Path) -> None:
    settings = stack.client_settings()
    monitor = Monitor(settings, hub=Hub.from_settings(settings, probe_timeout=2.0), workspace=tmp_path / "b",
                      interval=0.1)
    with closing(monitor):
        monitor.start()
        wait_until(lambda: monitor.last_round is not None)
        monitor.store.close()  # the database goes away under the running worker
        wait_until(lambda: monitor.failure is not None)
        assert isinstance(monitor.failure, StoreError)
        with pytest.raises(ServiceFailedError, match="StoreError"):
            monitor.check()


def test_the_integration_api_serves_metrics_to_a_read_key_only(stack: Stack, tmp_path: Path) -> None:
    with running_api(stack, tmp_path / "api") as api:
        with api.client(None) as anon:
            refused = anon.get("/metrics")
            assert refused.status_code == 401
            assert refused.headers["content-type"] == "application/problem+json"
        with api.client("read") as read:
            first = read.get("/metrics")
            assert first.status_code == 200, first.text
            assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
            got = names(first.text)
            assert {"kit_connector_up", "kit_connector_checks_total", "kit_alerts_active"} <= got
            second = read.get("/metrics")  # within [monitor] interval: no new round of probes
            ups = [line for line in second.text.splitlines()
                   if line.startswith('kit_connector_checks_total{connector="ehr-fhir"}')]
            assert ups == ['kit_connector_checks_total{connector="ehr-fhir"} 1.0']
        assert (tmp_path / "api" / "monitor.db").is_file()
        doc = httpx.get(f"{api.base}/openapi.json", timeout=10).json()
        assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        api.server.app.state.monitor.close()


def _env(stack: Stack) -> dict[str, str]:
    settings = stack.client_settings()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update(KIT_PACS_PORT=str(settings.pacs.port), KIT_PACS_CALLED_AET=settings.pacs.called_aet,
               KIT_FHIR_BASE=settings.fhir.base, KIT_HL7_PORT=str(settings.hl7.port), NO_COLOR="1")
    return env


def test_kit_monitor_serve_answers_metrics_and_stops_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    proc = subprocess.Popen([*KIT, "monitor", "serve", "--port", "0", "--interval", "0.2", "--workspace",
                             str(tmp_path / "ws")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(stack), cwd=tmp_path, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"monitor (http://127\.0\.0\.1:\d+)/metrics\n", line)
        assert match, line
        base = match.group(1)
        wait_until(lambda: 'kit_connector_up{connector="hl7-mllp"} 1.0' in
                   httpx.get(f"{base}/metrics", timeout=10).text)
        text = httpx.get(f"{base}/metrics", timeout=10).text
        assert {"kit_connector_up", "kit_connector_latency_seconds", "kit_connector_failures_total",
                "kit_monitor_up"} <= names(text)
        assert httpx.get(f"{base}/health", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{base}/alerts", timeout=10).json() == []
        # hostile clients: idle connections and a trickled request head do not stop it answering
        idle = [socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=5)
                for _ in range(20)]
        idle[0].sendall(b"GET /metr")
        started = time.monotonic()
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 200
        assert time.monotonic() - started < 2.0
        for s in idle:
            s.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in err and "Traceback" not in err
        assert (tmp_path / "ws" / "monitor.db").is_file()
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


def test_kit_monitor_status_prints_one_round(stack: Stack, tmp_path: Path) -> None:
    import json

    done = subprocess.run([*KIT, "monitor", "status", "--json"], capture_output=True, text=True,
                          env=_env(stack), cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {r["connector"]: r["status"] for r in rows} == {"pacs-dimse": "ok", "ehr-fhir": "ok",
                                                           "hl7-mllp": "ok", "endoscopy": "ok"}
    assert list(tmp_path.iterdir()) == []  # one round keeps nothing
    env = {**_env(stack), "KIT_HL7_PORT": "1"}
    down = subprocess.run([*KIT, "monitor", "status"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)
    assert down.returncode == 1 and down.stderr.strip() == "kit: error: not answering: hl7-mllp"


def test_the_dashboard_shows_history_and_alerts_and_acknowledges(stack: Stack, tmp_path: Path) -> None:
    from kit.widgets.monitor import MonitorDashboard

    settings = stack.client_settings()
    listener = stack.services["mllp"]
    with closing(Monitor(settings, hub=Hub.from_settings(settings, probe_timeout=2.0),
                         workspace=tmp_path / "ws")) as monitor:
        monitor.run_once()
        board = MonitorDashboard(monitor, user="alice")
        assert repr(board) == "MonitorDashboard(5 connectors, 0 active alerts)"  # the stack serves DICOMweb
        shown = sorted({t.name for t in board.figure.data})
        assert shown == ["ehr-fhir", "endoscopy", "hl7-mllp", "pacs-dicomweb", "pacs-dimse"]
        listener.stop()
        try:
            for _ in range(3):
                monitor.run_once()
        finally:
            listener.start()
        board.start(interval=0.05)
        wait_until(lambda: board.alerts.height == 2)
        board.stop()
        mllp = [k for k, t in enumerate(board.figure.data) if t.name == "hl7-mllp"]
        assert len(board.figure.data[mllp[1]].x) == 3  # three failed checks marked
        assert board.table.df["rule"].to_list() == ["connector_down", "check_failed"]
        board.button.click()  # nothing selected: said, nothing done
        assert board.message.value.startswith("not acknowledged: select an alert")
        board.table.selected_rows = [0]
        board.button.click()
        assert board.message.value == f"alert {board.alerts['id'][0]} acknowledged by alice"
        assert board.alerts["state"].to_list() == ["acknowledged", "raised"]
        with pytest.raises(InvalidInputError):
            board.acknowledge(5)
