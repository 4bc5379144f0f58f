"""The journal (SQLite on a local file, no network): states, recovery, the lock, the source."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kit.cohort.journal import Journal
from kit.cohort.plan import CohortItem, FoundStudy, Outcome
from kit.errors import CohortError, StoreError

SOURCE = "dicom://PACS@127.0.0.1:104"
A1, A2 = CohortItem(accession_number="A1", row=1), CohortItem(accession_number="A2", row=2)
M1 = CohortItem(patient_id="M1", row=3)


def _resolve_all(journal: Journal, found: dict[str, list[FoundStudy]]) -> None:
    while (claimed := journal.claim_item(0.0)) is not None:
        journal.resolved(claimed[0].key, found[claimed[0].key])


def test_a_study_is_done_once_and_never_claimed_again(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path, source=SOURCE) as journal:
        assert journal.add_items([A1, A2, M1]) == 3
        assert journal.add_items([A1]) == 0
        s1, s2 = FoundStudy("1.1", "A1", "M1", "20240101", 3), FoundStudy("1.2", "A2", "M1")
        _resolve_all(journal, {A1.key: [s1], A2.key: [s2], M1.key: [s1, s2]})  # overlapping items
        assert journal.claim_study(0.0) == ("1.1", 0)
        journal.study_done("1.1", instances=3, size=30, seconds=0.1, path="/o/1.1")
        assert journal.claim_study(0.0) == ("1.2", 0)
        # killed here: 1.2 is "retrieving"
    with Journal(path, source=SOURCE) as journal:
        assert journal.claim_study(0.0) is None  # nothing pending until recovered
        assert journal.recover() == {"studies": 1, "items": 0, "retried": 0}
        assert journal.claim_study(0.0) == ("1.2", 0)
        assert journal.claim_study(0.0) is None  # 1.1 is done: never again
        journal.study_done("1.2", instances=1, size=5, seconds=0.1, path="/o/1.2")
        assert journal.done_studies() == {"1.1", "1.2"}
        assert journal.next_due() is None
        rows = journal.report_rows([M1.key, A1.key])
        assert [(r["item"], r["study_instance_uid"]) for r in rows] == [
            (M1.key, "1.1"), (M1.key, "1.2"), (A1.key, "1.1")]
        counts = journal.counts()
        assert counts["studies_done"] == 2 and counts["instances"] == 4 and counts["bytes"] == 35
        with pytest.raises(ValueError, match="not allowed"):
            journal.study_done("1.1", instances=3, size=30, seconds=0.1, path="/o/1.1")


def test_failures_retry_later_or_stay_failed_and_a_new_run_retries_transient_ones(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", source=SOURCE) as journal:
        journal.add_items([A1, A2])
        claimed = journal.claim_item(0.0)
        assert claimed is not None and claimed[1] == 0
        journal.item_failed(A1.key, Outcome(False, 0.0, "NotFoundError: x", False))
        claimed = journal.claim_item(0.0)
        assert claimed is not None
        journal.resolved(A2.key, [FoundStudy("1.2")])
        journal.claim_study(0.0)
        journal.study_failed("1.2", Outcome(True, 50.0, "PeerTimeoutError: x", True))
        assert journal.claim_study(10.0) is None and journal.next_due() == 50.0
        assert journal.claim_study(50.0) == ("1.2", 1)
        journal.study_failed("1.2", Outcome(False, 0.0, "gave up after 2 attempt(s): x", True))
        assert journal.next_due() is None
        assert journal.recover(retry_failed=False)["retried"] == 0
        assert journal.recover() == {"studies": 0, "items": 0, "retried": 1}  # not the "not found" item
        assert journal.claim_study(0.0) == ("1.2", 0)
        rows = {r["item"]: r for r in journal.report_rows()}
        assert rows[A1.key]["item_state"] == "failed" and rows[A1.key]["item_reason"] == "NotFoundError: x"


def test_one_job_at_a_time_and_one_source_per_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path, source=SOURCE):
        with pytest.raises(CohortError, match="another cohort job"):
            Journal(path, source=SOURCE)
    with pytest.raises(CohortError, match="belongs to a pull from dicom://PACS@127.0.0.1:104"):
        Journal(path, source="dicom://OTHER@127.0.0.1:104")
    Journal(path, source=SOURCE).close()  # the refusals released the lock


def test_not_a_journal_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the cohort journal"):
        Journal(path, source=SOURCE)
    other = tmp_path / "v.sqlite"
    Journal(other, source=SOURCE).close()
    with sqlite3.connect(other) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    with pytest.raises(StoreError, match="version '99'"):
        Journal(other, source=SOURCE)


def test_the_journal_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite", source=SOURCE) as journal:
        assert journal._db is not None
        assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
