"""The MLLP listener against hostile peers: raw sockets on 127.0.0.1 and python-hl7's ``mllp_send``.

Garbage, a frame streaming far past the size limit, an idle-connection flood, slowloris
(bytes trickled slowly), poison messages (the escapes of issue #7, bad MSH segments). Each
test ends by checking that the listener still answers a good message AA at normal speed and
that every message it acknowledged AA is in the store.
"""

from __future__ import annotations

import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kit.hl7.framing import CR, FS, VT, MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import _MAX_REFUSED_IN_A_ROW, MLLPListener, MLLPSender, RetryPolicy
from tests.conftest import peer_env
from tests.integration.mllp.conftest import FEED, numbered

pytestmark = pytest.mark.timeout(90)

LIMIT = 1 << 20  # max_message_bytes of the listener under attack
#: a good round trip after an attack may take this many times the baseline before it counts as slow
SLOWER = 20


class Peer:
    """The listener under attack, and every control id it answered AA."""

    def __init__(self, listener: MLLPListener) -> None:
        self.listener = listener
        self.acked: set[str] = set()
        self.lock = threading.Lock()
        self.good = 0
        #: median seconds of a good round trip before any attack (measured by the fixture)
        self.baseline = 0.0

    def record(self, replies: list[str]) -> list[str]:
        for reply in replies:
            m = parse_message(reply)
            if m.get("MSA-1") == "AA":
                with self.lock:
                    self.acked.add(m.get("MSA-2"))
        return replies

    def talk(self, data: bytes, *, wait: float = 5.0) -> list[str]:
        """Send raw bytes on a new connection; the reply frames until the peer closes or goes quiet."""
        with socket.create_connection(("127.0.0.1", self.listener.port), timeout=wait) as sock:
            with _suppress_reset():
                sock.sendall(data)
            return self.record(_read_replies(sock, wait))

    def round_trip(self) -> float:
        """Send one good message on a new connection; the seconds until its AA."""
        self.good += 1
        start = time.monotonic()
        with MLLPSender("127.0.0.1", self.listener.port, timeout=5, retry=RetryPolicy(max_attempts=1)) as s:
            ack = s.send(numbered(self.good, "ALIVE"))
        seconds = time.monotonic() - start
        assert ack.code.value == "AA"
        self.acked.add(ack.control_id)
        return seconds

    def still_serves(self, holding: Callable[[], bool] | None = None) -> None:
        """A good message is answered AA promptly, and nothing acknowledged is missing from the store.

        Promptly, without a guess at the machine's speed: with ``holding`` (true while the hostile
        peer still holds its connection), the answer must come while it does -- a listener that
        serves the good sender only once the attacker is cut off or gives up fails however fast the
        machine is. Always: no slower than the listener's own ``idle_timeout`` nor ``SLOWER`` times
        the baseline this test measured before the attack (a busy machine slows both alike; a
        listener still busy with the attack, or waiting on one of its timeouts, exceeds both).
        """
        seconds = self.round_trip()
        if holding is not None:
            assert holding(), "the good message was answered only after the hostile peer let go"
        bound = max(self.listener.idle_timeout, SLOWER * self.baseline)
        assert seconds < bound, f"the listener answers, but slowly: {seconds:.2f}s (bound {bound:.2f}s)"
        assert self.listener.healthy
        assert self.listener.store is not None
        stored = set(self.listener.store.messages()["control_id"].to_list())
        assert self.acked <= stored, f"acknowledged but not stored: {sorted(self.acked - stored)[:5]}"


class _suppress_reset:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        return kind is not None and issubclass(kind, (ConnectionResetError, BrokenPipeError))


def _open(sock: socket.socket) -> bool:
    """True while the listener has not closed ``sock`` (nothing to read, no end of stream)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def _read_replies(sock: socket.socket, wait: float, want: int | None = None) -> list[str]:
    decoder, out = MLLPDecoder(), []
    sock.settimeout(wait)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (want is None or len(out) < want):
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += [f.decode() for f in decoder.feed(chunk) if isinstance(f, bytes)]
        sock.settimeout(0.3 if want is None and out else max(0.05, deadline - time.monotonic()))
    return out


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    with MLLPListener(tmp_path / "hostile.db", idle_timeout=3.0, frame_timeout=1.5, max_connections=32,
                      max_message_bytes=LIMIT) as listener:
        p = Peer(listener)
        p.baseline = statistics.median(p.round_trip() for _ in range(5))
        p.still_serves()
        yield p


# -- floods of refused frames --------------------------------------------------------------------
@pytest.mark.parametrize("unit", [VT + FS + CR, VT + b"MSH|^~\\&|A|B|C|D|2024||QQQ^Q01|U1|P|2.5\r" + FS + CR,
                                  b"x" + VT + FS + CR], ids=["empty", "unknown-type", "garbage-and-empty"])
def test_a_flood_of_refused_frames_is_cut_off_and_others_are_served_meanwhile(peer: Peer,
                                                                              unit: bytes) -> None:
    """Thousands of frames refused in one write (3 bytes each for empty frames): each cost a
    counter fsync'ed on the event loop (about 5 ms: an empty frame flood of 6 KB stalled every
    connection for 10 s) and a NAK. Now the counts are written by the store thread, and the
    connection is closed after _MAX_REFUSED_IN_A_ROW refusals, each answered; a good sender is served
    while the flooding connection is open, and the refusals are counted in the store."""
    before = peer.listener.counts["rejected"] + peer.listener.counts["framing_errors"]
    with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5) as sock:
        with _suppress_reset():
            sock.sendall(unit * 5000)
        peer.still_serves()
        replies = _read_replies(sock, 5.0)
        assert not _open(sock)  # cut off
    assert len(replies) == _MAX_REFUSED_IN_A_ROW
    assert all(parse_message(r).get("MSA-1") in ("AR", "AE") for r in replies)
    assert peer.listener.counts["cut_off"] == 1
    refused = peer.listener.counts["rejected"] + peer.listener.counts["framing_errors"] - before
    assert refused >= _MAX_REFUSED_IN_A_ROW
    peer.still_serves()  # its commit comes after the counts of every frame refused before it
    assert peer.listener.store is not None
    stored = peer.listener.store.counters()
    assert stored["rejected"] + stored["framing_errors"] >= refused


def test_a_connection_refused_now_and_then_is_not_cut_off(peer: Peer) -> None:
    """Refusals broken by good messages never add up to a cut-off."""
    with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5) as sock:
        for n in range(3):
            data = (VT + FS + CR) * (_MAX_REFUSED_IN_A_ROW - 1) + frame(numbered(n, "BETWEEN"))
            sock.sendall(data)
            replies = peer.record(_read_replies(sock, 5.0, want=_MAX_REFUSED_IN_A_ROW))
            assert [parse_message(r).get("MSA-1") for r in replies][-1] == "AA"
        assert _open(sock)
    assert peer.listener.counts["cut_off"] == 0
    peer.still_serves()


def test_a_frame_ended_by_fs_without_cr_is_acknowledged_at_once(peer: Peer) -> None:
    """Some senders omit the CR after FS and wait for their ACK: the frame ends at FS (it waited
    for one more byte, and the sender got nothing until the idle timeout closed the connection)."""
    with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5) as sock:
        for n in range(2):
            sock.sendall(VT + numbered(n, "NOCR").encode() + FS)
            (reply,) = peer.record(_read_replies(sock, 2.0, want=1))
            assert (parse_message(reply).get("MSA-1"), parse_message(reply).get("MSA-2")) == (
                "AA", f"NOCR{n:06d}")
    peer.still_serves()


def test_a_message_of_tiny_segments_is_refused_before_its_parse_holds_memory(peer: Peer) -> None:
    """Just under the size limit of ``ZZZ|ab`` lines (150,000 segments): a parse held 55 times the
    frame (915 MB for a 16 MiB frame) and the event loop for seconds. It is refused (AR) before
    it is split; the listener (in this process) allocates a few times the frame at most."""
    body = "MSH|^~\\&|A|B|C|D|2024||ADT^A01|BIG1|P|2.5\r" + "ZZZ|ab\r" * ((LIMIT - 100) // 7)
    tracemalloc.start()
    try:
        (reply,) = peer.talk(frame(body), wait=10.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    m = parse_message(reply)
    assert m.get("MSA-1") == "AR" and "more than 50,000 segments" in m.get("MSA-3"), reply[:300]
    assert peak < 12 * LIMIT, f"{peak:,} bytes allocated for a {LIMIT:,}-byte frame"
    peer.still_serves()


# -- unfinished frames of many connections ------------------------------------------------------
BUDGET = 4 * LIMIT  # max_buffered_bytes of the listener under attack: four frames of 0.9 * LIMIT


@pytest.fixture
def budgeted(tmp_path: Path) -> Iterator[Peer]:
    """A listener whose connections may hold at most BUDGET bytes of unfinished frames in all (and
    whose timeouts do not cut the frames off first)."""
    with MLLPListener(tmp_path / "budget.db", idle_timeout=60.0, frame_timeout=60.0, max_connections=32,
                      max_message_bytes=LIMIT, max_buffered_bytes=BUDGET) as listener:
        p = Peer(listener)
        p.baseline = statistics.median(p.round_trip() for _ in range(5))
        yield p


def _hold_open(port: int, data: bytes) -> socket.socket:
    """A connection that sends the start of a frame and never ends it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(data)
    return sock


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_unfinished_frames_of_many_connections_stay_within_the_listeners_budget(budgeted: Peer) -> None:
    """Each connection may hold an unfinished frame of up to ``max_message_bytes``: 256 connections
    held 4 GiB (16 MiB each). Twelve peers each hold 0.9 of the limit unfinished against a budget of
    four limits: as later ones arrive, the connections whose frames started first are closed, the
    listener (in this process) holds about the budget (12.3 MB before, 4.2 MB now), and a good sender's large
    message is answered AA while the newest hostile frame is still held."""
    port = budgeted.listener.port
    filler = b"OBX|1|TX|X||" + b"A" * (9 * LIMIT // 10)
    starts = [VT + numbered(k, "HOLD").encode() + filler for k in range(12)]
    hostile: list[socket.socket] = []
    tracemalloc.start()
    try:
        for start in starts:
            hostile.append(_hold_open(port, start))
        _wait_for(lambda: sum(not _open(s) for s in hostile) >= 8)
        time.sleep(0.5)  # the closed connections' tasks end
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    try:
        closed = [not _open(s) for s in hostile]
        assert sum(closed) == 8 and not closed[-1], closed
        assert budgeted.listener.counts["over_budget"] == 8
        assert 3 * LIMIT < budgeted.listener.buffered <= BUDGET
        # (the peak adds each connection's asyncio read buffer, at most 384 KiB: bounded per connection)
        assert held < 1.5 * BUDGET, f"{held:,} bytes held for twelve unfinished frames, budget {BUDGET:,}"
        big = numbered(90, "BIG") + "OBX|2|TX|X||" + "B" * (LIMIT // 2) + "\r"
        with MLLPSender("127.0.0.1", port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
            assert sender.send(big).code.value == "AA"
        budgeted.acked.add("BIG000090")
        budgeted.still_serves(holding=lambda: _open(hostile[-1]))
    finally:
        for sock in hostile:
            sock.close()
    assert not {f"HOLD{k:06d}" for k in range(12)} & set(budgeted.listener.store.messages()["control_id"])  # type: ignore[union-attr]


def test_the_oldest_frame_is_given_up_even_when_its_connection_is_the_one_reading(budgeted: Peer) -> None:
    """The frame that takes the listener past its budget may be the oldest itself: that connection is
    closed (after the answers to its whole frames), and the younger frames are kept."""
    port = budgeted.listener.port
    first = _hold_open(port, frame(numbered(1, "DONE")) + VT + numbered(2, "SLOW").encode())
    try:
        assert [parse_message(r).get("MSA-2") for r in budgeted.record(_read_replies(first, 5.0, want=1))] \
            == ["DONE000001"]
        filler = b"OBX|1|TX|X||" + b"A" * (9 * LIMIT // 10)
        others = [_hold_open(port, VT + numbered(k, "HOLD").encode() + filler) for k in range(3, 7)]
        try:
            assert _wait_for(lambda: budgeted.listener.buffered > 3 * LIMIT)
            assert budgeted.listener.counts["over_budget"] == 0
            first.sendall(filler)  # past the budget: this frame started first
            assert _wait_for(lambda: not _open(first)), "the oldest frame's connection was kept"
            assert all(_open(s) for s in others)
            assert budgeted.listener.counts["over_budget"] == 1
            budgeted.still_serves(holding=lambda: _open(others[-1]))
        finally:
            for sock in others:
                sock.close()
    finally:
        first.close()


# -- garbage ------------------------------------------------------------------------------------
GARBAGE = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS ClientHello
    b"\x00" * 20_000,
    random.Random(7).randbytes(64 * 1024),
    FS + CR + FS + FS + CR,
    VT + FS + CR,  # an empty frame
    VT + VT + VT + b"MSH" + VT + FS + CR,
    VT + b"\r\n\r\n" + FS + CR,
]


@pytest.mark.parametrize("garbage", GARBAGE, ids=["http", "tls", "nul", "random", "lone-fs", "empty", "vt",
                                                   "blank"])
def test_garbage_is_never_acknowledged(peer: Peer, garbage: bytes) -> None:
    replies = peer.talk(garbage, wait=2.0)
    assert all(parse_message(r).get("MSA-1") in ("AR", "AE") for r in replies)
    peer.still_serves()


# -- a frame streaming far past the limit ---------------------------------------------------------
def test_frame_streaming_past_the_limit_is_refused_early_and_memory_stays_bounded(peer: Peer) -> None:
    head = numbered(1, "HUGE").encode() + b"OBX|1|TX|X||"
    chunk = b"A" * 65536
    with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=10) as sock:
        sock.sendall(VT + head)
        sent, reply = len(head), []
        while sent < 8 * LIMIT and not reply:  # the listener answers before the frame ends
            sock.sendall(chunk)
            sent += len(chunk)
            sock.settimeout(0.001)
            try:
                data = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            reply = [f.decode() for f in MLLPDecoder().feed(data) if isinstance(f, bytes)]
        assert reply, "no refusal while streaming 8x the limit"
        assert sent < 3 * LIMIT
        m = parse_message(reply[0])
        assert m.get("MSA-1") == "AR" and "exceeds" in m.get("MSA-3")
        for _ in range(16):  # keep streaming: it is discarded, not buffered
            sock.sendall(chunk)
        sock.sendall(FS + CR + frame(numbered(2, "AFTER")))
        after = peer.record(_read_replies(sock, 5.0, want=1))
    assert [parse_message(r).get("MSA-2") for r in after] == ["AFTER000002"]
    assert "HUGE000001" not in peer.listener.store.messages()["control_id"].to_list()  # type: ignore[union-attr]
    peer.still_serves()


def test_control_id_of_900_kb_is_refused_with_a_small_ack(peer: Peer) -> None:
    head, _, rest = numbered(3, "X").partition("\r")
    fields = head.split("|")
    fields[9] = "9" * 900_000
    (reply,) = peer.talk(frame("|".join(fields) + "\r" + rest))
    assert len(reply) < 2000
    m = parse_message(reply)
    assert m.get("MSA-1") == "AR" and m.get("ERR-3.1") == "102"
    peer.still_serves()


# -- idle connections and slow peers --------------------------------------------------------------
def test_idle_connection_flood_does_not_lock_out_a_sender(peer: Peer) -> None:
    idle: list[socket.socket] = []
    try:
        for _ in range(200):  # far more than max_connections (32)
            idle.append(socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5))
        peer.still_serves(holding=lambda: _open(idle[-1]))  # answered while the flood is still open
        assert peer.listener.counts["evicted"] >= 200 - 32
        time.sleep(peer.listener.idle_timeout + 1.0)
        closed = 0
        for sock in idle:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed == len(idle), f"{len(idle) - closed} idle connections still open"
    finally:
        for sock in idle:
            sock.close()
    peer.still_serves()


def test_slowloris_is_disconnected_while_others_are_served(peer: Peer) -> None:
    payload = frame(numbered(4, "SLOW"))
    outcome: dict[str, object] = {}

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5) as sock:
            start = time.monotonic()
            try:
                for i in range(len(payload) - 1):  # never the last byte in time: 1 byte per 50 ms
                    sock.sendall(payload[i:i + 1])
                    time.sleep(0.05)
                    if time.monotonic() - start > 10:
                        break
            except (ConnectionResetError, BrokenPipeError):
                pass
            outcome["seconds"] = time.monotonic() - start
            outcome["replies"] = _read_replies(sock, 2.0)

    slow = threading.Thread(target=trickle)
    slow.start()
    time.sleep(0.3)
    # served while the slow peer holds on: before the listener cut it off (the cut is counted first)
    peer.still_serves(holding=lambda: peer.listener.counts["slow"] == 0)
    slow.join(20)
    assert not slow.is_alive()
    replies = outcome["replies"]
    assert isinstance(replies, list)
    assert [parse_message(r).get("MSA-1") for r in replies] == ["AR"], replies
    assert "not completed within 1.5s" in parse_message(replies[0]).get("MSA-3")
    assert float(outcome["seconds"]) < 5.0, "the slow peer was not cut off"  # type: ignore[arg-type]
    assert peer.listener.counts["slow"] >= 1
    peer.still_serves()


def test_slow_but_steady_sender_within_the_limit_is_served(peer: Peer) -> None:
    payload = frame(numbered(5, "STEADY"))
    with socket.create_connection(("127.0.0.1", peer.listener.port), timeout=5) as sock:
        for i in range(0, len(payload), 64):
            sock.sendall(payload[i:i + 64])
            time.sleep(0.05)
        replies = peer.record(_read_replies(sock, 5.0, want=1))
    assert [parse_message(r).get("MSA-1") for r in replies] == ["AA"]
    peer.still_serves()


# -- poison messages ----------------------------------------------------------------------------
def _msh(**fields: str) -> str:
    head, _, rest = numbered(6, "PZ").partition("\r")
    parts = head.split("|")
    for number, value in fields.items():
        parts[int(number[1:]) - 1] = value
    return "|".join(parts) + "\r" + rest


POISON: list[bytes] = [
    frame(_msh(f3="LAB\\.sp99999999999999999999\\")),
    frame(_msh(f10="PZ1\\.sp10000000\\")),
    frame(_msh(f10="PZ2\\.sp999999999\\")),
    frame(_msh(f3="\\.sp²\\", f10="PZ3")),
    frame(_msh(f10="PZ4\\X" + "41" * 5000 + "\\")),
    frame(_msh(f10="PZ5" + "\\.sp99\\" * 400)),  # bounded escapes, but too long once resolved: AR
    frame(b"MSH"),
    frame(b"MSH|"),
    frame(b"MSH|^~\\&"),
    frame(b"MSH|^^^^|A|B|C|D|2026||ADT^A01|PZ6|P|2.5\r"),
    frame(b"MSHA^~\\&A|B\r"),
    frame(b"MSH|^~\\&|" + b"|" * 100_000 + b"\r"),
    frame(_msh(f9="")),
    frame(_msh(f9="ADT^A01", f10="PZ7") + "PID|" + "~" * 200_000 + "\r"),
    frame(_msh(f10="PZ8") + "NTE|1\r" * 20_000),
    frame(_msh(f10="PZ9").encode() + b"PID|1||\xff\xfe\x00\x80\r"),
    frame(b"\xef\xbb\xbf" + _msh(f10="PZ10").encode()),
    frame(_msh(f10="PZ11", f7="٢٠٢٦٠١٠١", f12="9" * 5000)),
    frame(_msh(f10="PZ12").replace("PID|", "PID\x00|")),
]


@pytest.mark.parametrize("poison", POISON, ids=[f"poison{i}" for i in range(len(POISON))])
def test_poison_message_is_answered_promptly_with_a_bounded_ack(peer: Peer, poison: bytes) -> None:
    start = time.monotonic()
    replies = peer.talk(poison, wait=5.0)
    assert time.monotonic() - start < 3.0
    assert len(replies) == 1, replies
    assert len(replies[0]) < 4000
    assert parse_message(replies[0]).get("MSA-1") in ("AA", "AE", "AR")
    peer.still_serves()


def test_python_hl7_mllp_send_with_poison_and_good_messages(peer: Peer, tmp_path: Path) -> None:
    """A real peer: python-hl7's mllp_send streams a file mixing poison and good messages."""
    good = [numbered(i, "REAL") for i in range(len(FEED))]
    mixed: list[bytes] = []
    for i, text in enumerate(good):
        mixed.append(frame(text))
        mixed.append(POISON[i % len(POISON)])
    path = tmp_path / "mixed.mllp"
    path.write_bytes(b"".join(mixed))
    tool = shutil.which("mllp_send")
    cmd = [tool] if tool else [sys.executable, "-c", "from hl7.client import mllp_send; mllp_send()"]
    done = subprocess.run([*cmd, "-p", str(peer.listener.port), "-f", str(path), "127.0.0.1"],
                          capture_output=True, timeout=60, env=peer_env())
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = done.stdout.decode(errors="replace")
    for text in good:
        control_id = parse_message(text).control_id
        assert f"MSA|AA|{control_id}" in out
        peer.acked.add(control_id)
    peer.still_serves()
