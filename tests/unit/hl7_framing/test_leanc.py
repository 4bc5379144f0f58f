"""``kit.hl7._leanc`` (the sender's lean round trip in C) equals the pure-Python lean path: the same
texts take it, the same replies are a plain AA, the same outcomes come back over a real socket
(errors, partial sends, signals), nothing leaks -- and under CI=true it is built.

The sender's own tests run on both paths (``lean_path`` in tests/integration/mllp/conftest.py)."""

from __future__ import annotations

import errno
import signal
import socket
import struct
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kit.hl7 import sender
from kit.hl7.ack_fast import _HEAD, _LazyAck, aa_read, aa_tail
from kit.hl7.build import build_ack
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.typed import Ack, AckCode
from tests.conftest import IN_CI
from tests.unit.hl7_framing.test_sender_fast import _assert_same_ack

leanc = sender._leanc
needs_c = pytest.mark.skipif(leanc is None, reason="kit.hl7._leanc is not built")

MESSAGE = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|C1|P|2.5.1\rPID|1||123\r"


def test_the_c_round_trip_is_built() -> None:
    if leanc is None:
        message = "kit.hl7._leanc is not built (no C compiler at install time)"
        if IN_CI:
            pytest.fail(message + " and CI=true: .ci/run must build it")
        pytest.skip(message)


def python_aa_frame(data: bytes, control_id: str) -> bool:
    """aa_read's own test (before it hands over to ack_frame)."""
    tail = aa_tail(control_id)
    return (tail[:1] == b"\r" and data.endswith(tail)
            and _HEAD.fullmatch(data, 0, len(data) - len(tail)) is not None)


# -- the two checks, on generated input --------------------------------------------------------
_FIELD = st.lists(st.sampled_from(["A", "b", "1", " ", "^", "~", "\\", "&", "|", "\r", "é", "\x7f", "\x7e",
                                   "\x1f", "}", "{", "ACK", "\x0b", "\x1c", "\n"]), max_size=6).map("".join)
_ID = st.sampled_from(["C1", "", "X9", "A B", "}{", "é", "A~B", "A\\B", "a|b", "\x7f", "ACK"]) | _FIELD


_PLAIN_FIELD = st.sampled_from(["A", "KIT", "", "20260301120000", "ACK", "ACK^A01^ACK", "ADT^A01", "^X",
                                "ACK^", "ACKX", "AC", "XACK", "ack", "P", "2.5.1", "a b", "}{"])


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, str]:
    """Mostly plain AA frames (MSH-3... of any length, MSH-9 of every shape), some odd bytes in."""
    control_id = draw(_ID)
    odd = draw(st.integers(0, 3)) == 0  # a quarter with odd bytes in MSH, and odd ends
    fields = draw(st.lists(_PLAIN_FIELD | _FIELD if odd else _PLAIN_FIELD, max_size=12))
    msa_id = draw(st.sampled_from([control_id, "C1", control_id + "x"])) if odd else control_id
    code = draw(st.sampled_from(["AA", "AE", "CA"])) if odd else "AA"
    sep = draw(st.sampled_from(["|", "|", "^", ""])) if odd else "|"
    end = draw(st.sampled_from(["\r", "", "|t\r", "\rERR|x\r"])) if odd else "\r"
    text = "MSH|^~\\&|" + "|".join(fields) + "\rMSA|" + code + sep + msa_id + end
    data = text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
    if odd:
        data = draw(st.sampled_from([b"\x0b", b"", b"x\x0b"])) + data \
            + draw(st.sampled_from([b"\x1c\r", b"\x1c", b"\x1c\r\x0b", b"\x1c\n", b"\x1c\x1c", b"\r\r"]))
    else:
        data = b"\x0b" + data + b"\x1c\r"
    return data, control_id


@needs_c
@settings(max_examples=1500, deadline=None)
@given(replies())
def test_the_plain_aa_test_is_aa_reads(reply: tuple[bytes, str]) -> None:
    data, control_id = reply
    assert leanc is not None
    expected = python_aa_frame(data, control_id)
    event(f"plain AA: {expected}")
    assert leanc.aa_frame(data, control_id.encode("utf-8")) == expected


def test_every_message_type_and_header_length_is_judged_as_by_aa_read() -> None:
    taken = 0
    for kind in ["ACK", "ACK^A01^ACK", "", "^A01", "ACK^", "ADT^A01", "ACKX", "ack", "ACK~X", "AC", "XACK",
                 "ACK&A", "A\\CK", "AC^K", "ACX", "ABK", "ACK ", " ACK"]:
        for length in range(12):
            for odd, at in (("", 0), ("\\", 4), ("~", 4), ("\x7f", 4), ("é", 4), ("~", 7), ("\\", 9),
                            ("|", 2)):
                msh = ["A", "B", "C", "D", "20260101", "", kind, "X1", "P", "2.5", "x"]
                msh[min(at, 10)] += odd
                data = frame("MSH|^~\\&|" + "|".join(msh[:length]) + "\rMSA|AA|C1\r")
                expected = python_aa_frame(data, "C1")
                taken += expected
                if leanc is not None:
                    assert leanc.aa_frame(data, b"C1") == expected, data
    assert taken > 50


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), _ID)
def test_any_bytes_before_a_tail_are_judged_as_by_aa_read(head: bytes, control_id: str) -> None:
    assert leanc is not None
    for data in (head, b"\x0bMSH|^~\\&|" + head + aa_tail(control_id), head + aa_tail(control_id)):
        assert leanc.aa_frame(data, control_id.encode("utf-8")) == python_aa_frame(data, control_id)


def test_the_listeners_aa_is_a_plain_aa_to_both() -> None:
    m = parse_message(MESSAGE)
    data = frame(build_ack(m, AckCode.AA))
    assert python_aa_frame(data, "C1")
    if leanc is not None:
        assert leanc.aa_frame(data, b"C1")


@st.composite
def texts(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["MSH|^~\\&|", "MSH|^~\\&|", "MSH|^~\\#|", "MSH|", "PID|"]))
    fields = draw(st.lists(_FIELD, max_size=12))
    body = draw(st.lists(_FIELD, max_size=3))
    return head + "|".join(fields) + "\r" + "\r".join(body) + draw(st.sampled_from(["\r", "", "\n", "\r\n"]))


@needs_c
@settings(max_examples=1500, deadline=None)
@given(texts())
def test_the_same_texts_take_the_lean_path(text: str) -> None:
    assert leanc is not None
    expected = sender._lean_id(text)
    assert leanc.lean_text(text.encode("utf-8")) == (None if expected is None else expected.encode("utf-8"))


# -- the round trip over a real socket ---------------------------------------------------------
@contextmanager
def pair(answer: Callable[[socket.socket], None] | None, timeout: float = 5.0) -> Iterator[socket.socket]:
    """A connected pair: ours as the sender sets it (blocking, kernel timeouts); ``answer(peer)``
    runs in a thread (None: the peer does nothing)."""
    ours, theirs = socket.socketpair()
    sec, usec = divmod(int(timeout * 1e6), 1_000_000)
    value = struct.pack("@ll", sec, usec)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    thread = threading.Thread(target=answer, args=(theirs,), daemon=True) if answer else None
    if thread:
        thread.start()
    try:
        yield ours
    finally:
        ours.close()
        if thread:
            thread.join(10)
        theirs.close()


def read_frame(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def replying(*replies: bytes) -> Callable[[socket.socket], None]:
    def answer(peer: socket.socket) -> None:
        for reply in replies:
            read_frame(peer)
            peer.sendall(reply)
    return answer


AA = frame(build_ack(parse_message(MESSAGE), AckCode.AA))


@needs_c
def test_a_plain_aa_is_the_ack_aa_read_makes() -> None:
    assert leanc is not None
    got: list[bytes] = []

    def answer(peer: socket.socket) -> None:
        got.append(read_frame(peer))
        peer.sendall(AA)

    with pair(answer) as ours:
        ack = leanc.round_trip(ours.fileno(), MESSAGE)
    assert got == [frame(MESSAGE)]  # VT + the text + FS CR, unchanged
    assert type(ack) is _LazyAck and isinstance(ack, Ack)
    expected = aa_read(AA, aa_tail("C1"), "C1")
    assert expected is not None
    _assert_same_ack(ack, expected)
    assert ack.header.sending_application == expected.header.sending_application


@needs_c
@pytest.mark.parametrize("reply", [frame(build_ack(parse_message(MESSAGE), AckCode.AE, "bad")),
                                   frame(build_ack(parse_message(MESSAGE), AckCode.AA, "with text")),
                                   AA[:-5], b"junk" + AA, AA + AA, b""],
                         ids=["ae", "aa with text", "cut", "junk first", "two frames", "closed"])
def test_any_other_reply_is_handed_back_whole(reply: bytes) -> None:
    assert leanc is not None

    def answer(peer: socket.socket) -> None:
        read_frame(peer)
        if reply:
            peer.sendall(reply)
        time.sleep(0.2)  # all of it in one receive (socketpair: it is there at once)
        peer.shutdown(socket.SHUT_WR)

    with pair(answer) as ours:
        before = time.monotonic()
        done = leanc.round_trip(ours.fileno(), MESSAGE)
    assert type(done) is tuple
    status, value, sent_at, data = done
    assert (status, value, data) == (4, 0, reply)
    assert before <= sent_at <= time.monotonic()


@needs_c
def test_a_receive_timeout_is_eagain() -> None:
    assert leanc is not None
    with pair(None, timeout=0.2) as ours:
        start = time.monotonic()
        done = leanc.round_trip(ours.fileno(), MESSAGE)
    assert type(done) is tuple and done[:2] == (3, errno.EAGAIN) and done[3] is None
    assert 0.15 < time.monotonic() - start < 2
    assert isinstance(OSError(errno.EAGAIN, "x"), BlockingIOError)  # what the sender makes of it


@needs_c
def test_a_closed_peer_is_a_send_error() -> None:
    assert leanc is not None
    ours, theirs = socket.socketpair()
    theirs.close()
    with ours:
        done = leanc.round_trip(ours.fileno(), MESSAGE)
    assert type(done) is tuple and done[0] == 1 and done[1] in (errno.EPIPE, errno.ECONNRESET)
    bad = leanc.round_trip(2 ** 20, MESSAGE)  # no such descriptor
    assert bad == (1, errno.EBADF, pytest.approx(time.monotonic(), abs=5), None)


@needs_c
def test_a_peer_that_does_not_read_gets_part_of_the_message() -> None:
    assert leanc is not None
    big = MESSAGE + "OBX|1|TX|||" + "x" * (8 << 20) + "\r"
    with pair(None, timeout=0.3) as ours:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        done = leanc.round_trip(ours.fileno(), big)
    assert type(done) is tuple and done[0] == 2 and 0 < done[1] < len(big) + 3


@needs_c
def test_texts_off_the_lean_path_send_nothing() -> None:
    assert leanc is not None
    with pair(None, timeout=0.2) as ours:
        for text in ("PID|1\r", MESSAGE.replace("C1", "C^1"), MESSAGE[:-1], MESSAGE + "\n",
                     "MSH|^~\\&|\ud800|\r", MESSAGE.replace("|P|", "|\x0b|")):
            assert leanc.round_trip(ours.fileno(), text) is None
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(1)  # nothing was sent


@needs_c
def test_bad_arguments_are_type_and_value_errors() -> None:
    assert leanc is not None
    with pytest.raises(TypeError):
        leanc.round_trip("3", MESSAGE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        leanc.round_trip(3, MESSAGE.encode())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        leanc.round_trip(-1, MESSAGE)
    with pytest.raises(TypeError):
        leanc.round_trip(3)  # type: ignore[call-arg]


class Interrupted(Exception):
    pass


@needs_c
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_signal_handler_that_raises_ends_the_wait_as_with_socket_recv() -> None:
    assert leanc is not None

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    main = threading.main_thread().ident
    assert main is not None

    def answer(peer: socket.socket) -> None:
        read_frame(peer)
        time.sleep(0.2)
        signal.pthread_kill(main, signal.SIGUSR1)  # to the waiting thread itself

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with pair(answer, timeout=10) as ours:
            start = time.monotonic()
            with pytest.raises(Interrupted):
                leanc.round_trip(ours.fileno(), MESSAGE)
            assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGUSR1, old)


@needs_c
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_signal_handler_that_returns_lets_the_wait_go_on() -> None:
    assert leanc is not None
    seen: list[int] = []
    main = threading.main_thread().ident
    assert main is not None

    def answer(peer: socket.socket) -> None:
        read_frame(peer)
        time.sleep(0.1)
        signal.pthread_kill(main, signal.SIGUSR1)
        time.sleep(0.2)
        peer.sendall(AA)

    old = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with pair(answer, timeout=10) as ours:
            ack = leanc.round_trip(ours.fileno(), MESSAGE)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert seen == [signal.SIGUSR1]
    assert isinstance(ack, Ack) and ack.code is AckCode.AA and ack.control_id == "C1"


@needs_c
@pytest.mark.parametrize("reply", [AA, b"junk" + AA], ids=["aa", "other"])
def test_nothing_leaks(reply: bytes) -> None:
    assert leanc is not None
    rounds = 3000
    text = MESSAGE.replace("PID|1", "PID|é")  # not ASCII: the encoded copy must be freed too

    def answer(peer: socket.socket) -> None:
        for _ in range(rounds + 200):
            if not read_frame(peer):
                return
            peer.sendall(reply)

    with pair(answer) as ours:
        fd = ours.fileno()
        for _ in range(200):
            leanc.round_trip(fd, text)
        refs = sys.getrefcount(text), sys.getrefcount(AckCode.AA)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(rounds):
                leanc.round_trip(fd, text)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert (sys.getrefcount(text), sys.getrefcount(AckCode.AA)) == refs
    assert grown < 32 * 1024, f"{grown} bytes kept after {rounds} round trips"

