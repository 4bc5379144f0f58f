"""The sender's lean exchange (one send, one receive, the plain-ACK fast path) hands every other
reply to the general path under the same deadline, and matches MSA-2 against MSH-10 as the
listener reads it."""

from __future__ import annotations

import socket

import pytest

from kit.errors import NakError
from kit.hl7.build import AckError, build_ack
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.typed import Ack, AckCode
from tests.integration.mllp.conftest import numbered
from tests.integration.mllp.test_sender import _read_message, peer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("lean_path")]  # C and Python lean paths

ONCE = RetryPolicy(max_attempts=1)


def test_a_repeated_control_id_is_matched_as_the_listener_reads_it(listener: MLLPListener) -> None:
    """MSH-10 ``R1~R2``: the listener's full parse (and its MSA-2) says ``R1``. Before, the sender
    read ``R1~R2`` from the raw line, skipped its own ACK as stale and timed out."""
    head, _, rest = numbered(1).partition("\r")
    fields = head.split("|")
    fields[9] = "R1~R2"
    with MLLPSender("127.0.0.1", listener.port, timeout=3, retry=ONCE) as sender:
        ack = sender.send("|".join(fields) + "\r" + rest)
        assert ack.code is AckCode.AA and ack.control_id == "R1"
        assert sender.send(numbered(2)).control_id == "T000002"  # the connection goes on


def test_lean_path_against_the_listener_returns_the_full_parse_ack(listener: MLLPListener) -> None:
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
        for i in range(1, 30):
            ack = sender.send(numbered(i))
            assert isinstance(ack, Ack) and ack.control_id == f"T{i:06d}" and ack.is_positive
            assert ack.header.timestamp is not None and ack.header.sending_application == "KIT"
    assert listener.counts["stored"] == 29


@pytest.mark.parametrize("reply", ["two frames", "garbage first", "with ERR", "no MSA-2", "in two reads"])
def test_every_other_reply_shape_goes_to_the_general_path(reply: str) -> None:
    def behave(conn: socket.socket, n: int) -> None:
        while (data := _read_message(conn)):
            m = parse_message(data)
            mine = frame(build_ack(m, AckCode.AA, "mine"))
            if reply == "two frames":
                conn.sendall(frame(build_ack(parse_message(numbered(77)), AckCode.AA)) + mine)
            elif reply == "garbage first":
                conn.sendall(b"junk" + mine)
            elif reply == "with ERR":  # AA with an ERR segment (a warning): not the plain shape
                conn.sendall(frame(build_ack(m, AckCode.AA, "mine", AckError(0, "warning"))))
            elif reply == "no MSA-2":
                conn.sendall(frame(f"MSH|^~\\&|K|K|||20260301||ACK|X{n}|P|2.5.1\rMSA|AA||mine\r"))
            else:
                conn.sendall(mine[:20])
                conn.sendall(mine[20:])

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=ONCE) as sender:
        for i in (1, 2, 3):
            ack = sender.send(numbered(i))
            assert ack.code is AckCode.AA and ack.text == "mine"
            assert ack.control_id in (f"T{i:06d}", "")




def test_a_nak_on_the_lean_path_is_final_for_ar_and_resent_for_ae() -> None:
    sent: list[str] = []

    def behave(conn: socket.socket, n: int) -> None:
        while (data := _read_message(conn)):
            m = parse_message(data)
            sent.append(m.control_id)
            code = AckCode.AR if m.control_id == "T000001" else (AckCode.AE if len(sent) < 3 else AckCode.AA)
            conn.sendall(frame(build_ack(m, code, "why")))

    retry = RetryPolicy(max_attempts=3, backoff=0.01)
    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=retry) as sender:
        sender.connect()
        with pytest.raises(NakError) as err:
            sender.send(numbered(1))
        assert err.value.ack_code == "AR" and sender.last_attempts == 1
        assert sender.send(numbered(2)).code is AckCode.AA  # AE, then AA on the second attempt
        assert sender.last_attempts == 2
    assert sent == ["T000001", "T000002", "T000002"]
