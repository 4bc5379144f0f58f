"""The ``kit`` command line.

One group per protocol (``kit pacs``, ``kit fhir``, ``kit hl7``,
``kit endoscopy``) plus ``kit serve``, ``kit demo``, ``kit samples``,
``kit index``, ``kit deid`` and ``kit status``. Subcommands are imported only
when used, so ``kit --help`` stays fast: it lists them from :data:`SUMMARIES`
(each the first paragraph of the command's help, checked by a test) without
importing any.

Conventions (see DESIGN.md): results print as a table with identifiers whole;
``-o FILE`` writes by extension (.parquet .csv .json .ndjson) into an existing
folder, a command that writes a folder takes ``--out-dir``; ``--json`` prints
JSON. Exit 0 on success; 1 on failure with one line on stderr
(``kit: error: Type: reason``); 2 on misuse, with click's usage block and one
``Error:`` line. Anything else that escapes a command is a bug: it is reported
the same way as ``kit: internal error: ...`` (exit 1; the traceback with ``-v``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from gettext import gettext as _
from typing import Any

import click

from kit.errors import KitError

__all__ = ["main", "cli"]

#: command name -> "module:attribute" of its click command, loaded on first use
COMMANDS: dict[str, str] = {
    "serve": "kit.cli.stack:serve",
    "demo": "kit.cli.stack:demo",
    "status": "kit.cli.stack:status",
    "samples": "kit.cli.samples:samples",
    "index": "kit.cli.data:index",
    "deid": "kit.cli.data:deid",
    "pacs": "kit.cli.pacs:pacs",
    "fhir": "kit.cli.fhir:fhir",
    "hl7": "kit.cli.hl7:hl7",
    "endoscopy": "kit.cli.endoscopy:endoscopy",
    "medix": "kit.cli.medix:medix",
    "api": "kit.cli.api:api",
    "cohort": "kit.cli.cohort:cohort",
    "audit": "kit.cli.audit:audit",
    "monitor": "kit.cli.monitor:monitor",
}

#: command name -> the first paragraph of its help, what ``kit --help`` lists (no import needed)
SUMMARIES: dict[str, str] = {
    "api": "The integration REST API: the Hub, integrations, sync jobs and scheduling over HTTP.",
    "audit": "List the audit log: one row per access (who, what, when, which patient/study, outcome).",
    "cohort": "Research cohorts: pull studies politely and resumably, export a dataset, verify it.",
    "deid": "De-identify DICOM files from IN into OUT (PS3.15 Basic Profile).",
    "demo": "Run the main job end to end: on the configured systems, else on the embedded stack.",
    "endoscopy": "Endoscopy: the procedure worklist, the live video as frames, capture to the PACS.",
    "fhir": "FHIR R4: capability statement, read, search (all pages), create, Bulk Data export, frames.",
    "hl7": "HL7 v2 over MLLP: run a durable listener, send files, parse files into tables.",
    "index": "Index DICOM files and folders: one row per instance, from the headers.",
    "medix": "The Medix study-download service for the image-sharing platform.",
    "monitor": "Health checks of the configured PACS, FHIR server, MLLP peer and endoscopy worklist.",
    "pacs": "Query, retrieve and store images on a PACS (DIMSE or DICOMweb).",
    "samples": "Summarise the sample cohort: files, sizes, patients and studies per kind.",
    "serve": "Run the embedded stack in the foreground until Ctrl-C or SIGTERM.",
    "status": "Check that the configured PACS, DICOMweb, FHIR server and MLLP peer answer (exit 1 if not).",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | {
            name for name, target in COMMANDS.items() if _importable(target)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None or cmd_name not in COMMANDS:
            return cmd
        module, attr = COMMANDS[cmd_name].split(":")
        found: click.Command = getattr(importlib.import_module(module), attr)
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's list of commands, each lazy one shown from :data:`SUMMARIES` (nothing imported)."""
        commands: list[tuple[str, click.Command]] = []
        for name in self.list_commands(ctx):
            lazy = name in SUMMARIES and name not in self.commands
            cmd = click.Command(name, help=SUMMARIES[name]) if lazy else self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                commands.append((name, cmd))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _cmd in commands)
            with formatter.section(_("Commands")):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in commands])


def _importable(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="kit.toml to read (default: $KIT_CONFIG, then ./kit.toml, then built-in defaults).")
@click.option("-v", "--verbose", count=True,
              help="Log what kit does on stderr (-v: retries and progress notes, -vv: debug).")
@click.version_option(package_name="kit", prog_name="kit")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int) -> None:
    """kit: pull data from PACS, EHR, HL7 feeds and endoscopy; send results back.

    Every network command defaults to the settings in kit.toml and, without
    one, to the embedded stack started by `kit serve`.
    """
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(format="kit: %(levelname)s %(name)s: %(message)s", level=level, stream=sys.stderr)
    for handler in logging.getLogger().handlers:  # libraries that set their own logger level obey it too
        handler.setLevel(level)
    logging.captureWarnings(True)  # library warnings are log lines too: shown with -v, never mid-output
    # pynetdicom and pydicom log what kit already reports as a typed error or a skipped row (e.g.
    # pydicom's VR guesses on a forced read); show them only when asked.
    quiet = {0: logging.CRITICAL, 1: logging.WARNING}.get(verbose, logging.DEBUG)
    for name in ("pynetdicom", "pydicom"):
        logging.getLogger(name).setLevel(quiet)
    _STATE["verbose"] = verbose
    # Settings are read once, before any command runs: a broken kit.toml or KIT_* value is
    # reported (naming the key) whatever the command, never half-way through its work.
    from kit.cli.common import error_line
    from kit.config import load_settings

    try:
        settings = load_settings(config)
    except KitError as exc:
        click.echo(error_line(exc), err=True)
        ctx.exit(1)
    ctx.obj = {"config": config, "verbose": verbose, "settings": settings}
    from kit.cli.audit import start_audit  # [audit] path set: this command's accesses are logged

    start_audit(ctx, settings)


#: what the group callback learnt that :func:`main` needs after a command failed
_STATE: dict[str, int] = {"verbose": 0}


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``kit`` console script.

    A :class:`~kit.errors.KitError` that reaches here exits 1 with its one
    line; any other exception is a bug in kit and exits 1 with one
    ``kit: internal error`` line (the traceback follows only with ``-v``).
    """
    try:
        return cli.main(args=argv, prog_name="kit", standalone_mode=True)
    except KitError as exc:
        from kit.cli.common import error_line  # here: `kit --help` imports no command module

        click.echo(error_line(exc), err=True)
        sys.exit(1)
    except (SystemExit, KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - the CLI contract's last line (a Rust panic is a BaseException)
        if _STATE["verbose"]:
            traceback.print_exc(file=sys.stderr)
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        click.echo(f"kit: internal error: {type(exc).__name__}: {first} (a bug in kit; "
                   f"run with -v for the traceback)" if not _STATE["verbose"] else
                   f"kit: internal error: {type(exc).__name__}: {first}", err=True)
        sys.exit(1)
