"""``kit audit``: who accessed which patient or study, from the audit log; ``--verify`` its chain."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from kit.cli.common import handle_errors, output_options, settings_from
from kit.config import Settings

__all__ = ["audit", "audit_serving", "start_audit"]


def _datetime(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date or date-time (2026-01-31, "
                         f"2026-01-31T08:00, 2026-01-31T08:00+01:00)") from None
    return value


class _DateTime(click.ParamType):
    name = "DATETIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return _datetime(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def default_log(settings: Settings) -> Path:
    """The log ``kit audit`` reads: ``[audit] path``, else ``kit serve``'s (``<stack data_dir>/audit.db``)."""
    if settings.audit.path:
        return Path(settings.audit.path).expanduser()
    return settings.stack.resolved_data_dir() / "audit.db"


@click.command()
@click.option("--log", "log_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The audit log (default [audit] path, else kit serve's <data dir>/audit.db).")
@click.option("--patient", default=None, help="Only accesses to this patient id (MRN or Patient/<id>).")
@click.option("--study", default=None, help="Only accesses to this StudyInstanceUID.")
@click.option("--accession", default=None, help="Only accesses to this accession number.")
@click.option("--since", type=_DateTime(), default=None,
              help="Only accesses at or after this ISO 8601 date or date-time (local time without a zone).")
@click.option("--action", default=None, help="Only actions starting with this (pacs, fhir.read, api.).")
@click.option("--who", default=None,
              help="Only accesses by this principal (user:alice, key:<id>, ae:MODALITY).")
@click.option("--verify", is_flag=True, help="Check the log's hash chain instead of listing it.")
@output_options
@click.pass_context
@handle_errors
def audit(ctx: click.Context, log_path: str | None, patient: str | None, study: str | None,
          accession: str | None, since: str | None, action: str | None, who: str | None, verify: bool,
          output: str | None, as_json: bool) -> None:
    """List the audit log: one row per access (who, what, when, which patient/study, outcome).

    `--verify` checks every row against its hash and the row before it; it
    prints the rows checked and the head hash (keep it elsewhere to detect a
    truncated tail) and exits 1 if the log was changed.

    \b
    Examples:
      kit audit --patient MRN1001
      kit audit --since 2026-01-31 --action fhir -o accesses.parquet
      kit audit --verify
    """
    from kit.cli.common import emit_frame
    from kit.errors import AuditLogError
    from kit.services.audit import read_frame
    from kit.services.audit import verify as verify_log

    path = Path(log_path) if log_path else default_log(settings_from(ctx))
    if verify:
        result = verify_log(path)
        for problem in result.problems:
            click.echo(f"broken: {problem}")
        if not result.ok:
            raise AuditLogError(f"{path}: {len(result.problems)} problem(s) in {result.rows} rows, first: "
                                f"{result.problems[0]}", problems=result.problems)
        click.echo(f"ok: {result.rows} rows, head {result.head}")
        return
    frame = read_frame(path, patient=patient, study=study, accession=accession, since=since,
                       action=action, who=who)
    emit_frame(frame, output, as_json, label="accesses")


def start_audit(ctx: click.Context, settings: Settings) -> None:
    """Record this command's accesses when ``[audit] path`` is set (the ``kit`` group's callback).

    The log is released when the command's context closes.
    """
    if not (settings.audit.enabled and settings.audit.path) or ctx.invoked_subcommand == "audit":
        return
    from kit.services.audit import enable_configured, release

    log = enable_configured(settings)
    ctx.call_on_close(lambda: release(log))


@contextlib.contextmanager
def audit_serving(settings: Settings, data_dir: str | Path) -> Iterator[None]:
    """Record a server command's accesses: ``[audit] path``, else ``<data_dir>/audit.db`` (on by default)."""
    from kit.services.audit import enable_configured, release

    log = enable_configured(settings, Path(data_dir) / "audit.db")
    try:
        yield
    finally:
        release(log)
