"""PacsClient C-FIND against a PACS that sends more than memory should hold (hostile-peer audit).

pynetdicom assembles a DIMSE message from any number of PDUs in memory and queues every message
without waiting: one Pending identifier of any size, or a million of them, used to be held whole
(8 MiB identifiers under ``limit=1001`` took the process past 6 GB). Now one data set is bounded
as its fragments arrive (``max_identifier_bytes``: A-ABORT, DicomProtocolError) and the
matches of one C-FIND in total (``max_find_bytes``: C-CANCEL, DicomError), and neither bound
touches a C-GET's instances.

The hostile peer is the raw DICOM Upper Layer acceptor of the client bounds tests
(:class:`~tests.integration.pacs_client.test_client_bounds.RawPeer`, 127.0.0.1, ephemeral port);
the well-behaved one the embedded PACS.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kit.cohort.plan import classify
from kit.dicom._cfind import MAX_COMMAND_BYTES
from kit.dicom._command import command_int, encode_command
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import DicomError, DicomProtocolError, InvalidInputError
from tests.integration.pacs_client.test_client_bounds import (
    RELEASE_RP,
    RawPeer,
    bounded,
    peer,  # noqa: F401 - the fixture
    recv_message,
    recv_pdu,
)
from tests.integration.pacs_scp.conftest import make_instance

KIB, MIB = 1024, 1024 * 1024
C_FIND_RSP, C_CANCEL_RQ = 0x8020, 0x0FFF
FRAGMENT = 16 * KIB  # data set bytes per P-DATA-TF the peer sends (the client allows 4 MiB)


def _element(group: int, elem: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (``value`` of even length)."""
    return struct.pack("<HHI", group, elem, len(value)) + value


def identifier(number: int, filler: int = 0) -> bytes:
    """A STUDY level match (Implicit VR LE) with a Text Value (UT) of ``filler`` bytes."""
    uid = f"1.2.826.0.1.3680043.8.498.{number}".encode()
    return (_element(0x0008, 0x0052, b"STUDY ") + _element(0x0010, 0x0020, b"MRN1 ")
            + _element(0x0020, 0x000D, uid + b"\x00" * (len(uid) % 2))
            + _element(0x0040, 0xA160, b"A" * filler))


def _pdu(context_id: int, control: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    return [struct.pack(">BBIIB", 0x04, 0, len(data) + 6, len(data) + 2, context_id) + bytes([control]), data]


def response(context_id: int, fields: dict[int, bytes], status: int,
             data: bytes | None = None) -> list[bytes | memoryview]:
    """A C-FIND-RSP to the request ``fields``: its command PDU, then ``data`` in FRAGMENT-sized PDUs
    (each a separate piece, nothing copied)."""
    command = encode_command({0x00000002: fields[0x0002].decode().rstrip("\x00"), 0x00000100: C_FIND_RSP,
                              0x00000120: command_int(fields, 0x0110) or 0,
                              0x00000800: 0x0101 if data is None else 0x0000, 0x00000900: status})
    pieces = _pdu(context_id, 0x03, command)
    view = memoryview(data or b"")
    for start in range(0, len(view), FRAGMENT):
        last = start + FRAGMENT >= len(view)
        pieces += _pdu(context_id, 0x02 if last else 0x00, view[start:start + FRAGMENT])
    return pieces


def send(conn: socket.socket, pieces: list[bytes | memoryview]) -> int:
    """Send ``pieces`` until the connection fails; the bytes sent."""
    sent = 0
    for piece in pieces:
        try:
            conn.sendall(piece)
        except OSError:
            break
        sent += len(piece)
    return sent


def release(conn: socket.socket) -> None:
    """Answer the client's A-RELEASE-RQ."""
    kind, _ = recv_pdu(conn)
    assert kind == 0x05, f"PDU type 0x{kind:02X} instead of A-RELEASE-RQ"
    conn.sendall(RELEASE_RP)


def answer_two(context_id: int, conn: socket.socket, fields: dict[int, bytes]) -> None:
    """A well-behaved C-FIND: two small matches, Success, release."""
    for number in (1, 2):
        send(conn, response(context_id, fields, 0xFF00, identifier(number)))
    send(conn, response(context_id, fields, 0x0000))
    release(conn)


def pdu_kinds(conn: socket.socket, into: list[int]) -> threading.Thread:
    """Record the type of every PDU the client sends on ``conn`` (a thread, until it closes)."""

    def read() -> None:
        while True:
            try:
                into.append(recv_pdu(conn)[0])
            except (OSError, EOFError):
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def traced(call: Callable[[], Any]) -> tuple[BaseException | None, float, int]:
    """:func:`bounded` ``call`` under tracemalloc: what it raised, its seconds, and the most bytes
    allocated at once while it ran (in any thread: the client's and pynetdicom's, the peer's too)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        exc, took = bounded(call)
        return exc, took, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def query(client: PacsClient, name: str) -> Callable[[], Any]:
    return {"find": lambda: client.find("STUDY", patient_id="MRN1"),
            "worklist": lambda: client.worklist(modality="CT")}[name]


@pytest.mark.parametrize("name", ["find", "worklist"])
def test_an_identifier_past_the_bound_is_aborted_as_it_arrives(peer: Callable[..., RawPeer],  # noqa: F811
                                                                name: str) -> None:
    """One Pending identifier of 32 MiB in 16 KiB PDUs under max_identifier_bytes=64 KiB: the client
    sends A-ABORT once 64 KiB of it are in and raises DicomProtocolError (final: a cohort job does not
    retry it) naming the bound and the PACS; the PACS could not send it all, the client held a few
    hundred KiB at most, and the same client's next C-FIND (a new association) works."""
    huge = identifier(0, 32 * MIB)  # made before the tracing starts
    calls = itertools.count()
    seen: dict[str, Any] = {}

    def script(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        if next(calls):
            answer_two(context_id, conn, fields)
            return
        kinds: list[int] = []
        reader = pdu_kinds(conn, kinds)
        seen["sent"] = send(conn, response(context_id, fields, 0xFF00, huge))
        reader.join(10)
        seen["kinds"] = kinds

    raw = peer(script)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0,
                        max_identifier_bytes=64 * KIB)
    exc, took, peak = traced(query(client, name))
    assert isinstance(exc, DicomProtocolError), repr(exc)
    assert not classify(exc).transient  # a cohort job does not ask the same PACS again
    assert f"passed {64 * KIB} bytes (max_identifier_bytes)" in str(exc)
    assert client.address in str(exc)
    assert took < 4.0
    assert peak < 4 * MIB, peak  # pynetdicom held the 32 MiB whole (and pydicom decoded it)
    assert query(client, name)().height == 2  # the client is fine: a new association
    raw.close()
    assert seen["sent"] < len(huge) // 2, seen["sent"]  # cut off early: not read, not buffered
    assert 0x07 in seen["kinds"], seen["kinds"]  # A-ABORT


def test_an_endless_command_set_is_aborted(peer: Callable[..., RawPeer]) -> None:  # noqa: F811
    """A response whose command set never ends (64 MiB in 16 KiB fragments, default bounds): A-ABORT
    once it passes MAX_COMMAND_BYTES, DicomProtocolError, not a wait for the rest."""
    piece = b"".join(_pdu(1, 0x01, bytes(FRAGMENT)))  # a command fragment, never the last
    seen: dict[str, Any] = {}

    def script(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        seen["sent"] = send(conn, [piece] * 4096)

    raw = peer(script)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
    exc, took, peak = traced(query(client, "find"))
    assert isinstance(exc, DicomProtocolError), repr(exc)
    assert f"command set passed {MAX_COMMAND_BYTES} bytes" in str(exc)
    assert took < 4.0 and peak < 4 * MIB, (took, peak)
    raw.close()
    assert seen["sent"] < len(piece) * 4096 // 2


def test_matches_past_the_total_bound_are_cancelled(peer: Callable[..., RawPeer]) -> None:  # noqa: F811
    """400 Pending identifiers of 40 KiB each (each under max_identifier_bytes, 16 MiB in all) under
    max_find_bytes=256 KiB: the client sends C-CANCEL once the matches pass 256 KiB, reads the rest
    up to the final Cancel status, releases, and raises DicomError (not a silent truncation)
    naming the bound and the PACS; memory stays near the bound."""
    pendings = [b"".join(response(1, {0x0002: b"1.2.840.10008.5.1.4.1.2.2.1", 0x0110: b"\x01\x00"},
                                  0xFF00, identifier(number, 40 * KIB))) for number in range(400)]
    seen: dict[str, Any] = {"sent": 0}

    def script(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        assert context_id == 1
        cancel = threading.Event()

        def sender() -> None:
            for pending in pendings:
                if cancel.is_set() or not send(conn, [pending]):
                    break
                seen["sent"] += 1
            send(conn, response(context_id, fields, 0xFE00 if cancel.is_set() else 0x0000))

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        _, request = recv_message(conn)
        seen["request"] = (command_int(request, 0x0100), command_int(request, 0x0120))
        cancel.set()
        thread.join(10)
        release(conn)
        seen["released"] = True

    raw = peer(script)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0,
                        max_find_bytes=256 * KIB, max_identifier_bytes=64 * KIB)
    exc, _took, peak = traced(lambda: client.find("STUDY", patient_id="MRN1"))
    assert type(exc) is DicomError, repr(exc)  # cancelled, not aborted
    assert f"passed {256 * KIB} bytes (max_find_bytes) after 6 match(es): C-CANCEL sent" in str(exc)
    assert client.address in str(exc)
    raw.close()
    assert seen["request"] == (C_CANCEL_RQ, 1)  # C-CANCEL of message 1, seen by the PACS
    assert seen.get("released") is True  # the association ended cleanly
    assert peak < 6 * MIB, peak  # the 16 MiB of matches were not kept


def test_a_limit_still_cuts_with_a_warning_before_the_total_bound(peer: Callable[..., RawPeer]) -> None:  # noqa: F811
    """``limit`` keeps its behaviour: cut with a TruncatedResultWarning, no error, under the bounds."""
    from kit.errors import TruncatedResultWarning

    def script(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        for number in range(5):
            send(conn, response(context_id, fields, 0xFF00, identifier(number, 1000)))
        _, request = recv_message(conn)
        assert command_int(request, 0x0100) == C_CANCEL_RQ
        send(conn, response(context_id, fields, 0xFE00))
        release(conn)

    raw = peer(script)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0,
                        max_find_bytes=64 * KIB, max_identifier_bytes=4 * KIB)
    with pytest.warns(TruncatedResultWarning, match="stopped at limit=3"):
        frame = client.find("STUDY", patient_id="MRN1", limit=3)
    assert frame.height == 3


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "16"])
def test_the_bounds_are_checked(bad: Any) -> None:
    for name in ("max_identifier_bytes", "max_find_bytes"):
        with pytest.raises(InvalidInputError, match=name):
            PacsClient("127.0.0.1", 104, called_aet="PACS", **{name: bad})


def test_find_and_a_large_get_work_under_small_bounds(tmp_path: Path) -> None:
    """Against the embedded PACS, with max_identifier_bytes=64 KiB and max_find_bytes=1 MiB: C-FIND
    answers as without bounds, and a C-GET of a 2 MiB instance (32 times the C-FIND bound, in one
    C-STORE sub-operation on the same association code) arrives whole."""
    pacs = EmbeddedPACS(tmp_path / "pacs", max_pdu=65536)
    pacs.start()
    try:
        images = [make_instance("MRN1001", 0, 1, number, size=1024 if number == 1 else 16)
                  for number in (1, 2, 3)]
        for number, ds in enumerate(images):
            ds.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
        plain = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
        plain.store(sorted(tmp_path.glob("*.dcm")))
        client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10,
                            max_identifier_bytes=64 * KIB, max_find_bytes=MIB)
        for level in ("STUDY", "IMAGE"):
            ours = client.find(level, patient_id="MRN1001")
            assert ours.equals(plain.find(level, patient_id="MRN1001"))
        assert client.find("IMAGE", patient_id="MRN1001").height == 3
        study = str(images[0].StudyInstanceUID)
        got = client.get(study_uid=study, dest=tmp_path / "got")
        assert got.height == 3
        big = tmp_path / "got" / f"{images[0].SOPInstanceUID}.dcm"
        assert big.stat().st_size > 2 * MIB
    finally:
        pacs.close()
