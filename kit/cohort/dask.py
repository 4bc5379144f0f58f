"""A cohort pull on a Dask cluster: one set of politeness caps for all workers (I/O).

:class:`~kit.cohort.pull.CohortPull` with ``dask=...`` runs its resolves and
retrieves as tasks on the cluster through :class:`DaskRunner`; the journal,
the retry rules and the report stay in the client process (the one writer).
Each task gets plain data only and returns an :class:`~kit.cohort.retrieve.Attempt`.

**One limiter for all workers** (:class:`DaskLimiter`, the
:class:`~kit.cohort.limiter.Limiter` protocol):

- *concurrent associations*: a ``distributed.Semaphore`` with
  ``max_leases = max_associations``, held on the scheduler. A worker holds a
  lease for the whole association and refreshes it in the background; a worker
  that dies stops refreshing and the scheduler frees its lease after
  ``distributed.scheduler.locks.lease-timeout`` (default 30 s, checked every
  ``lease-validation-interval``). Its TCP connection to the PACS dies with the
  process, so the PACS never sees more than the cap. With ``lease-timeout =
  "inf"`` a dead worker would hold its slot forever: refused (ConfigError).
  Dask's caveat holds: a worker that cannot refresh for longer than the
  timeout (its event loop blocked) loses its lease while still working; the
  retrieves hold the GIL only briefly, so keep the default timeout or raise it.
- *images per second*: one token bucket whose state (``tokens``, ``at``:
  :meth:`kit.cohort.limiter.TokenBucket.state`) lives in the scheduler's metadata
  (``Client.set_metadata``), changed only under a ``distributed.Lock`` (itself a lease:
  a worker dying inside the update frees it after the same timeout). Each
  arriving instance takes the lock, continues the bucket from the stored state
  with :class:`~kit.cohort.limiter.TokenBucket`'s arithmetic, stores it back and
  releases the lock, then waits outside the lock as long as the bucket says
  (four round trips to the scheduler per instance: a few hundred instances per
  second at most; clinical PACS caps are far below that). The bucket runs on the
  workers' wall clocks: tokens accrue only as the latest reading advances, so a
  worker whose clock lags waits a little longer; it never raises the rate.
- the same entry names the job's current *run*. When the client ends a run
  (done, or stopping on an error), a task still waiting in it gets
  :class:`~kit.cohort.limiter.Stopped`, and a retrieve under way is cancelled at
  its next instance (C-CANCEL, :mod:`kit.dicom._cancel`). A killed client cannot say so: its
  tasks already running on the workers go on under the same caps (the names
  depend on the job and the caps, not on the run, and a new run keeps the
  bucket as it is); once a new run of the job has started they open no new
  association (Stopped), and one mid-transfer finishes it politely.

The names are derived from the job's journal path and PACS (and the caps):
the caps hold per job, across all of its workers and leftover tasks of its
earlier runs, like :class:`~kit.cohort.limiter.LocalLimiter` for a local job.

**Secrets** never travel to a worker (:class:`kit.config.Secret` refuses
pickling): a worker gets the source without them and, when the job uses
DICOMweb credentials, reads them from its own environment
(``KIT_DICOMWEB_PASSWORD``/``KIT_DICOMWEB_TOKEN`` or their ``_FILE`` forms).
**Files**: workers write the studies into the job's ``out_dir``, so it must be
on a file system shared by the client and every worker.

Written by hand: the glue above; the coordination is distributed's
Semaphore, Lock and scheduler metadata, the arithmetic :class:`~kit.cohort.limiter.TokenBucket`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kit.cohort.limiter import Stopped, TokenBucket
from kit.cohort.plan import CohortItem
from kit.cohort.retrieve import Attempt, Source, attempt, fetch, probe, resolve
from kit.errors import ConfigError, KitError, ServiceFailedError

if TYPE_CHECKING:
    import concurrent.futures as cf

    from distributed import Client

    from kit.cohort.pull import CohortPull

__all__ = ["DaskLimiter", "DaskRunner"]

#: Longest single wait on the scheduler before a worker checks whether its run still runs.
WAIT_SLICE = 1.0
#: Seconds a starting run waits for the bucket's lock.
STATE_TIMEOUT = 30.0

# per process: the distributed primitives of each limiter (one set per worker process)
_PRIMITIVES: dict[str, tuple[Any, Any, Any]] = {}
_PRIMITIVES_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class DaskLimiter:
    """Concurrent associations and images per second capped across all workers of a Dask cluster.

    Build it with :meth:`for_job`; :meth:`start` it from the client before
    tasks use it and :meth:`finish` it after. It is plain data (names and
    numbers), so it travels to workers inside tasks, where
    :meth:`association` and :meth:`images` talk to the scheduler.

    Parameters
    ----------
    name : str
        Prefix of the scheduler-side names (the job's identity).
    max_associations : int
        Associations open at once over all workers (>= 1).
    images_per_second : float
        Instances per second over all workers (> 0).
    burst : float, optional
        As :class:`~kit.cohort.limiter.LocalLimiter` (default a tenth of a second's worth, >= 1).
    run : str
        The current run (set by :meth:`start`).
    """

    name: str
    max_associations: int
    images_per_second: float
    burst: float = 0.0
    run: str = ""

    def __post_init__(self) -> None:
        if self.max_associations < 1:
            raise ValueError(f"max_associations must be at least 1, got {self.max_associations}")
        if not (math.isfinite(self.images_per_second) and self.images_per_second > 0):
            raise ValueError(f"images_per_second must be a positive number, got {self.images_per_second!r}")
        if not self.burst:
            object.__setattr__(self, "burst", max(1.0, self.images_per_second / 10))

    @classmethod
    def for_job(cls, journal: str | Path, source: str, max_associations: int,
                images_per_second: float) -> DaskLimiter:
        """The limiter of the job whose journal is ``journal``, pulling from ``source`` with these caps."""
        identity = f"{Path(journal).resolve()}\0{source}\0{max_associations}\0{images_per_second!r}"
        digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
        return cls(f"kit-cohort-{digest}", int(max_associations), float(images_per_second))

    # -- the client's side ---------------------------------------------------------------------

    def start(self, client: Client) -> DaskLimiter:
        """Register the caps on ``client``'s scheduler and begin a new run; the limiter of that run.

        Raises
        ------
        ConfigError
            Dask's lease timeout is ``inf`` (a dead worker would hold its slot forever).
        ServiceFailedError
            The scheduler refused or did not answer.
        """
        import dask
        from distributed import Lock, Semaphore

        if str(dask.config.get("distributed.scheduler.locks.lease-timeout")).strip().lower() == "inf":
            raise ConfigError("distributed.scheduler.locks.lease-timeout",
                              "is 'inf': a Dask worker that dies would hold its association slot forever")
        started = dataclasses.replace(self, run=uuid.uuid4().hex)
        try:
            Semaphore(max_leases=self.max_associations, name=self._names[0], scheduler_rpc=client.scheduler,
                      loop=client.loop).register()
            lock = Lock(self._names[1], scheduler_rpc=client.scheduler, loop=client.loop)
            if not lock.acquire(timeout=STATE_TIMEOUT):
                raise ServiceFailedError(f"the Dask lock {self._names[1]} stayed taken for "
                                         f"{STATE_TIMEOUT:g}s", service="dask")
            try:
                state = client.get_metadata(self._key, default=None)
                try:  # an earlier run's bucket goes on (its killed client's tasks may still draw on it)
                    tokens, at = TokenBucket.from_state(self.images_per_second, self.burst,
                                                        float(state["tokens"]), float(state["at"])).state()
                except (KeyError, TypeError, ValueError):  # none yet, or not a bucket: a full one
                    tokens, at = self.burst, time.time()
                client.set_metadata(self._key, {"run": started.run, "tokens": tokens, "at": at})
            finally:
                lock.release()
        except (OSError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ServiceFailedError(f"the Dask scheduler did not set up the cohort limiter: "
                                     f"{type(exc).__name__}: {exc}", service="dask") from exc
        return started

    def finish(self, client: Client) -> None:
        """End this run: the tasks still waiting in it get :class:`Stopped` (best effort, never raises)."""
        from distributed import Lock

        with contextlib.suppress(Exception):
            lock = Lock(self._names[1], scheduler_rpc=client.scheduler, loop=client.loop)
            if lock.acquire(timeout=5):
                try:
                    state = client.get_metadata(self._key, default=None)
                    if isinstance(state, dict) and state.get("run") == self.run:
                        client.set_metadata(self._key, {**state, "run": ""})
                finally:
                    lock.release()

    # -- the workers' side: the Limiter protocol ------------------------------------------------

    @property
    def _names(self) -> tuple[str, str]:
        return f"{self.name}-associations", f"{self.name}-bucket-lock"

    @property
    def _key(self) -> list[str]:
        """Where the run and bucket state live in the scheduler's metadata."""
        return ["kit-cohort", self.name]

    def _primitives(self) -> tuple[Any, Any, Any]:
        """This process's (Semaphore, Lock, Client) for the limiter (a worker's own client)."""
        from distributed import Lock, Semaphore, get_client

        with _PRIMITIVES_LOCK:
            found = _PRIMITIVES.get(self.name)
            if found is None:
                found = _PRIMITIVES[self.name] = (
                    Semaphore(max_leases=self.max_associations, name=self._names[0]),
                    Lock(self._names[1]), get_client())
            return found

    def _state(self, *, current: bool = True) -> dict[str, Any]:
        """The run and bucket state on the scheduler.

        Stopped if the job's run was ended, or (``current``) if it is not this one.
        """
        try:
            state = self._primitives()[2].get_metadata(self._key, default=None)
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone or the job was removed
            raise Stopped(f"the Dask scheduler did not answer: {type(exc).__name__}: {exc}") from exc
        if not isinstance(state, dict) or not self.run or not state.get("run"):
            raise Stopped("the cohort job's run has ended")
        if current and state.get("run") != self.run:
            raise Stopped("a newer run of the cohort job has started")
        return state

    def _acquire(self, primitive: Any, *, current: bool = True) -> None:
        """Take a lease of ``primitive`` (Semaphore or Lock), checking between waits that the run goes on.

        The caller checks the run once it holds the lease (one round trip fewer when there is no wait).
        """
        while True:
            try:
                if primitive.acquire(timeout=WAIT_SLICE):
                    return
            except Exception as exc:  # noqa: BLE001 - the scheduler is gone
                raise Stopped(f"the Dask scheduler did not answer: {type(exc).__name__}: {exc}") from exc
            self._state(current=current)

    @contextlib.contextmanager
    def association(self) -> Iterator[None]:
        """Hold one of the cluster-wide association slots for the block."""
        semaphore = self._primitives()[0]
        self._acquire(semaphore)
        try:
            self._state()  # this run goes on (it may have ended while this task waited)
            yield
        finally:
            with contextlib.suppress(Exception):  # if the release is lost, the lease times out
                semaphore.release()

    def images(self, n: int = 1) -> None:
        """Wait until ``n`` more instances may arrive, by the cluster-wide bucket."""
        _, lock, client = self._primitives()
        # a transfer that a killed client's run began ends under the bucket (not at the PACS's pace)
        self._acquire(lock, current=False)
        try:
            state = self._state(current=False)
            try:
                bucket = TokenBucket.from_state(self.images_per_second, self.burst,
                                                float(state["tokens"]), float(state["at"]))
            except (KeyError, TypeError, ValueError):  # not ours: start the bucket afresh (full)
                bucket = TokenBucket(self.images_per_second, burst=self.burst, now=time.time())
            wait = bucket.reserve(time.time(), n)
            tokens, at = bucket.state()
            try:
                client.set_metadata(self._key, {"run": state["run"], "tokens": tokens, "at": at})
            except Exception as exc:  # noqa: BLE001
                raise Stopped(f"the Dask scheduler did not answer: {type(exc).__name__}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                lock.release()
        while wait > 0:
            step = min(wait, WAIT_SLICE)
            time.sleep(step)
            wait -= step
            if wait > 0:
                self._state(current=False)


# -- the tasks ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every task of a job needs, as plain data."""

    source: Source                   # without secrets
    credentials: tuple[str, ...]     # the [dicomweb] secrets the worker reads from its own environment
    limiter: DaskLimiter
    out_dir: str
    partial_dir: str
    max_studies: int


_SOURCES: dict[tuple[Source, tuple[str, ...]], Source] = {}


def _worker_source(job: _Job) -> Source:
    """The job's source with the worker's own DICOMweb credentials (if the job has any)."""
    if not job.credentials:
        return job.source
    key = (job.source, job.credentials)
    found = _SOURCES.get(key)
    if found is None:
        from kit.config import load_settings

        own = load_settings().dicomweb
        missing = [n for n in job.credentials if getattr(own, n) is None]
        if missing:
            raise ConfigError(f"dicomweb.{missing[0]}",
                              f"the Dask worker has no {', '.join(missing)} for DICOMweb: set "
                              f"KIT_DICOMWEB_{missing[0].upper()} (or _FILE) in the workers' environment "
                              f"(secrets are not sent to workers)")
        changes = {n: getattr(own, n) for n in job.credentials}
        found = _SOURCES[key] = dataclasses.replace(
            job.source, dicomweb=dataclasses.replace(job.source.dicomweb, **changes))
    return found


def _run_task(job: _Job, kind: str, arg: Any = None) -> Attempt:
    """One task on a worker: ``probe``, ``resolve`` (an item) or ``fetch`` (a study UID)."""
    try:
        source = _worker_source(job)
    except KitError as exc:
        return attempt(_raise, exc)
    if kind == "probe":
        return attempt(probe, source, job.limiter)
    if kind == "resolve":
        return attempt(resolve, source, arg, job.limiter, max_studies=job.max_studies)
    return attempt(fetch, source, arg, Path(job.out_dir), job.limiter, partial_dir=Path(job.partial_dir))


def _raise(exc: BaseException) -> None:
    raise exc


class DaskRunner:
    """Where a :class:`~kit.cohort.pull.CohortPull` runs its tasks on a Dask cluster (used by the pull).

    Parameters
    ----------
    job : CohortPull
    client : distributed.Client
        A connected client; not closed here.
    """

    live_instances = False

    def __init__(self, job: CohortPull, client: Client) -> None:
        if not isinstance(job.limiter, DaskLimiter):  # pragma: no cover - CohortPull makes one
            raise TypeError("a Dask pull needs a DaskLimiter")
        self.client = client
        self.limiter = job.limiter
        self.pull = job
        self.executor = client.get_executor(pure=False)
        threads = sum(client.nthreads().values())
        #: tasks in flight: every worker thread busy, and more than the cap (a freed slot is taken at once)
        self.slots = max(2 * self.limiter.max_associations, threads)
        self._job: _Job | None = None

    def __enter__(self) -> DaskRunner:
        self.limiter = self.limiter.start(self.client)
        self.pull.limiter = self.limiter
        source = self.pull.source
        self._job = _Job(source.without_secrets(), source.credentials, self.limiter, str(self.pull.out_dir),
                         str(self.pull.partial_dir), self.pull.cohort.max_studies_per_item)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.limiter.finish(self.client)

    def _submit(self, kind: str, arg: Any = None) -> cf.Future[Attempt]:
        assert self._job is not None, "DaskRunner used outside its with block"
        future: cf.Future[Attempt] = self.executor.submit(_run_task, self._job, kind, arg)
        return future

    def probe(self) -> None:
        """Ask the PACS from a worker (its network path is the one that matters); raise its KitError."""
        try:
            outcome = self._submit("probe").result(timeout=self.pull.settings.dask.timeout
                                                   + self.pull.settings.pacs.timeout * 2)
        except Exception as exc:  # noqa: BLE001 - no worker ran it
            raise ServiceFailedError(f"no Dask worker answered: {type(exc).__name__}: {exc}",
                                     service="dask") from exc
        if outcome.stopped is not None:
            raise ServiceFailedError(f"the Dask worker stopped: {outcome.stopped}", service="dask")
        outcome.raise_error()

    def resolve(self, item: CohortItem) -> cf.Future[Attempt]:
        """Start resolving ``item`` on a worker."""
        return self._submit("resolve", item)

    def fetch(self, uid: str, on_instance: Any = None) -> cf.Future[Attempt]:
        """Start fetching study ``uid`` on a worker (instances are counted when it is done)."""
        return self._submit("fetch", uid)

