"""kit.services.audit: append-only, hash-chained, durable under concurrency, queryable as a frame."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from kit import audit
from kit.audit import AuditEvent
from kit.cli import cli
from kit.errors import StoreError
from kit.services.audit import AUDIT_SCHEMA, AuditLog, enable, read_frame, release, verify


def _event(i: int, **fields: object) -> AuditEvent:
    return AuditEvent("pacs.find", who=f"user:u{i % 3}", patient_ids=(f"MRN{i % 5}",),
                      study_uids=(f"1.2.{i}",), count=i, **fields)  # type: ignore[arg-type]


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    with AuditLog(tmp_path / "audit.db") as opened:
        opened.append([_event(i) for i in range(10)])
    return AuditLog(tmp_path / "audit.db")


def test_frame_and_filters(log: AuditLog) -> None:
    frame = log.frame()
    assert frame.schema == pl.Schema(AUDIT_SCHEMA)
    assert frame["seq"].to_list() == list(range(1, 11)) and frame["count"].to_list() == list(range(10))
    assert log.frame(patient="MRN2")["count"].to_list() == [2, 7]
    assert log.frame(study="1.2.3")["count"].to_list() == [3]
    assert log.frame(who="user:u1", action="pacs")["count"].to_list() == [1, 4, 7]
    assert log.frame(action="fhir").is_empty()
    assert log.frame(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).is_empty()
    assert log.frame(since="2000-01-01").height == 10
    log.close()


def test_append_only_through_sql(log: AuditLog) -> None:
    db = sqlite3.connect(log.path)
    for sql in ("UPDATE audit SET who = 'user:mallory' WHERE seq = 3", "DELETE FROM audit WHERE seq = 3",
                "DELETE FROM audit_ids", "UPDATE audit_ids SET value = 'MRN9'"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    db.close()
    assert verify(log.path).ok and log.frame().height == 10
    log.close()


def _tamper(path: Path, *sql: str) -> None:
    """Edit the log behind its back: drop the guards, change rows, put the guards back."""
    db = sqlite3.connect(path)
    for trigger in ("audit_no_update", "audit_no_delete", "audit_ids_no_update", "audit_ids_no_delete"):
        db.execute(f"DROP TRIGGER {trigger}")
    for statement in sql:
        db.execute(statement)
    db.commit()
    db.close()


@pytest.mark.parametrize("sql, found", [
    (["UPDATE audit SET record = replace(record, 'MRN3', 'MRN4') WHERE seq = 4"], "row 4: its content"),
    (["UPDATE audit SET who = 'user:x' WHERE seq = 2"], "row 2: its columns"),
    (["DELETE FROM audit WHERE seq = 5"], "row 5 missing"),
    (["DELETE FROM audit_ids WHERE seq = 6"], "identifier index"),
    (["UPDATE audit_ids SET value = 'MRN9' WHERE seq = 1 AND kind = 'patient'"], "identifier index"),
])
def test_tampering_is_detected(log: AuditLog, sql: list[str], found: str) -> None:
    log.close()
    assert verify(log.path).ok
    _tamper(log.path, *sql)
    result = verify(log.path)
    assert not result.ok and any(found in p for p in result.problems), result.problems
    runner = CliRunner()
    out = runner.invoke(cli, ["audit", "--log", str(log.path), "--verify"])
    assert out.exit_code == 1 and "AuditLogError" in out.stderr and "broken:" in out.stdout


def test_a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(log: AuditLog) -> None:
    from kit.services.audit import chain_hash

    log.close()
    db = sqlite3.connect(log.path)
    prev, record = db.execute("SELECT prev, record FROM audit WHERE seq = 3").fetchone()
    db.close()
    forged = record.replace("MRN2", "MRN0")  # row 3 is the third event, of MRN2
    assert forged != record
    _tamper(log.path, f"UPDATE audit SET record = '{forged}', hash = '{chain_hash(prev, 3, forged)}' "
                      f"WHERE seq = 3",
            "UPDATE audit_ids SET value = 'MRN0' WHERE seq = 3 AND kind = 'patient'")
    problems = verify(log.path).problems
    assert problems == ("row 4: not chained to the row before it",)


def test_verify_cli_ok_prints_rows_and_head(log: AuditLog) -> None:
    log.close()
    out = CliRunner().invoke(cli, ["audit", "--log", str(log.path), "--verify"])
    assert out.exit_code == 0 and out.stdout.startswith("ok: 10 rows, head ")
    out = CliRunner().invoke(cli, ["audit", "--log", str(log.path), "--patient", "MRN1", "--json"])
    assert [r["count"] for r in json.loads(out.stdout)] == [1, 6]
    out = CliRunner().invoke(cli, ["audit", "--log", str(log.path), "--since", "yesterday"])
    assert out.exit_code == 2


def test_not_a_log_is_a_store_error(tmp_path: Path) -> None:
    garbage = tmp_path / "g.db"
    garbage.write_bytes(b"\xff" * 4096)
    with pytest.raises(StoreError):
        read_frame(garbage)
    with pytest.raises(StoreError):
        read_frame(tmp_path / "none.db")


def test_many_threads_emitting_lose_nothing_and_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = enable(path)
    threads, per = 8, 60
    try:
        def work(t: int) -> None:
            for i in range(per):
                audit.record("fhir.read", who=f"user:t{t}", patient_ids=[f"P{t}-{i}"])

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        release(log)
    assert audit.sinks() == () or log not in audit.sinks()
    frame = read_frame(path)
    assert frame.height == threads * per
    assert sorted(frame["patient_ids"].list.first().to_list()) == sorted(
        f"P{t}-{i}" for t in range(threads) for i in range(per))
    for t in range(threads):  # each thread's events in its order
        mine = frame.filter(pl.col("who") == f"user:t{t}")["patient_ids"].list.first().to_list()
        assert mine == [f"P{t}-{i}" for i in range(per)]
    assert verify(path).ok


def _append_from_process(path: str, n: int, tag: str) -> None:
    with AuditLog(path) as log:
        for i in range(n):
            log.append([AuditEvent("hl7.receive", who=f"peer:{tag}", count=i)])


def test_several_processes_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_from_process, args=(str(path), 40, str(p))) for p in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify(path)
    assert result.ok and result.rows == 120


def test_a_failed_commit_fails_only_its_caller(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    log._db.close()  # the database went away under the log
    with pytest.raises(StoreError):
        log.append([_event(1)])
