"""python-hl7's asyncio MLLP server, run in a thread: the other library's listener that kit's
sender, the ORU encoder and result delivery are tested against."""

from __future__ import annotations

import asyncio
import threading

import hl7
from hl7.mllp import start_hl7_server

__all__ = ["PythonHl7Server"]


class PythonHl7Server:
    """python-hl7's asyncio MLLP server in a thread; answers with python-hl7's own create_ack()."""

    def __init__(self, codes: dict[str, str], segments: dict[str, str] | None = None) -> None:
        self.codes = codes  # control id -> ack code to answer (default AA)
        self.segments = segments or {}  # control id -> a segment to add to its ACK (an ERR, say)
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
                ack = message.create_ack(ack_code=self.codes.get(control_id, "AA"))
                if control_id in self.segments:
                    ack = hl7.parse(f"{ack}\r{self.segments[control_id]}")
                writer.writemessage(ack)
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
