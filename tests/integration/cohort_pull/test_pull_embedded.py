"""Cohort pulls against the embedded PACS (in-process): a PACS that goes away and comes back,
not-found items, the images-per-second cap, C-MOVE, what a crash leaves behind."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kit.cohort import CohortPull, pull
from kit.cohort.journal import Journal
from kit.cohort.plan import FoundStudy
from kit.errors import CohortError, InvalidInputError, PeerUnreachableError
from tests.conftest import free_port
from tests.integration.cohort_pull.conftest import settings_for
from tests.integration.cohort_pull.helpers import (
    CountingPACS,
    Study,
    cohort_frame,
    folder_contents,
    journal_states,
    make_studies,
)


def _accessions(studies: list[Study]) -> pl.DataFrame:
    return pl.DataFrame({"accession_number": [s.accession for s in studies]})


def test_a_pacs_that_goes_away_and_comes_back_loses_and_repeats_nothing(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:16]
    out = tmp_path / "out"
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["report"] = pull(_accessions(studies), out, settings=settings_for(pacs), progress=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while sum(s == "done" for s in journal_states(out).values()) < 6:
        assert time.monotonic() < deadline and worker.is_alive(), result
        time.sleep(0.02)
    pacs.stop()  # aborts the associations in flight; then nobody listens
    time.sleep(1.5)
    assert worker.is_alive(), "the job gave up while the PACS was away"
    with pacs.lock:  # after the wait: a retrieve whose last answer came just before the stop is done
        done_before = {u for u, s in journal_states(out).items() if s == "done"}
        asked_before = len(pacs.retrieves)
    pacs.start()  # same port, same data folder
    worker.join(90)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    report: pl.DataFrame = result["report"]
    assert report["status"].to_list() == ["retrieved"] * len(studies)
    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies}
    assert 6 <= len(done_before) < len(studies)
    assert not done_before & set(pacs.retrieves[asked_before:]), "a finished study was fetched again"
    assert {s.uid for s in studies} - done_before <= set(pacs.retrieves[asked_before:])
    assert pacs.peak <= 2


def test_not_found_fails_with_its_reason_and_the_rest_completes(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:4]
    cohort = pl.concat([_accessions(studies[:2]), pl.DataFrame({"accession_number": ["NOSUCH1"]}),
                        _accessions(studies[2:])])
    report = pull(cohort, tmp_path / "out", settings=settings_for(pacs), progress=False)
    assert report["status"].to_list() == ["retrieved", "retrieved", "failed", "retrieved", "retrieved"]
    missing = report.row(2, named=True)
    assert missing["item"] == "accession_number=NOSUCH1" and missing["study_instance_uid"] is None
    assert "not found" in missing["reason"] and "NOSUCH1" in missing["reason"]
    assert missing["attempts"] == 1  # "not found" is final: not retried
    assert folder_contents(tmp_path / "out") == {s.uid: set(s.sops) for s in studies}
    # a rerun asks the PACS for nothing: the found studies are done, "not found" stays failed
    asked = len(pacs.retrieves)
    again = pull(cohort, tmp_path / "out", settings=settings_for(pacs), progress=False)
    assert again.drop("seconds").equals(report.drop("seconds")) and len(pacs.retrieves) == asked


@pytest.mark.parametrize("rate", [40.0])
def test_the_images_per_second_cap_holds_at_the_pacs(tmp_path: Path, pacs: CountingPACS, rate: float) -> None:
    # two studies of 40 instances: one association streams them far faster than the cap
    studies = make_studies(tmp_path / "big", 2, per_study=40, prefix="BIG")
    pacs.import_files([tmp_path / "big"])
    report = pull(_accessions(studies), tmp_path / "out", settings=settings_for(pacs), progress=False,
                  images_per_second=rate, max_associations=2)
    assert set(report["status"]) == {"retrieved"}
    sent = sorted(pacs.sent)
    assert len(sent) == 80
    # a token bucket lets `burst` (rate/10) go at once and each association has one instance on
    # the wire beyond its wait (the PACS sends a C-GET's first one unasked); the rest is spread at
    # `rate`. A lower bound on the time (a slow machine makes it longer, never shorter; uncapped
    # this takes a fraction of it), and an upper one on any second: the wait comes before the
    # answer to an instance, so it holds the PACS's next one back (after, it would not: one more
    # instance per association would go each time the bucket was full).
    slack = rate / 10 + 2
    took = sent[-1] - sent[0]
    assert took >= (len(sent) - slack) / rate * 0.95, f"{len(sent)} instances in {took:.2f}s"
    busiest = max(sum(1 for t in sent[i:] if t < start + 1.0) for i, start in enumerate(sent))
    assert busiest <= rate + slack, f"{busiest} instances within one second (cap {rate:g}/s)"


def test_c_move_with_a_fixed_store_port(tmp_path: Path, pacs_data: Path,
                                        studies_dir: tuple[Path, list[Study]]) -> None:
    store_port = free_port()
    shutil.copytree(pacs_data, tmp_path / "pacs")
    server = CountingPACS(tmp_path / "pacs", port=0, move_destinations={"KITSCU": ("127.0.0.1", store_port)})
    with server:
        base = settings_for(server)
        settings = dataclasses.replace(base, pacs=dataclasses.replace(base.pacs, store_port=store_port))
        studies = studies_dir[1][:5]
        report = pull(_accessions(studies), tmp_path / "out", settings=settings, method="c-move",
                      progress=False)
    server.store.close()
    assert report["status"].to_list() == ["retrieved"] * 5
    assert folder_contents(tmp_path / "out") == {s.uid: set(s.sops) for s in studies}
    assert sorted(server.retrieves) == sorted(s.uid for s in studies)


def test_what_a_crash_left_is_cleaned_and_fetched_again(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:3]
    out = tmp_path / "out"
    settings = settings_for(pacs)
    pull(_accessions(studies[:1]), out, settings=settings, progress=False)
    # the journal of a job killed while retrieving studies[1] and studies[2]; studies[2] was even
    # published (renamed into place) but its "done" was never committed
    job = CohortPull(_accessions(studies), out, settings=settings, progress=False)
    with Journal(job.state_dir / "journal.sqlite", source=job.source.address) as journal:
        journal.add_items(job.items)
        for study in studies[1:]:
            claimed = journal.claim_item(time.time())
            assert claimed is not None and claimed[0].accession_number == study.accession
            journal.resolved(claimed[0].key, [FoundStudy(study.uid, study.accession, study.patient_id)])
            assert journal.claim_study(time.time()) == (study.uid, 0)
    partial = job.partial_dir / studies[1].uid
    partial.mkdir(parents=True)
    (partial / f"{min(studies[1].sops)}.dcm").write_bytes(b"half a file")
    (partial / ".recv-x.part").write_bytes(b"x")
    stale = out / studies[2].uid
    stale.mkdir()
    (stale / "9.9.9.dcm").write_bytes(b"not from this study")
    asked = len(pacs.retrieves)
    report = pull(_accessions(studies), out, settings=settings, progress=False)
    assert report["status"].to_list() == ["retrieved"] * 3
    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies}
    assert not list(job.partial_dir.iterdir())
    assert sorted(pacs.retrieves[asked:]) == sorted(s.uid for s in studies[1:])  # not studies[0]


def test_one_job_per_folder_and_one_pacs_per_journal(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    out = tmp_path / "out"
    cohort = _accessions(studies_dir[1][:1])
    job = CohortPull(cohort, out, settings=settings_for(pacs), progress=False)
    with Journal(job.state_dir / "journal.sqlite", source=job.source.address), \
            pytest.raises(CohortError, match="another cohort job"):
        job.run()
    job.run()
    # the same PACS under another name: the journal cannot know, it refuses
    other = dataclasses.replace(settings_for(pacs), pacs=dataclasses.replace(settings_for(pacs).pacs,
                                                                             host="localhost"))
    with pytest.raises(CohortError, match="belongs to a pull from"):
        pull(cohort, out, settings=other, progress=False)


def test_a_pacs_that_is_down_at_the_start_fails_fast(tmp_path: Path, pacs: CountingPACS) -> None:
    settings = dataclasses.replace(settings_for(pacs), pacs=dataclasses.replace(settings_for(pacs).pacs,
                                                                                port=free_port()))
    started = time.monotonic()
    with pytest.raises(PeerUnreachableError):
        pull(pl.DataFrame({"accession_number": ["A1"]}), tmp_path / "out", settings=settings, progress=False)
    assert time.monotonic() - started < 5


def test_a_bad_cohort_is_refused_before_anything_is_asked(tmp_path: Path, pacs: CountingPACS) -> None:
    with pytest.raises(InvalidInputError, match="row 2: accession_number 'A\\*' contains"):
        pull(pl.DataFrame({"accession": ["A1", "A*"]}), tmp_path / "out", settings=settings_for(pacs))
    assert not (tmp_path / "out").exists() and not pacs.retrieves


def test_the_full_mixed_cohort_resolves_each_study_once(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:5]
    report = pull(cohort_frame(studies), tmp_path / "out", settings=settings_for(pacs), progress=False)
    assert set(report["status"]) == {"retrieved"}
    # the cohort's last row asks for every study of the first patient: the PACS holds 5
    first_patient = [s for s in studies_dir[1] if s.patient_id == studies[0].patient_id]
    wanted = {s.uid for s in studies} | {s.uid for s in first_patient}
    assert len(wanted) == 9 and sorted(pacs.retrieves) == sorted(wanted)
    by_mrn = report.filter(pl.col("item") == f"patient_id={studies[0].patient_id}")
    assert set(by_mrn["study_instance_uid"]) == {s.uid for s in first_patient}  # the PACS's 5
    assert folder_contents(tmp_path / "out") == {s.uid: set(s.sops) for s in (*studies, *first_patient)}


def test_the_progress_bar_counts_studies_instances_and_bytes(
        tmp_path: Path, pacs: CountingPACS, studies_dir: tuple[Path, list[Study]],
        capsys: pytest.CaptureFixture[str]) -> None:
    studies = studies_dir[1][:2]
    report = pull(_accessions(studies), tmp_path / "out", settings=settings_for(pacs), progress=True)
    err = capsys.readouterr().err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    size = int(report["bytes"].sum())
    assert "cohort" in last and "2/2" in last and "study" in last, last
    assert "6 img" in last and f"{size / 1000:.1f} kB" in last, last
