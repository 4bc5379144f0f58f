"""The kit's MLLP sender against faults a real peer rarely produces on demand (tiny socket peers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from kit.errors import PeerDisconnectedError, PeerTimeoutError, PeerUnreachableError
from kit.hl7.build import build_ack
from kit.hl7.framing import MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPSender, RetryPolicy
from kit.hl7.typed import AckCode
from tests.conftest import free_port
from tests.integration.mllp.conftest import numbered

pytestmark = pytest.mark.usefixtures("lean_path")  # C and Python lean paths

FAST = RetryPolicy(max_attempts=2, backoff=0.01)


@contextmanager
def peer(behave: Callable[[socket.socket, int], None]) -> Iterator[int]:
    """A one-thread TCP peer; ``behave(conn, n)`` handles the n-th connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    port = server.getsockname()[1]
    done = threading.Event()

    def run() -> None:
        n = 0
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            n += 1
            with conn:
                behave(conn, n)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        done.set()
        thread.join(5)
        server.close()


def _read_message(conn: socket.socket) -> bytes:
    decoder = MLLPDecoder()
    while True:
        data = conn.recv(65536)
        if not data:
            return b""
        for item in decoder.feed(data):
            if isinstance(item, bytes):
                return item


def test_unreachable() -> None:
    # a refused connection is not resent under max_attempts: only reconnected within unreachable_wait
    start = time.monotonic()
    with MLLPSender("127.0.0.1", free_port(), timeout=1, retry=FAST) as sender, \
            pytest.raises(PeerUnreachableError):
        sender.send(numbered(1))
    assert sender.last_attempts == 1
    assert time.monotonic() - start < 2.0


def test_refused_connection_fails_fast_with_defaults() -> None:
    """Issue 8.13: `kit hl7 send` of a feed to a dead port took 95 s (3 attempts with backoff per message)."""
    messages = [numbered(i) for i in range(60)]
    start = time.monotonic()
    with MLLPSender("127.0.0.1", free_port()) as sender:  # the defaults the CLI uses
        with pytest.raises(PeerUnreachableError):
            sender.send(messages[0])
        df = sender.send_many(messages)
    assert time.monotonic() - start < 2 * 2.0  # two calls, each under the 2 s budget
    assert df.height == 60 and df["ack_code"].is_null().all()
    assert "PeerUnreachableError" in df["error"][0]
    assert df["attempts"].to_list() == [1] + [0] * 59  # the rest were not tried, and say so
    assert all(e.startswith("not sent: PeerUnreachableError") for e in df["error"][1:])


def test_retry_policy_for_cli_retries() -> None:
    policy = RetryPolicy.from_retries(4)
    assert policy.max_attempts == 5 and policy.unreachable_wait == 1.0
    assert RetryPolicy.from_retries(0).max_attempts == 1
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy.from_retries(-1)


def test_unreachable_wait_rides_through_a_peer_restart() -> None:
    """A peer that comes up while the sender keeps reconnecting (unreachable_wait) gets the message."""
    port = free_port()

    def late_peer() -> None:
        time.sleep(0.5)
        with socket.create_server(("127.0.0.1", port)) as srv:
            conn, _ = srv.accept()
            with conn:
                m = parse_message(_read_message(conn))
                conn.sendall(frame(build_ack(m, AckCode.AA)))
                conn.recv(10)

    t = threading.Thread(target=late_peer, daemon=True)
    t.start()
    policy = RetryPolicy(max_attempts=1, unreachable_wait=10.0, max_backoff=0.2)
    with MLLPSender("127.0.0.1", port, timeout=5, retry=policy) as sender:
        assert sender.send(numbered(3)).code is AckCode.AA
    t.join(5)


def test_no_ack_times_out() -> None:
    with peer(lambda conn, n: (_read_message(conn), conn.recv(10))) as port, \
            MLLPSender("127.0.0.1", port, timeout=0.3, retry=FAST) as sender, pytest.raises(PeerTimeoutError):
        sender.send(numbered(1))


def test_disconnect_then_resend_succeeds() -> None:
    def behave(conn: socket.socket, n: int) -> None:
        m = parse_message(_read_message(conn))
        if n == 1:
            return  # close without answering
        conn.sendall(frame(build_ack(m, AckCode.AA)))
        conn.recv(10)

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=FAST) as sender:
        assert sender.send(numbered(1)).code is AckCode.AA
        assert sender.last_attempts == 2


def test_disconnect_every_time_raises_disconnected() -> None:
    with peer(lambda conn, n: (_read_message(conn), None)[1]) as port, \
            MLLPSender("127.0.0.1", port, timeout=5, retry=FAST) as sender, \
            pytest.raises(PeerDisconnectedError):
        sender.send(numbered(1))


def test_stale_ack_for_another_message_is_skipped() -> None:
    def behave(conn: socket.socket, n: int) -> None:
        m = parse_message(_read_message(conn))
        stale = parse_message(numbered(77))
        conn.sendall(frame(build_ack(stale, AckCode.AA)) + frame(build_ack(m, AckCode.AA, "mine")))
        conn.recv(10)

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=FAST) as sender:
        ack = sender.send(numbered(1))
    assert ack.control_id == "T000001" and ack.text == "mine"


def test_send_many_records_failures_instead_of_raising() -> None:
    def behave(conn: socket.socket, n: int) -> None:
        while True:
            raw = _read_message(conn)
            if not raw:
                return
            m = parse_message(raw)
            code = AckCode.AR if m.control_id.endswith("2") else AckCode.AA
            conn.sendall(frame(build_ack(m, code, "no" if code is AckCode.AR else None)))

    with peer(behave) as port, MLLPSender("127.0.0.1", port, timeout=5, retry=FAST) as sender:
        df = sender.send_many([numbered(i) for i in range(4)])
    assert df["ack_code"].to_list() == ["AA", "AA", "AR", "AA"]
    assert df["error"].is_null().to_list() == [True, True, False, True]
    assert df["attempts"].to_list() == [1, 1, 1, 1]
