"""The Medix study-download service: FastAPI over the job table and workers (I/O).

The image-sharing platform asks for a study and hears each step by webhook
(the protocol, its codes and who emits which: :mod:`kit.services.medix_protocol`)::

    POST /api/study/download          {"StudyInstanceUID": "1.2...", "WebhookUri": "https://...",
                                       "WebhookHeaders": {"X-Key": "..."}}
                                      -> 202 {"JobId": "...", "Status": "0", ...}
    GET  /api/study/download/{job}    the job: state, statuses reported, webhook progress
    GET  /api/study/download/{job}/file   the zip (once ExportCompleted; the webhook's File)
    POST /api/study/report-status     {"StudyInstanceUIDs": [...]} -> {"Studies": [{"HasReport": ...}]}
    GET  /health                      200 when every worker runs, else 503 with the reason

Every request (unknown paths too) needs ``Authorization: Bearer <token>``
(:mod:`kit.services._auth`; 401 otherwise). ``ProcessStarted`` is committed to
the job table (:mod:`kit.services.medix_store`) before the 202 answer; the
export and webhook workers (:mod:`kit.services.medix_worker`) do the rest.
Report status is :meth:`kit.hub.Hub.report_status` (an SR in the PACS or a
DiagnosticReport in the EHR).

Every peer is hostile: a declared body over ``max_body_bytes`` is refused
(413) before it is read and a sent one is cut off there; a body must arrive
within :data:`BODY_TIMEOUT`; UIDs follow the DICOM grammar; a report-status list
holds at most ``max_report_studies``; WebhookUri is http(s) only; at most
``max_queue`` unfinished jobs (429 beyond, with Retry-After); the request head
deadline and connection cap are :func:`kit._http_serve.guarded_protocol`'s;
an unexpected exception is a logged 500, never a dead service. A worker that
died makes ``/health`` 503, refuses new jobs (503) and sets
:attr:`MedixService.failure`, which ``kit medix serve`` polls to exit 1.

Written by hand: the routes and their limits; HTTP is FastAPI's and uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kit._http_serve import ServingThread, bind, run_guarded
from kit.config import Secret, Settings
from kit.errors import InvalidInputError, KitError, ServiceFailedError, StoreError
from kit.services._audit_http import medix_audit
from kit.services._bearer import BearerAuth
from kit.services.audit import AuditLog, enable_configured, release
from kit.services.medix_protocol import parse_download_request, parse_report_request, report_answer
from kit.services.medix_store import JobStore
from kit.services.medix_worker import ExportWorkers, WebhookDispatcher

__all__ = ["BODY_TIMEOUT", "SEND_TIMEOUT", "MedixService", "create_app"]

log = logging.getLogger("kit.services.medix")

#: Seconds a request body may take to arrive.
BODY_TIMEOUT: Final = 15.0
#: Seconds one chunk of an answer (e.g. of a zip) may wait for a client that reads nothing.
SEND_TIMEOUT: Final = 30.0
#: Report-status requests answered at once (each is many PACS and EHR queries).
REPORT_CONCURRENCY: Final = 2
#: Seconds a report-status request waits for its turn before a 503.
REPORT_WAIT: Final = 30.0
_JOB_ID = re.compile(r"[0-9a-f]{32}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Guard:
    """Outermost ASGI layer: token check, early 413, slow-reader limit, last-resort 500 (JSON)."""

    def __init__(self, app: ASGIApp, *, auth: BearerAuth, max_body: int) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        response: Response | None = None
        declared = headers.get(b"content-length")
        if not self.auth.allows(headers.get(b"authorization")):
            response = _error(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        elif declared is not None and (not declared.isdigit() or len(declared) > 18
                                       or int(declared) > self.max_body):
            response = _error(413, f"request body over {self.max_body} bytes")
        if response is not None:
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await run_guarded(self.app, scope, receive, send, send_timeout=SEND_TIMEOUT, service="Medix",
                          logger=log,
                          reject=lambda status, message: _error(status, message)(scope, receive, send))


async def _json_body(request: Request, limit: int) -> Any:
    size = 0
    chunks: list[bytes] = []
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Answer(413, f"request body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise _Answer(408, f"request body not received within {BODY_TIMEOUT:g} s") from None
    except ClientDisconnect:
        raise _Answer(400, "the client went away before sending the body") from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise _Answer(400, f"the body is not JSON: {exc}") from None


class _Answer(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def create_app(service: MedixService) -> Any:
    """The Medix ASGI application over a started :class:`MedixService` (guard included)."""
    app = FastAPI(title="kit Medix study download", docs_url=None, redoc_url=None, openapi_url=None)
    medix = service.settings.medix
    reports = asyncio.Semaphore(REPORT_CONCURRENCY)  # waiters wait in the event loop, holding no thread

    @app.exception_handler(_Answer)
    async def answer(_: Request, exc: _Answer) -> Response:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(InvalidInputError)
    async def invalid(_: Request, exc: InvalidInputError) -> Response:
        return _error(400, str(exc))

    @app.exception_handler(StoreError)
    async def store_failed(_: Request, exc: StoreError) -> Response:
        log.error("Medix: job table: %s", exc)
        return _error(503, "the job table is not available")

    @app.get("/health")
    async def health() -> Response:
        problem = service.problem()
        if problem is not None:
            return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
        unfinished = await run_in_threadpool(service.store_or_raise().unfinished)
        return JSONResponse({"status": "ok", "unfinished_jobs": unfinished, "max_queue": medix.max_queue})

    @app.post("/api/study/download", status_code=202)
    async def download(request: Request) -> Response:
        wanted = parse_download_request(await _json_body(request, medix.max_body_bytes))
        problem = service.problem()
        if problem is not None:
            raise _Answer(503, f"the service is unhealthy and takes no jobs: {problem}")
        store = service.store_or_raise()
        job = await run_in_threadpool(store.create, wanted, max_unfinished=medix.max_queue)
        if job is None:
            raise _Answer(429, f"{medix.max_queue} jobs are waiting or running; retry later",
                          {"Retry-After": "30"})
        service.job_added()
        log.info("Medix job %s queued for study %s", job.id, job.study_uid)
        return JSONResponse(job.public(), status_code=202,
                            headers={"Location": f"/api/study/download/{job.id}"})

    def _job_id(job_id: str) -> str:
        if not _JOB_ID.fullmatch(job_id):
            raise _Answer(404, "no such job")
        return job_id

    @app.get("/api/study/download/{job_id}")
    async def job_status(job_id: str) -> Response:
        job = await run_in_threadpool(service.store_or_raise().get, _job_id(job_id))
        if job is None:
            raise _Answer(404, "no such job")
        return JSONResponse(job.public())

    @app.get("/api/study/download/{job_id}/file")
    async def job_file(job_id: str) -> Response:
        job = await run_in_threadpool(service.store_or_raise().get, _job_id(job_id))
        if job is None:
            raise _Answer(404, "no such job")
        if job.state != "done":
            raise _Answer(409, f"the study is not ready (status {job.status.protocol_name})")
        path = service.files / job.file if job.file else None
        if path is None or not path.is_file():
            raise _Answer(410, "the file is no longer kept")
        return FileResponse(path, media_type="application/zip", filename=f"{job.study_uid}.zip")

    @app.post("/api/study/report-status")
    async def report_status(request: Request) -> Response:
        uids = parse_report_request(await _json_body(request, medix.max_body_bytes),
                                    max_studies=medix.max_report_studies)

        def ask() -> dict[str, Any]:
            return report_answer(service.hub.report_status(list(uids)).to_dicts())

        try:
            async with asyncio.timeout(REPORT_WAIT):
                await reports.acquire()
        except TimeoutError:
            raise _Answer(503, "busy answering other report-status requests; retry later",
                          {"Retry-After": "10"}) from None
        try:
            return JSONResponse(await run_in_threadpool(ask))
        except KitError as exc:
            raise _Answer(502, f"cannot ask the PACS or EHR: {type(exc).__name__}") from exc
        finally:
            reports.release()

    return medix_audit(_Guard(app, auth=service.auth, max_body=medix.max_body_bytes), service.auth.allows)


class MedixService:
    """The Medix service: job table, export workers, webhook dispatcher and HTTP server.

    Parameters
    ----------
    settings : Settings
        ``[medix]`` for the service, ``[pacs]``/``[dicomweb]``/``[fhir]`` for the peers.
    token : Secret
        The bearer token every request must carry (see :func:`kit.services._auth.load_token`).
    host, port : str, int, optional
        Where to listen (default ``[medix] host`` and ``port``; 0 = ephemeral).
    workspace : path, optional
        Folder of the job table, exports and zips (default ``[medix] workspace``).
    head_timeout, max_connections
        HTTP hardening, as for :func:`kit._http_serve.guarded_protocol`.
    """

    name = "medix"

    def __init__(self, settings: Settings, *, token: Secret, host: str | None = None, port: int | None = None,
                 workspace: str | os.PathLike[str] | None = None, head_timeout: float = 10.0,
                 max_connections: int = 256) -> None:
        self.settings = settings
        self.host = host if host is not None else settings.medix.host
        self.port = port if port is not None else settings.medix.port
        self.workspace = (Path(workspace).expanduser().resolve() if workspace is not None
                          else settings.medix.resolved_workspace())
        self.files = self.workspace / "files"
        self.auth = BearerAuth(token)
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.store: JobStore | None = None
        self.workers: ExportWorkers | None = None
        self.webhooks: WebhookDispatcher | None = None
        self._hub: Any = None
        self._serving = ServingThread("medix", "the Medix HTTP server")
        self._audit: AuditLog | None = None

    @property
    def address(self) -> str:
        """Where the service listens, e.g. ``http://127.0.0.1:8070``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def public_url(self) -> str:
        """The root the webhooks' File addresses start with."""
        return self.settings.medix.public_url or self.address

    def file_url(self, job_id: str) -> str:
        """The download address of a job's zip."""
        return f"{self.public_url}/api/study/download/{job_id}/file"

    @property
    def hub(self) -> Any:
        """The Hub answering report status (built on first use)."""
        if self._hub is None:
            from kit.hub import Hub

            self._hub = Hub.from_settings(self.settings)
        return self._hub

    def store_or_raise(self) -> JobStore:
        if self.store is None:
            raise StoreError("the Medix service is not running")
        return self.store

    def job_added(self) -> None:
        """Wake the workers for a new job."""
        if self.workers is not None:
            self.workers.wake()
        if self.webhooks is not None:
            self.webhooks.wake()

    @property
    def failure(self) -> BaseException | None:
        """The error of a worker or server thread that died (None while all run)."""
        for part in (self.workers, self.webhooks):
            if part is not None and part.failure is not None:
                return part.failure
        if self.workers is not None and not self.workers.alive:
            return ServiceFailedError("a Medix export worker stopped", service="medix")
        if self.webhooks is not None and not self.webhooks.alive:
            return ServiceFailedError("the Medix webhook dispatcher stopped", service="medix")
        return self._serving.failure

    def problem(self) -> str | None:
        """Why the service is unhealthy, or None."""
        failure = self.failure
        return None if failure is None else f"{type(failure).__name__}: {failure}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> MedixService:
        """Open the job table (resuming interrupted jobs), start the workers, bind and serve; return self."""
        if self._serving.running:
            return self
        try:
            self.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create the Medix workspace {self.workspace}: {exc.strerror}") from exc
        sock = bind(self.host, self.port, what="the Medix service")
        self.port = int(sock.getsockname()[1])
        try:
            self.store = JobStore(self.workspace / "jobs.sqlite")
            self._audit = enable_configured(self.settings, self.workspace / "audit.db")  # kit.audit
            resumed = self.store.recover(max_resumes=self.settings.medix.max_resumes)
            if resumed:
                log.warning("Medix: resuming %d job(s) interrupted by a restart", len(resumed))
            self.webhooks = WebhookDispatcher(self.store, self.settings)
            self.workers = ExportWorkers(self.store, self.settings, self.workspace, file_url=self.file_url,
                                         on_event=self.webhooks.wake)
            self.webhooks.start()
            self.workers.start()
            self._serving.start(create_app(self), sock, head_timeout=self.head_timeout,
                                max_connections=self.max_connections, keep_alive=5)
            return self
        except BaseException:
            sock.close()
            self.stop()
            raise

    def stop(self) -> None:
        """Stop serving and the workers (jobs in flight resume on the next start); idempotent."""
        self._serving.stop()
        if self.workers is not None:
            self.workers.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.workers = self.webhooks = None
        if self._hub is not None:
            self._hub.disconnect_all()
            self._hub = None
        if self.store is not None:
            self.store.close()
            self.store = None
        release(self._audit)
        self._audit = None

    def __enter__(self) -> MedixService:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
