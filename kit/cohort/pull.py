"""Pull a research cohort out of a PACS, politely and resumably (``kit cohort pull``).

::

    from kit.cohort import pull

    report = pull("cohort.csv", "data/cohort")          # or a polars frame
    report.filter(pl.col("status") == "failed")

The cohort names studies by ``accession_number``, ``study_instance_uid`` or
``patient_id`` (MRN), optionally with a ``study_date`` range
(:func:`kit.cohort.plan.items_from_frame`). The job:

1. checks that the PACS answers (C-ECHO or QIDO-RS), before anything is written;
2. records every requested item in a journal (``<out>/.kit-cohort/journal.sqlite``,
   :mod:`kit.cohort.journal`); a rerun on the same folder resumes it: studies
   already on disk are never fetched again, one cut off mid-transfer is fetched
   again cleanly, and transient failures of the last run are tried again;
   then resolves each item by C-FIND (QIDO-RS with ``method="wado"``) and
   fetches each study it names by C-GET (default), C-MOVE or WADO-RS into
   ``<out>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` (:mod:`kit.cohort.retrieve`);
3. holds at most ``max_associations`` associations open at the PACS and lets at
   most ``images_per_second`` instances arrive (:mod:`kit.cohort.limiter`);
   after a transient failure (unreachable, timeout, aborted, busy) the whole
   job backs off before anyone asks the PACS again, and the study is tried
   again, up to ``max_attempts`` times (``[cohort]`` settings);
4. shows a progress bar (studies, instances, bytes, ETA; tqdm, in a terminal or
   a notebook) and returns the report frame (:data:`kit.cohort.plan.REPORT_SCHEMA`),
   also written to ``<out>/report.csv``.

With ``dask="local"``, a scheduler address, or ``[dask] scheduler`` set, the
resolves and retrieves run as tasks on a Dask cluster (:mod:`kit.cohort.dask`):
the caps hold across all its workers (one limiter on the scheduler), the
journal stays with this process (the one writer: workers return each task's
outcome, this process records it), so resuming works as above. Workers write
the studies into the same ``out_dir``: it must be a file system every worker
and this process share. Only C-GET and WADO-RS run there (a C-MOVE sends to
one fixed address).

A failed study is in the report with its reason; :func:`pull` raises only when
the job cannot run (bad cohort, PACS unreachable at the start, the folder held
by another job, a local disk failure).

Written by hand: the scheduling loop; the rest is the modules above.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from kit._files import atomic_path
from kit.cohort.journal import Journal
from kit.cohort.limiter import Limiter, LocalLimiter
from kit.cohort.plan import (
    CohortItem,
    Failure,
    Pause,
    RetryPolicy,
    after_failure,
    items_from_frame,
    report_frame,
)
from kit.cohort.retrieve import Attempt, Fetched, Method, Source, attempt, fetch, probe, resolve
from kit.config import CohortSettings, Settings, load_settings
from kit.errors import InvalidInputError, StoreError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["STATE_DIR", "CohortPull", "pull", "read_cohort"]

log = logging.getLogger("kit.cohort")

#: The job's own folder inside the output folder (journal, lock, studies in transit).
STATE_DIR = ".kit-cohort"
#: How often the loop wakes to refresh the progress bar and check for due work.
TICK_SECONDS = 0.25


def read_cohort(cohort: pl.DataFrame | str | os.PathLike[str]) -> pl.DataFrame:
    """A cohort as a frame: a frame as it is, a ``.csv``/``.tsv`` (every column as text) or ``.parquet`` file.

    Raises
    ------
    InvalidInputError
        The file is missing, unreadable, or not CSV/TSV/parquet.
    """
    if isinstance(cohort, pl.DataFrame):
        return cohort
    path = Path(cohort)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt", ""):
            return pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",",
                               truncate_ragged_lines=False, encoding="utf8")
    except FileNotFoundError as exc:
        raise InvalidInputError(f"cohort file {path} does not exist", source=str(path)) from exc
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        text = str(exc).strip().splitlines()
        raise InvalidInputError(f"cannot read the cohort: {text[0] if text else type(exc).__name__}",
                                source=str(path)) from exc
    raise InvalidInputError(f"a cohort file is .csv, .tsv or .parquet, not {suffix!r}", source=str(path))


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None) if shell is not None else None
    ip = get() if callable(get) else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class _Progress:
    """A tqdm.auto bar over studies (instances, bytes and failures in its postfix)."""

    def __init__(self, show: bool, done: int, total: int, instances: int, size: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total or None, initial=done, desc="cohort", unit="study",
                        file=sys.stderr, disable=not show, leave=True, dynamic_ncols=True)
        self.instances, self.size, self.failed = instances, size, 0
        self._lock = threading.Lock()
        self._shown = 0.0

    def instance(self, n: int = 1) -> None:
        with self._lock:
            self.instances += n

    def studies(self, total: int) -> None:
        if total and total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    def finished(self, size: int = 0, failed: bool = False) -> None:
        with self._lock:
            self.size += size
            self.failed += int(failed)
        self.bar.update(1)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._shown < 0.5:
            return
        self._shown = now
        with self._lock:
            post = f"{self.instances} img, {_size(self.size)}"
            post += f", {self.failed} failed" if self.failed else ""
        self.bar.set_postfix_str(post, refresh=True)

    def close(self) -> None:
        self.refresh(force=True)
        self.bar.close()


class Runner(Protocol):
    """Where a job's tasks run: this process's threads, or a Dask cluster (:mod:`kit.cohort.dask`).

    Each task's future gives an :class:`~kit.cohort.retrieve.Attempt`.
    """

    #: tasks in flight at once
    slots: int
    #: whether ``on_instance`` is called as each instance arrives (else: once per study)
    live_instances: bool

    def probe(self) -> None:
        """Check that the PACS answers (raises its KitError)."""

    def resolve(self, item: CohortItem) -> cf.Future[Attempt]:
        """Start resolving ``item``."""

    def fetch(self, uid: str, on_instance: Any) -> cf.Future[Attempt]:
        """Start fetching study ``uid``."""


class _LocalRunner:
    """The tasks on this process's threads, one per allowed association."""

    live_instances = True

    def __init__(self, job: CohortPull, pool: cf.ThreadPoolExecutor, slots: int) -> None:
        self.job, self.pool, self.slots = job, pool, slots

    def probe(self) -> None:
        # on a worker thread, whose DICOMweb connection (kept per thread) is one of the allowed ones
        self.pool.submit(probe, self.job.source, self.job.limiter).result()

    def resolve(self, item: CohortItem) -> cf.Future[Attempt]:
        return self.pool.submit(attempt, resolve, self.job.source, item, self.job.limiter,
                                max_studies=self.job.cohort.max_studies_per_item)

    def fetch(self, uid: str, on_instance: Any) -> cf.Future[Attempt]:
        return self.pool.submit(attempt, fetch, self.job.source, uid, self.job.out_dir, self.job.limiter,
                                partial_dir=self.job.partial_dir, on_instance=on_instance)


@dataclasses.dataclass
class _Task:
    kind: str                   # "item" or "study"
    key: str                    # item key or study UID
    attempts: int               # finished attempts before this one
    item: CohortItem | None = None


class CohortPull:
    """One cohort pull into ``out_dir``; :meth:`run` does it (again, resuming, if run before).

    Parameters
    ----------
    cohort : polars.DataFrame or path
        See :func:`read_cohort` and :func:`kit.cohort.plan.items_from_frame`.
    out_dir : path
        Studies go to ``out_dir/<StudyInstanceUID>/``; the journal to ``out_dir/.kit-cohort/``.
    settings : Settings, optional
        ``[pacs]``, ``[dicomweb]`` and ``[cohort]`` (default :func:`kit.load_settings`).
    method : {"c-get", "c-move", "wado"}, optional
        Default ``[cohort] retrieve``.
    max_associations, images_per_second : optional
        Override ``[cohort]``.
    progress : bool, optional
        Show the bar (default: when stderr is a terminal, or in a notebook).
    retry_failed : bool
        Try again the studies and items an earlier run gave up on for a
        transient reason (default True; "not found" stays failed).
    limiter : Limiter, optional
        A limiter shared with other jobs (default: one for this job; not with ``dask``).
    dask : str or distributed.Client, optional
        Run the resolves and retrieves on a Dask cluster: ``"local"`` (a
        LocalCluster of ``[dask] workers`` processes), a scheduler address
        (``tcp://host:8786``) or a connected client. Default ``[dask] scheduler``;
        ``""`` runs them on this process's threads.
    """

    def __init__(self, cohort: pl.DataFrame | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 settings: Settings | None = None, method: Method | None = None,
                 max_associations: int | None = None, images_per_second: float | None = None,
                 progress: bool | None = None, retry_failed: bool = True,
                 limiter: Limiter | None = None, dask: str | Client | None = None) -> None:
        from kit.scale.cluster import resolve_address

        self.settings = settings if settings is not None else load_settings()
        self.items = items_from_frame(read_cohort(cohort))
        self.out_dir = Path(out_dir)
        self.source = Source.from_settings(self.settings, method)
        base: CohortSettings = self.settings.cohort
        changes = {k: v for k, v in {"max_associations": max_associations,
                                     "images_per_second": images_per_second}.items() if v is not None}
        self.cohort = dataclasses.replace(base, **changes)  # type: ignore[arg-type]
        if self.cohort.max_associations < 1:
            raise InvalidInputError("max_associations must be at least 1")
        if not self.cohort.images_per_second > 0:
            raise InvalidInputError("images_per_second must be a positive number")
        self.policy = RetryPolicy(self.cohort.max_attempts, self.cohort.backoff, self.cohort.max_backoff)
        self.stop = threading.Event()
        self.dask = dask if dask is not None and not isinstance(dask, str) else \
            resolve_address(dask, self.settings.dask)
        self.state_dir = self.out_dir / STATE_DIR
        self.partial_dir = self.state_dir / "partial"
        self.limiter: Limiter
        if self.dask:
            from kit.cohort.dask import DaskLimiter

            if limiter is not None:
                raise InvalidInputError("on Dask the job makes its own limiter (one for all workers): "
                                        "give limiter or dask, not both")
            if self.source.method == "c-move":
                raise InvalidInputError("a C-MOVE sends to one fixed address, not to each Dask worker: "
                                        "use C-GET or WADO-RS on Dask")
            self.limiter = DaskLimiter.for_job(self.state_dir / "journal.sqlite", self.source.address,
                                               self.cohort.max_associations, self.cohort.images_per_second)
        else:
            self.limiter = limiter if limiter is not None else LocalLimiter(
                self.cohort.max_associations, self.cohort.images_per_second, stop=self.stop)
        self.retry_failed = retry_failed
        self.show_progress = progress if progress is not None else (sys.stderr.isatty() or _in_notebook())

    # -- the job -------------------------------------------------------------------------------

    def run(self) -> pl.DataFrame:
        """Run (or resume) the pull; the report frame, one row per item and study.

        Raises
        ------
        InvalidInputError, PeerError
            The cohort is invalid, or the PACS does not answer at the start.
        CohortError
            Another job holds ``out_dir``, or it holds a pull from another PACS.
        StoreError
            The journal or a study's files cannot be written.
        """
        self.stop.clear()
        with self._runner() as runner:
            runner.probe()  # does the PACS answer at all? Asked before anything is written
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {self.out_dir}: {exc.strerror or exc}") from exc
            with Journal(self.state_dir / "journal.sqlite", source=self.source.address) as journal:
                added = journal.add_items(self.items)
                recovered = journal.recover(retry_failed=self.retry_failed)
                if any(recovered.values()) or added < len(self.items):
                    log.info("resuming %s: %s", self.out_dir, recovered)
                shutil.rmtree(self.partial_dir, ignore_errors=True)  # what a killed run was writing
                self.partial_dir.mkdir(parents=True, exist_ok=True)
                self._loop(journal, runner)
                report = report_frame(journal.report_rows([i.key for i in self.items]))
        self._write_report(report)
        return report

    @contextlib.contextmanager
    def _runner(self) -> Iterator[Runner]:
        """This job's runner: threads here, or tasks on the Dask cluster."""
        if not self.dask:
            slots = max(1, int(getattr(self.limiter, "max_associations", self.cohort.max_associations)))
            with cf.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="kit-cohort") as pool:
                yield _LocalRunner(self, pool, slots)
            return
        from kit.cohort.dask import DaskRunner
        from kit.scale.cluster import dask_client

        if not isinstance(self.dask, str):
            with DaskRunner(self, self.dask) as runner:
                yield runner
            return
        with dask_client(self.dask, self.settings.dask) as client, DaskRunner(self, client) as runner:
            yield runner

    def _write_report(self, report: pl.DataFrame) -> None:
        target = self.out_dir / "report.csv"
        try:
            with atomic_path(target) as tmp:
                report.write_csv(tmp)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def _loop(self, journal: Journal, runner: Runner) -> None:
        counts = journal.counts()
        known = sum(counts[f"studies_{s}"] for s in ("pending", "retrieving", "done", "failed"))
        progress = _Progress(self.show_progress, counts["studies_done"] + counts["studies_failed"], known,
                             counts["instances"], counts["bytes"])
        pause = Pause(self.policy)
        running: dict[cf.Future[Attempt], _Task] = {}
        try:
            while True:
                now = time.time()
                while len(running) < runner.slots and pause.wait(now) == 0 and not self.stop.is_set():
                    task, future = self._next(journal, runner, now, progress)
                    if task is None or future is None:
                        break
                    running[future] = task
                if not running:
                    due = journal.next_due()
                    if due is None or self.stop.is_set():  # all done, or asked to stop (resumable)
                        break
                    self.stop.wait(min(max(due - now, pause.wait(now), 0.01), TICK_SECONDS))
                    progress.refresh()
                    continue
                done, _ = cf.wait(list(running), timeout=TICK_SECONDS, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    self._record(journal, task, future, pause, progress, runner)
                progress.refresh()
        except BaseException:
            self.stop.set()  # the workers' waits and transfers end early; the journal resumes them
            raise
        finally:
            for future in running:
                future.cancel()
            cf.wait(list(running))
            progress.close()

    def _next(self, journal: Journal, runner: Runner, now: float,
              progress: _Progress) -> tuple[_Task | None, cf.Future[Attempt] | None]:
        """Claim the next due item (first) or study and start it."""
        claimed_item = journal.claim_item(now)
        if claimed_item is not None:
            item, attempts = claimed_item
            return _Task("item", item.key, attempts, item), runner.resolve(item)
        claimed = journal.claim_study(now)
        if claimed is None:
            return None, None
        uid, attempts = claimed
        return _Task("study", uid, attempts), runner.fetch(uid, progress.instance)

    def _record(self, journal: Journal, task: _Task, future: cf.Future[Attempt], pause: Pause,
                progress: _Progress, runner: Runner) -> None:
        """Write one finished task's outcome to the journal."""
        try:
            outcome = future.result()
        except Exception as exc:  # noqa: BLE001 - the cluster lost or cancelled the task (a worker died)
            if self.stop.is_set():
                return  # the job is stopping: the journal resumes this task next time
            outcome = Attempt(failure=Failure(f"the Dask cluster lost the task: {type(exc).__name__}: "
                                              f"{str(exc).strip()[:200]}", transient=True))
        if outcome.stopped is not None:
            if self.stop.is_set():
                return  # the job is stopping: the journal resumes this task next time
            # a worker stopped on its own (it lost the scheduler): try again, like a transient failure
            outcome = Attempt(failure=Failure(f"stopped on the worker: {outcome.stopped}", transient=True))
        if outcome.store_error is not None:
            outcome.raise_error()  # the disk: nothing else will work either
        if outcome.failure is not None:
            self._failed(journal, task, outcome.failure, pause, progress, internal=outcome.internal)
            return
        result = outcome.value
        pause.succeeded()
        if task.kind == "item":
            found, dropped = result
            if dropped:
                log.warning("cohort: the PACS answered %d stud(ies) for %s that do not match it; ignored",
                            dropped, task.key)
            journal.resolved(task.key, found)
            counts = journal.counts()
            progress.studies(sum(counts[f"studies_{s}"] for s in ("pending", "retrieving", "done", "failed")))
        else:
            assert isinstance(result, Fetched)
            if not runner.live_instances:
                progress.instance(result.instances)
            journal.study_done(task.key, instances=result.instances, size=result.size,
                               seconds=round(result.seconds, 3), path=result.path)
            progress.finished(result.size)

    def _failed(self, journal: Journal, task: _Task, failure: Failure, pause: Pause,
                progress: _Progress, *, internal: bool = False) -> None:
        if internal:
            failure = dataclasses.replace(failure, reason=f"internal error: {failure.reason}",
                                          transient=False)
        now = time.time()
        outcome = after_failure(task.attempts + 1, failure, self.policy, now)
        if failure.transient:
            resume = pause.failed(now)
            log.warning("cohort: %s %s: %s; the job waits %.1fs", task.kind, task.key, failure.reason,
                        resume - now)
        if task.kind == "item":
            journal.item_failed(task.key, outcome)
        else:
            journal.study_failed(task.key, outcome)
            if not outcome.retry:
                progress.finished(failed=True)


def pull(cohort: pl.DataFrame | str | os.PathLike[str], out_dir: str | os.PathLike[str],
         **options: Any) -> pl.DataFrame:
    """Pull a cohort's studies into ``out_dir`` (resuming an earlier pull there); the report frame.

    Parameters
    ----------
    cohort : polars.DataFrame or path
        Accession numbers, study UIDs and/or MRNs (+ study_date ranges); a
        ``.csv``, ``.tsv`` or ``.parquet`` file or a frame.
    out_dir : path
        Where the studies go (``<out_dir>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``).
    **options
        :class:`CohortPull`'s keywords: ``settings``, ``method``,
        ``max_associations``, ``images_per_second``, ``progress``, ``retry_failed``, ``limiter``,
        ``dask`` (``"local"``, a scheduler address or a client: run on a Dask cluster).

    Returns
    -------
    polars.DataFrame
        :data:`kit.cohort.plan.REPORT_SCHEMA`: per requested item and study its
        ``status`` (``retrieved``, ``failed`` with ``reason``, ``found``),
        ``instances``, ``bytes``, ``seconds`` and ``path``.

    Examples
    --------
    >>> report = pull("cohort.csv", "data/cohort", max_associations=2)  # doctest: +SKIP
    >>> report.group_by("status").len()  # doctest: +SKIP
    """
    return CohortPull(cohort, out_dir, **options).run()
