"""``kit serve``, ``kit demo`` and ``kit status``."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kit.cli.common import (
    EPHEMERAL_PORT,
    HOST,
    OUT_DIR,
    emit_frame,
    handle_errors,
    listen_host,
    output_options,
    settings_from,
)
from kit.config import StackSettings

if TYPE_CHECKING:
    from kit.stack import Stack

__all__ = ["demo", "serve", "status"]


@click.command()
@click.option("--host", type=HOST, default=None,
              help="Address to listen on (default from kit.toml [stack], else 127.0.0.1).")
@click.option("--pacs-port", type=EPHEMERAL_PORT, default=None,
              help="DICOM port (0 = ephemeral; default 11112).")
@click.option("--fhir-port", type=EPHEMERAL_PORT, default=None,
              help="FHIR HTTP port (0 = ephemeral; default 8080).")
@click.option("--mllp-port", type=EPHEMERAL_PORT, default=None,
              help="MLLP port (0 = ephemeral; default 2575).")
@click.option("--dicomweb-port", type=EPHEMERAL_PORT, default=None,
              help="DICOMweb HTTP port, serving the PACS's images (0 = ephemeral; default 8042).")
@click.option("--video-port", type=EPHEMERAL_PORT, default=None,
              help="Live endoscopy video (MPEG-TS over HTTP) port (0 = ephemeral; default 8090).")
@click.option("--data-dir", type=OUT_DIR, default=None,
              help="Where the services keep their data (default ~/.cache/kit/stack).")
@click.option("--only", "only", multiple=True,
              type=click.Choice(["pacs", "fhir", "mllp", "dicomweb", "video"]),
              help="Run only these services (repeatable). Default: all.")
@click.option("--no-preload", is_flag=True, help="Start empty instead of loading the sample cohort.")
@click.pass_context
@handle_errors
def serve(ctx: click.Context, host: str | None, pacs_port: int | None, fhir_port: int | None,
          mllp_port: int | None, dicomweb_port: int | None, video_port: int | None, data_dir: str | None,
          only: tuple[str, ...], no_preload: bool) -> None:
    """Run the embedded stack in the foreground until Ctrl-C or SIGTERM.

    Prints one line per service with its address, e.g.

    \b
      pacs  dicom://KIT@127.0.0.1:11112
      fhir  http://127.0.0.1:8080/fhir/R4
      mllp  mllp://127.0.0.1:2575
      dicomweb  http://127.0.0.1:8042/dicom-web
      video  http://127.0.0.1:8090/live.ts

    The clients take these addresses as they are (`kit pacs ... --url
    dicom://...`, `kit pacs ... --web --base http://...`, `kit fhir ... --base
    http://...`, `kit hl7 send --url mllp://...`); ports set under [stack] in
    kit.toml are their defaults. DICOMweb (QIDO-RS, WADO-RS, STOW-RS) serves the
    PACS's own images: what one stores, the other finds. The video service loops
    the sample endoscopy clip as a live stream (`kit endoscopy frames` reads it).

    \b
    Examples:
      kit serve
      kit serve --pacs-port 0 --fhir-port 0 --mllp-port 0 --dicomweb-port 0 --video-port 0 --data-dir stack
    """
    import dataclasses

    from kit.stack import SERVICES, Stack

    base = settings_from(ctx).stack
    if host is not None:
        listen_host(host, "serve --host")
    overrides = {k: v for k, v in {"host": host, "pacs_port": pacs_port, "fhir_port": fhir_port,
                                   "mllp_port": mllp_port, "dicomweb_port": dicomweb_port,
                                   "video_port": video_port,
                                   "data_dir": data_dir}.items() if v is not None}
    settings: StackSettings = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(settings, services=only or SERVICES, preload=not no_preload)
    from kit.cli.audit import audit_serving

    with stack, audit_serving(settings_from(ctx), stack.data_dir):  # on by default: <data>/audit.db
        for name, address in stack.addresses().items():
            click.echo(f"{name}{' ' * max(2, 6 - len(name))}{address}", nl=True)
        click.echo(f"data  {stack.data_dir}", err=True)
        click.echo("ready (Ctrl-C to stop)", err=True)
        import sys

        sys.stdout.flush()
        while not stop.wait(0.5):
            _check_services(stack)
    click.echo("stopped", err=True)


def _check_services(stack: Stack) -> None:
    """Exit loudly (status 1) when a service's worker died: never keep serving into a void."""
    from kit.errors import ServiceFailedError

    for name, exc in stack.failures().items():
        raise ServiceFailedError(f"the embedded {name} service stopped: {type(exc).__name__}: {exc}",
                                 service=name) from exc


@click.command()
@click.option("--work-dir", type=OUT_DIR, default=None,
              help="Keep the retrieved and de-identified files here (default: a temporary folder).")
@click.option("--embedded", is_flag=True,
              help="Use a fresh embedded stack even when a configuration (--config, $KIT_CONFIG, ./kit.toml) "
                   "names other systems.")
@output_options
@click.pass_context
@handle_errors
def demo(ctx: click.Context, work_dir: str | None, embedded: bool, output: str | None, as_json: bool) -> None:
    """Run the main job end to end: on the configured systems, else on the embedded stack.

    With a configuration (--config, $KIT_CONFIG or ./kit.toml) the demo runs
    against the PACS, FHIR server and MLLP peer it names, and its first line
    says which; it writes there (the analysis result, the sample HL7 feed), so
    point it at test systems loaded with the sample cohort. Without one (or
    with --embedded) it starts the embedded stack on ephemeral ports.

    It queries the PACS, retrieves a
    CT study, indexes and de-identifies it, pulls the cohort from the FHIR
    server and joins it with the PACS frame, replays the HL7 feed over MLLP,
    analyses the CT with kit's lesion finder, and delivers the result to the
    same systems: DICOM SR and SEG to the PACS, Observations and a
    DiagnosticReport to the FHIR server, an ORU^R01 to the MLLP listener, each
    read back and compared. Prints the steps, then one line per target with its
    status (verified, sent, failed, skipped) and time. Exits 1, naming them,
    when a target failed.

    With --json, prints one list of records: first one per step
    {"step", "result", "seconds", "target": null, "status": null, "reason":
    null, "identifier": null}, then one per target (sr, seg, observation,
    diagnostic_report, oru) {"step": "deliver <target>", "result": <status>,
    "seconds", "target", "status", "reason", "identifier"}; the identifier is
    the SOP Instance UID, "Type/<id>/_history/<version>" or the MSH-10.

    \b
    Examples:
      kit demo
      kit demo --work-dir demo --json
      kit --config kit.toml demo
    """
    from kit.demo import run_demo

    settings = settings_from(ctx)
    configured = None if embedded or not settings.configured else settings
    summary = run_demo(Path(work_dir) if work_dir else None, settings=configured,
                       echo=lambda m: click.echo(m, err=True))
    if output or as_json:
        emit_frame(summary, output, as_json, label="rows")
    else:
        import polars as pl

        steps = summary.filter(pl.col("target").is_null()).select("step", "result", "seconds")
        targets = summary.filter(pl.col("target").is_not_null()).select(
            "target", "status", "seconds", "identifier", "reason")
        emit_frame(steps, None, False, label="steps")
        emit_frame(targets, None, False, label="targets")
    failed = summary.filter(summary["status"] == "failed")
    if failed.height:
        names = ", ".join(f"{t} ({r})" for t, r in zip(failed["target"], failed["reason"], strict=True))
        click.echo(f"kit: error: delivery failed: {names}", err=True)
        raise SystemExit(1)


@click.command()
@output_options
@click.pass_context
@handle_errors
def status(ctx: click.Context, output: str | None, as_json: bool) -> None:
    """Check that the configured PACS, DICOMweb, FHIR server and MLLP peer answer (exit 1 if not).

    DICOMweb is checked when [dicomweb] base differs from its default (the embedded stack's).

    \b
    Examples:
      kit status
      kit status --json
    """
    from kit.demo import check_status

    frame = check_status(settings_from(ctx))
    emit_frame(frame, output, as_json, label="services")
    down = frame.filter(~frame["ok"])["service"].to_list()
    if down:
        click.echo(f"kit: error: not answering: {', '.join(down)}", err=True)
        raise SystemExit(1)
