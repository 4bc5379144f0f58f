"""``kit api serve`` and ``kit api keys create``: the integration REST API."""

from __future__ import annotations

import signal
import sys
import threading

import click

from kit.cli.common import EPHEMERAL_PORT, HOST, OUT_DIR, handle_errors, listen_host, settings_from

__all__ = ["api"]


@click.group()
def api() -> None:
    """The integration REST API: the Hub, integrations, sync jobs and scheduling over HTTP."""


@api.command()
@click.option("--host", type=HOST, default=None, help="Address to listen on (default [api] host, 127.0.0.1).")
@click.option("--port", type=EPHEMERAL_PORT, default=None,
              help="Port (0 = ephemeral; default [api] port, 8071).")
@click.option("--workspace", type=OUT_DIR, default=None,
              help="Where the API keeps its keys, integrations, sync history and SIU log "
                   "(default [api] workspace, ~/.local/share/kit/api).")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str | None, port: int | None, workspace: str | None) -> None:
    """Serve the integration REST API in the foreground until Ctrl-C or SIGTERM.

    Prints its address (`api  http://127.0.0.1:8071`); the OpenAPI document is at
    /openapi.json. Needs a Fernet key for the connector credentials it stores
    (KIT_API_FERNET_KEY or KIT_API_FERNET_KEY_FILE) and at least one API key:
    `kit api keys create --role admin`, or KIT_API_ADMIN_KEY.

    \b
    Examples:
      kit api serve
      kit api serve --port 0 --workspace api
    """
    from kit.services.api import check_running
    from kit.services.api import serve as start

    settings = settings_from(ctx)
    if host is not None:
        listen_host(host, "api serve --host")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = start(settings, host=host, port=port, workspace=workspace)
    try:
        click.echo(f"api   {server.address}/api/v1")
        click.echo(f"openapi {server.address}/openapi.json", err=True)
        click.echo("ready (Ctrl-C to stop)", err=True)
        sys.stdout.flush()
        while not stop.wait(0.5):
            check_running(server)
    finally:
        server.stop()
    click.echo("stopped", err=True)


@api.group()
def keys() -> None:
    """API keys (stored as scrypt hashes in the workspace)."""


@keys.command()
@click.option("--role", type=click.Choice(["read", "write", "admin"]), required=True,
              help="read: GET only; write: also change data; admin: also keys and integrations.")
@click.option("--label", default=None, help="A note to tell keys apart (shown by GET /api/v1/keys).")
@click.option("--workspace", type=OUT_DIR, default=None,
              help="The API's workspace (default [api] workspace, ~/.local/share/kit/api).")
@click.pass_context
@handle_errors
def create(ctx: click.Context, role: str, label: str | None, workspace: str | None) -> None:
    """Make an API key and print it once (only its hash is kept).

    \b
    Examples:
      kit api keys create --role admin
      kit api keys create --role read --label dashboard --workspace api
    """
    from pathlib import Path

    from kit.services._auth import Role, new_key
    from kit.services.api_store import ApiStore

    settings = settings_from(ctx)
    folder = Path(workspace) if workspace else settings.api.resolved_workspace()
    key = new_key()
    with ApiStore(folder) as store:
        kid = store.add_key(key, Role(role), label)
    click.echo(key)
    click.echo(f"key {kid} ({role}) stored in {folder}; this is the only time the key is shown", err=True)
