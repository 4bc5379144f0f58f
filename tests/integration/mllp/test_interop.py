"""Interop with python-hl7: its mllp_send tool -> kit listener, kit sender -> its asyncio MLLP server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import start_hl7_server

from kit.errors import NakError
from kit.hl7.framing import frame
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from tests.conftest import peer_env
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


class PythonHl7Server:
    """python-hl7's asyncio MLLP server in a thread; answers with python-hl7's own create_ack()."""

    def __init__(self, codes: dict[str, str]) -> None:
        self.codes = codes  # control id -> ack code to answer (default AA)
        self.received: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                control_id = str(message.segment("MSH")[10])
                writer.writemessage(message.create_ack(ack_code=self.codes.get(control_id, "AA")))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            server = await start_hl7_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            server.close()
            await server.wait_closed()

        self._loop.run_until_complete(main())

    def __enter__(self) -> PythonHl7Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


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
