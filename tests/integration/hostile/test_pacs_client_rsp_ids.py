"""PacsClient.store against a PACS whose C-STORE-RSP answers another message (hostile-peer audit).

A C-STORE-RSP's Message ID Being Responded To (0000,0120) must be the Message ID of the
C-STORE-RQ it answers (PS3.7 9.3.1.2). A Success for another message, a stale or a made-up one,
used to count the instance as stored. Now the association is aborted and
:class:`~kit.errors.DicomProtocolError` raised, as a C-GET-RSP to another message is
(:func:`kit.dicom._fastnet.check_get_rsp`); the instance is not counted. Both ways of sending
(from memory, and a large file from the file in pieces) read the answer the same way.

The hostile peer is the raw DICOM Upper Layer acceptor of the client bounds tests
(:class:`~tests.integration.pacs_client.test_client_bounds.RawPeer`); the honest one the
embedded PACS.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.dicom import _outgoing
from kit.dicom._command import command_int, command_str, encode_command
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import DicomProtocolError
from tests.integration.pacs_client.conftest import make_ct
from tests.integration.pacs_client.test_client_bounds import (
    RawPeer,
    bounded,
    peer,  # noqa: F401 - the fixture
    recv_message,
    recv_pdu,
)

C_STORE_RSP = 0x8001


def store_rsp(conn: socket.socket, context_id: int, fields: dict[int, bytes], answers: int) -> None:
    """A Success C-STORE-RSP to the request ``fields``, its Message ID Being Responded To ``answers``."""
    command = encode_command({
        0x00000002: command_str(fields, 0x0002), 0x00000100: C_STORE_RSP, 0x00000120: answers,
        0x00000800: 0x0101, 0x00000900: 0x0000, 0x00001000: command_str(fields, 0x1000)})
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    conn.sendall(struct.pack(">BBI", 0x04, 0, len(item)) + item)


def answering(wrong_from: int, shift: Callable[[int], int]) -> Callable[..., None]:
    """A script answering each C-STORE-RQ with Success: to its own Message ID up to message
    ``wrong_from``, then to ``shift(message ID)``; then it records the client's next PDU."""

    def script(raw: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        while True:
            msg_id = command_int(fields, 0x0110) or 0
            raw.log.append(msg_id)
            store_rsp(conn, context_id, fields, msg_id if msg_id < wrong_from else shift(msg_id))
            if msg_id >= wrong_from:
                raw.log.append(recv_pdu(conn))  # what the client made of it
                return
            context_id, fields = recv_message(conn)

    return script


@pytest.fixture(params=["memory", "pieces"])
def sent(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the instances are sent: from memory, or (LARGE_FILE lowered) from the file in pieces."""
    if request.param == "pieces":
        monkeypatch.setattr(_outgoing, "LARGE_FILE", 1024)
    return str(request.param)


@pytest.mark.parametrize(("wrong_from", "shift", "answers", "done"), [
    (1, lambda m: m + 1, 2, 0),  # every answer to the next message
    (2, lambda m: m - 1, 1, 1),  # the second answer to the first message again (stale)
    (3, lambda m: 0xFFFF, 0xFFFF, 2),  # a made-up message
], ids=["next", "stale", "made-up"])
def test_a_store_rsp_to_another_message_aborts(peer: Callable[..., RawPeer], tmp_path: Path,  # noqa: F811
                                               sent: str, wrong_from: int, shift: Callable[[int], int],
                                               answers: int, done: int) -> None:
    """Four instances; the PACS answers Success to another Message ID from message ``wrong_from`` on:
    A-ABORT there, DicomProtocolError naming both message IDs and the instances answered
    rightly before, not a frame with the instance as stored."""
    files = make_ct(tmp_path / "src", 4)
    raw = peer(answering(wrong_from, shift))
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
    exc, _took = bounded(lambda: client.store(files))
    assert type(exc) is DicomProtocolError, repr(exc)
    message = str(exc)
    assert f"a C-STORE-RSP to message {answers}, not to our C-STORE-RQ (message {wrong_from})" in message
    assert f"after {done} instance(s)" in message
    assert client.address in message
    raw.close()
    assert raw.log[:wrong_from] == list(range(1, wrong_from + 1))  # nothing sent past the bad answer
    assert raw.log[wrong_from] == (0x07, bytes([0, 0, 0, 0]))  # A-ABORT


def test_an_honest_pacs_stores_all(tmp_path: Path, sent: str) -> None:
    """The embedded PACS answers each C-STORE-RQ rightly: every instance stored, status 0."""
    pacs = EmbeddedPACS(tmp_path / "pacs")
    pacs.start()
    try:
        files = make_ct(tmp_path / "src", 5)
        client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
        frame = client.store(files)
        assert frame["status"].to_list() == [0] * 5
        assert client.find("IMAGE", patient_id="MRN9001").height == 5
    finally:
        pacs.close()
