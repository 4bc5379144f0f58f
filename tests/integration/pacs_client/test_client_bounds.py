"""PacsClient against a hostile peer's PDUs: each association ends within about the timeout,
nothing past the negotiated Maximum Length is read, and a peer's absurd Maximum Length is refused.

The peer here is a raw DICOM Upper Layer acceptor (:class:`RawPeer`, 127.0.0.1, an ephemeral
port) that accepts every proposed context and then plays a script: it answers, or sends a
PDU declaring more than the client negotiated, or trickles a PDU a byte at a time.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.dicom._association import KILL_GRACE_SECONDS, MIN_PEER_MAX_PDU
from kit.dicom._command import decode_command, encode_command
from kit.dicom.dimse import PacsClient
from kit.errors import AssociationAbortedError, KitError, PeerTimeoutError
from tests.integration.pacs_client.conftest import make_ct

TIMEOUT = 1.0  # the client's timeout
TRICKLE = 0.2  # seconds between the bytes of a trickled PDU (within the timeout each)
WATCHDOG = 9.0  # a call still running after this long hangs
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
#: Response command field of each request's (C-ECHO, C-FIND, C-STORE, C-MOVE, C-GET)
RESPONSES = {0x0030: 0x8030, 0x0020: 0x8020, 0x0001: 0x8001, 0x0021: 0x8021, 0x0010: 0x8010}
RELEASE_RP = struct.pack(">BBIHH", 0x06, 0, 4, 0, 0)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("the client closed the connection")
        buf += chunk
    return bytes(buf)


def recv_pdu(conn: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack(">BBI", _recv_exact(conn, 6))
    return kind, _recv_exact(conn, length)


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def associate_ac(rq: bytes, max_length: int) -> bytes:
    """An A-ASSOCIATE-AC accepting every context of the A-ASSOCIATE-RQ body ``rq`` (each in its
    first transfer syntax, SCP role for all but Q/R), with ``max_length`` as Maximum Length."""
    pos, contexts = 68, []
    while pos < len(rq):
        kind, _, length = struct.unpack_from(">BBH", rq, pos)
        item, pos = rq[pos + 4:pos + 4 + length], pos + 4 + length
        if kind == 0x20:
            sub, abstract, syntaxes = 4, "", []
            while sub < len(item):
                sub_kind, _, sub_length = struct.unpack_from(">BBH", item, sub)
                value = item[sub + 4:sub + 4 + sub_length].decode().rstrip("\x00")
                sub += 4 + sub_length
                if sub_kind == 0x30:
                    abstract = value
                else:
                    syntaxes.append(value)
            contexts.append((item[0], abstract, syntaxes))
    variable = _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, _abstract, syntaxes in contexts:
        syntax = IMPLICIT if IMPLICIT in syntaxes else syntaxes[0]
        variable += _item(0x21, bytes([context_id, 0, 0, 0]) + _item(0x40, syntax.encode()))
    user = _item(0x51, struct.pack(">I", max_length)) + _item(0x52, b"1.2.3.4.5.6")
    for _context_id, abstract, _syntaxes in contexts:
        if not abstract.startswith("1.2.840.10008.5.1.4.1.2"):
            user += _item(0x54, struct.pack(">H", len(abstract)) + abstract.encode() + b"\x01\x01")
    body = struct.pack(">HH", 1, 0) + rq[4:36] + bytes(32) + variable + _item(0x50, user)
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def recv_message(conn: socket.socket) -> tuple[int, dict[int, bytes]]:
    """The presentation context ID and command of the client's next DIMSE message (read whole)."""
    command, context_id, fields = bytearray(), 0, None
    while True:
        kind, body = recv_pdu(conn)
        assert kind == 0x04, f"PDU type 0x{kind:02X} instead of a DIMSE message"
        pos = 0
        while pos < len(body):
            length, context_id, control = struct.unpack_from(">IBB", body, pos)
            fragment, pos = body[pos + 6:pos + 4 + length], pos + 4 + length
            if control & 0x01:
                command += fragment
                if control & 0x02:
                    fields = decode_command(bytes(command))
                    if int.from_bytes(fields.get(0x0800, b"\x01\x01"), "little") == 0x0101:
                        return context_id, fields
            elif control & 0x02 and fields is not None:
                return context_id, fields


def answer(conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
    """Answer the request ``fields`` with status Success (no data set)."""
    command = encode_command({
        0x00000002: fields[0x0002].decode().rstrip("\x00"),
        0x00000100: RESPONSES[int.from_bytes(fields[0x0100], "little")],
        0x00000120: int.from_bytes(fields[0x0110], "little"), 0x00000800: 0x0101, 0x00000900: 0x0000})
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    conn.sendall(struct.pack(">BBI", 0x04, 0, len(item)) + item)


class RawPeer:
    """A raw DICOM Upper Layer acceptor on 127.0.0.1: accepts the association with Maximum
    Length ``max_length``, reads the client's first DIMSE message and plays ``script(peer,
    conn, context_id, command)``; what the script records goes to :attr:`log`."""

    def __init__(self, script: Callable[[RawPeer, socket.socket, int, dict[int, bytes]], None], *,
                 max_length: int = 16384) -> None:
        self.script, self.max_length = script, max_length
        self.stop = threading.Event()
        self.log: list[Any] = []
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            self.conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            kind, rq = recv_pdu(conn)
            assert kind == 0x01
            conn.sendall(associate_ac(rq, self.max_length))
            context_id, fields = recv_message(conn)
            self.script(self, conn, context_id, fields)
        except Exception as exc:  # noqa: BLE001 - the client ended it: recorded for the test
            self.log.append(exc)

    def trickle(self, conn: socket.socket, data: bytes) -> None:
        """Send ``data`` a byte every :data:`TRICKLE` seconds, until the client goes or the test ends."""
        for byte in data:
            if self.stop.wait(TRICKLE):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    def next_pdu(self, conn: socket.socket) -> tuple[int, bytes]:
        """The client's next PDU (what it sent after the script's bytes)."""
        return recv_pdu(conn)

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not)
        self.listener.close()
        for conn in self.conns:
            conn.close()
        self._accepting.join(5)
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def peer() -> Iterator[Callable[..., RawPeer]]:
    """Start :class:`RawPeer` s; all stopped after the test."""
    peers: list[RawPeer] = []

    def start(script: Callable[..., None], **kwargs: Any) -> RawPeer:
        peers.append(RawPeer(script, **kwargs))
        return peers[-1]

    yield start
    for one in peers:
        one.close()


def bounded(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """Run ``call`` on a daemon thread: what it raised and how long it took; fail if it hangs."""
    box: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc
        box["took"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WATCHDOG)
    if thread.is_alive():
        pytest.fail(f"still running after {WATCHDOG:g}s: the client hangs")
    return box.get("exc"), box["took"]


def service(client: PacsClient, name: str, tmp_path: Path) -> Callable[[], Any]:
    return {"echo": client.echo, "find": lambda: client.find("STUDY", patient_id="X"),
            "worklist": lambda: client.worklist(modality="CT"),
            "move": lambda: client.move(study_uid="1.2.3", dest=tmp_path / "moved", store_port=0),
            "get": lambda: client.get(study_uid="1.2.3", dest=tmp_path / "got"),
            "store": lambda: client.store(make_ct(tmp_path / "src", 1))}[name]


PYNETDICOM_SERVICES = ["echo", "find", "worklist", "move"]


@pytest.mark.parametrize("name", PYNETDICOM_SERVICES)
def test_a_pdu_over_our_maximum_is_aborted_at_its_header(peer: Callable[..., RawPeer], tmp_path: Path,
                                                         name: str) -> None:
    """A response PDU declaring 0xFFFFFFF0 bytes: A-ABORT (reason 6, invalid PDU parameter) as soon
    as its header is in, not a wait for a body of 4 GiB (pynetdicom would buffer it whole)."""

    def huge(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        conn.sendall(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0))
        peer.log.append(peer.next_pdu(conn))

    raw = peer(huge)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
    exc, took = bounded(service(client, name, tmp_path))
    assert isinstance(exc, AssociationAbortedError), repr(exc)
    assert took < 2.5  # not the 5 s timeout: nothing of the body was waited for
    raw.close()
    assert raw.log[:1] == [(0x07, bytes([0, 0, 2, 6]))]  # A-ABORT, service provider, reason 6


@pytest.mark.parametrize("name", PYNETDICOM_SERVICES)
def test_a_trickled_pdu_times_out_within_the_timeout(peer: Callable[..., RawPeer], tmp_path: Path,
                                                     name: str) -> None:
    """A response PDU of 1000 bytes (within our maximum) sent a byte every 0.2 s: each read is within
    the timeout, the PDU is not: PeerTimeoutError after about the timeout, not a hang."""

    def slow(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        conn.sendall(struct.pack(">BBI", 0x04, 0, 1000))
        peer.trickle(conn, bytes(1000))

    raw = peer(slow)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=TIMEOUT)
    exc, took = bounded(service(client, name, tmp_path))
    assert isinstance(exc, PeerTimeoutError), repr(exc)
    assert took < TIMEOUT + 3.0


def test_kill_ends_when_the_network_thread_is_stuck_in_a_read(peer: Callable[..., RawPeer]) -> None:
    """With pynetdicom's own PDU reader (no deadline) stuck reading a trickled PDU, the abort on the
    DIMSE timeout still ends: kill shuts the socket down under the read after its grace period."""

    def slow(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        conn.sendall(struct.pack(">BBI", 0x04, 0, 1000))
        peer.trickle(conn, bytes(1000))

    def unguard(event: Any) -> None:  # after the client's own EVT_CONN_OPEN handler
        vars(event.assoc.dul).pop("_read_pdu_data", None)

    raw = peer(slow)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=TIMEOUT)
    from pynetdicom import build_context, evt

    def echo() -> None:
        with client._associate([build_context(VERIFICATION)],
                               handlers=[(evt.EVT_CONN_OPEN, unguard)]) as assoc:
            assert "_read_pdu_data" not in vars(assoc.dul)
            status = assoc.send_c_echo()
            assert "Status" not in status  # no response: pynetdicom aborted on its DIMSE timeout
            assert not assoc.dul.is_alive()

    exc, took = bounded(echo)
    assert exc is None, repr(exc)
    assert took < TIMEOUT + KILL_GRACE_SECONDS + 3.0


@pytest.mark.parametrize("name", ["echo", "find", "store"])
def test_a_peer_maximum_length_below_the_floor_is_aborted(peer: Callable[..., RawPeer], tmp_path: Path,
                                                          name: str) -> None:
    """An A-ASSOCIATE-AC with a Maximum Length of 1 to 1023 bytes is aborted with a typed error naming
    it (pynetdicom could not frame below 7 bytes: ZeroDivisionError, ValueError; C-STORE framed 1-byte
    PDUs above); 0 (no limit) and 1024 work."""

    def answering(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        peer.log.append("message")
        answer(conn, context_id, fields)
        kind, _ = recv_pdu(conn)
        if kind == 0x05:
            conn.sendall(RELEASE_RP)

    def first_pdu(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        peer.log.append("message")  # reached only if the client sent one

    for max_length in (0, MIN_PEER_MAX_PDU):
        raw = peer(answering, max_length=max_length)
        client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
        exc, _ = bounded(service(client, name, tmp_path / str(max_length)))
        assert exc is None, f"{max_length}: {exc!r}"
        raw.close()
    for max_length in (1, 3, 6, 7, MIN_PEER_MAX_PDU - 1):
        raw = peer(first_pdu, max_length=max_length)
        client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
        exc, took = bounded(service(client, name, tmp_path / str(max_length)))
        assert isinstance(exc, AssociationAbortedError), f"{max_length}: {exc!r}"
        assert f"Maximum Length of {max_length} bytes" in str(exc)
        assert took < 2.5
        raw.close()
        assert len(raw.log) == 1 and isinstance(raw.log[0], AssertionError), raw.log  # A-ABORT, no message
        assert "PDU type 0x07" in str(raw.log[0])


@pytest.mark.parametrize("case", ["get-body", "get-large-body", "get-header", "store-body"])
def test_a_trickled_pdu_times_out_the_fast_path(peer: Callable[..., RawPeer], tmp_path: Path,
                                                case: str) -> None:
    """C-GET and C-STORE read the socket themselves (ClientPhase): a PDU body trickled a byte every
    0.2 s (one within the 256 KiB buffer, one larger), or PDU headers each taking 2.5 s, end in
    PeerTimeoutError after about the timeout, not a hang."""
    name, what = case.split("-", 1)

    def slow(peer: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        if what == "header":  # empty P-DATA-TFs, each header a byte every 0.5 s: every PDU late
            while not peer.stop.is_set():
                for byte in struct.pack(">BBI", 0x04, 0, 0):
                    if peer.stop.wait(0.5):
                        return
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return
            return
        length = 300_000 if what == "large-body" else 1000
        conn.sendall(struct.pack(">BBI", 0x04, 0, length) + bytes(100))
        peer.trickle(conn, bytes(length - 100))

    raw = peer(slow)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=TIMEOUT)
    exc, took = bounded(service(client, name, tmp_path))
    assert isinstance(exc, PeerTimeoutError), repr(exc)
    assert isinstance(exc, KitError)
    assert "did not arrive whole" in str(exc)
    assert took < TIMEOUT + 3.0
