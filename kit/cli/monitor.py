"""``kit monitor serve`` and ``kit monitor status``: health checks of the configured connectors."""

from __future__ import annotations

import signal
import sys
import threading

import click

from kit.cli.common import (
    EPHEMERAL_PORT,
    HOST,
    OUT_DIR,
    SECONDS,
    emit_frame,
    handle_errors,
    listen_host,
    output_options,
    settings_from,
)

__all__ = ["monitor"]


@click.group()
def monitor() -> None:
    """Health checks of the configured PACS, FHIR server, MLLP peer and endoscopy worklist."""


@monitor.command()
@click.option("--host", type=HOST, default=None,
              help="Address to listen on (default [monitor] host, 127.0.0.1).")
@click.option("--port", type=EPHEMERAL_PORT, default=None,
              help="Port of /metrics and /health (0 = ephemeral; default [monitor] port, 8072).")
@click.option("--interval", type=SECONDS, default=None,
              help="Seconds between two rounds of checks (default [monitor] interval, 30).")
@click.option("--workspace", type=OUT_DIR, default=None,
              help="Where the history and alerts are kept (default [monitor] workspace, "
                   "~/.local/share/kit/monitor).")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str | None, port: int | None, interval: float | None,
          workspace: str | None) -> None:
    """Check every connector on a schedule and serve the metrics until Ctrl-C or SIGTERM.

    Prints the address of the metrics (`monitor  http://127.0.0.1:8072/metrics`,
    Prometheus text format); /health answers 200 while the checks run and 503
    once the monitor failed; /alerts lists the active alerts. Alerts are raised
    and resolved by the [monitor] thresholds (3 failures in a row, error rate,
    slow responses, uptime) and kept with the checks in the workspace. Exits 1
    with one line if the monitor's worker dies.

    \b
    Examples:
      kit monitor serve
      kit monitor serve --port 0 --interval 10 --workspace monitor
    """
    from kit.errors import ServiceFailedError
    from kit.hub.monitor import Monitor
    from kit.services.api_metrics import serve_monitor

    settings = settings_from(ctx)
    if host is not None:
        listen_host(host, "monitor serve --host")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watcher = Monitor(settings, workspace=workspace, interval=interval)
    try:
        server = serve_monitor(watcher, host=host or settings.monitor.host,
                               port=settings.monitor.port if port is None else port)
        try:
            watcher.start()
            click.echo(f"monitor {server.address}/metrics")
            click.echo(f"health {server.address}/health", err=True)
            click.echo(f"workspace {watcher.store.path}", err=True)
            click.echo("ready (Ctrl-C to stop)", err=True)
            sys.stdout.flush()
            while not stop.wait(0.5):
                watcher.check()
                if server.failure is not None:
                    raise ServiceFailedError(f"the metrics server stopped: {server.failure}",
                                             service="monitor")
        finally:
            server.stop()
    finally:
        watcher.close()
    click.echo("stopped", err=True)


@monitor.command()
@click.option("--timeout", type=SECONDS, default=None,
              help="Seconds each probe may take (default [monitor] probe_timeout, 5).")
@output_options
@click.pass_context
@handle_errors
def status(ctx: click.Context, timeout: float | None, output: str | None, as_json: bool) -> None:
    """Probe every configured connector once and print a table (exit 1 if one does not answer).

    One row per connector: its address, the probe (C-ECHO, GET metadata, MLLP
    connect, worklist C-FIND), ok or failed with the reason, and the latency.
    Nothing is kept: `kit monitor serve` keeps the history and the alerts.

    \b
    Examples:
      kit monitor status
      kit monitor status --json
    """
    from kit.hub.monitor import Monitor

    watcher = Monitor(settings_from(ctx), in_memory=True, probe_timeout=timeout)
    try:
        frame = watcher.run_once()
    finally:
        watcher.close()
    emit_frame(frame, output, as_json, label="connectors")
    down = frame.filter(frame["status"] != "ok")["connector"].to_list()
    if down:
        click.echo(f"kit: error: not answering: {', '.join(down)}", err=True)
        raise SystemExit(1)
