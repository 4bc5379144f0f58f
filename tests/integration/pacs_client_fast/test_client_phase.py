"""ClientPhase (chunked reads, kernel timeouts) reads exactly what DataPhase reads.

Fast == slow on byte streams over real sockets (socketpairs): valid DIMSE messages in
PDUs of any size, cut at any point, and damaged streams (Hypothesis); only KitErrors.
End to end: large PDUs (past the read chunk), a peer that sends an A-ABORT right
behind its last response, timeouts on a silent peer.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread

from kit.dicom import _clientphase, dimse
from kit.dicom._clientphase import CHUNK, ClientPhase
from kit.dicom._command import C_STORE_RSP, NO_DATASET, encode_command
from kit.dicom._fastnet import DataPhase
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import AssociationAbortedError, KitError, PeerTimeoutError
from kit.examples.dicom import random_ct_files
from tests.unit.dicom_store.test_getc import read_messages


def _phase(cls: type[DataPhase], sock: socket.socket, *, kernel: bool, maximum: int = 0,
           fragment: int = 0) -> DataPhase:
    """A phase on a connected socket, without an association (the reading and framing only)."""
    user = SimpleNamespace(maximum_length=fragment)
    own = SimpleNamespace(maximum_length=maximum)
    assoc: Any = SimpleNamespace(is_requestor=True, acceptor=user, requestor=own)
    phase = cls.__new__(cls)
    if cls is ClientPhase:
        ClientPhase.__init__(phase, assoc, 2.0, "test")  # type: ignore[arg-type]
    else:
        DataPhase.__init__(phase, assoc, 2.0, "test")
    phase._sock = sock
    sock.settimeout(2.0)
    if kernel and isinstance(phase, ClientPhase):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 2, 0))
        sock.settimeout(None)
        phase._kernel = True
    return phase


def _read_all(cls: type[DataPhase], stream: bytes, cuts: list[int], *, kernel: bool = True,
              maximum: int = 0) -> list[Any]:
    """Every message (or the error) ``cls`` reads from ``stream``, written in pieces at ``cuts``."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(cls, ours, kernel=kernel, maximum=maximum)

        def feed() -> None:
            pos = 0
            try:
                for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
                    theirs.sendall(stream[pos:cut])
                    pos = max(pos, cut)
                theirs.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the reader gave up (an abort) and closed its end

        writer = threading.Thread(target=feed)
        writer.start()
        out = read_messages(phase)
        writer.join(10)
        return out


def _message(cx: int, status: int, sop: str, data: bytes | None, fragment: int) -> bytes:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(DataPhase, ours, kernel=False, fragment=fragment)
        command = encode_command({0x00000002: "1.2.840.10008.5.1.4.1.1.2", 0x00000100: C_STORE_RSP,
                                  0x00000120: 1, 0x00000800: NO_DATASET if data is None else 1,
                                  0x00000900: status, 0x00001000: sop})
        return b"".join(bytes(p) for p in phase.frame(cx, command, data))


_DATA = st.one_of(st.none(), st.binary(min_size=1, max_size=3000))
_MESSAGES = st.lists(st.tuples(st.integers(1, 255), st.integers(0, 0xFFFF), _DATA,
                               st.sampled_from([0, 16, 100, 4096])), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(messages=_MESSAGES, cuts=st.lists(st.integers(0, 20_000), max_size=6),
       tail=st.binary(max_size=40), damage=st.one_of(st.none(), st.tuples(st.integers(0, 20_000),
                                                                           st.integers(0, 255))))
def test_fast_reads_equal_dataphase_reads(messages: list[tuple[int, int, bytes | None, int]],
                                          cuts: list[int], tail: bytes,
                                          damage: tuple[int, int] | None) -> None:
    stream = bytearray(b"".join(_message(cx, status, f"1.2.3.{i}", data, frag)
                                for i, (cx, status, data, frag) in enumerate(messages)) + tail)
    if damage is not None:
        stream[damage[0] % len(stream)] = damage[1]
    slow = _read_all(DataPhase, bytes(stream), cuts)
    assert _read_all(ClientPhase, bytes(stream), cuts, kernel=True) == slow
    assert _read_all(ClientPhase, bytes(stream), cuts, kernel=False) == slow
    if _clientphase._c_message is not None:  # and ClientPhase's own Python path (kit/dicom/_getc.c)
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(_clientphase, "_c_message", None)
            assert _read_all(ClientPhase, bytes(stream), cuts, kernel=True) == slow
    assert isinstance(slow[-1], tuple) and slow[-1][0] in {
        "AssociationAbortedError", "DicomProtocolError", "PduInterrupt", "PeerTimeoutError"}


def test_a_pdu_larger_than_the_chunk_and_a_limit_past_it() -> None:
    big = bytes(range(256)) * ((CHUNK * 2) // 256)
    stream = _message(1, 0, "1.2.3", big, 0) + _message(3, 0, "1.2.4", b"xy", 0)
    slow = _read_all(DataPhase, stream, [7, CHUNK + 11])
    assert slow[0][2] == big and slow[1][2] == b"xy"
    assert _read_all(ClientPhase, stream, [7, CHUNK + 11]) == slow
    limited = _read_all(ClientPhase, stream, [], maximum=CHUNK)  # our negotiated maximum: abort
    assert limited == _read_all(DataPhase, stream, [], maximum=CHUNK)
    assert "more than the" in limited[0][1]


def test_kernel_timeout_is_a_peer_timeout() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(ClientPhase, ours, kernel=True)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 200_000))
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError):
            phase.recv()
        assert time.monotonic() - start < 5


# -- end to end ----------------------------------------------------------------------------


def test_large_instances_store_and_get_byte_identical(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    files = random_ct_files(tmp_path / "src", 2, patient_id="BIGPDU", size=512, seed=3)  # ~0.5 MB each
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=30, max_pdu=0)
    assert client.store(files)["status"].to_list() == [0, 0]
    got = client.get(study_uid=str(dcmread(files[0]).StudyInstanceUID), dest=tmp_path / "back")
    assert got.height == 2
    for row in got.iter_rows(named=True):
        src = next(f for f in files if str(dcmread(f).SOPInstanceUID) == row["sop_instance_uid"])
        assert dcmread(row["path"]).PixelData == dcmread(src).PixelData


def _abort_behind_response(monkeypatch: pytest.MonkeyPatch, phase: type[DataPhase],
                           pacs: EmbeddedPACS, files: list[Path]) -> tuple[str, str]:
    """Store through a relay that appends an A-ABORT to the PACS's first C-STORE-RSP."""
    monkeypatch.setattr(dimse, "ClientPhase", phase)
    relay = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket, inject: bool) -> None:
        sent = False
        try:
            while data := src.recv(65536):
                if inject and not sent and data[:1] == b"\x04":
                    data += struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0)
                    sent = True
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        conn, _ = relay.accept()
        upstream = socket.create_connection(("127.0.0.1", pacs.port))
        threading.Thread(target=pipe, args=(conn, upstream, False), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, conn, True), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    client = PacsClient("127.0.0.1", relay.getsockname()[1], called_aet=pacs.aet, timeout=10)
    try:
        frame = client.store(files[:1])
        return "ok", str(frame["status"].to_list())
    except KitError as exc:
        return type(exc).__name__, ""
    finally:
        relay.close()


def test_an_abort_behind_the_last_response_is_seen_as_before(pacs: EmbeddedPACS, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    files = random_ct_files(tmp_path / "src", 1, patient_id="ABORT", size=16, seed=9)
    handed: list[bytes] = []
    original = ClientPhase.hand_over

    def hand_over(self: ClientPhase, raws: list[bytes]) -> None:
        handed.extend(raws)
        original(self, raws)

    monkeypatch.setattr(ClientPhase, "hand_over", hand_over)
    fast = _abort_behind_response(monkeypatch, ClientPhase, pacs, files)
    assert handed == [struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0)]  # read with the response
    slow = _abort_behind_response(monkeypatch, DataPhase, pacs, files)
    assert fast == slow, (fast, slow)
    assert fast == ("ok", "[0]")  # stored and answered; pynetdicom then sees the abort
    assert PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10).echo() >= 0


def test_a_silent_peer_times_out_through_the_kernel_timeout(monkeypatch: pytest.MonkeyPatch,
                                                           pacs: EmbeddedPACS, tmp_path: Path) -> None:
    """The store's socket in kernel-timeout mode: a peer that stops answering is a PeerTimeoutError."""
    files = random_ct_files(tmp_path / "src", 1, patient_id="SILENT", size=16, seed=2)
    seen: list[bool] = []
    original = ClientPhase.__enter__

    def enter(self: ClientPhase) -> ClientPhase:
        phase = original(self)
        if type(self) is ClientPhase:  # not the embedded PACS's ReceiverPhase (a subclass)
            seen.append(self._kernel)
            self._recv_pdu = lambda: _silent(self)  # type: ignore[method-assign]
            self._fill = lambda need, deadline=None: _silent(self)  # type: ignore[method-assign,assignment]
        return phase

    def _silent(self: ClientPhase) -> Any:  # the Python path's _recv_pdu, the C path's _fill
        assert self._sock is not None
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 300_000))
        while True:  # read and drop whatever comes: the response never "arrives"
            self._recv_some(self._view)

    monkeypatch.setattr(_clientphase.ClientPhase, "__enter__", enter)
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=5)
    with pytest.raises(PeerTimeoutError):
        client.store(files)
    assert seen == [True]


@pytest.mark.parametrize("cls", [ClientPhase, DataPhase])
def test_an_association_whose_network_loop_stops_before_the_phase_is_an_abort(
        cls: type[DataPhase], pacs: EmbeddedPACS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PACS went away between the association and the transfer: pynetdicom's network loop
    never stops for us. A typed abort (the cohort pull waits and retries it), not an
    AttributeError from the clean-up (which failed a study for good)."""
    from pynetdicom import build_context

    from kit.dicom import _fastnet

    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
    with client._associate([build_context("1.2.840.10008.1.1")]) as assoc:
        never = threading.Event()
        with monkeypatch.context() as patched:
            patched.setattr(_fastnet, "hold_dul", lambda assoc, park=False: never)
            with pytest.raises(AssociationAbortedError, match="network loop stopped"), \
                    cls(assoc, 0.2, "test"):
                pass
    assert client.echo() >= 0
