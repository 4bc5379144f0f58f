"""The integration REST API (``kit api serve``): Hub, integrations, sync jobs, scheduling over HTTP (I/O).

Three seeds' endpoints on one FastAPI app, its OpenAPI document at ``/openapi.json``:

* ``/api/v1/integration/...`` -- the clinic seed's integration manager over
  :class:`kit.hub.Hub` (:mod:`kit.services.api_integration`): status,
  connect-all, disconnect-all, a patient across systems, sending results, and
  PACS, endoscopy and EHR operations.
* ``/api/v1/integrations/...``, ``/api/v1/sync-jobs/...`` and
  ``/api/v1/keys`` -- the integration hub seed's integrations (create, read,
  update, delete, test, pause, resume), sync jobs with their history, and API
  keys (:mod:`kit.services.api_hub`).
* ``/api/v1/scheduling/...`` -- appointments by date and modality, analytics,
  and JSON -> SIU entry sent over MLLP (:mod:`kit.services.api_scheduling`).

Every request but ``GET /health`` and the OpenAPI document carries an API key
in ``X-API-Key``; its role (``read``, ``write``, ``admin``) decides what it may
do (401 without a known key, 403 for a role too low). Keys are stored as
scrypt hashes (:mod:`kit.services._auth`), connector credentials as Fernet
tokens (:mod:`kit.services.api_vault`), in ``<workspace>/api.db``
(:mod:`kit.services.api_store`).

Every error is an ``application/problem+json`` body (RFC 9457): bad input
4xx (422 for a body or parameter outside the schema or the kit's rules), an
unknown id 404, a peer that failed 502 (504 on its timeout), a capability
this build does not have 501 with the reason. One request's failure never
stops the service (:class:`kit.services.api_http.ApiGuard`).

Written by hand: the routes are thin; the work is the Hub's, the results
package's, the sync engine's and the scheduling module's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Final

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from kit.config import Settings, load_settings
from kit.errors import (
    AccessDeniedError,
    ConfigError,
    FhirError,
    InvalidInputError,
    KitError,
    PeerTimeoutError,
    RecordNotFoundError,
    ServiceFailedError,
    StoreError,
)
from kit.services._audit_http import api_audit
from kit.services._auth import MAX_KEY_LENGTH, MIN_KEY_LENGTH, Role, check_key_text
from kit.services.api_http import ApiGuard, ApiServer, Json, problem_response
from kit.services.api_models import ApiProblem
from kit.services.api_store import ApiStore
from kit.services.api_vault import CredentialVault
from kit.services.audit import enable_configured, release

__all__ = ["API_KEY_HEADER", "HL7_WAIT", "ApiContext", "create_app", "hl7_turn", "require", "serve",
           "upstream", "waited_turn"]

log = logging.getLogger("kit.services.api")

#: The header that carries the API key.
API_KEY_HEADER: Final = "X-API-Key"
#: Longest wait (seconds) of a request for the kept MLLP connection while another one sends.
HL7_WAIT: Final = 2.0
#: Verified keys are remembered this long (seconds), so scrypt runs once per key, not per request.
KEY_CACHE_SECONDS: Final = 60.0
_KEY_CACHE_SIZE: Final = 1024
#: Concurrent scrypt checks (each takes ~16 MiB).
_HASHING: Final = threading.BoundedSemaphore(2)

_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key made with `kit api keys create --role ROLE` or POST /api/v1/keys.",
)


@dataclasses.dataclass
class ApiContext:
    """What the routes share: settings, the Hub, the store, the credential vault, locks."""

    settings: Settings
    store: ApiStore
    vault: CredentialVault
    hub: Any
    hl7_store: Path | None = None
    endoscopy_stream: str | None = None
    deliver_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    hl7_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _keys: dict[str, tuple[str, Role, float]] = dataclasses.field(default_factory=dict)
    _keys_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def principal(self, key: str) -> tuple[str, Role] | None:
        """(key id, role) of a valid key, checked once per :data:`KEY_CACHE_SECONDS`."""
        digest = hashlib.sha256(key.encode("ascii")).hexdigest()
        now = time.monotonic()
        with self._keys_lock:
            hit = self._keys.get(digest)
            if hit is not None and now - hit[2] < KEY_CACHE_SECONDS:
                return hit[0], hit[1]
        with _HASHING:
            found = self.store.check_key(key)
        if found is not None:
            with self._keys_lock:
                if len(self._keys) >= _KEY_CACHE_SIZE:
                    self._keys.clear()
                self._keys[digest] = (*found, now)
        return found

    def forget_keys(self) -> None:
        """Drop the verified-key cache (after a key is revoked)."""
        with self._keys_lock:
            self._keys.clear()


def context(request: Request) -> ApiContext:
    """The app's :class:`ApiContext` (a FastAPI dependency)."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def require(role: Role) -> Callable[..., tuple[str, Role]]:
    """A dependency admitting keys whose role allows ``role``: 401 without a known key, 403 below it."""

    def check(request: Request, key: str | None = Security(_api_key)) -> tuple[str, Role]:
        if not key:
            raise AccessDeniedError(f"this endpoint needs an API key in the {API_KEY_HEADER} header")
        try:
            check_key_text(key)
        except InvalidInputError:
            raise AccessDeniedError(
                f"not a valid API key ({MIN_KEY_LENGTH}-{MAX_KEY_LENGTH} printable characters)"
            ) from None
        found = context(request).principal(key)
        if found is None:
            raise AccessDeniedError("unknown or revoked API key")
        if not found[1].allows(role):
            raise AccessDeniedError(
                f"this endpoint needs the {role.value} role; the key has {found[1].value}", status=403
            )
        request.state.key_id = found[0]
        return found

    return check


READ = Depends(require(Role.READ))
WRITE = Depends(require(Role.WRITE))
ADMIN = Depends(require(Role.ADMIN))


@contextmanager
def waited_turn(lock: threading.Lock, seconds: float, busy: str) -> Iterator[None]:
    """Hold ``lock`` for the block; a 503 problem saying ``busy`` if it is not free within ``seconds``."""
    if not lock.acquire(timeout=seconds):
        raise ApiProblem(503, busy)
    try:
        yield
    finally:
        lock.release()


def hl7_turn(ctx: ApiContext) -> AbstractContextManager[None]:
    """The kept MLLP connection for one request; 503 after :data:`HL7_WAIT` seconds of waiting
    for another request's send (a silent peer held it 30 s a try, and 45 requests waiting for
    it took every worker thread: even ``/health`` went unanswered)."""
    return waited_turn(ctx.hl7_lock, HL7_WAIT, "the MLLP peer has been busy with another request for "
                       f"over {HL7_WAIT:g} s; retry later")


@contextmanager
def upstream(what: str) -> Iterator[None]:
    """Turn a peer's failure into the API's answer: 404/422 for what the peer refused, else 502/504.

    Only calls to peers go inside: the request's own checks happen before, so
    an error from the peer's side is never taken for bad input.
    """
    try:
        yield
    except (ApiProblem, RecordNotFoundError, AccessDeniedError):
        raise
    except FhirError as exc:
        code = exc.status_code or 0
        if code in (404, 410):
            raise ApiProblem(404, f"{what}: {exc}") from exc
        if code in (400, 409, 412, 422):
            raise ApiProblem(422, f"{what} refused the request: {exc}") from exc
        raise ApiProblem(502, f"{what}: {type(exc).__name__}: {exc}") from exc
    except PeerTimeoutError as exc:
        raise ApiProblem(504, f"{what}: {exc}") from exc
    except KitError as exc:
        raise ApiProblem(502, f"{what}: {type(exc).__name__}: {exc}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:2000] if text else type(exc).__name__


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _problem(_: Request, exc: ApiProblem) -> Response:
        return problem_response(exc.status, exc.detail[:2000], **exc.extra)

    @app.exception_handler(AccessDeniedError)
    async def _denied(_: Request, exc: AccessDeniedError) -> Response:
        headers = {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'} if exc.status == 401 else None
        return problem_response(exc.status, _first_line(exc), headers)

    @app.exception_handler(RecordNotFoundError)
    async def _missing(_: Request, exc: RecordNotFoundError) -> Response:
        return problem_response(404, _first_line(exc))

    @app.exception_handler(InvalidInputError)
    async def _invalid(_: Request, exc: InvalidInputError) -> Response:
        return problem_response(422, _first_line(exc))

    @app.exception_handler(RequestValidationError)
    async def _schema(_: Request, exc: RequestValidationError) -> Response:
        # what was wrong and where, never the value given (it may be a credential)
        errors = [
            {
                "loc": [str(p) for p in e.get("loc", ())][:10],
                "msg": str(e.get("msg", ""))[:300],
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()[:20]
        ]
        return problem_response(422, "the request does not match the API's schema", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> Response:
        log.error("API: %s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, f"the server is not configured for this: {_first_line(exc)}")

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> Response:
        log.error("API: %s %s: %s", request.method, request.url.path, exc)
        return problem_response(503, f"the API's store failed: {_first_line(exc)}")

    @app.exception_handler(KitError)
    async def _kit(request: Request, exc: KitError) -> Response:
        log.error("API: %s %s failed: %s", request.method, request.url.path, exc)
        return problem_response(500, f"{type(exc).__name__}: {_first_line(exc)}")


def create_app(
    settings: Settings | None = None,
    *,
    workspace: str | Path | None = None,
    hub: Any = None,
    body_timeout: float = 30.0,
) -> FastAPI:
    """The API's FastAPI application.

    Parameters
    ----------
    settings : Settings, optional
        The kit's settings (default :func:`kit.load_settings`): the peers the
        Hub talks to and ``[api]``.
    workspace : path, optional
        Where the API keeps its state (default ``[api] workspace``).
    hub : kit.hub.Hub, optional
        The Hub to use (default: one built from ``settings``).
    body_timeout : float
        Seconds a request body may take to arrive (408 after).

    Raises
    ------
    kit.errors.ConfigError
        No Fernet key (``[api] fernet_key``), or a bad one.
    """
    from kit.hub import Hub
    from kit.services import api_hub, api_integration, api_metrics, api_scheduling

    settings = settings if settings is not None else load_settings()
    api = settings.api
    vault = CredentialVault.from_settings(api)
    folder = Path(workspace).expanduser() if workspace is not None else api.resolved_workspace()
    store = ApiStore(folder)
    try:
        if api.admin_key is not None:
            try:
                check_key_text(api.admin_key.reveal())
            except InvalidInputError as exc:
                raise ConfigError("api.admin_key", str(exc)) from None
            store.add_key(api.admin_key.reveal(), Role.ADMIN, "bootstrap (api.admin_key)")
        hl7_store = Path(api.hl7_store).expanduser() if api.hl7_store else None
        the_hub = (
            hub
            if hub is not None
            else Hub.from_settings(settings, probe_timeout=api.probe_timeout, hl7_store=hl7_store)
        )
    except BaseException:
        store.close()
        raise
    app = FastAPI(
        title="kit integration API",
        version="1",
        default_response_class=Json,
        docs_url=None,
        redoc_url=None,
        description="The Hub, integrations, sync jobs and scheduling of kit over HTTP. Every "
        f"endpoint but /health needs an API key in {API_KEY_HEADER}.",
    )
    app.state.ctx = ApiContext(settings, store, vault, the_hub, hl7_store, api.endoscopy_stream)
    app.add_middleware(
        ApiGuard,
        max_json_body=api.max_json_body,
        max_body=api.max_body,
        large_paths=("/pacs/store-image",),
        body_timeout=body_timeout,
    )
    app.add_middleware(api_audit)  # kit.audit: one event per request, outside the guard
    _install_handlers(app)

    @app.get("/health", tags=["service"], summary="Liveness: the service answers (no key needed)")
    async def health() -> dict[str, str]:  # on the event loop: answered while every worker thread waits
        return {"status": "ok"}

    app.include_router(api_integration.router)
    app.include_router(api_hub.router)
    app.include_router(api_scheduling.router)
    app.include_router(api_metrics.router)
    return app


def serve(
    settings: Settings | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    workspace: str | Path | None = None,
    body_timeout: float = 30.0,
) -> ApiServer:
    """Build the app and start it in a background thread; stop it with ``.stop()``.

    Parameters
    ----------
    settings : Settings, optional
    host, port : optional
        Where to listen (default ``[api] host`` and ``port``; port 0 is ephemeral).
    workspace : path, optional
        Default ``[api] workspace``.
    body_timeout : float
        As for :func:`create_app`.
    """
    settings = settings if settings is not None else load_settings()
    app = create_app(settings, workspace=workspace, body_timeout=body_timeout)
    ctx: ApiContext = app.state.ctx
    audit_log = enable_configured(settings, ctx.store.workspace / "audit.db")  # kit.audit: on by default

    def close() -> None:
        ctx.hub.disconnect_all()
        from kit.services import api_metrics

        api_metrics.close_monitor(app)  # the scrape-driven monitor's store, before the API's
        ctx.store.close()
        release(audit_log)

    server = ApiServer(
        app, host=host or settings.api.host, port=settings.api.port if port is None else port, on_stop=close
    )
    try:
        server.start()
    except BaseException:
        close()
        raise
    return server


def check_running(server: ApiServer) -> None:
    """Raise ServiceFailedError when the server's thread died (for a foreground runner's loop)."""
    if server.failure is not None:
        raise ServiceFailedError(
            f"the API server stopped: {type(server.failure).__name__}: {server.failure}", service="api"
        )
