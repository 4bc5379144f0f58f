"""A service whose worker dies takes its command down loudly: `kit serve` and `kit hl7 listen`
exit 1 with one line naming the failure, instead of accepting connections into a void (issue #7.1).

The dead worker is real (the MLLP store thread is killed by an exception no handler catches, as in
tests/integration/mllp/test_listener_faults.py); only the kill itself is patched in, since no peer
can make the store thread die on purpose.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kit.cli import cli
from kit.hl7.framing import frame
from kit.hl7.mllp import MLLPListener
from kit.hl7.store import MessageStore
from tests.integration.mllp.conftest import numbered

pytestmark = pytest.mark.timeout(60)


class _Fatal(BaseException):
    """What no handler of a message catches: it kills the thread it is raised in."""


def _kill_store_thread_once_started(monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    """Patch MLLPListener.start to remember the listener, then kill its store thread with a message."""
    started: list[MLLPListener] = []
    real_start = MLLPListener.start

    def start(self: MLLPListener) -> None:
        real_start(self)
        started.append(self)

    def die(self: MessageStore, items: object) -> None:
        raise _Fatal("store thread killed")

    monkeypatch.setattr(MLLPListener, "start", start)

    def poison() -> None:
        deadline = time.monotonic() + 30
        while not started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started, "the listener never started"
        monkeypatch.setattr(MessageStore, "add_many", die)
        with socket.create_connection(("127.0.0.1", started[0].port), timeout=5) as sock:
            sock.sendall(frame(numbered(1, "VOID")))
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass

    thread = threading.Thread(target=poison, daemon=True)
    thread.start()
    return thread


def _assert_one_line_failure(result: object, service_word: str) -> None:
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    lines = [line for line in result.stderr.splitlines() if line.startswith("kit: error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert service_word in lines[0] and "store thread killed" in lines[0]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]


def test_kit_serve_exits_1_when_a_service_worker_dies(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    killer = _kill_store_thread_once_started(monkeypatch)
    result = CliRunner().invoke(cli, ["serve", "--only", "mllp", "--mllp-port", "0", "--no-preload",
                                       "--data-dir", str(tmp_path / "stack")])
    killer.join(10)
    _assert_one_line_failure(result, "ServiceFailedError: the embedded mllp service stopped")


def test_kit_hl7_listen_exits_1_when_its_worker_dies(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    killer = _kill_store_thread_once_started(monkeypatch)
    result = CliRunner().invoke(cli, ["hl7", "listen", "--port", "0", "--store", str(tmp_path / "feed.db")])
    killer.join(10)
    _assert_one_line_failure(result, "StoreError: the MLLP listener")
