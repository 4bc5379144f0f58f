"""Group commit: concurrent senders' messages share a transaction, each ACK only after its commit.

Real peers: python-hl7's ``MLLPClient`` (eight at once) against the kit's listener, in this process
and as ``kit hl7 listen`` killed with SIGKILL mid-stream; the store is then read back and compared
with the ACKs the senders got. A failed commit is a real SQLite "database or disk is full".
"""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import hl7
import hl7.client
import pytest

from kit.hl7.framing import frame
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.store import MessageStore, Received, StoredResult
from tests.conftest import free_port, peer_env, stop_pid, wait_for_port
from tests.integration.mllp.conftest import exchange, msa, numbered

pytestmark = pytest.mark.timeout(120)

SENDERS = 8


def _acked(reply: bytes, control_id: str) -> bool:
    """python-hl7 reads the reply: AA for exactly this message (MSA-2 = its MSH-10)."""
    if not reply:
        return False
    ack = hl7.parse(reply.strip(b"\x0b\x1c\r").decode())
    return str(ack.segment("MSA")[1]) == "AA" and str(ack.segment("MSA")[2]) == control_id


def _run_senders(port: int, count: int, stop: Callable[[], bool] = lambda: False) -> list[list[str]]:
    """SENDERS python-hl7 clients at once, each sending its own numbered messages in order until
    ``count`` or an error; returns, per sender, the control ids acknowledged AA, in order."""
    acked: list[list[str]] = [[] for _ in range(SENDERS)]

    def run(k: int) -> None:
        try:
            with hl7.client.MLLPClient("127.0.0.1", port) as client:
                client.socket.settimeout(20)
                for i in range(count):
                    if stop():
                        return
                    text = numbered(k * 100_000 + i, "G")
                    control_id = f"G{k * 100_000 + i:06d}"
                    if not _acked(client.send_message(text), control_id):
                        return
                    acked[k].append(control_id)
        except OSError:  # the listener went away: what was acknowledged is what counts
            return

    threads = [threading.Thread(target=run, args=(k,)) for k in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not any(t.is_alive() for t in threads), "a sender hung"
    return acked


def _assert_stored_once_in_order(stored: list[str], acked: list[list[str]], in_flight: int) -> None:
    """Every acknowledged id stored exactly once, each sender's in its sending order; besides them
    at most ``in_flight`` ids per sender (committed, the ACK lost with the connection)."""
    assert len(stored) == len(set(stored)), "a message is stored twice"
    position = {cid: n for n, cid in enumerate(stored)}
    for k, ids in enumerate(acked):
        assert all(cid in position for cid in ids), f"sender {k}: an acknowledged message is not stored"
        mine = [cid for cid in stored if int(cid[1:]) // 100_000 == k]
        assert mine[: len(ids)] == ids, f"sender {k}: stored out of its order"
        assert len(mine) - len(ids) <= in_flight


def test_eight_python_hl7_senders_each_ack_after_its_commit_stored_once_in_order(
        listener: MLLPListener) -> None:
    per_sender = 120
    acked = _run_senders(listener.port, per_sender)
    assert [len(ids) for ids in acked] == [per_sender] * SENDERS
    assert listener.store is not None
    _assert_stored_once_in_order(listener.store.messages()["control_id"].to_list(), acked, 0)
    total = SENDERS * per_sender
    assert listener.counts["stored"] == total
    # group commit: messages of several connections shared transactions
    assert 0 < listener.counts["commits"] < total


def test_sigkill_mid_stream_loses_nothing_acknowledged_to_python_hl7_senders(tmp_path: Path) -> None:
    port, store = free_port(), tmp_path / "mllp.db"
    log = (tmp_path / "listener.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", "from kit.cli import main; main()", "hl7", "listen",
                             "--port", str(port), "--store", str(store)],
                            stdout=log, stderr=subprocess.STDOUT, env=peer_env(), start_new_session=True)
    log.close()
    result: list[list[list[str]]] = []
    try:
        wait_for_port(port, timeout=30.0, proc=proc)
        senders = threading.Thread(target=lambda: result.append(_run_senders(port, 100_000)))
        senders.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once enough is acknowledged (read from the store)
            time.sleep(0.2)
            try:
                with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
                    if db.execute("SELECT count(*) FROM messages").fetchone()[0] >= 600:
                        break
            except sqlite3.Error:
                continue
        proc.kill()  # SIGKILL: nothing flushed, no ACK sent after this
        proc.wait(10)
        senders.join(60)
        assert not senders.is_alive()
    finally:
        stop_pid(proc)
    acked = result[0]
    assert sum(map(len, acked)) >= 500, "too little acknowledged before the kill to mean anything"
    with MessageStore(store) as reopened:  # recovers the WAL like any later reader
        stored = reopened.messages()["control_id"].to_list()
    _assert_stored_once_in_order(stored, acked, 1)


def test_a_failed_commit_answers_every_message_of_the_batch_ae_and_retries_none(
        listener: MLLPListener, monkeypatch: pytest.MonkeyPatch) -> None:
    assert listener.store is not None
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=RetryPolicy(max_attempts=1)) as sender:
        sender.send(numbered(0, "WARM"))
    calls: list[int] = []
    gate = threading.Event()
    real = MessageStore.add_many

    def add_many(self: MessageStore, items: list[Received]) -> list[StoredResult]:
        calls.append(len(items))
        gate.wait(20)  # hold the first batch until every message is queued behind it
        return real(self, items)

    monkeypatch.setattr(MessageStore, "add_many", add_many)
    db = listener.store._db
    with listener.store._lock:  # the disk is full: a real SQLITE_FULL on the listener's connection
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count={pages}")
    big = [numbered(i, "FULL").rstrip("\r") + "\rOBX|1|TX|||" + "x" * 20_000 + "\r" for i in range(8)]
    socks = [socket.create_connection(("127.0.0.1", listener.port), timeout=20) for _ in big]
    try:
        for sock, text in zip(socks, big, strict=True):  # eight senders at once, a message each
            sock.sendall(frame(text))
        deadline = time.monotonic() + 20
        while listener.counts["received"] < 1 + len(big) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        replies = [exchange(sock, b"", 20)[0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    answers = [msa(r) for r in replies]
    assert answers == [("AE", f"FULL{i:06d}") for i in range(8)]
    assert all("full" in r for r in replies)
    # no message tried twice: one transaction per batch, each failed once (usually two batches, the
    # first held while the others queued behind it; on a busy machine all eight may be in the first)
    assert sum(calls) == len(big) and 1 <= len(calls) <= 2, f"batches tried: {calls}"
    assert listener.counts["failed_commits"] == len(calls)
    assert listener.store.messages()["control_id"].to_list() == ["WARM000000"]  # nothing of it stored
    with listener.store._lock:
        db.execute("PRAGMA max_page_count=1073741823")
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=RetryPolicy(max_attempts=1)) as sender:
        start = time.monotonic()
        assert sender.send(big[0]).control_id == "FULL000000"  # the sender's resend is stored now
        assert time.monotonic() - start < 2.0
    assert listener.healthy
    assert listener.store.messages()["control_id"].to_list() == ["WARM000000", "FULL000000"]


def test_one_poison_message_in_a_batch_costs_a_few_commits_not_one_per_message(
        listener: MLLPListener, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value no code expected (raised while storing one message) fails only that message; the
    batch is split in halves to find it, so a hostile sender cannot turn every batch of the other
    senders into one transaction per message."""
    calls: list[int] = []
    gate = threading.Event()
    real = MessageStore.add_many

    def add_many(self: MessageStore, items: list[Received]) -> list[StoredResult]:
        calls.append(len(items))
        gate.wait(20)
        if any("POISON" in it.raw for it in items):
            raise OverflowError("cannot fit 'int' into an index-sized integer")
        return real(self, items)

    monkeypatch.setattr(MessageStore, "add_many", add_many)
    texts = [numbered(i, "POISON" if i == 17 else "B") for i in range(32)]
    socks = [socket.create_connection(("127.0.0.1", listener.port), timeout=20) for _ in texts]
    try:
        for sock, text in zip(socks, texts, strict=True):
            sock.sendall(frame(text))
        deadline = time.monotonic() + 20
        while listener.counts["received"] < len(texts) and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        answers = [msa(exchange(sock, b"", 20)[0]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert answers == [("AE", "POISON000017") if i == 17 else ("AA", f"B{i:06d}") for i in range(32)]
    assert len(calls) <= 2 + 2 * 5, f"batches tried: {calls}"  # was one per message: 33
    assert listener.healthy and listener.store is not None
    stored = sorted(listener.store.messages()["control_id"])
    assert stored == sorted(f"B{i:06d}" for i in range(32) if i != 17)


def test_the_committer_waits_a_little_for_as_many_connections_as_its_last_batches_had(tmp_path: Path) -> None:
    """Eight senders in lock step send their next messages just after a commit: the next batch
    waits (bounded) for all of them instead of committing the first alone. One sender never waits.
    The loop hands its jobs over as lists (one per loop iteration); a batch takes every list waiting."""
    from kit.hl7.mllp import _Job

    listener = MLLPListener(tmp_path / "unused.db")  # not started: only its queue is used

    def jobs(count: int = 1) -> list[_Job]:
        return [_Job(None, None) for _ in range(count)]  # type: ignore[arg-type]  # queue handling only

    def later(count: int, after: float) -> None:
        threading.Timer(after, lambda: [listener._jobs.put(jobs()) for _ in range(count)]).start()

    batch = jobs()
    listener._jobs.put(jobs())
    later(2, 0.05)
    start = time.monotonic()
    assert listener._take_waiting(batch, 4, 1.0) is False
    assert len(batch) == 4 and time.monotonic() - start < 0.9  # waited for the two, not the full second

    batch = jobs()
    later(1, 0.3)
    start = time.monotonic()
    listener._take_waiting(batch, 1, 1.0)  # one connection last time: no wait at all
    assert len(batch) == 1 and time.monotonic() - start < 0.2
    time.sleep(0.4)
    assert listener._jobs.qsize() == 1
    listener._jobs.get_nowait()

    batch = jobs()
    start = time.monotonic()
    listener._take_waiting(batch, 8, 0.1)  # the others never come: bounded by the wait
    assert len(batch) == 1 and 0.09 <= time.monotonic() - start < 0.6

    for count in (3, 1, 4):  # everything waiting is taken, whatever the target
        listener._jobs.put(jobs(count))
    batch = jobs()
    listener._take_waiting(batch, 1, 0.0)
    assert len(batch) == 9 and listener._jobs.qsize() == 0

    listener._jobs.put(None)
    assert listener._take_waiting(jobs(), 8, 1.0) is True  # stop sentinel


def _slow_commits(monkeypatch: pytest.MonkeyPatch, seconds: float) -> tuple[list[int], list[int]]:
    """Every commit takes ``seconds`` more (a slow disk), the gather wait may reach it; returns the
    batch sizes committed and the ``gather`` targets the committer waited for, as they happen."""
    import kit.hl7.mllp as mllp

    sizes: list[int] = []
    targets: list[int] = []
    real_add, real_take = MessageStore.add_many, MLLPListener._take_waiting

    def add_many(self: MessageStore, items: list[Received]) -> list[StoredResult]:
        sizes.append(len(items))
        time.sleep(seconds)
        return real_add(self, items)

    def take(self: MLLPListener, batch: list[object], gather: int, wait: float) -> bool:
        targets.append(gather)
        return real_take(self, batch, gather, wait)  # type: ignore[arg-type]

    monkeypatch.setattr(MessageStore, "add_many", add_many)
    monkeypatch.setattr(MLLPListener, "_take_waiting", take)
    monkeypatch.setattr(mllp, "_GATHER_MAX", 1.0)
    return sizes, targets


def test_senders_taking_turns_never_wait_for_each_other(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Three connections sending one message at a time in turns (as a bench or an interface engine
    with several channels does): no batch waits for another connection's message, which cannot
    come before this one's ACK (it waited the last commit's duration each time)."""
    sizes, targets = _slow_commits(monkeypatch, 0.02)
    with MLLPListener(tmp_path / "mllp.db") as listener:
        clients = [hl7.client.MLLPClient("127.0.0.1", listener.port) for _ in range(3)]
        try:
            for i in range(12):
                for k, client in enumerate(clients):
                    control_id = f"G{k * 100_000 + i:06d}"
                    assert _acked(client.send_message(numbered(k * 100_000 + i, "G")), control_id)
        finally:
            for client in clients:
                client.close()
    assert sizes == [1] * 36
    assert targets == [1] * 36, "a batch waited for a connection that was waiting for its turn"


def test_eight_senders_split_into_two_groups_join_into_one_batch(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Four senders run in lock step, four more join during a commit: the second group, waiting when
    that commit ends, made a batch of four by itself, the first group's next messages the next
    batch, and so on (two commits per round instead of one). The batch after a batch of several
    connections now waits for the connections of the last two batches: they join into one."""
    sizes, _ = _slow_commits(monkeypatch, 0.03)
    first, second = 40, 24
    acked: list[list[str]] = [[] for _ in range(SENDERS)]
    with MLLPListener(tmp_path / "mllp.db") as listener:
        def run(k: int) -> None:
            with hl7.client.MLLPClient("127.0.0.1", listener.port) as client:
                client.socket.settimeout(20)
                if k >= SENDERS // 2:
                    time.sleep(0.3)  # the first group runs alone for a few commits
                for i in range(first if k < SENDERS // 2 else second):
                    control_id = f"G{k * 100_000 + i:06d}"
                    if _acked(client.send_message(numbered(k * 100_000 + i, "G")), control_id):
                        acked[k].append(control_id)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(SENDERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert listener.store is not None
        _assert_stored_once_in_order(listener.store.messages()["control_id"].to_list(), acked, 0)
    assert [len(ids) for ids in acked] == [first] * (SENDERS // 2) + [second] * (SENDERS // 2)
    assert sizes.count(SENDERS) >= second // 2, f"the groups stayed apart; batches: {sizes}"
