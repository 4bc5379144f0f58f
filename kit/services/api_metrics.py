"""``GET /metrics`` on the integration REST API: the connectors' health in Prometheus text format (I/O).

The API's Hub is watched by a :class:`kit.hub.monitor.Monitor` whose history
and alerts live in the API's workspace (``monitor.db``). Unless one is attached
with :func:`attach_monitor` (a monitor with its own thread), the monitor is
driven by the scrapes: a scrape probes the connectors when the last round is
older than ``[monitor] interval``, so a burst of scrapes probes each peer
once. Needs a key of the ``read`` role, like every route but ``/health``.

:func:`monitor_app` and :func:`serve_monitor` are the standalone surface of
``kit monitor serve``: ``/metrics`` (no key; it listens on 127.0.0.1 unless
told otherwise), ``/health`` (200 while the monitor's worker runs, 503 with
the reason once it died) and ``/alerts`` (the active alerts as JSON).

Written by hand: a route over :mod:`kit.hub.monitor`.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import JSONResponse, Response

from kit.errors import ServiceFailedError
from kit.hub.monitor import METRICS_CONTENT_TYPE, Monitor
from kit.services.api import READ, ApiContext, context
from kit.services.api_http import ApiServer, Json
from kit.services.api_models import ApiProblem

__all__ = ["attach_monitor", "close_monitor", "monitor_app", "monitor_of", "router", "serve_monitor"]

router = APIRouter(tags=["service"])

_LOCK = threading.Lock()


def attach_monitor(app: FastAPI, monitor: Monitor) -> None:
    """Serve ``monitor``'s metrics at the app's ``/metrics`` (instead of a scrape-driven one)."""
    app.state.monitor = monitor


def monitor_of(app: FastAPI, ctx: ApiContext) -> Monitor:
    """The app's monitor: the attached one, else one over the API's Hub, made on first use."""
    with _LOCK:
        monitor: Monitor | None = getattr(app.state, "monitor", None)
        if monitor is None:
            monitor = Monitor(ctx.settings, hub=ctx.hub, workspace=ctx.store.workspace)
            app.state.monitor = monitor
        return monitor


def close_monitor(app: FastAPI) -> None:
    """Close the app's monitor, if it has one (idempotent)."""
    with _LOCK:
        monitor: Monitor | None = getattr(app.state, "monitor", None)
        app.state.monitor = None
    if monitor is not None:
        monitor.close()


@router.get(
    "/metrics",
    dependencies=[READ],
    summary="The connectors' health (up, latency, checks, failures, alerts) in Prometheus text format",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text format 0.0.4"}},
)
def metrics(request: Request) -> Any:
    monitor = monitor_of(request.app, context(request))
    try:
        monitor.refresh()
    except ServiceFailedError as exc:
        raise ApiProblem(503, f"the monitor stopped: {exc}") from exc
    return Response(monitor.metrics_text(), media_type=METRICS_CONTENT_TYPE)


def monitor_app(monitor: Monitor) -> FastAPI:
    """The standalone app of ``kit monitor serve``: ``/metrics``, ``/health`` and ``/alerts``, no key."""
    app = FastAPI(title="kit monitor", version="1", default_response_class=Json, docs_url=None,
                  redoc_url=None, description="Health checks of the connectors: metrics, health, alerts.")

    @app.get("/metrics", response_class=Response, summary="Prometheus text format 0.0.4")
    def metrics_text() -> Any:
        return Response(monitor.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/health", summary="200 while the monitor checks on schedule, 503 once its worker died")
    def health() -> Any:
        try:
            monitor.check()
        except ServiceFailedError as exc:
            return JSONResponse({"status": "failed", "reason": str(exc)}, status_code=503)
        return {"status": "ok", "connectors": list(monitor.connectors), "last_round": monitor.last_round}

    @app.get("/alerts", summary="The active alerts, most severe and newest first")
    def alerts() -> Any:
        frame = monitor.alerts()
        return frame.with_columns(frame[c].dt.to_string("%Y-%m-%dT%H:%M:%S%.3fZ").alias(c)
                                  for c in ("raised_at", "acknowledged_at", "resolved_at")).to_dicts()

    return app


def serve_monitor(monitor: Monitor, *, host: str = "127.0.0.1", port: int = 0) -> ApiServer:
    """Serve :func:`monitor_app` in a background thread; ``.stop()`` stops it (not the monitor)."""
    server = ApiServer(monitor_app(monitor), host=host, port=port, max_connections=64)
    server.start()
    return server
