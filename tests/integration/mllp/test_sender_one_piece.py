"""The sender's one-piece round trip (``send`` for ER7 text on a kept plain-TCP connection) sends the
bytes and matches the control id that the general path (``_send``: ``_prepare``, then the decoder)
does, and returns the same ACK or raises the same error -- on the sample feed, on edge texts and
on generated ones; with audit on it takes the audited general path."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit import audit
from kit.errors import KitError
from kit.examples.hl7 import feed
from kit.hl7.build import build_ack
from kit.hl7.framing import MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPSender, RetryPolicy
from kit.hl7.typed import Ack, AckCode

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("lean_path")]  # C and Python lean paths

WHEN = dt.datetime(2026, 11, 29, 21, 0, tzinfo=dt.UTC)


class Peer:
    """An MLLP peer answering each frame AA (AR, AE, CA for a control id starting R, E, C; fixed
    MSH-7 and MSH-10: the same frame, the same reply), recording the frames it got."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.frames: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = MLLPDecoder()
        with conn:
            while data := conn.recv(65536):
                for item in decoder.feed(data):
                    if isinstance(item, bytes):
                        self.frames.append(item)
                        try:
                            m = parse_message(item)
                            code = {"R": "AR", "E": "AE", "C": "CA"}.get(m.control_id[:1])
                            reply = build_ack(m, AckCode.AA, control_id="A1", timestamp=WHEN)
                            if code is not None:  # a plain NAK, MSH + MSA, as some peers send
                                reply = reply.replace("MSA|AA|", f"MSA|{code}|").replace("\r", "|no\r", 2)
                        except KitError:
                            reply = build_ack(None, AckCode.AR, "unreadable", control_id="A1", timestamp=WHEN)
                        conn.sendall(frame(reply))


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    running = Peer()
    yield running
    running.server.close()


def _outcome(call: object) -> tuple[str, object]:
    try:
        ack = call()  # type: ignore[operator]
    except KitError as exc:
        return type(exc).__name__, str(exc).split(" (mllp://")[0]
    assert isinstance(ack, Ack)
    return "ack", (dataclasses.astuple(ack), ack.header)


def assert_same(peer: Peer, text: str) -> None:
    """``send`` (one piece where it applies) and ``_send`` (the general path) on one connection each."""
    once = RetryPolicy(max_attempts=1)
    with MLLPSender("127.0.0.1", peer.port, timeout=5, retry=once) as lean, \
            MLLPSender("127.0.0.1", peer.port, timeout=5, retry=once) as general:
        lean.connect()
        general.connect()
        before = len(peer.frames)
        fast = _outcome(lambda: lean.send(text))
        sent = peer.frames[before:]
        slow = _outcome(lambda: general._send(text))
        assert fast == slow
        assert sent == peer.frames[before + len(sent):], "other bytes on the wire"


FEED = list(feed())
EDGES = [
    FEED[0].replace("\r", "\n"), FEED[0].replace("\r", "\n", 1), FEED[0].rstrip("\r"), FEED[0] + "\r",
    FEED[0].replace("\r", "\r\n"),
    "\x0b" + FEED[0] + "\x1c", FEED[0].replace("PID", "P\x0bID", 1), FEED[0].replace("PID", "P\x1cID", 1),
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|ID9\rPID|1\r",        # MSH-10 the last field of its line
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|I^D|P|2.5\r",          # a component in MSH-10
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|I~D|P|2.5\r",          # a repetition
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|I\\T\\D|P|2.5\r",      # an escape
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|é1|P|2.5\r",           # not ASCII
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|a\x7fb|P|2.5\r",       # DEL
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01||P|2.5\r",             # an empty MSH-10
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|\ud800|P|2.5\r",       # a lone surrogate
    "MSH#^~\\&#A#B#C#D#20260101##ADT^A01#X1#P#2.5\r",          # other delimiters
    "MSH|^~\\&|A\rPID|1\r", "PID|1\r", "",
    "MSH|^~\\&|A\r|||||||X1|||\r",                             # MSH-10's place on another line
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|R1|P|2.5\r",           # answered AR
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|E1|P|2.5\r",           # answered AE
    "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|C1|P|2.5\r",           # answered CA
]


@pytest.mark.parametrize("text", FEED[:20] + EDGES, ids=range(len(FEED[:20]) + len(EDGES)))
def test_one_piece_and_general_path_send_the_same_and_read_the_same(peer: Peer, text: str) -> None:
    assert_same(peer, text)


def test_the_sample_feed_takes_the_one_piece_path(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    general = MLLPSender._send

    def counted(self: MLLPSender, message: object) -> Ack:
        calls.append(message)
        return general(self, message)  # type: ignore[arg-type]

    monkeypatch.setattr(MLLPSender, "_send", counted)
    with MLLPSender("127.0.0.1", peer.port, timeout=5) as sender:
        sender.send(FEED[0])  # connects: the general path
        for text in FEED[1:]:
            assert sender.send(text).control_id == parse_message(text).control_id
    assert calls == [FEED[0]]
    # with an audit sink registered every send is the audited general path, and is recorded
    events: list[object] = []
    audit.add_sink(events.extend)
    try:
        with MLLPSender("127.0.0.1", peer.port, timeout=5) as sender:
            for text in FEED[:5]:
                sender.send(text)
    finally:
        audit.remove_sink(events.extend)
    assert calls[1:] == FEED[:5]
    assert [getattr(e, "action", None) for e in events] == ["hl7.send"] * 5


_chars = st.sampled_from(list("AZaz09 .-_/:") + ["^", "~", "\\", "&", "\r", "\n", "\x0b", "\x1c", "é", "\x7f",
                                                  "|"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(_chars, max_size=5), min_size=0, max_size=12), st.text(_chars, max_size=20),
       st.sampled_from(["\r", "", "\n", "\r\r"]))
def test_generated_texts_go_alike_both_ways(peer: Peer, fields: list[str], rest: str, end: str) -> None:
    assert_same(peer, "MSH|^~\\&|" + "|".join(fields) + "\r" + rest + end)


def test_a_reply_without_msa_is_no_ack_for_an_id_a_plain_ack_cannot_hold() -> None:
    """A peer that answers an MSH and no MSA, its last byte the one a non-ASCII control id's expected
    ending is made of: the one-piece read once took that for an AA. It is no ACK: the send times out."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x0bMSH|^~\\&|A|B\x00")
            conn.recv(65536)  # until the sender gives up

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    text = "MSH|^~\\&|A|F|B|G|20260101||ADT^A01|\u00e91|P|2.5.1\rEVN|A01|20260101\r"
    try:
        with MLLPSender("127.0.0.1", server.getsockname()[1], timeout=1.0,
                        retry=RetryPolicy(max_attempts=1)) as sender:
            sender.connect()
            with pytest.raises(KitError, match="no ACK|timed out|within"):
                sender.send(text)
    finally:
        server.close()
        thread.join(5)
