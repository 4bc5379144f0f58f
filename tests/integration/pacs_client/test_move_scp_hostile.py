"""The storage SCP that PacsClient.move runs while it waits for the PACS (an acceptor on the
network, open to whoever connects): a PDU declaring 4 GB and a trickled PDU are answered with
A-ABORT within the bounds, before any of it is read, and the move still ends as it should.

The PACS is a pynetdicom AE in this process whose C-MOVE handler holds its answer until the
attacks are done, so the client's SCP is listening throughout.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from kit.dicom.dimse import PacsClient
from kit.errors import KitError
from tests.conftest import free_port


def _answer(sock: socket.socket, within: float) -> bytes:
    """The first bytes the SCP sends back within ``within`` seconds (b'' if it closed, b'<silent>'
    if it said nothing)."""
    sock.settimeout(within)
    try:
        return sock.recv(64)
    except TimeoutError:
        return b"<silent>"
    except OSError:
        return b""


@pytest.fixture
def holding_pacs() -> Iterator[tuple[int, threading.Event, threading.Event]]:
    """(port, asked, go): a PACS that sets ``asked`` on a C-MOVE and answers (no instances,
    success) once ``go`` is set."""
    asked, go = threading.Event(), threading.Event()

    def on_move(event: Any) -> Iterator[Any]:
        asked.set()
        go.wait(30)
        yield "127.0.0.1", 1  # the destination (never called: no sub-operations)
        yield 0

    ae = AE(ae_title="HOLDPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_MOVE, on_move)])
    try:
        yield int(server.server_address[1]), asked, go
    finally:
        go.set()
        server.shutdown()


def test_the_move_storage_scp_aborts_huge_and_trickled_pdus(
        holding_pacs: tuple[int, threading.Event, threading.Event], tmp_path: Path) -> None:
    port, asked, go = holding_pacs
    store_port = free_port()
    client = PacsClient("127.0.0.1", port, called_aet="HOLDPACS", aet="MOVER", timeout=2)
    outcome: list[Any] = []

    def move() -> None:
        try:
            outcome.append(client.move(study_uid="1.2.826.0.1.3680043.8.498.7", dest=tmp_path / "moved",
                                       store_port=store_port))
        except KitError as exc:
            outcome.append(exc)

    mover = threading.Thread(target=move)
    mover.start()
    try:
        assert asked.wait(10), "the PACS was never asked"
        with socket.create_connection(("127.0.0.1", store_port), timeout=5) as huge:
            huge.sendall(struct.pack(">BBI", 0x01, 0, 0xFFFFFFFF) + b"\x00" * 64)
            start = time.monotonic()
            got = _answer(huge, 1.5)
            assert got[:1] in (b"\x07", b""), got  # A-ABORT (or closed) at once, not read into
            assert time.monotonic() - start < 1.5
        with socket.create_connection(("127.0.0.1", store_port), timeout=5) as slow:
            slow.sendall(struct.pack(">BBI", 0x01, 0, 1000) + b"\x00" * 10)  # then nothing
            start = time.monotonic()
            got = _answer(slow, 5)
            assert got[:1] in (b"\x07", b""), got
            assert time.monotonic() - start < 4  # the PDU deadline (the client's timeout, 2 s)
    finally:
        go.set()
        mover.join(30)
    assert len(outcome) == 1  # the move ended (as an empty retrieve or its typed error)
