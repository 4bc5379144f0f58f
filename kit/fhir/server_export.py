"""Bulk Data ``$export`` jobs of the embedded FHIR server (FHIR Bulk Data Access IG v2).

Written by hand (no library serves Bulk Data): a kick-off starts a job in a
background thread that writes one NDJSON file per resource type (temporary
file, then atomic rename) under ``<data>/exports/<job>/``; the status endpoint
reports progress until the manifest is ready; ``DELETE`` cancels a job and
removes its files. System, Patient and Group/[id] level exports are supported,
with ``_type`` and ``_since``.

A job's state is kept in its folder (``job.json``, written atomically at the
kick-off and when the job ends), so a restarted server still answers for the
jobs it acknowledged with 202: a finished one with its manifest, one the restart
cut short with an error saying so. A folder without a readable ``job.json`` (a
kick-off cut short) is removed when the server starts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from kit._files import atomic_write_bytes
from kit.errors import KitError
from kit.fhir.server_limits import is_type
from kit.fhir.server_search import date_range
from kit.fhir.server_store import FhirStore, fail

__all__ = ["MAX_KEPT_JOBS", "MAX_RUNNING_JOBS", "ExportJob", "ExportManager", "NDJSON_FORMATS"]

#: ``_outputFormat`` values accepted (all mean NDJSON).
NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
#: Jobs running at once (a further kick-off is answered 429), and jobs kept (the oldest finished
#: ones are removed with their files beyond this), so kick-offs cannot exhaust threads or disk.
MAX_RUNNING_JOBS = 4
log = logging.getLogger("kit.fhir.server")
MAX_KEPT_JOBS = 100
_STATE = "job.json"


@dataclasses.dataclass
class ExportJob:
    """State of one export job."""

    id: str
    request: str
    base_url: str
    transaction_time: str
    folder: Path
    status: str = "running"  # running | done | error
    progress: str = "queued"
    output: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

    def manifest(self) -> dict[str, Any]:
        """The completion manifest."""
        return {"transactionTime": self.transaction_time, "request": self.request,
                "requiresAccessToken": False, "output": self.output, "error": []}

    def save(self) -> None:
        """Write the job's state to ``job.json`` in its folder (atomically, durably)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"id": self.id, "request": self.request, "base_url": self.base_url,
                 "transaction_time": self.transaction_time, "status": self.status,
                 "output": self.output, "error": self.error}
        atomic_write_bytes(self.folder / _STATE, orjson.dumps(state), fsync=True)

    @classmethod
    def load(cls, folder: Path) -> ExportJob | None:
        """The job saved in ``folder``; one that was running is now an error (the server stopped
        during it); None if there is no readable state."""
        try:
            state = orjson.loads((folder / _STATE).read_bytes())
            job = cls(str(state["id"]), str(state["request"]), str(state["base_url"]),
                      str(state["transaction_time"]), folder, str(state["status"]),
                      output=list(state.get("output") or []), error=state.get("error"))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if job.id != folder.name or job.status not in ("running", "done", "error"):
            return None
        job.progress = "complete" if job.status == "done" else job.status
        if job.status == "running":
            job.status, job.progress = "error", "error"
            job.error = "the server stopped during this export; kick it off again"
            job.save()
        return job


class ExportManager:
    """Runs and tracks ``$export`` jobs.

    Parameters
    ----------
    store : FhirStore
        Where the resources come from.
    folder : Path
        Where job folders with NDJSON files are written.
    delay : float
        Seconds to pause after each resource type (lets tests observe a running job).
    """

    def __init__(self, store: FhirStore, folder: Path, *, delay: float = 0.0) -> None:
        self.store = store
        self.folder = folder
        self.delay = delay
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()
        self._reload()

    def _reload(self) -> None:
        """The jobs of an earlier run from their folders (the newest MAX_KEPT_JOBS); other folders go."""
        if not self.folder.is_dir():
            return
        found = []
        for sub in self.folder.iterdir():
            job = ExportJob.load(sub) if sub.is_dir() else None
            if job is None:
                log.warning("FHIR export folder %s has no job state; removed", sub.name)
                shutil.rmtree(sub, ignore_errors=True)
            else:
                found.append(job)
        found.sort(key=lambda j: j.transaction_time)
        for old in found[:max(0, len(found) - MAX_KEPT_JOBS)]:
            shutil.rmtree(old.folder, ignore_errors=True)
        self._jobs = {j.id: j for j in found[-MAX_KEPT_JOBS:]}

    def kick_off(self, *, level: str, params: Mapping[str, str], request_url: str, base_url: str,
                 group_id: str | None = None) -> ExportJob:
        """Validate the request and start a job (``level`` is system, Patient or Group)."""
        fmt = params.get("_outputFormat")
        if fmt is not None and fmt not in NDJSON_FORMATS:
            raise fail(400, "not-supported", f"_outputFormat {fmt!r} is not supported (use ndjson)")
        types = [t for t in (params.get("_type") or "").split(",") if t]
        unknown = [t for t in types if not is_type(t)]
        if unknown:
            raise fail(400, "not-supported", f"_type has unknown resource types {unknown}", "_type")
        since = date_range(params["_since"])[0] if params.get("_since") else None
        patients: set[str] | None = None
        if level == "Group":
            group = self.store.read("Group", group_id or "")
            patients = set()
            for m in group.get("member") or []:
                ref = str((m.get("entity") or {}).get("reference", ""))
                if ref.startswith("Patient/"):
                    patients.add(ref.split("/", 1)[1])
        elif level == "Patient":
            patients = {p for t, p in self._patient_ids()}
        job_id = uuid.uuid4().hex
        job = ExportJob(job_id, request_url, base_url,
                        dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"), self.folder / job_id)
        with self._lock:
            if sum(j.status == "running" for j in self._jobs.values()) >= MAX_RUNNING_JOBS:
                raise fail(429, "throttled", f"{MAX_RUNNING_JOBS} exports are running; retry later")
            finished = [j for j in self._jobs.values() if j.status != "running"]
            evicted = finished[: max(0, len(self._jobs) + 1 - MAX_KEPT_JOBS)]
            for old in evicted:
                del self._jobs[old.id]
            self._jobs[job_id] = job
        for old in evicted:
            shutil.rmtree(old.folder, ignore_errors=True)
        try:
            job.save()  # before the 202: a restart still knows the job
        except OSError as exc:
            with self._lock:
                self._jobs.pop(job_id, None)
            raise fail(500, "exception", f"cannot start the export: {exc}") from exc
        threading.Thread(target=self._run, args=(job, types, since, patients), daemon=True,
                         name=f"fhir-export-{job_id[:8]}").start()
        return job

    def _patient_ids(self) -> list[tuple[str, str]]:
        import orjson

        return [(t, orjson.loads(j)["id"]) for t, j in self.store.iter_resources(["Patient"])]

    def _run(self, job: ExportJob, types: list[str], since: str | None, patients: set[str] | None) -> None:
        try:
            job.folder.mkdir(parents=True, exist_ok=True)
            files: dict[str, Any] = {}
            counts: dict[str, int] = {}
            try:
                for rtype, blob in self.store.iter_resources(types or None, since=since, patients=patients):
                    if job.cancel.is_set():
                        return
                    if rtype not in files:
                        if files and self.delay:
                            time.sleep(self.delay)
                        files[rtype] = open(job.folder / f".{rtype}.ndjson.tmp", "wb")  # noqa: SIM115
                        counts[rtype] = 0
                        job.progress = f"exporting {rtype}"
                    files[rtype].write(blob + b"\n")
                    counts[rtype] += 1
                if self.delay:
                    time.sleep(self.delay)
            finally:
                for f in files.values():
                    f.flush()
                    os.fsync(f.fileno())
                    f.close()
            if job.cancel.is_set():
                return
            for rtype in files:
                os.replace(job.folder / f".{rtype}.ndjson.tmp", job.folder / f"{rtype}.ndjson")
                job.output.append({"type": rtype, "count": counts[rtype],
                                   "url": f"{job.base_url}/$export-file/{job.id}/{rtype}.ndjson"})
            job.progress = "complete"
            job.status = "done"
        except (KitError, OSError) as exc:
            job.error = str(exc)
            job.status = "error"
        except Exception as exc:  # noqa: BLE001 - a job never stays "running" (it holds a slot)
            log.exception("FHIR export job %s failed", job.id)
            job.error = f"internal error ({type(exc).__name__})"
            job.status = "error"
        if not job.cancel.is_set():
            try:
                job.save()
            except OSError as exc:  # answered from memory until a restart, which reports it cut short
                log.warning("FHIR export job %s: cannot save its state: %s", job.id, exc)

    def get(self, job_id: str) -> ExportJob:
        """A job by id (404 if unknown or cancelled)."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise fail(404, "not-found", f"no export job {job_id}")
        return job

    def cancel(self, job_id: str) -> None:
        """Cancel a job and delete its files (404 if unknown)."""
        job = self.get(job_id)
        job.cancel.set()
        with self._lock:
            self._jobs.pop(job_id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def file(self, job_id: str, name: str) -> Path:
        """Path of a finished job's NDJSON file (404 if there is none)."""
        job = self.get(job_id)
        path = job.folder / name
        if job.status != "done" or "/" in name or not name.endswith(".ndjson") or not path.is_file():
            raise fail(404, "not-found", f"export job {job_id} has no file {name}")
        return path
