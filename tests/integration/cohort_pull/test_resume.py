"""Must show: a pull of 50 studies killed twice (kill -9) comes back with every study exactly once,
never more than the configured associations open at the PACS (counted at the server), and no
study that was finished before a kill is asked for again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

from tests.integration.cohort_pull.helpers import (
    CountingPACS,
    Study,
    cohort_frame,
    folder_contents,
    journal_states,
)

KIT = [sys.executable, "-m", "kit.cli"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_COHORT_BACKOFF": "0.1", "KIT_COHORT_MAX_BACKOFF": "0.5", "NO_COLOR": "1"})
    return env


def _start(cohort: Path, out: Path, pacs: CountingPACS, log: Path) -> subprocess.Popen[bytes]:
    argv = [*KIT, "cohort", "pull", str(cohort), "--out-dir", str(out), "--port", str(pacs.port),
            "--max-associations", "2", "--images-per-second", "40", "-o", str(out.parent / "report.parquet")]
    return subprocess.Popen(argv, cwd=out.parent, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"), start_new_session=True)  # noqa: SIM115


def _kill_when(proc: subprocess.Popen[bytes], out: Path, done_at_least: int,
               timeout: float = 60.0) -> dict[str, str]:
    """kill -9 the job once ``done_at_least`` studies are done; the journal's states at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before it could be killed"
        states = journal_states(out)
        if sum(s == "done" for s in states.values()) >= done_at_least:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return journal_states(out)  # what the killed job left (its last commit)
        time.sleep(0.03)
    os.kill(proc.pid, signal.SIGKILL)
    raise AssertionError(f"fewer than {done_at_least} studies done within {timeout}s")


def test_kill_twice_then_finish_gets_every_study_once(tmp_path: Path, pacs: CountingPACS,
                                                      studies_dir: tuple[Path, list[Study]]) -> None:
    _, studies = studies_dir
    cohort = tmp_path / "cohort.csv"
    cohort_frame(studies).write_csv(cohort)
    out = tmp_path / "out"
    log = tmp_path / "stderr.log"

    snapshots: list[tuple[int, dict[str, str]]] = []
    for done_at_least in (10, 28):
        proc = _start(cohort, out, pacs, log)
        states = _kill_when(proc, out, done_at_least)
        pacs.wait_idle()  # the killed job's connections are gone at the server too
        with pacs.lock:
            snapshots.append((len(pacs.retrieves), states))
        assert (out / ".kit-cohort" / "partial").exists()

    proc = _start(cohort, out, pacs, log)
    assert proc.wait(120) == 0, log.read_text()

    # every study exactly once on disk, with exactly its instances, nothing else left behind
    contents = folder_contents(out)
    assert contents == {s.uid: set(s.sops) for s in studies}
    assert not list((out / ".kit-cohort" / "partial").iterdir())
    report = pl.read_parquet(tmp_path / "report.parquet")
    assert set(report["status"]) == {"retrieved"}
    assert report["study_instance_uid"].n_unique() == 50
    assert report.filter(pl.col("item").str.starts_with("patient_id=MRNCOH00 ") |
                         (pl.col("item") == "patient_id=MRNCOH00")).height == 5
    assert pl.read_csv(out / "report.csv").height == report.height

    # the kills hit the job mid-way: some done, some mid-retrieve
    (first_at, first), (second_at, second) = snapshots
    done1 = {u for u, s in first.items() if s == "done"}
    done2 = {u for u, s in second.items() if s == "done"}
    assert 10 <= len(done1) < len(done2) < 50
    assert any(s == "retrieving" for s in (*first.values(), *second.values())), \
        "no kill landed during a retrieve"

    # counted at the server: the cap held, and nothing finished before a kill was fetched again
    assert 1 <= pacs.peak <= 2, pacs.peak
    assert not done1 & set(pacs.retrieves[first_at:])
    assert not done2 & set(pacs.retrieves[second_at:])
    assert set(pacs.retrieves) == {s.uid for s in studies}
    assert len(pacs.retrieves) <= 50 + 2 * 2  # at most the studies in flight at each kill again
