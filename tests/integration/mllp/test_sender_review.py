"""Review of the sender's one-piece round trip against the general path (``_send``): reply shapes a
hostile or odd peer sends (split, late, long, prefixed, another id's, with MSA-3) give the same Ack
or the same error both ways, and a timeout changed between two sends is honoured by both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kit.errors import KitError, NakError, PeerTimeoutError, PeerUnreachableError
from kit.hl7.build import build_ack
from kit.hl7.framing import MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.typed import Ack, AckCode
from tests.conftest import syn_dropping_port
from tests.integration.mllp.conftest import numbered

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("lean_path")]  # C and Python lean paths

ONCE = RetryPolicy(max_attempts=1)
WHEN = dt.datetime(2026, 11, 30, 1, 2, 3, tzinfo=dt.UTC)


@contextmanager
def scripted(answer: Callable[[socket.socket, bytes, int], None]) -> Iterator[int]:
    """A TCP peer: ``answer(conn, content, n)`` for the n-th frame received on any connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    done = threading.Event()
    count = [0]

    def serve(conn: socket.socket) -> None:
        decoder = MLLPDecoder(1 << 26)
        with conn:
            conn.settimeout(0.2)
            while not done.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for item in decoder.feed(data):
                    if isinstance(item, bytes):
                        count[0] += 1
                        try:
                            answer(conn, item, count[0])
                        except OSError:
                            return

    def run() -> None:
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        server.close()


def _ack(content: bytes, text: str | None = None, code: AckCode = AckCode.AA) -> bytes:
    return frame(build_ack(parse_message(content), code, text, control_id="K1", timestamp=WHEN))


def _aa_as_sent_to(content: bytes, control_id: str) -> bytes:
    """A plain AA naming ``control_id`` (not necessarily the message's)."""
    return frame(f"MSH|^~\\&|K|K|A|F|20260101||ACK^A01^ACK|K1|P|2.5.1\rMSA|AA|{control_id}\r")


def _piecewise(*pieces: bytes, pause: float = 0.05) -> Callable[[socket.socket], None]:
    def send(conn: socket.socket) -> None:
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(pause)
    return send


def _reply(shape: str, content: bytes, n: int) -> Callable[[socket.socket], None]:
    mine = _ack(content)
    control_id = parse_message(content).control_id
    if shape == "split at every 7 bytes":
        return _piecewise(*(mine[i:i + 7] for i in range(0, len(mine), 7)), pause=0.01)
    if shape == "split before the last byte":
        return _piecewise(mine[:-1], mine[-1:])
    if shape == "split before the end block":
        return _piecewise(mine[:-2], mine[-2:])
    if shape == "another id first, in one receive":
        return _piecewise(_aa_as_sent_to(content, "OLD1") + mine)
    if shape == "another id first, then mine later":
        return _piecewise(_aa_as_sent_to(content, "OLD1"), mine, pause=0.1)
    if shape == "another id only":  # then nothing: a timeout
        return _piecewise(_aa_as_sent_to(content, "OLD1"))
    if shape == "bytes before the start block":
        return _piecewise(b"\r\n junk" + mine)
    if shape == "AA with MSA-3":
        return _piecewise(_ack(content, "stored as #12"))
    if shape == "AA with an MSA-3 holding MSA|AA|":
        return _piecewise(_ack(content, f"MSA|AA|{control_id}"))
    if shape == "a reply longer than 4 KiB":  # one plain AA whose MSA-3 is long
        return _piecewise(frame(f"MSH|^~\\&|K|K|A|F|20260101||ACK|K1|P|2.5.1\rMSA|AA|{control_id}|"
                                + "t" * 6000 + "\r"))
    if shape == "a reply longer than 4 KiB, ending as a plain AA":  # a long Z segment first
        return _piecewise(frame("MSH|^~\\&|K|K|A|F|20260101||ACK|K1|P|2.5.1\rZZZ|" + "z" * 6000
                                + f"\rMSA|AA|{control_id}\r"))
    if shape == "an AA in 4 KiB, then a stray frame":
        base = "MSH|^~\\&|K|K|A|F|20260101||ACK|K1|P|{}\rMSA|AA|" + control_id + "\r"
        head = frame(base.format("9" * (4096 - len(frame(base.format(""))))))
        assert len(head) == 4096
        return _piecewise(head + _aa_as_sent_to(content, "STRAY"))
    if shape == "AE then nothing":
        return _piecewise(_ack(content, "busy", AckCode.AE))
    if shape == "AR":
        return _piecewise(_ack(content, "no", AckCode.AR))
    if shape == "an MSH and no MSA":
        return _piecewise(frame("MSH|^~\\&|K|K|A|F|20260101||ACK|K1|P|2.5.1\r"))
    if shape == "the tail without an MSH":
        return _piecewise(b"\x0b\rMSA|AA|" + control_id.encode() + b"\r\x1c\r")
    if shape == "two frames: AE then AA of mine":
        return _piecewise(_ack(content, "x", AckCode.AE) + mine)
    if shape == "close after half the ACK":
        def half(conn: socket.socket) -> None:
            conn.sendall(mine[:len(mine) // 2])
            conn.shutdown(socket.SHUT_WR)
        return half
    raise AssertionError(shape)


SHAPES = ["split at every 7 bytes", "split before the last byte", "split before the end block",
          "another id first, in one receive", "another id first, then mine later", "another id only",
          "bytes before the start block", "AA with MSA-3", "AA with an MSA-3 holding MSA|AA|",
          "a reply longer than 4 KiB", "a reply longer than 4 KiB, ending as a plain AA",
          "an AA in 4 KiB, then a stray frame", "AE then nothing", "AR", "an MSH and no MSA",
          "the tail without an MSH", "two frames: AE then AA of mine", "close after half the ACK"]


def _outcome(call: Callable[[], Ack]) -> tuple[str, object]:
    try:
        ack = call()
    except KitError as exc:
        return type(exc).__name__, str(exc).split(" (mllp://")[0]
    return "ack", (dataclasses.astuple(ack), ack.header)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_reply_shape_reads_alike_both_ways(shape: str) -> None:
    """The first message takes the general path (it connects), the second the one-piece one on the
    lean sender and ``_send`` on the other: same outcome, same bytes sent, the connection usable."""
    frames: list[bytes] = []

    def answer(conn: socket.socket, content: bytes, n: int) -> None:
        frames.append(content)
        if parse_message(content).control_id.startswith("W"):
            conn.sendall(_ack(content))  # the warm-up message: a plain AA
        else:
            _reply(shape, content, n)(conn)

    with scripted(answer) as port:
        outcomes = []
        for lean in (True, False):
            with MLLPSender("127.0.0.1", port, timeout=1.0, retry=ONCE) as sender:
                sender.send(numbered(1, "W"))
                before = len(frames)
                start = time.monotonic()
                way = sender.send if lean else sender._send
                outcomes.append(_outcome(lambda way=way: way(numbered(2))))  # type: ignore[misc]
                assert time.monotonic() - start < 2.5  # within the timeout (1 s), with room
                assert frames[before:] == [numbered(2).encode()]
        assert outcomes[0] == outcomes[1]


def test_a_timeout_changed_between_sends_bounds_the_next_one_round_trip() -> None:
    """``sender.timeout`` set after a round trip (as the hub does with its clients' timeouts): the
    one-piece path once kept the socket's old kernel timeout and waited it out (here 20 s)."""
    def answer(conn: socket.socket, content: bytes, n: int) -> None:
        if n <= 2:
            conn.sendall(_ack(content))  # the third message is never answered

    with scripted(answer) as port, MLLPSender("127.0.0.1", port, timeout=20.0, retry=ONCE) as sender:
        sender.connect()
        assert sender.send(numbered(1)).code is AckCode.AA
        assert sender.send(numbered(2)).code is AckCode.AA
        sender.timeout = 0.5
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError):
            sender.send(numbered(3))
        assert time.monotonic() - start < 3.0


def test_a_timeout_lowered_later_bounds_the_connect_too() -> None:
    """A peer whose accept queue is full drops the SYN: the connect waits. The timeout lowered
    after construction bounds it, as one given at construction does (it waited ``connect_timeout``,
    10 s, before)."""
    with syn_dropping_port() as port:
        for late in (False, True):
            sender = MLLPSender("127.0.0.1", port, timeout=30.0 if late else 0.5, retry=ONCE)
            if late:
                sender.timeout = 0.5
            start = time.monotonic()
            with pytest.raises(PeerUnreachableError, match="connect timed out after 0.5s"):
                sender.connect()
            assert time.monotonic() - start < 3.0


def test_a_timeout_set_to_a_value_no_socket_can_hold_is_refused() -> None:
    with MLLPSender("127.0.0.1", 9, timeout=1.0) as sender:
        for bad in (0.0, -1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError):
                sender.timeout = bad
        assert sender.timeout == 1.0


def test_the_kit_listeners_nak_of_a_control_id_over_199_characters_is_read_as_final(tmp_path: Path) -> None:
    """The listener refuses MSH-10 longer than 199 characters (AR) and echoes at most 199 of them
    in MSA-2 (its bound on every echoed value): the sender once skipped that AR as another
    message's, waited out its timeout and resent, both ways, ending in a timeout, not the AR."""
    text = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|" + "I" * 250 + "|P|2.5.1\rEVN|A01\r"
    retry = RetryPolicy(max_attempts=3, backoff=0.01)
    with MLLPListener(tmp_path / "mllp.db") as listener:
        for lean in (True, False):
            with MLLPSender("127.0.0.1", listener.port, timeout=3.0, retry=retry) as sender:
                sender.send(numbered(1, "W" if lean else "V"))  # connected: the next send may be lean
                start = time.monotonic()
                with pytest.raises(NakError) as err:
                    (sender.send if lean else sender._send)(text)
                assert err.value.ack_code == "AR" and sender.last_attempts == 1
                assert time.monotonic() - start < 2.0
        # an ACK naming only the first 199 characters of *another* long id is still skipped
        with MLLPSender("127.0.0.1", listener.port, timeout=0.5, retry=ONCE) as sender:
            sender.connect()

            def nak(msa2: str) -> bytes:
                return f"MSH|^~\\&|K|K\rMSA|AR|{msa2}\r".encode()

            assert sender._ack_of(nak("I" * 199), "I" * 199 + "J") is not None  # its own, cut
            assert sender._ack_of(nak("I" * 199), "J" + "I" * 249) is None
            assert sender._ack_of(nak("I" * 198), "I" * 250) is None
            assert sender._ack_of(nak("I" * 199), "I" * 199) is not None
