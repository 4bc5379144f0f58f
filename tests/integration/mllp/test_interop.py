"""Interop with python-hl7: its mllp_send tool -> kit listener, kit sender -> its asyncio MLLP server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from kit.errors import NakError
from kit.hl7.framing import frame
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from tests.conftest import peer_env
from tests.integration.hl7_peer import PythonHl7Server
from tests.integration.mllp.conftest import FEED, numbered


def _mllp_send() -> list[str]:
    found = shutil.which("mllp_send")
    return [found] if found else [sys.executable, "-c", "from hl7.client import mllp_send; mllp_send()"]


def test_python_hl7_mllp_send_to_kit_listener(listener: MLLPListener, tmp_path: Path) -> None:
    path = tmp_path / "feed.mllp"
    path.write_bytes(b"".join(frame(m) for m in FEED))
    done = subprocess.run([*_mllp_send(), "-p", str(listener.port), "-f", str(path), "127.0.0.1"],
                          capture_output=True, timeout=60, env=peer_env())
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode(errors="replace")
    assert out.count("MSA|AA|") == len(FEED)
    assert listener.store is not None and listener.store.count() == len(FEED)
    stored = listener.store.messages()
    assert stored["control_id"].to_list() == [hl7.parse(m).segment("MSH")[10][0] for m in FEED]
    # what was stored is what was sent (mllp_send strips the final CR of each message)
    assert [r.rstrip("\r") for r in stored["raw"].to_list()] == [m.rstrip("\r") for m in FEED]


@pytest.fixture
def hl7_server() -> Iterator[PythonHl7Server]:
    with PythonHl7Server({"X000001": "AR", "X000002": "AE"}) as server:
        yield server


def test_kit_sender_to_python_hl7_server(hl7_server: PythonHl7Server) -> None:
    with MLLPSender("127.0.0.1", hl7_server.port, timeout=10,
                    retry=RetryPolicy(max_attempts=3, backoff=0.01)) as sender:
        acks = sender.send_many(FEED)
        assert acks["ack_code"].to_list() == ["AA"] * len(FEED)
        assert acks["error"].null_count() == len(FEED)
        assert [str(hl7.parse(r).segment("MSH")[10]) for r in hl7_server.received] == \
            acks["control_id"].to_list()
        with pytest.raises(NakError) as rejected:
            sender.send(numbered(1, "X"))
        assert rejected.value.ack_code == "AR" and sender.last_attempts == 1
        with pytest.raises(NakError) as error:
            sender.send(numbered(2, "X"))
        assert error.value.ack_code == "AE" and sender.last_attempts == 3
        # the connection is still good after NAKs
        assert sender.send(numbered(3, "X")).control_id == "X000003"
