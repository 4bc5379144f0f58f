"""Durability: a listener in its own process is SIGKILLed mid-stream and restarted on the same store.

Every message that got AA must be in the store exactly once, and the senders'
retries must deliver the rest: all 10,000 present once. (And ``kit hl7 listen
--max-segments`` and ``--max-buffered-bytes``, in its own process as well.)
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kit.errors import KitError, NakError
from kit.hl7.mllp import MLLPSender, RetryPolicy
from tests.conftest import free_port, peer_env, stop_pid, wait_for_port
from tests.integration.mllp.conftest import numbered

TOTAL = 10_000
SENDERS = 8
KILL_AFTER = 3_000


def _listen(port: int, store: Path, log: Path, *more: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-c", "from kit.cli import main; main()", "hl7", "listen",
            "--port", str(port), "--store", str(store), *more]
    out = log.open("ab")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=peer_env(),
                            start_new_session=True)
    out.close()
    wait_for_port(port, timeout=30.0, proc=proc)
    return proc


def test_sigkill_mid_stream_loses_nothing_and_stores_once(tmp_path: Path) -> None:
    port, store, log = free_port(), tmp_path / "mllp.db", tmp_path / "listener.log"
    acked: list[set[str]] = [set() for _ in range(SENDERS)]
    failures: list[str] = []
    retried = [0]
    per_sender = TOTAL // SENDERS

    def run(k: int) -> None:
        # ride through the listener's restart: keep reconnecting to the refused port for up to 30 s
        policy = RetryPolicy(max_attempts=60, backoff=0.05, max_backoff=0.5, unreachable_wait=30.0)
        with MLLPSender("127.0.0.1", port, timeout=5.0, retry=policy) as sender:
            for i in range(k * per_sender, (k + 1) * per_sender):
                text = numbered(i, "D")
                try:
                    ack = sender.send(text)
                except KitError as exc:
                    failures.append(f"D{i:06d}: {exc}")
                    continue
                assert ack.control_id == f"D{i:06d}"
                acked[k].add(ack.control_id)
                if sender.last_attempts > 1:
                    retried[0] += 1

    proc = _listen(port, store, log)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(SENDERS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 40
        while sum(map(len, acked)) < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.01)
        acked_before_kill = set().union(*acked)
        assert len(acked_before_kill) >= KILL_AFTER, "listener too slow before the kill"
        proc.kill()  # SIGKILL: no chance to flush anything
        proc.wait(10)
        # every message acknowledged before the kill is on disk, after a crash
        with sqlite3.connect(store) as db:
            stored_now = {r[0] for r in db.execute("SELECT control_id FROM messages")}
        assert acked_before_kill <= stored_now
        proc = _listen(port, store, log)
        for t in threads:
            t.join(45)
        assert not any(t.is_alive() for t in threads), "senders did not finish"
    finally:
        stop_pid(proc)
    assert failures == []
    assert retried[0] >= 1, "no sender had to resend: the kill did not interrupt the stream"
    everything = {f"D{i:06d}" for i in range(TOTAL)}
    assert set().union(*acked) == everything
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT control_id, count(*) FROM messages GROUP BY control_id").fetchall()
        total = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    assert total == TOTAL
    assert {cid for cid, _ in rows} == everything
    assert all(n == 1 for _, n in rows)


def test_kit_hl7_listen_max_segments(tmp_path: Path) -> None:
    """``--max-segments``: a message of more is answered AR, unparsed and unstored; others go on."""
    port, store, log = free_port(), tmp_path / "mllp.db", tmp_path / "listener.log"
    proc = _listen(port, store, log, "--max-segments", "5")
    try:
        with MLLPSender("127.0.0.1", port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
            long = numbered(1, "LONG") + "NTE|1||x\r" * 5
            with pytest.raises(NakError, match="more than 5 segments"):
                sender.send(long)
            assert sender.send("MSH|^~\\&|A|B|C|D|2026||ADT^A01|SHORT1|P|2.5\rPID|1||M1\r").code.value == "AA"
    finally:
        stop_pid(proc)
    assert [r[0] for r in sqlite3.connect(store).execute("SELECT control_id FROM messages")] == ["SHORT1"]


def test_kit_hl7_listen_max_buffered_bytes(tmp_path: Path) -> None:
    """``--max-buffered-bytes``: three unfinished frames of 90 kB against 250 kB in all: the first
    one's connection is closed when the third arrives; the others stay, and a message gets AA."""
    port, store, log = free_port(), tmp_path / "mllp.db", tmp_path / "listener.log"
    proc = _listen(port, store, log, "--max-message-bytes", "100000", "--max-buffered-bytes", "250000")
    held: list[socket.socket] = []
    try:
        for k in range(3):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            held[-1].sendall(b"\x0b" + numbered(k, "HOLD").encode() + b"NTE|1||" + b"x" * 90_000)
            time.sleep(0.2)  # the frames start in this order
        held[0].settimeout(10)
        assert held[0].recv(1) == b"", "the oldest unfinished frame's connection is still open"
        with MLLPSender("127.0.0.1", port, timeout=10, retry=RetryPolicy(max_attempts=1)) as sender:
            assert sender.send(numbered(9, "GOOD")).code.value == "AA"
        for sock in held[1:]:
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):  # still open: nothing to read, no end of stream
                sock.recv(1)
    finally:
        for sock in held:
            sock.close()
        stop_pid(proc)
    assert "over_budget 1" in log.read_text()  # the counts printed when it stops
    assert [r[0] for r in sqlite3.connect(store).execute("SELECT control_id FROM messages")] == ["GOOD000009"]
