"""Cohort pulls on a Dask LocalCluster of 2 worker processes against the counting embedded PACS:
the same report and files as the local path, the caps held across all workers (counted at the
server), and a killed client that resumes without fetching a finished study again."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kit.cohort import CohortPull, pull
from kit.cohort.dask import DaskLimiter
from kit.config import DaskSettings, DicomWebSettings, Secret, Settings
from kit.errors import InvalidInputError, KitError
from kit.scale.cluster import dask_client
from tests.integration.cohort_pull.conftest import settings_for
from tests.integration.cohort_pull.helpers import (
    CountingPACS,
    Study,
    cohort_frame,
    folder_contents,
    journal_states,
    make_studies,
)

distributed = pytest.importorskip("distributed")

KIT = [sys.executable, "-m", "kit.cli"]


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    """2 worker processes with 2 threads each: 4 tasks at once, more than any cap below."""
    with dask_client("local", DaskSettings(workers=2, threads_per_worker=2, timeout=60)) as c:
        assert len(c.nthreads()) == 2 and sum(c.nthreads().values()) == 4
        yield c


def _accessions(studies: list[Study]) -> pl.DataFrame:
    return pl.DataFrame({"accession_number": [s.accession for s in studies]})


def _digests(out: Path) -> dict[str, str]:
    return {f"{p.parent.name}/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
            for p in out.glob("*/*.dcm") if p.parent.name != ".kit-cohort"}


def test_the_same_report_and_files_as_the_local_path(
        tmp_path: Path, pacs: CountingPACS, client: distributed.Client,
        studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:12]
    cohort = pl.concat([cohort_frame(studies), pl.DataFrame({"accession_number": ["NOSUCH1"]}).with_columns(
        study_instance_uid=pl.lit(None, pl.String), mrn=pl.lit(None, pl.String),
        study_date=pl.lit(None, pl.String))])
    settings = settings_for(pacs)
    local = pull(cohort, tmp_path / "local", settings=settings, progress=False, dask="")
    asked = len(pacs.retrieves)
    on_dask = pull(cohort, tmp_path / "dask", settings=settings, progress=False, dask=client)

    def same(frame: pl.DataFrame, out: Path) -> pl.DataFrame:
        return frame.drop("seconds").with_columns(pl.col("path").str.replace(str(out), "OUT", literal=True))

    assert same(on_dask, tmp_path / "dask").equals(same(local, tmp_path / "local"))
    assert pl.read_csv(tmp_path / "dask" / "report.csv").height == on_dask.height
    assert on_dask.filter(pl.col("status") == "failed")["item"].to_list() == ["accession_number=NOSUCH1"]
    assert folder_contents(tmp_path / "dask") == folder_contents(tmp_path / "local")
    assert _digests(tmp_path / "dask") == _digests(tmp_path / "local") != {}
    assert sorted(pacs.retrieves[asked:]) == sorted(pacs.retrieves[:asked])  # each study once per pull
    assert not list((tmp_path / "dask" / ".kit-cohort" / "partial").iterdir())
    # a second run on Dask asks the PACS for nothing
    again = pull(cohort, tmp_path / "dask", settings=settings, progress=False, dask=client)
    assert same(again, tmp_path / "dask").equals(same(on_dask, tmp_path / "dask"))
    assert len(pacs.retrieves) == 2 * asked


@dataclasses.dataclass(frozen=True)
class PerWorkerLimiter(DaskLimiter):
    """The wrong design, as a control: each worker process caps its own associations."""

    @contextlib.contextmanager
    def association(self) -> Iterator[None]:
        with _per_process_slots(self.max_associations):
            yield


_SLOTS: dict[int, threading.BoundedSemaphore] = {}


def _per_process_slots(n: int) -> threading.BoundedSemaphore:
    return _SLOTS.setdefault(n, threading.BoundedSemaphore(n))


@pytest.mark.parametrize("cap", [1, 2])
def test_the_association_cap_holds_across_all_workers(
        tmp_path: Path, pacs: CountingPACS, client: distributed.Client,
        studies_dir: tuple[Path, list[Study]], cap: int) -> None:
    studies = studies_dir[1][:10]
    settings = settings_for(pacs, max_associations=cap, images_per_second=150.0)
    report = pull(_accessions(studies), tmp_path / "out", settings=settings, progress=False, dask=client)
    assert set(report["status"]) == {"retrieved"}
    assert folder_contents(tmp_path / "out") == {s.uid: set(s.sops) for s in studies}
    assert 1 <= pacs.peak <= cap, pacs.peak  # counted at the server

    # the control: the same pull with one cap per worker process goes over it (2 workers, 4 threads),
    # so the assertion above can fail
    pacs.wait_idle()
    with pacs.lock:
        pacs.peak = 0
    job = CohortPull(_accessions(studies), tmp_path / "control", settings=settings, progress=False,
                     dask=client)
    assert isinstance(job.limiter, DaskLimiter)
    job.limiter = PerWorkerLimiter(**dataclasses.asdict(job.limiter))
    assert set(job.run()["status"]) == {"retrieved"}
    assert pacs.peak > cap, f"a per-worker cap never showed more than {cap} at the server"


def test_the_images_per_second_cap_holds_across_all_workers(
        tmp_path: Path, pacs: CountingPACS, client: distributed.Client) -> None:
    rate = 40.0
    studies = make_studies(tmp_path / "big", 4, per_study=25, prefix="DBIG")
    pacs.import_files([tmp_path / "big"])
    report = pull(_accessions(studies), tmp_path / "out", settings=settings_for(pacs), progress=False,
                  images_per_second=rate, max_associations=4, dask=client)
    assert set(report["status"]) == {"retrieved"}
    assert pacs.peak >= 2, "the studies never ran side by side: the test shows nothing about the rate"
    sent = sorted(pacs.sent)
    assert len(sent) == 100
    # generous bounds (a slow machine spreads them more, never less): the bucket's burst (rate/10), one
    # instance per association on the wire beyond its wait, and a little slack
    slack = rate / 10 + 4 + 2
    took = sent[-1] - sent[0]
    assert took >= (len(sent) - slack) / rate * 0.95, f"{len(sent)} instances in {took:.2f}s"
    busiest = max(sum(1 for t in sent[i:] if t < start + 1.0) for i, start in enumerate(sent))
    assert busiest <= rate + slack, f"{busiest} instances within one second (cap {rate:g}/s)"


def test_a_c_move_or_a_limiter_is_refused_on_dask(tmp_path: Path, pacs: CountingPACS) -> None:
    cohort = _accessions(make_studies(tmp_path / "s", 1, prefix="DREF"))
    with pytest.raises(InvalidInputError, match="C-MOVE"):
        CohortPull(cohort, tmp_path / "out", settings=settings_for(pacs), method="c-move", dask="local")
    with pytest.raises(InvalidInputError, match="limiter or dask"):
        CohortPull(cohort, tmp_path / "out", settings=settings_for(pacs), dask="local",
                   limiter=DaskLimiter("x", 1, 1.0))
    assert not (tmp_path / "out").exists()


def test_dicomweb_secrets_never_travel_to_a_worker(tmp_path: Path, client: distributed.Client) -> None:
    from kit.cohort.dask import DaskRunner

    token = "s3cret-token-for-the-test"
    settings = dataclasses.replace(settings_for_nothing(), dicomweb=DicomWebSettings(
        base="http://127.0.0.1:9/dicom-web", token=Secret(token), timeout=2.0))
    job = CohortPull(pl.DataFrame({"accession_number": ["A1"]}), tmp_path / "out", settings=settings,
                     method="wado", progress=False, dask=client)
    with DaskRunner(job, client) as runner:
        assert runner._job is not None
        shipped = pickle.dumps(runner._job)
        assert token.encode() not in shipped and runner._job.credentials == ("token",)
        # the workers have no KIT_DICOMWEB_TOKEN: the probe says so, before anything is written
        with pytest.raises(KitError, match="KIT_DICOMWEB_TOKEN"):
            runner.probe()
    assert not (tmp_path / "out").exists()


def settings_for_nothing() -> Settings:
    from kit.config import load_settings

    return load_settings(env={})


# -- kill -9 of the client, with the cluster's workers living on ----------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_COHORT_BACKOFF": "0.1", "KIT_COHORT_MAX_BACKOFF": "0.5", "NO_COLOR": "1"})
    return env


def _start(cohort: Path, out: Path, pacs: CountingPACS, address: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [*KIT, "cohort", "pull", str(cohort), "--out-dir", str(out), "--port", str(pacs.port),
            "--max-associations", "2", "--images-per-second", "60", "--dask", address,
            "-o", str(out.parent / "report.parquet")]
    return subprocess.Popen(argv, cwd=out.parent, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"), start_new_session=True)  # noqa: SIM115


def _kill_when(proc: subprocess.Popen[bytes], out: Path, done_at_least: int,
               timeout: float = 90.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the job ended before it could be killed"
        states = journal_states(out)
        if sum(s == "done" for s in states.values()) >= done_at_least:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return journal_states(out)
        time.sleep(0.03)
    os.kill(proc.pid, signal.SIGKILL)
    raise AssertionError(f"fewer than {done_at_least} studies done within {timeout}s")


def test_a_killed_client_resumes_on_the_cluster_without_fetching_a_finished_study_again(
        tmp_path: Path, pacs: CountingPACS, client: distributed.Client,
        studies_dir: tuple[Path, list[Study]]) -> None:
    _, studies = studies_dir
    studies = studies[:30]
    cohort = tmp_path / "cohort.csv"
    _accessions(studies).write_csv(cohort)
    out = tmp_path / "out"
    log = tmp_path / "stderr.log"
    address = client.scheduler.address

    snapshots: list[tuple[int, dict[str, str]]] = []
    for done_at_least in (6, 16):
        proc = _start(cohort, out, pacs, address, log)
        states = _kill_when(proc, out, done_at_least)
        # the killed client's tasks still running on the workers finish (under the same caps)
        pacs.wait_idle(timeout=30)
        with pacs.lock:
            snapshots.append((len(pacs.retrieves), states))

    proc = _start(cohort, out, pacs, address, log)
    assert proc.wait(180) == 0, log.read_text()[-3000:]

    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies}
    assert not list((out / ".kit-cohort" / "partial").iterdir())
    report = pl.read_parquet(tmp_path / "report.parquet")
    assert report["status"].to_list() == ["retrieved"] * len(studies)
    (first_at, first), (second_at, second) = snapshots
    done1 = {u for u, s in first.items() if s == "done"}
    done2 = {u for u, s in second.items() if s == "done"}
    assert 6 <= len(done1) < len(done2) < len(studies)
    # counted at the server, across the killed clients' leftover tasks too
    assert 1 <= pacs.peak <= 2, pacs.peak
    assert not done1 & set(pacs.retrieves[first_at:])
    assert not done2 & set(pacs.retrieves[second_at:])
    assert set(pacs.retrieves) == {s.uid for s in studies}
    assert len(pacs.retrieves) <= len(studies) + 2 * 4  # at most the tasks in flight at each kill again


# -- a worker that dies holding an association slot -----------------------------------------------

def _hold_a_slot_and_die(limiter: DaskLimiter, marker: str) -> str:
    """Take the one slot and die with it (once: Dask runs a task again after its worker died)."""
    if os.path.exists(marker):
        return "ran again"
    with limiter.association():
        Path(marker).touch()
        os._exit(1)
    return "unreachable"  # pragma: no cover


def _take_a_slot(limiter: DaskLimiter) -> float:
    started = time.monotonic()
    with limiter.association():
        return time.monotonic() - started


def test_a_worker_that_dies_holding_a_slot_frees_it_after_the_lease_timeout(tmp_path: Path) -> None:
    import dask

    timeouts = {"distributed.scheduler.locks.lease-timeout": "2s",
                "distributed.scheduler.locks.lease-validation-interval": "0.5s"}
    with dask.config.set(timeouts), dask_client("local", DaskSettings(workers=2, timeout=60)) as c:
        limiter = DaskLimiter.for_job(tmp_path / "journal.sqlite", "dicom://X@h:1", 1, 10.0).start(c)
        marker = str(tmp_path / "died")
        slots = distributed.Semaphore(max_leases=1, name=limiter._names[0], scheduler_rpc=c.scheduler,
                                      loop=c.loop)
        first = c.submit(_hold_a_slot_and_die, limiter, marker, pure=False)
        deadline = time.monotonic() + 30
        while not os.path.exists(marker):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        died = time.monotonic()
        held = []
        while slots.get_value():  # the dead worker's lease, until the scheduler times it out
            held.append(time.monotonic() - died)
            assert held[-1] < 15, "a dead worker held its association slot"
            time.sleep(0.1)
        freed = time.monotonic() - died
        # held for about the lease timeout (2 s, checked every 0.5 s), then free for the others
        assert 1.0 <= freed <= 10.0, freed
        assert c.submit(_take_a_slot, limiter, pure=False).result(timeout=60) < 5.0
        assert first.result(timeout=60) == "ran again"
        limiter.finish(c)


def test_leases_that_never_time_out_are_refused(client: distributed.Client) -> None:
    import dask

    with dask.config.set({"distributed.scheduler.locks.lease-timeout": "inf"}), \
            pytest.raises(KitError, match="hold its association slot forever"):
        DaskLimiter("kit-cohort-test", 1, 1.0).start(client)


def test_the_cli_refuses_dask_with_move(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort.csv"
    cohort.write_text("accession_number\nA1\n")
    proc = subprocess.run([*KIT, "cohort", "pull", str(cohort), "--out-dir", str(tmp_path / "out"),
                           "--dask", "local", "--move"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "--move sends to one fixed address" in proc.stderr
    proc = subprocess.run([*KIT, "cohort", "pull", str(cohort), "--out-dir", str(tmp_path / "out"),
                           "--dask", "nowhere:1"], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "ConfigError" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_new_run_stops_the_old_runs_new_associations_and_keeps_its_bucket(
        tmp_path: Path, client: distributed.Client) -> None:
    from kit.cohort.limiter import Stopped

    base = DaskLimiter.for_job(tmp_path / "journal.sqlite", "dicom://X@h:1", 1, 100.0)
    first = base.start(client)
    with first.association():
        first.images(3)
    before = client.get_metadata(base._key)
    second = base.start(client)  # the first run's client was killed; a new one starts the job again
    after = client.get_metadata(base._key)
    assert after["run"] == second.run != first.run
    assert (after["tokens"], after["at"]) == (before["tokens"], before["at"])  # no fresh burst
    with pytest.raises(Stopped, match="newer run"), first.association():
        pass  # pragma: no cover
    first.images(1)  # a transfer the old run began ends under the bucket
    with second.association():
        second.images(1)
    second.finish(client)
    for limiter in (first, second):
        with pytest.raises(Stopped, match="has ended"):
            limiter.images(1)


def test_a_worker_killed_mid_pull_loses_nothing_and_the_caps_hold(
        tmp_path: Path, pacs: CountingPACS, client: distributed.Client,
        studies_dir: tuple[Path, list[Study]]) -> None:
    studies = studies_dir[1][:20]
    out = tmp_path / "out"
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["report"] = pull(_accessions(studies), out, progress=False, dask=client,
                                    settings=settings_for(pacs, images_per_second=60.0))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            result["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 90
    while sum(s == "done" for s in journal_states(out).values()) < 5:
        assert time.monotonic() < deadline and worker.is_alive(), result
        time.sleep(0.02)
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # its nanny starts another
    worker.join(180)
    assert not worker.is_alive() and "error" not in result, result.get("error")
    report = result["report"]
    assert isinstance(report, pl.DataFrame) and report["status"].to_list() == ["retrieved"] * len(studies)
    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies}
    assert 1 <= pacs.peak <= 2, pacs.peak
    deadline = time.monotonic() + 60
    while len(client.nthreads()) < 2:  # leave the module's cluster as it was
        assert time.monotonic() < deadline
        time.sleep(0.1)
