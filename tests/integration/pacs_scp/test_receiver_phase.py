"""The embedded PACS's data phase (kit.dicom._recvphase.ReceiverPhase) against DataPhase.

- fast == slow: on generated, cut and damaged streams of C-STORE/C-ECHO requests, releases and
  aborts, sent over a real socket pair in random pieces, ReceiverPhase yields the same messages
  (context, command, data set, raw PDUs, whole-PDU flag), ends with the same error and sends the
  peer the same bytes (A-ABORT on an oversized PDU) as DataPhase with ``keep_raw``;
- the hostile-peer bounds: a PDU body trickled past ``pdu_timeout`` is aborted (A-ABORT sent,
  connection shut) within the deadline, a body that arrives late but within it is read whole,
  an idle peer is a timeout of the idle kind.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dicom._command import C_ECHO_RQ, NO_DATASET, encode_command
from kit.dicom._fastnet import DataPhase, PduInterrupt, abort_pdu
from kit.dicom._recvphase import ReceiverPhase
from kit.errors import KitError, PeerTimeoutError
from tests.integration.pacs_get_fast.test_get_answer_path import _frame, _store_rq

OURS = 16_384  # our Maximum Length Received: a larger P-DATA-TF is aborted unread


def _assoc(fragment: int) -> Any:
    """Just what the phases read of an association on which we are the acceptor."""
    return SimpleNamespace(is_requestor=False, requestor=SimpleNamespace(maximum_length=fragment),
                           acceptor=SimpleNamespace(maximum_length=OURS))


def _phase(sock: socket.socket, *, fast: bool, timeout: float = 2.0, pdu_timeout: float = 2.0,
           fragment: int = 4096, kernel: bool = True) -> DataPhase:
    """A phase on a connected socket without an association, set up as ``__enter__`` would
    (``kernel``: ReceiverPhase with the timeouts in the kernel, else a Python timeout, as on TLS)."""
    phase: DataPhase
    if fast and not kernel:
        phase = ReceiverPhase(_assoc(fragment), timeout, "test", pdu_timeout=pdu_timeout)
        sock.settimeout(timeout)
    elif fast:
        phase = ReceiverPhase(_assoc(fragment), timeout, "test", pdu_timeout=pdu_timeout)
        whole = int(timeout)
        limit = struct.pack("@ll", whole, int((timeout - whole) * 1_000_000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        sock.settimeout(None)
        phase._kernel = True
    else:
        phase = DataPhase(_assoc(fragment), timeout, "test", keep_raw=True, pdu_timeout=pdu_timeout)
        sock.settimeout(timeout)
    phase._sock = sock
    return phase


def _echo_rq(cx: int, msg_id: int, fragment: int) -> bytes:
    return _frame(cx, encode_command({0x00000002: "1.2.840.10008.1.1", 0x00000100: C_ECHO_RQ,
                                      0x00000110: msg_id, 0x00000800: NO_DATASET}), None, fragment)


def collector(sock: socket.socket, into: bytearray) -> threading.Thread:
    """A thread (not started) that keeps what ``sock`` receives in ``into`` until the connection ends."""

    def receive() -> None:
        try:
            while chunk := sock.recv(65536):
                into.extend(chunk)
        except OSError:
            pass

    return threading.Thread(target=receive)


def _read_all(stream: bytes, pieces: list[int], *, fast: bool, fragment: int,
              kernel: bool = True) -> tuple[list[Any], bytes]:
    """Every message a phase reads from a peer sending ``stream`` in ``pieces``, how it ended,
    and the bytes the peer received."""
    ours, theirs = socket.socketpair()
    got = bytearray()
    out: list[Any] = []
    with ours, theirs:
        phase = _phase(ours, fast=fast, fragment=fragment, kernel=kernel)

        def send() -> None:  # what the peer sends, in pieces
            try:
                pos = 0
                for size in pieces:
                    theirs.sendall(stream[pos:pos + size])
                    pos += size
                theirs.sendall(stream[pos:])
                theirs.shutdown(socket.SHUT_WR)
            except OSError:  # we stopped reading (an abort)
                pass

        threads = [threading.Thread(target=send), collector(theirs, got)]  # and what it receives meanwhile
        for thread in threads:
            thread.start()
        try:
            for _ in range(50):
                msg = phase.recv()
                out.append((msg.context_id, msg.command, msg.dataset, list(phase.raw or []),
                            phase.whole_pdus))
        except PduInterrupt as exc:
            out.append(("interrupt", exc.kind, exc.raw))
        except KitError as exc:
            out.append((type(exc).__name__, str(exc)))
        finally:
            ours.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(10)
    return out, bytes(got)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from([1, 3]), st.integers(0, 0xFFFF),
              st.sampled_from(["1.2.3.4", "1.2.840.99.1", ""]), st.binary(min_size=0, max_size=3000)),
    st.tuples(st.just("echo"), st.sampled_from([1, 3]), st.integers(0, 0xFFFF)),
    st.tuples(st.just("big"),), st.tuples(st.just("release"),), st.tuples(st.just("abort"),)),
    max_size=6)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS, fragment=st.sampled_from([0, 64, 120, 4096]),
       cut=st.one_of(st.none(), st.integers(0, 20_000)),
       damage=st.one_of(st.none(), st.tuples(st.integers(0, 20_000), st.integers(0, 255))),
       pieces=st.lists(st.integers(1, 5000), max_size=6))
def test_receiver_phase_equals_data_phase(ops: list[Any], fragment: int, cut: int | None,
                                          damage: tuple[int, int] | None, pieces: list[int]) -> None:
    parts: list[bytes] = []
    for op in ops:
        if op[0] == "store":
            parts.append(_store_rq(op[1], op[2], op[3], op[4], fragment))
        elif op[0] == "echo":
            parts.append(_echo_rq(op[1], op[2], fragment))
        elif op[0] == "big":  # over our maximum: aborted unread
            parts.append(struct.pack(">BBI", 0x04, 0, OURS + 4096) + b"\x00" * 64)
        elif op[0] == "release":
            parts.append(struct.pack(">BBI", 0x05, 0, 4) + b"\x00" * 4)
        else:
            parts.append(abort_pdu(0x00, 0x00))
    stream = bytearray(b"".join(parts))
    if cut is not None and stream:
        del stream[cut % len(stream):]
    if damage is not None and stream:
        stream[damage[0] % len(stream)] = damage[1]
    slow = _read_all(bytes(stream), pieces, fast=False, fragment=fragment)
    fast = _read_all(bytes(stream), pieces, fast=True, fragment=fragment)
    timed = _read_all(bytes(stream), pieces, fast=True, fragment=fragment, kernel=False)
    assert fast == slow
    assert timed == slow


def _serve_one(phase: DataPhase) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        msg = phase.recv()
        return (msg.command.get(0x1000), msg.dataset), time.monotonic() - start
    except KitError as exc:
        return exc, time.monotonic() - start


@pytest.mark.parametrize("kernel", [True, False])
def test_a_body_trickled_past_the_pdu_deadline_is_aborted(kernel: bool) -> None:
    message = _store_rq(1, 1, "1.2.3.4", b"\x01" * 3000, 4096)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(ours, fast=True, timeout=5.0, pdu_timeout=0.6, kernel=kernel)
        stop = threading.Event()

        def trickle() -> None:
            theirs.sendall(message[:200])  # the command, the data PDU's header and a little
            for i in range(200, len(message)):
                if stop.wait(0.1):
                    return
                try:
                    theirs.sendall(message[i:i + 1])
                except OSError:
                    return

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            result, took = _serve_one(phase)
        finally:
            stop.set()
            thread.join(5)
        assert isinstance(result, PeerTimeoutError) and "whole within 0.6s" in str(result)
        assert 0.5 < took < 2.0  # the deadline, not the 5 s idle timeout
        theirs.settimeout(2)
        received = b""
        while chunk := theirs.recv(4096):
            received += chunk
        assert received == abort_pdu(0x00)  # told, then cut off


@pytest.mark.parametrize("kernel", [True, False])
def test_a_body_that_arrives_late_but_in_time_is_read_whole(kernel: bool) -> None:
    data = bytes(range(256)) * 12
    message = _store_rq(1, 7, "1.2.3.4", data, 4096)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(ours, fast=True, timeout=5.0, pdu_timeout=3.0, kernel=kernel)

        def slow() -> None:
            theirs.sendall(message[:300])
            for pos in range(300, len(message), 700):  # pieces 0.1 s apart: a wait for each
                time.sleep(0.1)
                theirs.sendall(message[pos:pos + 700])

        thread = threading.Thread(target=slow)
        thread.start()
        result, _ = _serve_one(phase)
        thread.join(5)
        assert result == (b"1.2.3.4\x00", data)


@pytest.mark.parametrize("fast", [True, False])
def test_an_idle_peer_is_an_idle_timeout(fast: bool) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(ours, fast=fast, timeout=0.4, pdu_timeout=0.2)
        result, took = _serve_one(phase)
        assert isinstance(result, PeerTimeoutError) and "no response within 0.4s" in str(result)
        assert 0.3 < took < 2.0
