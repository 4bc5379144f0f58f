"""The Medix job table (SQLite file, no sockets) and the bearer-token check."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kit.config import Secret
from kit.errors import ConfigError, InvalidInputError, StoreError
from kit.services._bearer import BearerAuth, load_token
from kit.services.medix_protocol import DownloadRequest, MedixStatus
from kit.services.medix_store import JobStore

S = MedixStatus
REQ = DownloadRequest("1.2.3", "http://127.0.0.1:9/hook", (("X-Key", "secret-value"),))


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite")


def test_a_job_is_stored_with_process_started_and_walks_its_steps(store: JobStore, tmp_path: Path) -> None:
    job = store.create(REQ, max_unfinished=5)
    assert job is not None and job.state == "queued" and job.events == [(0, None)]
    claimed = store.claim()
    assert claimed is not None and claimed.id == job.id and claimed.state == "running"
    assert store.claim() is None
    for step in (S.REQUEST_SENT, S.EXPORT_STARTED, S.COMPRESS_STARTED):
        assert store.report(job.id, step)
    assert not store.report(job.id, S.EXPORT_STARTED)  # a replayed step is not reported twice
    assert store.report(job.id, S.COMPRESS_FINISHED, file=f"{job.id}.zip", size=10, instances=2)
    assert store.report(job.id, S.EXPORT_COMPLETED, file_url="http://x/f")
    done = store.get(job.id)
    assert done is not None and done.state == "done" and done.file == f"{job.id}.zip"
    assert [c for c, _ in done.events] == [0, 1, 2, 3, 4, 5] and done.events[-1] == (5, "http://x/f")
    with pytest.raises(InvalidInputError):
        store.report(job.id, S.EXPORT_FAILED)
    store.close()
    assert JobStore(tmp_path / "jobs.sqlite").get(job.id) == done  # durable across a reopen


def test_the_queue_is_bounded(store: JobStore) -> None:
    assert store.create(REQ, max_unfinished=2) is not None
    assert store.create(REQ, max_unfinished=2) is not None
    assert store.create(REQ, max_unfinished=2) is None
    assert store.unfinished() == 2


def test_an_interrupted_job_is_resumed_then_failed_with_the_code_of_its_step(store: JobStore) -> None:
    early = store.create(REQ, max_unfinished=5)
    late = store.create(REQ, max_unfinished=5)
    assert early is not None and late is not None
    for _ in range(2):
        store.claim()
    store.report(early.id, S.REQUEST_SENT)
    store.report(late.id, S.REQUEST_SENT)
    store.report(late.id, S.EXPORT_STARTED)
    assert sorted(store.recover(max_resumes=1)) == sorted([early.id, late.id])
    assert {j.state for j in store.jobs()} == {"queued"}
    for _ in range(2):
        store.claim()
    assert store.recover(max_resumes=1) == []  # a second interruption: failed with its step's code
    failed_early, failed_late = store.get(early.id), store.get(late.id)
    assert failed_early is not None and failed_early.status is S.REQUEST_FAILED
    assert failed_late is not None and failed_late.status is S.EXPORT_FAILED
    assert "restart" in (failed_late.error or "")


def test_webhook_events_are_handed_out_in_order_with_retries(store: JobStore) -> None:
    job = store.create(REQ, max_unfinished=5)
    assert job is not None
    store.claim()
    store.report(job.id, S.REQUEST_SENT)
    (due,) = store.due(100.0)
    assert due.delivered == 0
    store.retry_later(job.id, 0, attempt=1, when=200.0, error="HTTP 500")
    assert store.due(150.0) == [] and store.next_due() == 200.0
    (due,) = store.due(200.0)
    assert due.attempt == 1 and due.webhook_error == "HTTP 500"
    assert store.due(200.0, skip={job.id}) == []
    store.delivered(job.id, 0)
    store.delivered(job.id, 0)  # a stale second confirmation changes nothing
    (due,) = store.due(0.0)
    assert due.delivered == 1 and due.attempt == 0
    store.delivered(job.id, 1)
    assert store.due(1e12) == [] and store.next_due() is None


def test_public_view_hides_the_webhook_headers(store: JobStore) -> None:
    job = store.create(REQ, max_unfinished=5)
    assert job is not None and "secret-value" not in str(job.public())


def test_a_file_that_is_not_the_job_table_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        JobStore(bad)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE jobs (id TEXT)")
    with pytest.raises(StoreError):
        JobStore(other).create(REQ, max_unfinished=1)


TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize(("header", "ok"), [
    (f"Bearer {TOKEN}", True), (f"bearer {TOKEN}", True), (f"Bearer  {TOKEN} ", True),
    (f"Bearer {TOKEN}x", False), (f"Bearer {TOKEN[:-1]}", False), (TOKEN, False), (f"Basic {TOKEN}", False),
    ("Bearer", False), ("", False), (None, False), (b"Bearer " + TOKEN.encode(), True),
    ("Bearer " + "x" * 10_000, False), ("Bearer \xff\xfe", False),
])
def test_bearer_check(header: str | bytes | None, ok: bool) -> None:
    auth = BearerAuth(Secret(TOKEN))
    assert auth.allows(header) is ok
    assert TOKEN not in repr(auth)


def test_token_loading(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(f"  {TOKEN}\n")
    assert load_token(None, file, key="medix.token").reveal() == TOKEN
    assert load_token(Secret(TOKEN), None, key="medix.token").reveal() == TOKEN
    with pytest.raises(ConfigError, match="KIT_MEDIX_TOKEN"):
        load_token(None, None, key="medix.token")
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(Secret("short"), None, key="medix.token")
    with pytest.raises(ConfigError, match="spaces"):
        load_token(Secret("a token with spaces in it"), None, key="medix.token")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_token(None, garbage, key="medix.token")
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(None, tmp_path / "missing", key="medix.token")
