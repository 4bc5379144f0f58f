"""A result's ORU^R01 over MLLP: to python-hl7's asyncio server (another library) and kit's listener."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.mllp import start_hl7_server

from kit.errors import NakError
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.typed import AckCode
from kit.results.oru import control_id, encode_oru, oru_conclusion
from tests.unit.results.samples import CONCLUSION, sample

pytestmark = pytest.mark.timeout(120)


class PythonHl7Server:
    """python-hl7's asyncio MLLP server in a thread, answering with python-hl7's own create_ack()."""

    def __init__(self, codes: dict[str, str]) -> None:
        self.codes = codes  # control id -> ack code (default AA)
        self.received: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="python-hl7-server")

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                cid = str(message.segment("MSH")[10])
                writer.writemessage(message.create_ack(ack_code=self.codes.get(cid, "AA")))
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
    rejected = control_id(sample(result_id="res-rejected"))
    with PythonHl7Server({rejected: "AE"}) as server:
        yield server


def test_oru_to_python_hl7_server_is_acknowledged(hl7_server: PythonHl7Server) -> None:
    result = sample()
    text = encode_oru(result)
    with MLLPSender("127.0.0.1", hl7_server.port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
        ack = sender.send(text)
    assert ack.code is AckCode.AA and ack.control_id == control_id(result)
    # python-hl7 parsed what kit sent: the same segments, the measurement value and units, the escapes
    got = hl7.parse(hl7_server.received[0])
    assert str(got.segment("MSH")[10]) == control_id(result)
    first = got.segments("OBX")[0]
    assert (str(first[2]), str(first[5]), str(first[6][0][0])) == ("NM", "12.5", "mm")
    assert got.unescape(str(got.segments("OBX")[6][5])) == CONCLUSION.split("\n")[0]
    assert str(got.segment("PID")[3][0][0]) == "MRN1001" and str(got.segment("OBR")[18]) == "ACC1001"


def test_oru_answered_ae_is_a_nak_error(hl7_server: PythonHl7Server) -> None:
    with MLLPSender("127.0.0.1", hl7_server.port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
        with pytest.raises(NakError) as err:
            sender.send(encode_oru(sample(result_id="res-rejected")))
        assert err.value.ack_code == "AE"
        assert sender.send(encode_oru(sample())).code is AckCode.AA  # the connection still serves


def test_kit_listener_stores_a_resent_oru_once(tmp_path: Path) -> None:
    result = sample()
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=30.0) as listener:
        with MLLPSender("127.0.0.1", listener.port, timeout=10) as sender:
            acks = [sender.send(encode_oru(result)) for _ in range(2)]
            other = sender.send(encode_oru(sample(result_id="res-2")))
        assert [a.code for a in acks] == [AckCode.AA, AckCode.AA]
        assert acks[1].text.startswith("duplicate")
        assert other.code is AckCode.AA
        assert listener.store is not None
        assert listener.store.count() == 2 and listener.counts["duplicates"] == 1
        stored = listener.store.messages()
        assert stored["control_id"].to_list() == [control_id(result), control_id(sample(result_id="res-2"))]
        frames = listener.store.frames()
    results = frames["results"].filter(frames["results"]["control_id"] == control_id(result))
    assert results.filter(results["value_type"] == "NM")["value_numeric"].to_list() == [12.5, 0.0001, 0.93]
    assert oru_conclusion(results) == CONCLUSION
