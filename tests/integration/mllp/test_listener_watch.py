"""The listener's time limits on reads and writes (one timer per connection): a peer that never
reads its ACKs is cut off and its socket closed; a connection waiting for a slow commit is not."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from kit.hl7.framing import frame
from kit.hl7.mllp import _READ_SIZE, MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.store import MessageStore, Received, StoredResult
from tests.integration.mllp.conftest import exchange, msa, numbered
from tests.integration.mllp.conftest import hog as hog_peer

pytestmark = pytest.mark.timeout(60)


def _sockets(port: int, peer_port: int) -> dict[str, int]:
    """The sockets from ``port`` to ``peer_port`` (by ``socket:[inode]``) and the bytes each holds
    received but not yet read by its owner (its receive queue)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                cols = line.split()
                local, remote = int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16)
                if (local, remote) == (port, peer_port):
                    found[f"socket:[{cols[9]}]"] = int(cols[4].split(":")[1], 16)
    return found


def _listener_holds(port: int, peer_port: int) -> bool:
    """Whether this process (the listener runs in it) has a socket open from ``port`` to ``peer_port``."""
    inodes = _sockets(port, peer_port)
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}") in inodes:
                return True
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads sockets in /proc")
def test_a_peer_that_never_reads_its_acks_is_cut_off_and_its_socket_closed(tmp_path: Path) -> None:
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=1.0) as listener:
        hog = hog_peer(listener.port)  # a small window: the ACKs pile up
        hog_port = hog.getsockname()[1]
        try:
            assert _listener_holds(listener.port, hog_port)
            deadline = time.monotonic() + 15
            while _listener_holds(listener.port, hog_port) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _listener_holds(listener.port, hog_port), \
                "the listener kept the socket of a peer that reads nothing"
            once = RetryPolicy(max_attempts=1)
            with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=once) as sender:
                start = time.monotonic()
                assert sender.send(numbered(1, "GOOD")).control_id == "GOOD000001"
                assert time.monotonic() - start < 2.0
        finally:
            hog.close()
        assert listener.healthy


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads sockets in /proc")
def test_stop_closes_a_connection_evicted_while_it_closes(tmp_path: Path) -> None:
    """An evicted connection whose peer reads nothing is still closing (its last ACKs unsent) when
    the listener stops: stop waits for it and closes its socket, it is not left to the GC."""
    listener = MLLPListener(tmp_path / "mllp.db", max_connections=1, idle_timeout=30.0)
    listener.start()
    try:
        # the hog sends until a send waits 3 s: until the listener stops reading it (it reads
        # nothing while its ACKs to the hog wait unsent), not merely until a slow commit (a
        # loaded machine), after which every ACK could still fit the kernel's buffers
        hog = hog_peer(listener.port, timeout=3.0)
        hog_port = hog.getsockname()[1]
        seen, still_since, deadline = -1, time.monotonic(), time.monotonic() + 30
        while time.monotonic() - still_since < 0.5:  # until the listener is stuck writing its ACKs:
            unread = sum(_sockets(listener.port, hog_port).values())  # bytes it has not read, and
            if listener.counts["received"] != seen or not unread:  # no message received for 0.5 s
                seen, still_since = listener.counts["received"], time.monotonic()
            assert time.monotonic() < deadline, "the listener never stopped reading the hog"
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as other:
            assert msa(exchange(other, frame(numbered(1, "NEXT")), 10)[0]) == ("AA", "NEXT000001")
            assert _listener_holds(listener.port, hog_port)  # evicted, its close still waiting
            gc.disable()  # the socket must be closed by stop, not collected with a forgotten task
            try:
                listener.stop()
                assert not _listener_holds(listener.port, hog_port), "stop left the evicted socket open"
            finally:
                gc.enable()
        hog.close()
    finally:
        listener.stop()


def _gated_commits(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Every commit waits for the event (set it, or 20 s pass): a slow disk."""
    gate = threading.Event()
    real = MessageStore.add_many

    def add_many(self: MessageStore, items: list[Received]) -> list[StoredResult]:
        gate.wait(20)
        return real(self, items)

    monkeypatch.setattr(MessageStore, "add_many", add_many)
    return gate


def test_a_connection_waiting_longer_than_the_idle_time_for_its_commit_gets_its_ack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The time limit covers reading and writing only: a slow disk does not cut off the senders."""
    gate = _gated_commits(monkeypatch)
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=0.5) as listener, \
            socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        threading.Timer(2.0, gate.set).start()  # four idle times
        start = time.monotonic()
        reply = exchange(sock, frame(numbered(7, "SLOW")), 10)[0]
        assert msa(reply) == ("AA", "SLOW000007") and time.monotonic() - start >= 1.9
        assert msa(exchange(sock, frame(numbered(8, "SLOW")), 10)[0]) == ("AA", "SLOW000008")
        time.sleep(1.5)  # then idle: closed
        sock.settimeout(5)
        assert sock.recv(100) == b""


def test_acks_for_a_peer_that_reset_are_dropped_without_log_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A peer sends messages in one go (one read) and resets while they commit (a slow disk, made here):
    the listener keeps them all, writes no ACK after the reset (asyncio would log "socket.send()
    raised exception" for each) and serves on."""
    gate = _gated_commits(monkeypatch)
    caplog.set_level(logging.WARNING, logger="asyncio")
    with MLLPListener(tmp_path / "mllp.db") as listener:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
        data = b"".join(frame(numbered(i, "RST")) for i in range(100))
        assert len(data) < _READ_SIZE  # one read takes them all: the reset drops none unread
        sock.sendall(data)
        deadline = time.monotonic() + 20
        while listener.counts["received"] < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, the ACKs still to come
        time.sleep(0.2)
        gate.set()
        deadline = time.monotonic() + 20
        while listener.counts["stored"] < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.counts["stored"] == 100  # read before the reset: every one kept
        with MLLPSender("127.0.0.1", listener.port, timeout=5) as sender:
            assert sender.send(numbered(1, "AFTER")).control_id == "AFTER000001"
        assert listener.healthy
    noise = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not noise, noise[:3]
