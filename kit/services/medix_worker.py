"""The Medix service's workers: export jobs (retrieve, zip) and webhook delivery (I/O).

:class:`ExportWorkers` runs at most ``max_jobs`` jobs at once; the rest wait
``queued`` in the job table (:mod:`kit.services.medix_store`). One job:

1. the workspace's file system must keep ``min_free_bytes`` free, else
   RequestFailed (the request is never sent);
2. RequestSent, then the study is retrieved into ``exports/<job>/`` by C-GET,
   C-MOVE (one at a time: the storage SCP's port is fixed) or WADO-RS; a
   watchdog polls that folder every :data:`POLL_SECONDS`: the first instance on
   disk reports ExportStarted, and an export over ``max_export_bytes`` (or a disk
   dropping under ``min_free_bytes``) has its folder taken away, so the
   retrieve's further writes fail (the PACS is told 0xA700, out of resources) and
   the job fails with ExportFailed; the bound can be overshot by what arrives
   within one poll;
3. CompressStarted, the zip is written to a temporary name, fsync'ed, renamed
   to ``files/<job>.zip`` and the folder fsync'ed: CompressFinished;
4. the export folder is removed and ExportCompleted carries the file's address.

A failure is RequestFailed before the first instance arrived, ExportFailed from
then on (:func:`kit.services.medix_protocol.failure_for`). An exception of any
kind in one job fails that job and the worker goes on; only something that
escapes the worker's own loop (a bug) kills it, and :attr:`ExportWorkers.failure`
then makes the service unhealthy.

:class:`WebhookDispatcher` delivers each job's reported statuses in order, one
event of a job in flight at a time, on its own thread pool: a POST with a
per-step timeout (``webhook_timeout`` for the connect, each write and each read) and a
whole-attempt one (:data:`WEBHOOK_WHOLE` times it: a receiver trickling its answer a byte
at a time is cut off there, :mod:`kit._http_deadline`), no redirects followed and the
answer's body not read; a
failure (refused, timeout, a non-2xx answer) is retried with exponential
backoff up to ``webhook_attempts`` times, then given up (recorded on the job as
``webhook_error``) and the next event goes. Delivery is at least once: an event
whose POST succeeded just before a crash is sent again after the restart.

Written by hand: the orchestration; DICOM is the kit's clients', HTTP httpx's,
zip :mod:`zipfile`'s.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import httpx
import polars as pl

from kit._http_deadline import deadline_transport, request_deadline
from kit.config import Settings
from kit.errors import KitError
from kit.services.medix_protocol import MedixStatus, backoff_delay, webhook_body, webhook_http_headers
from kit.services.medix_store import Job, JobStore

__all__ = ["POLL_SECONDS", "WEBHOOK_WHOLE", "ExportWorkers", "WebhookDispatcher", "retrieve", "write_zip"]

log = logging.getLogger("kit.services.medix")

#: How often the export watchdog looks at the export folder.
POLL_SECONDS: Final = 0.1
#: seconds between two sweeps of expired zips
SWEEP_SECONDS: Final = 60.0
#: A webhook POST ends within this many times ``webhook_timeout`` in all (connect, send, answer).
WEBHOOK_WHOLE: Final = 3


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"


def _cut_name(folder: Path) -> Path:
    """Where the watchdog moves an export folder it cuts."""
    return folder.with_name(folder.name + ".over")


def retrieve(settings: Settings, mode: str, study_uid: str, dest: Path) -> pl.DataFrame:
    """Retrieve the study into ``dest`` by ``mode`` (``c-get``, ``c-move``, ``wado``); the received frame."""
    if mode == "wado":
        from kit.dicom.web import DicomWebClient

        return DicomWebClient.from_settings(settings).get(study_uid, dest=dest)
    from kit.dicom.dimse import PacsClient

    client = PacsClient.from_settings(settings)
    if mode == "c-move":
        return client.move(study_uid=study_uid, dest=dest)
    return client.get(study_uid=study_uid, dest=dest)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_zip(members: list[tuple[str, str]], target: Path) -> int:
    """Zip ``(path, name in the zip)`` pairs into ``target`` atomically and durably; its size in bytes.

    Written to a temporary name beside ``target``, fsync'ed, renamed over it,
    and the folder fsync'ed: ``target`` is either absent or complete.
    """
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1,
                             allowZip64=True) as archive:
            for path, name in members:
                archive.write(path, arcname=name)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return target.stat().st_size


class _Watchdog:
    """Polls an export folder: reports the first instance, cuts an export over the disk bound."""

    def __init__(self, folder: Path, *, limit: int, min_free: int, on_first: Callable[[], None]) -> None:
        self.folder = folder
        self.limit = limit
        self.min_free = min_free
        self.on_first = on_first
        self.seen: dict[str, int] = {}
        self.total = 0
        self.over: str | None = None
        self.started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"medix-watch-{folder.name}")

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watchdog must not die silently mid-job
                log.exception("Medix export watchdog on %s", self.folder)

    def poll(self) -> None:
        if self.over is not None:
            return
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.endswith(".dcm") and entry.name not in self.seen:
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                self.seen[entry.name] = size
                self.total += size
        if self.seen and not self.started:
            self.started = True
            self.on_first()
        free = shutil.disk_usage(self.folder.parent).free
        if self.total > self.limit:
            self._cut(f"the export is over the bound of {self.limit} bytes")
        elif free < self.min_free:
            self._cut(f"under {self.min_free} bytes left on the workspace's disk")

    def _cut(self, reason: str) -> None:
        """Take the folder away: the retrieve's next writes fail and the PACS is told so."""
        self.over = reason
        log.warning("Medix: stopping the export into %s: %s", self.folder, reason)
        gone = _cut_name(self.folder)
        try:
            os.replace(self.folder, gone)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)


class ExportWorkers:
    """``count`` threads running queued jobs from ``store``.

    Parameters
    ----------
    store : JobStore
    settings : Settings
        Where the PACS is (``[pacs]``, ``[dicomweb]``) and the ``[medix]`` bounds.
    workspace : Path
        Holds ``exports/`` (in-flight retrieves) and ``files/`` (the zips).
    file_url : callable
        Job id -> the address ExportCompleted announces.
    on_event : callable
        Called after each reported status (wakes the webhook dispatcher).
    """

    def __init__(self, store: JobStore, settings: Settings, workspace: Path, *,
                 file_url: Callable[[str], str], on_event: Callable[[], None]) -> None:
        self.store = store
        self.settings = settings
        self.medix = settings.medix
        self.exports = workspace / "exports"
        self.files = workspace / "files"
        self.file_url = file_url
        self.on_event = on_event
        self.failure: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._move_lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Clean what a crash left (partial zips, export folders) and start the threads."""
        self.exports.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        for leftover in self.files.glob(".*.part"):
            leftover.unlink(missing_ok=True)
        for folder in self.exports.iterdir():
            shutil.rmtree(folder, ignore_errors=True)
        # the retrieve clients are imported here, once: workers importing pynetdicom at the same
        # time fail on its circular imports (see kit.hub.manager._import_clients)
        import kit.dicom.dimse  # noqa: F401
        import kit.dicom.web  # noqa: F401

        for i in range(self.medix.max_jobs):
            thread = threading.Thread(target=self._loop, daemon=True, name=f"medix-export-{i}")
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the threads to stop after their current job; wait up to ``timeout`` seconds."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        """A job was queued."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Every thread runs (False once one died)."""
        return self.failure is None and all(t.is_alive() for t in self._threads)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                job = self.store.claim()
                if job is None:
                    self.sweep()
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                self._wake.set()  # another job may wait: let a sibling look
                self.run(job)
        except BaseException as exc:  # noqa: BLE001 - a dead worker makes the service unhealthy, loudly
            if not self._stop.is_set():  # recorded and logged; the service's health turns red
                self.failure = exc
                log.critical("Medix export worker died: %r", exc, exc_info=exc)

    def sweep(self, now: float | None = None) -> int:
        """Delete the zips kept longer than ``[medix] keep_hours``; how many (at most once a minute).

        A file that cannot be deleted is logged and tried again on the next sweep;
        a job table that fails raises (the worker dies loudly, as for any store failure).
        """
        hours = self.medix.keep_hours
        now = time.time() if now is None else now
        if hours <= 0 or not self._sweep_lock.acquire(blocking=False):
            return 0
        try:
            if now < self._next_sweep:
                return 0
            self._next_sweep = now + SWEEP_SECONDS
            removed = 0
            for job in self.store.expired(now - hours * 3600.0):
                try:
                    (self.files / str(job.file)).unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("Medix: cannot delete the expired zip of job %s: %s", job.id, _reason(exc))
                    continue
                self.store.forget_file(job.id)
                removed += 1
            if removed:
                log.info("Medix: deleted %d zip(s) kept over %g h", removed, hours)
            return removed
        finally:
            self._sweep_lock.release()

    def _report(self, job: Job, status: MedixStatus, **kwargs: object) -> None:
        if self.store.report(job.id, status, **kwargs):  # type: ignore[arg-type]
            self.on_event()

    def run(self, job: Job) -> None:
        """Run one job to ExportCompleted or a failure; never raises for the job's own failures."""
        folder = self.exports / job.id
        watch: _Watchdog | None = None
        try:
            shutil.rmtree(folder, ignore_errors=True)  # a resumed job starts its retrieve afresh
            folder.mkdir(parents=True)
            free = shutil.disk_usage(self.exports).free
            if free < self.medix.min_free_bytes:
                self._fail(job, f"only {free} bytes free on the workspace's disk "
                                f"(min_free_bytes = {self.medix.min_free_bytes})")
                return
            self._report(job, MedixStatus.REQUEST_SENT)
            watch = _Watchdog(folder, limit=self.medix.max_export_bytes, min_free=self.medix.min_free_bytes,
                              on_first=lambda: self._report(job, MedixStatus.EXPORT_STARTED))
            mode = self.medix.retrieve
            error: KitError | None = None
            with watch, (self._move_lock if mode == "c-move" else contextlib.nullcontext()):
                try:
                    received = retrieve(self.settings, mode, job.study_uid, folder)
                except KitError as exc:
                    error = exc
            if error is not None:  # after the watchdog's last look: did anything arrive?
                self._fail(job, watch.over or _reason(error), started=watch.started)
                return
            if watch.over is not None:
                self._fail(job, watch.over, started=True)
                return
            self._report(job, MedixStatus.EXPORT_STARTED)
            self._compress(job, received)
        except Exception as exc:  # noqa: BLE001 - one job's surprise fails that job, never the service
            log.exception("Medix job %s failed unexpectedly", job.id)
            self._fail(job, f"internal error: {_reason(exc)}", started=bool(watch and watch.started))
        finally:
            # the cut folder too: a file renamed or linked into place just before the watchdog's
            # rename can land in it while its rmtree runs (the retrieve has returned by now)
            for leftover in (folder, _cut_name(folder)):
                shutil.rmtree(leftover, ignore_errors=True)

    def _compress(self, job: Job, received: pl.DataFrame) -> None:
        self._report(job, MedixStatus.COMPRESS_STARTED)
        size = int(received["size_bytes"].sum())
        free = shutil.disk_usage(self.files).free
        if free - size < self.medix.min_free_bytes:
            self._fail(job, f"no room for the zip: {free} bytes free, the export is {size} bytes",
                       started=True)
            return
        members = [(path, f"{job.study_uid}/{sop}.dcm")
                   for sop, path in received.select("sop_instance_uid", "path").iter_rows()]
        target = self.files / f"{job.id}.zip"
        try:
            zipped = write_zip(members, target)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            self._fail(job, f"cannot write the zip: {_reason(exc)}", started=True)
            return
        self._report(job, MedixStatus.COMPRESS_FINISHED, file=target.name, size=zipped,
                     instances=received.height)
        self._report(job, MedixStatus.EXPORT_COMPLETED, file_url=self.file_url(job.id))

    def _fail(self, job: Job, reason: str, *, started: bool = False) -> None:
        log.warning("Medix job %s (study %s) failed: %s", job.id, job.study_uid, reason)
        try:
            if started:  # instances arrived: the platform hears ExportStarted before the failure
                self._report(job, MedixStatus.EXPORT_STARTED)
            self.store.fail(job.id, reason, at_least=MedixStatus.EXPORT_STARTED if started else None)
        except KitError:  # already terminal (e.g. failed by a restart): nothing more to say
            log.exception("Medix job %s: cannot record the failure", job.id)
        self.on_event()


class WebhookDispatcher:
    """Delivers every job's reported statuses to its webhook, in order, on ``workers`` threads.

    Parameters
    ----------
    store : JobStore
    settings : MedixSettings
        ``webhook_timeout``, ``webhook_attempts``, ``webhook_backoff``, ``webhook_backoff_max``.
    workers : int
        Deliveries in flight at once (one per job at most).
    """

    def __init__(self, store: JobStore, settings: Settings, *, workers: int = 4) -> None:
        self.store = store
        self.medix = settings.medix
        self.failure: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medix-webhook")
        timeout = self.medix.webhook_timeout
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, trust_env=False,
                                    transport=deadline_transport(
                                        trust_env=False, limits=httpx.Limits(max_connections=workers * 2)))
        self._thread = threading.Thread(target=self._loop, daemon=True, name="medix-webhooks")

    def start(self) -> None:
        """Start delivering (events left from before a restart go first)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop; what is not delivered stays in the job table for the next start."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def wake(self) -> None:
        """A status was reported."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """The dispatcher thread runs."""
        return self.failure is None and self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._busy_lock:
                    busy = set(self._busy)
                for job in self.store.due(time.time(), skip=busy):
                    with self._busy_lock:
                        self._busy.add(job.id)
                    self._pool.submit(self._deliver, job)
                when = self.store.next_due()
                wait = 1.0 if when is None else min(1.0, max(0.01, when - time.time()))
                self._wake.wait(wait)
                self._wake.clear()
        except BaseException as exc:  # noqa: BLE001 - a dead dispatcher makes the service unhealthy
            if not self._stop.is_set():
                self.failure = exc
                log.critical("Medix webhook dispatcher died: %r", exc, exc_info=exc)

    def _deliver(self, job: Job) -> None:
        index = job.delivered
        try:
            code, file_url = job.events[index]
            body = webhook_body(code, job.webhook_headers, file_url)
            error = self._post(job.webhook_uri, job.webhook_headers, body)
            if error is None:
                self.store.delivered(job.id, index)
                return
            attempt = job.attempt + 1
            if attempt >= self.medix.webhook_attempts:
                log.warning("Medix job %s: webhook for status %s given up after %d attempts: %s",
                            job.id, code, attempt, error)
                self.store.delivered(job.id, index, error=f"status {code} not delivered: {error}")
            else:
                delay = backoff_delay(attempt, base=self.medix.webhook_backoff,
                                      cap=self.medix.webhook_backoff_max)
                self.store.retry_later(job.id, index, attempt=attempt, when=time.time() + delay, error=error)
        except Exception:  # noqa: BLE001 - one delivery's surprise must not stop the others
            log.exception("Medix job %s: webhook delivery failed unexpectedly", job.id)
        finally:
            with self._busy_lock:
                self._busy.discard(job.id)
            self._wake.set()

    def _post(self, uri: str, headers: dict[str, str], body: dict[str, object]) -> str | None:
        """POST once; None when the receiver answered 2xx, else why not (without header values)."""
        whole = WEBHOOK_WHOLE * self.medix.webhook_timeout
        try:  # each step within webhook_timeout, the whole POST within WEBHOOK_WHOLE times it
            with request_deadline(time.monotonic() + whole), \
                    self._client.stream("POST", uri, json=body,
                                        headers=webhook_http_headers(headers)) as resp:
                if 200 <= resp.status_code < 300:
                    return None
                return f"HTTP {resp.status_code}"
        except httpx.TimeoutException:
            return f"no answer within {self.medix.webhook_timeout:g}s (each step) or {whole:g}s (in all)"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            return type(exc).__name__
