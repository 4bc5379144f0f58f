"""Issues #7 and #8 on the MLLP listener: poison messages, a dying worker, duplicates by content,
store migration, and every acknowledged message in the frames or in ``skipped``."""

from __future__ import annotations

import socket
import sqlite3
import time
from pathlib import Path

import polars as pl
import pytest

from kit.errors import ConfigError, StoreError
from kit.hl7 import store as store_module
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy
from kit.hl7.scheduling import appointments
from kit.hl7.store import MessageStore
from tests.integration.mllp.conftest import exchange, msa, numbered
from tests.unit.hl7.test_regressions import EPIC_SIU

pytestmark = pytest.mark.timeout(60)

ONCE = RetryPolicy(max_attempts=1)


def _send_raw(listener: MLLPListener, data: bytes, timeout: float = 10.0) -> str:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=timeout) as sock:
        return exchange(sock, data, timeout)[0]


def _stored(listener: MLLPListener) -> pl.DataFrame:
    assert listener.store is not None
    return listener.store.messages()


def _answers_good_message(listener: MLLPListener, i: int) -> None:
    start = time.monotonic()
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
        assert sender.send(numbered(i, "GOOD")).control_id == f"GOOD{i:06d}"
    assert time.monotonic() - start < 1.0
    assert f"GOOD{i:06d}" in _stored(listener)["control_id"].to_list()


# -- 7.1 / 7.2: the messages of the report ---------------------------------------------------------
@pytest.mark.parametrize(("field", "escape"), [
    (3, "\\.sp99999999999999999999\\"), (10, "\\.sp10000000\\"), (10, "\\.sp999999999\\"), (3, "\\.sp²\\")])
def test_reported_poison_escapes_are_answered_and_the_listener_goes_on(listener: MLLPListener, field: int,
                                                                      escape: str) -> None:
    fields = numbered(1, "P").partition("\r")[0].split("|")
    fields[field - 1] = fields[field - 1] + escape
    text = "|".join(fields) + "\r" + numbered(1, "P").partition("\r")[2]
    reply = _send_raw(listener, frame(text))
    assert len(reply) < 2000  # was a 50 MB ACK for \.sp10000000\ in MSH-10
    code, control_id = msa(reply)
    assert code == "AA"  # the escape is kept verbatim: nothing unbounded, nothing lost
    assert control_id == parse_message(text).control_id
    row = _stored(listener).row(0, named=True)
    assert row["raw"].replace("\r", "") == text.replace("\r", "")
    assert len(row["control_id"]) < 40
    _answers_good_message(listener, 1)


def test_a_failure_storing_one_message_is_its_nak_and_the_others_are_stored(
        listener: MLLPListener, monkeypatch: pytest.MonkeyPatch) -> None:
    """The OverflowError of the report, raised where it was: inside the storage thread."""
    real = MessageStore.add_many

    def add_many(self: MessageStore, items: list[store_module.Received]) -> list[store_module.StoredResult]:
        if any("POISON" in it.raw for it in items):
            raise OverflowError("cannot fit 'int' into an index-sized integer")
        return real(self, items)

    monkeypatch.setattr(MessageStore, "add_many", add_many)
    poison = numbered(2, "POISON")
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        # the poison and a good message in one read: they share a batch, only the poison fails
        replies = exchange(sock, frame(poison) + frame(numbered(3, "BATCH")))
        while len(replies) < 2:
            replies += exchange(sock, b"")
    reply = parse_message(replies[0])
    assert (reply.get("MSA-1"), reply.get("MSA-2")) == ("AE", "POISON000002")
    assert "OverflowError" in reply.get("ERR-8")
    assert msa(replies[1]) == ("AA", "BATCH000003")
    assert listener.healthy
    _answers_good_message(listener, 2)
    assert "POISON000002" not in _stored(listener)["control_id"].to_list()


def test_a_failure_while_handling_a_message_in_the_event_loop_is_its_nak(
        listener: MLLPListener, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(message: object) -> str:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(store_module, "content_hash", boom)
    reply = parse_message(_send_raw(listener, frame(numbered(4, "LOOP"))))
    assert reply.get("MSA-1") == "AE" and "RecursionError" in reply.get("ERR-8")
    monkeypatch.undo()
    assert listener.healthy
    _answers_good_message(listener, 4)


class _Fatal(BaseException):
    """What no handler of a message catches: it kills the thread it is raised in."""


def test_a_dead_store_thread_stops_the_listener_loudly(listener: MLLPListener,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _answers_good_message(listener, 5)
    assert listener.healthy
    listener.check()

    def die(self: MessageStore, items: object) -> None:
        raise _Fatal("store thread killed")

    monkeypatch.setattr(MessageStore, "add_many", die)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as sock:
        sock.sendall(frame(numbered(6, "VOID")))
        sock.settimeout(5)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionError, TimeoutError):
            pass
    assert b"MSA|AA" not in data  # never acknowledged into a void
    deadline = time.monotonic() + 5
    while listener.healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not listener.healthy
    assert isinstance(listener.failure, _Fatal)
    with pytest.raises(StoreError, match="stopped accepting.*store thread killed"):
        listener.check()
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
    assert "VOID000006" not in _stored(listener)["control_id"].to_list()


# -- 7.3: a duplicate is the same sender, id and content -----------------------------------------
A01 = "MSH|^~\\&|ADT|H|KIT|R|20260301080000||ADT^A01|4711|P|2.5.1\rEVN|A01\rPID|1||MRN9^^^H^MR||DOE^JANE\r"
A08 = ("MSH|^~\\&|ADT|H|KIT|R|20260301090000||ADT^A08|4711|P|2.5.1\rEVN|A08\r"
       "PID|1||MRN9^^^H^MR||DOE^JANET\r")


def test_reused_control_id_with_other_content_is_stored_and_flagged(listener: MLLPListener) -> None:
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
        first = sender.send(A01)
        second = sender.send(A08)  # a sender that recycles control ids
        again = sender.send(A01.replace("\r", "\n"))  # a true duplicate (other line ends)
    assert first.text == ""
    assert "reused" in second.text and "duplicate" in again.text
    stored = _stored(listener)
    assert stored["message_type"].to_list() == ["ADT^A01", "ADT^A08"]
    assert stored["reused_control_id"].to_list() == [False, True]
    frames = listener.store.frames() if listener.store else {}
    assert frames["messages"]["reused_control_id"].to_list() == [False, True]
    assert frames["patients"]["given"].to_list() == ["JANE", "JANET"]
    assert listener.store is not None and listener.store.counters()["duplicates"] == 1


_V1_SCHEMA = """
CREATE TABLE messages (id INTEGER PRIMARY KEY, received_time TEXT NOT NULL, peer TEXT NOT NULL DEFAULT '',
    sending_application TEXT NOT NULL, sending_facility TEXT NOT NULL, control_id TEXT NOT NULL,
    message_type TEXT NOT NULL, raw TEXT NOT NULL,
    UNIQUE (sending_application, sending_facility, control_id));
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def test_a_store_written_by_the_previous_kit_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_V1_SCHEMA)
        db.execute("INSERT INTO messages VALUES (1, '2026-03-01T08:00:00.000000', 'p', 'ADT', 'H', '4711', "
                   "'ADT^A01', ?)", (A01,))
        db.execute("INSERT INTO counters VALUES ('duplicates', 3)")
    with MLLPListener(path) as listener:
        with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
            assert "duplicate" in sender.send(A01).text
            assert "reused" in sender.send(A08).text
        stored = _stored(listener)
        assert stored["id"].to_list() == [1, 2]
        assert stored["reused_control_id"].to_list() == [False, True]
        assert stored["content_hash"].str.len_chars().to_list() == [64, 64]
        assert listener.store is not None and listener.store.counters()["duplicates"] == 4
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    with MessageStore(path) as reopened:  # idempotent
        assert reopened.count() == 2


# -- 8.1 / 8.3: acknowledged means readable in the frames (or skipped with a reason) --------------
def test_every_acknowledged_message_is_in_its_frames_or_skipped(listener: MLLPListener) -> None:
    filler_only = EPIC_SIU
    no_id = EPIC_SIU.replace("SCH||10017892^EPIC|", "SCH|||").replace("0000049501", "NOID")
    backwards = EPIC_SIU.replace("^^30^20260315093000^20260315093000", "^^30^20260315100000^20260315090000") \
        .replace("0000049501", "BACKWARDS")
    oru_no_pid = "MSH|^~\\&|LIS|H|KIT|R|2026||ORU^R01|ORUNOPID|P|2.5.1\rOBR|1|P|F|X\rOBX|1|NM|A||1\r"
    with MLLPSender("127.0.0.1", listener.port, timeout=5, retry=ONCE) as sender:
        acks = sender.send_many([filler_only, no_id, backwards, oru_no_pid])
        bom = _send_raw(listener, frame(b"\xef\xbb\xbf" + EPIC_SIU.replace("0000049501", "BOM1").encode()))
    assert acks["ack_code"].to_list() == ["AA"] * 4 and msa(bom) == ("AA", "BOM1")
    assert listener.store is not None
    frames = listener.store.frames()
    appts = frames["appointments"]
    assert sorted(appts["control_id"]) == ["0000049501", "BOM1"]
    assert appts["appointment_id"].to_list() == ["10017892", "10017892"]
    skipped = frames["skipped"]
    assert sorted(zip(skipped["control_id"], skipped["table"], strict=True)) == [
        ("BACKWARDS", "appointments"), ("NOID", "appointments"), ("ORUNOPID", "orders")]
    assert all(skipped["reason"].str.len_chars() > 10)
    # every stored (acknowledged) message is in messages; those that miss a table say why
    assert frames["messages"]["control_id"].to_list() == _stored(listener)["control_id"].to_list()
    table = appointments(_stored(listener)["raw"])
    assert table["appointment_id"].to_list() == ["10017892"]
    assert table["filler_appointment_id"][0] == "10017892"


def test_unresolvable_host_names_the_host_setting(tmp_path: Path) -> None:
    listener = MLLPListener(tmp_path / "feed.db", host="no-such-host.invalid", port=0)
    with pytest.raises(ConfigError) as info:
        listener.start()
    assert info.value.key == "hl7.host"
    listener.stop()
