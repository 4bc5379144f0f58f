"""The sender's lean path (one system call per send and per receive, kernel timeouts) keeps its
limits: a whole-send deadline against a peer that reads slowly, one deadline for an ACK that comes in
pieces, and only typed errors for a text no wire can carry."""

from __future__ import annotations

import socket
import time

import pytest

from kit.errors import HL7ParseError, PeerTimeoutError
from kit.hl7.build import build_ack
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.typed import AckCode
from tests.integration.mllp.conftest import numbered
from tests.integration.mllp.test_sender import _read_message, peer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("lean_path")]  # C and Python lean paths

ONCE = RetryPolicy(max_attempts=1)
SURROGATE = "MSH|^~\\&|ADT|H|KIT|R|20260301||ADT^A01|SURR1|P|2.5.1\rPID|1||M1||DOE\ud800\r"


def test_a_text_with_lone_surrogates_is_a_parse_error_not_a_unicode_error(listener: MLLPListener) -> None:
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
        with pytest.raises(HL7ParseError, match="not valid Unicode"):
            sender.send(SURROGATE)
        rows = sender.send_many([SURROGATE, numbered(1)])  # recorded, the next one still sent
        assert rows["error"][0] is not None and "Unicode" in rows["error"][0]
        assert rows["ack_code"].to_list() == [None, "AA"]


def test_a_peer_that_reads_slowly_cannot_hold_the_sender_past_its_timeout() -> None:
    """Each read frees some room, so each single send makes progress: only a deadline for the
    whole message bounds it (32 MiB at 64 KiB per 0.2 s would take almost two minutes)."""

    def behave(conn: socket.socket, n: int) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if not conn.recv(65536):
                    return
            except OSError:
                return
            time.sleep(0.2)

    big = numbered(1).rstrip("\r") + "\rOBX|1|TX|||" + "x" * (32 << 20) + "\r"
    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=1.0, retry=ONCE) as sender:
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError, match="send timed out"):
            sender.send(big)
        assert time.monotonic() - start < 3.0


def test_an_ack_in_pieces_is_read_within_one_deadline() -> None:
    def behave(conn: socket.socket, n: int) -> None:
        ack = frame(build_ack(parse_message(_read_message(conn)), AckCode.AA))
        for i in range(0, len(ack), 40):  # a piece every 0.05 s
            conn.sendall(ack[i:i + 40])
            time.sleep(0.05)
        conn.recv(10)

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=ONCE) as sender:
        assert sender.send(numbered(1)).control_id == "T000001"


def test_an_ack_that_stops_halfway_times_out_once_not_per_piece() -> None:
    def behave(conn: socket.socket, n: int) -> None:
        ack = frame(build_ack(parse_message(_read_message(conn)), AckCode.AA))
        for i in range(0, len(ack) // 2, 10):  # trickle half of it, a piece every 0.1 s, then stop
            conn.sendall(ack[i:i + 10])
            time.sleep(0.1)
        conn.recv(10)

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=0.6, retry=ONCE) as sender:
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError, match="no ACK"):
            sender.send(numbered(1))
        assert time.monotonic() - start < 1.2


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 0.0, -1.0])
def test_a_timeout_no_socket_can_hold_is_refused_up_front(timeout: float) -> None:
    """An infinite or NaN timeout used to pass and then fail inside send() with OverflowError or
    ValueError from the socket layer, outside the KitError tree."""
    with pytest.raises(ValueError, match="positive and finite"):
        MLLPSender("127.0.0.1", 1, timeout=timeout)
    with pytest.raises(ValueError, match="positive and finite"):
        MLLPSender("127.0.0.1", 1, connect_timeout=timeout)
