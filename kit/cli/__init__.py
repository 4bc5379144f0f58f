"""The ``kit`` command line.

One group per protocol (``kit pacs``, ``kit fhir``, ``kit hl7``,
``kit endoscopy``) plus ``kit serve``, ``kit demo``, ``kit samples``,
``kit index``, ``kit deid`` and ``kit status``. Subcommands are imported only
when used, so ``kit --help`` stays fast.

Conventions (see DESIGN.md): results print as a table; ``-o FILE`` writes by
extension (.parquet .csv .json .ndjson); ``--json`` prints JSON. Exit 0 on
success, 1 on failure with a one-line reason on stderr, 2 on misuse.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
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
    # pynetdicom logs what kit already reports as a typed error; show it only when asked.
    quiet = {0: logging.CRITICAL, 1: logging.WARNING}.get(verbose, logging.DEBUG)
    logging.getLogger("pynetdicom").setLevel(quiet)
    ctx.obj = {"config": config}


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``kit`` console script."""
    try:
        return cli.main(args=argv, prog_name="kit", standalone_mode=True)
    except KitError as exc:  # pragma: no cover - commands convert via fail()
        click.echo(f"kit: error: {exc}".splitlines()[0], err=True)
        sys.exit(1)
