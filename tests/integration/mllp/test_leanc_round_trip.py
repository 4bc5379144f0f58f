"""``kit.hl7._leanc``'s round trip over real sockets (socketpairs, a peer thread) gives what the
pure-Python lean path gives: the Ack of a plain AA, every other reply handed back whole, send and
receive errors, partial sends, signals as ``socket.recv`` takes them, and nothing leaked."""

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

from kit.hl7.ack_fast import _LazyAck, aa_read, aa_tail
from kit.hl7.build import build_ack
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.typed import Ack, AckCode
from tests.unit.hl7_framing.test_leanc import MESSAGE, leanc, needs_c
from tests.unit.hl7_framing.test_sender_fast import _assert_same_ack

pytestmark = pytest.mark.timeout(60)


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

