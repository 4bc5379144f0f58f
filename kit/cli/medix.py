"""``kit medix serve``: the Medix study-download service in the foreground."""

from __future__ import annotations

import signal
import sys
import threading

import click

from kit.cli.common import EPHEMERAL_PORT, HOST, OUT_DIR, handle_errors, listen_host, settings_from

__all__ = ["medix"]


@click.group()
def medix() -> None:
    """The Medix study-download service for the image-sharing platform."""


@medix.command()
@click.option("--host", type=HOST, default=None,
              help="Address to listen on (default [medix] host, else 127.0.0.1).")
@click.option("--port", type=EPHEMERAL_PORT, default=None,
              help="HTTP port (0 = ephemeral; default [medix] port, else 8070).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the bearer token (default $KIT_MEDIX_TOKEN or $KIT_MEDIX_TOKEN_FILE).")
@click.option("--workspace", type=OUT_DIR, default=None,
              help="Folder of the job table, exports and zips (default ~/.cache/kit/medix).")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str | None, port: int | None, token_file: str | None,
          workspace: str | None) -> None:
    """Serve study downloads with webhooks until Ctrl-C or SIGTERM.

    Prints its address (`medix  http://127.0.0.1:8070`). Requests need
    `Authorization: Bearer <token>`. Studies are retrieved from the configured
    PACS ([pacs], or [dicomweb] with [medix] retrieve = "wado"); jobs
    interrupted by a stop resume on the next start with the same workspace.
    Exits 1 with one line if a worker dies.

    \b
    Examples:
      KIT_MEDIX_TOKEN_FILE=token.txt kit medix serve
      kit medix serve --port 0 --token-file token.txt --workspace medix
    """
    from kit.errors import ServiceFailedError
    from kit.services._bearer import load_token
    from kit.services.medix import MedixService

    settings = settings_from(ctx)
    if host is not None:
        listen_host(host, "medix serve --host")
    token = load_token(settings.medix.token, token_file, key="medix.token")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with MedixService(settings, token=token, host=host, port=port, workspace=workspace) as service:
        click.echo(f"medix {service.address}")
        click.echo(f"workspace {service.workspace}", err=True)
        click.echo("ready (Ctrl-C to stop)", err=True)
        sys.stdout.flush()
        while not stop.wait(0.5):
            failure = service.failure
            if failure is not None:
                raise ServiceFailedError(f"the Medix service stopped: {type(failure).__name__}: {failure}",
                                         service="medix") from failure
    click.echo("stopped", err=True)
