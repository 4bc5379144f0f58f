"""``kit pacs``: echo, find, get, move, store and worklist against a PACS (DIMSE or DICOMweb).

``--web`` (or ``--base URL``) switches a subcommand to DICOMweb: echo (a QIDO-RS
probe), find (QIDO-RS), get (WADO-RS) and store (STOW-RS); the DIMSE options are
then unused. move and worklist have no DICOMweb form: they have no such option, their
help says why, and ``--web`` given to them is misuse naming the reason (exit 2). The
DICOMweb root defaults to kit.toml ``[dicomweb] base``, else the embedded stack's
(``kit serve`` prints it: ``dicomweb  http://127.0.0.1:8042/dicom-web``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kit.cli._limits import noting_truncation
from kit.cli.common import (
    AE_TITLE,
    DATE_RANGE,
    DICOM_URL,
    EPHEMERAL_PORT,
    HOST,
    HTTP_URL,
    OUT_DIR,
    PORT,
    SECONDS,
    UID,
    emit_frame,
    handle_errors,
    output_options,
    settings_from,
)

__all__ = ["pacs"]

F = TypeVar("F", bound=Callable[..., Any])


def _dimse_options(func: F) -> F:
    """--url or --host/--port/--called-aet, --aet, --timeout; defaults from kit.toml [pacs]."""
    for option in reversed([
        click.option("--url", type=DICOM_URL, default=None,
                     help="The PACS as `kit serve` prints it: dicom://AET@host:port "
                          "(instead of --host/--port/--called-aet)."),
        click.option("--host", type=HOST, default=None, help="PACS host (default: kit.toml [pacs], else the "
                     "embedded stack on 127.0.0.1)."),
        click.option("--port", type=PORT, default=None,
                     help="PACS DICOM port (default: kit.toml [pacs] port, else [stack] pacs_port, "
                          "11112)."),
        click.option("--aet", type=AE_TITLE, default=None, help="Our calling AE title (default KITSCU)."),
        click.option("--called-aet", type=AE_TITLE, default=None,
                     help="The PACS's AE title (default: kit.toml [pacs] called_aet, else the "
                          "embedded stack's, KIT)."),
        click.option("--timeout", type=SECONDS, default=None, help="Seconds to wait (default 30)."),
    ]):
        func = option(func)
    return func


#: Why a subcommand has no DICOMweb form (it has no ``--web``; given it, it says this and exits 2).
NO_WEB = {
    "move": "DICOMweb has no C-MOVE (WADO-RS retrieves to the caller: `kit pacs get --web`)",
    "worklist": "the worklist is DIMSE only here (DICOMweb's UPS-RS is not supported)",
}


def _web_options(func: F) -> F:
    """--web/--base URL: use DICOMweb instead of DIMSE."""
    what = {"echo": "a QIDO-RS probe", "find": "QIDO-RS", "get": "WADO-RS", "store": "STOW-RS"}[func.__name__]
    func = click.option("--base", type=HTTP_URL, default=None,
                        help="DICOMweb root URL as `kit serve` prints it (default: kit.toml [dicomweb] base, "
                             "else the embedded stack's); implies --web.")(func)
    func = click.option("--web", is_flag=True, help=f"Use DICOMweb ({what}) instead of DIMSE.")(func)
    return func


class _DimseOnly(click.Command):
    """A subcommand with no DICOMweb form: ``--web``/``--base`` are misuse naming why (exit 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(a in ("--web", "--base") or a.startswith("--base=") for a in args):
            why = NO_WEB[self.name or ""]
            raise click.UsageError(f"kit pacs {self.name} has no --web form: {why}", ctx=ctx)
        return super().parse_args(ctx, args)


def _pacs_settings(ctx: click.Context, url: tuple[str | None, str, int] | None, host: str | None,
                   port: int | None, aet: str | None, called_aet: str | None, timeout: float | None) -> Any:
    """kit.toml's [pacs] with the command line's --url/--host/--port/--aet/--called-aet/--timeout."""
    if url is not None:
        if host is not None or port is not None or called_aet is not None:
            raise click.UsageError("--url names the PACS: give it without --host, --port, --called-aet")
        called_aet, host, port = url
    settings = settings_from(ctx).pacs
    overrides = {k: v for k, v in {"host": host, "port": port, "aet": aet, "called_aet": called_aet,
                                   "timeout": timeout}.items() if v is not None}
    return dataclasses.replace(settings, **overrides)  # type: ignore[arg-type]


def _client(ctx: click.Context, url: tuple[str | None, str, int] | None, host: str | None,
            port: int | None, aet: str | None, called_aet: str | None, timeout: float | None) -> Any:
    from kit.dicom.dimse import PacsClient

    return PacsClient.from_settings(_pacs_settings(ctx, url, host, port, aet, called_aet, timeout))


def _web(ctx: click.Context, base: str | None, timeout: float | None) -> Any:
    from kit.dicom.web import DicomWebClient

    settings = settings_from(ctx).dicomweb
    overrides = {k: v for k, v in {"base": base, "timeout": timeout}.items() if v is not None}
    return DicomWebClient.from_settings(dataclasses.replace(settings, **overrides))  # type: ignore[arg-type]


def _files(paths: tuple[str, ...]) -> list[Path]:
    """The files to send: the paths named, and every file under the folders named, walked as
    ``kit index`` walks them (:func:`kit.dicom.index.walk_files`: a file once, under its first
    name; no hidden entry; links to folders not followed); what it passes over is said on stderr."""
    from kit.dicom.index import walk_files

    out: list[Path] = []
    for path, reason in walk_files(paths):
        if reason is None:
            out.append(Path(path))
        else:
            click.echo(f"kit: skipped {path}: {reason}", err=True)
    if not out:
        raise click.UsageError("no files to store")
    return out


@click.group()
def pacs() -> None:
    """Query, retrieve and store images on a PACS (DIMSE or DICOMweb).

    Connection settings come from kit.toml [pacs] / [dicomweb] and default to
    the embedded stack (`kit serve`).
    """


@pacs.command()
@_dimse_options
@_web_options
@click.pass_context
@handle_errors
def echo(ctx: click.Context, url: Any, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None, web: bool, base: str | None) -> None:
    """C-ECHO the PACS and print the round-trip time (with --web: a one-study QIDO-RS search).

    \b
    Examples:
      kit pacs echo
      kit pacs echo --url dicom://KIT@127.0.0.1:11112
      kit pacs echo --web
    """
    if web or base:
        import time

        client = _web(ctx, base, timeout)
        start = time.monotonic()
        client.ping()
        click.echo(f"{client.base} answered QIDO-RS in {(time.monotonic() - start) * 1000:.1f} ms")
        return
    # PacsClient.echo's answer, on a plain socket when the exchange is clean: pynetdicom is
    # imported only when it must answer (kit.dicom._echo_fast)
    from kit.dicom._echo_fast import echo as c_echo

    address, took = c_echo(_pacs_settings(ctx, url, host, port, aet, called_aet, timeout))
    click.echo(f"{address} answered C-ECHO in {took * 1000:.1f} ms")


@pacs.command()
@click.option("--level", type=click.Choice(["patient", "study", "series", "image"], case_sensitive=False),
              default="study", show_default=True, help="Query level.")
@click.option("--patient-id", default=None, help="PatientID (MRN); wildcards * and ? allowed.")
@click.option("--patient-name", default=None, help="PatientName, e.g. 'Moreau*'.")
@click.option("--study-date", type=DATE_RANGE, default=None,
              help="StudyDate: 20260112, 2026-01-12 or a range 20260101-20260301 (open ends allowed).")
@click.option("--modality", default=None,
              help="Modality (series/image level) or ModalitiesInStudy (study level).")
@click.option("--accession", default=None, help="AccessionNumber.")
@click.option("--study", "study_uid", type=UID, default=None, help="StudyInstanceUID.")
@click.option("--series", "series_uid", type=UID, default=None,
              help="SeriesInstanceUID (series/image level).")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N matches (the rest cancelled), with a warning when that cut the result.")
@_dimse_options
@_web_options
@output_options
@click.pass_context
@handle_errors
def find(ctx: click.Context, level: str, patient_id: str | None, patient_name: str | None,
         study_date: str | None, modality: str | None, accession: str | None, study_uid: str | None,
         series_uid: str | None, limit: int | None, url: Any, host: str | None, port: int | None,
         aet: str | None,
         called_aet: str | None, timeout: float | None, web: bool, base: str | None,
         output: str | None, as_json: bool) -> None:
    """Find patients, studies, series or images (C-FIND, or QIDO-RS with --web).

    No match is an empty table (exit 0): a search that finds nothing is an answer.

    \b
    Examples:
      kit pacs find --patient-id MRN1001
      kit pacs find --study-date 20260101-20260131 --limit 500
      kit pacs find --study-date 20260101-20260131 --modality CT -o studies.parquet
      kit pacs find --level series --study 1.2.826.0.1.3680043.8.498.22392439809703793720631504221462815849
    """
    lvl = level.upper()
    filters: dict[str, Any] = {"patient_id": patient_id, "patient_name": patient_name,
                               "accession_number": accession, "study_instance_uid": study_uid,
                               "series_instance_uid": series_uid, "study_date": study_date}
    if modality:
        filters["modality" if lvl in ("SERIES", "IMAGE") else "modalities_in_study"] = modality
    filters = {k: v for k, v in filters.items() if v is not None}
    if lvl == "PATIENT" and set(filters) - {"patient_id", "patient_name"}:
        raise click.UsageError("--level patient takes only --patient-id and --patient-name")
    if series_uid and lvl in ("PATIENT", "STUDY"):
        raise click.UsageError("--series needs --level series or image")
    with noting_truncation():
        if web or base:
            df = _web(ctx, base, timeout).find(lvl, limit=limit, **filters)
        else:
            df = _client(ctx, url, host, port, aet, called_aet, timeout).find(lvl, limit=limit, **filters)
    emit_frame(df, output, as_json, label=f"{level.lower()} matches")


def _received(df: Any, dest: str, output: str | None, as_json: bool) -> None:
    click.echo(f"received {df.height} instance(s) into {dest}", err=True)
    if output or as_json:
        emit_frame(df, output, as_json, label="instances")


@pacs.command()
@click.option("--study", "study_uid", type=UID, required=True, help="StudyInstanceUID to retrieve.")
@click.option("--series", "series_uid", type=UID, default=None, help="Only this SeriesInstanceUID.")
@click.option("--out-dir", "dest", type=OUT_DIR, required=True,
              help="Folder for the files (<SOPInstanceUID>.dcm); created if missing.")
@_dimse_options
@_web_options
@output_options
@click.pass_context
@handle_errors
def get(ctx: click.Context, study_uid: str, series_uid: str | None, dest: str, url: Any,
        host: str | None, port: int | None, aet: str | None, called_aet: str | None,
        timeout: float | None, web: bool, base: str | None, output: str | None, as_json: bool) -> None:
    """Retrieve a study or series into a folder (C-GET, or WADO-RS with --web).

    A study or series the PACS has no instances of is a failure (exit 1).
    -o FILE / --json give the table of received files.

    \b
    Examples:
      kit pacs get --study 1.2.826.0.1.3680043.8.498.22392439809703793720631504221462815849 --out-dir ct
      kit pacs get --study 1.2.826.0.1.3680043.8.498.22392439809703793720631504221462815849 --out-dir ct -o r.csv
    """  # noqa: E501 - whole UIDs
    if web or base:
        df = _web(ctx, base, timeout).get(study_uid, series_uid, dest=Path(dest))
    else:
        df = _client(ctx, url, host, port, aet, called_aet, timeout).get(
            study_uid=study_uid, series_uid=series_uid, dest=Path(dest), progress=True)
    _received(df, dest, output, as_json)


@pacs.command(cls=_DimseOnly)
@click.option("--study", "study_uid", type=UID, required=True, help="StudyInstanceUID to retrieve.")
@click.option("--series", "series_uid", type=UID, default=None, help="Only this SeriesInstanceUID.")
@click.option("--out-dir", "dest", type=OUT_DIR, required=True,
              help="Folder for the files (<SOPInstanceUID>.dcm); created if missing.")
@click.option("--move-aet", type=AE_TITLE, default=None,
              help="Destination AE title the PACS sends to (default: --aet). The PACS must know it.")
@click.option("--store-port", type=EPHEMERAL_PORT, default=None,
              help="Port of our temporary storage SCP (default kit.toml [pacs] store_port; 0 = ephemeral, "
                   "which a PACS cannot know in advance).")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def move(ctx: click.Context, study_uid: str, series_uid: str | None, dest: str, move_aet: str | None,
         store_port: int | None, url: Any, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None, output: str | None, as_json: bool) -> None:
    """Retrieve a study or series by C-MOVE to a temporary storage SCP.

    The PACS must have our AE title (or --move-aet), host and --store-port in
    its list of destinations: for `kit serve`, in kit.toml
    `[stack] move_destinations = { KITSCU = "127.0.0.1:11113" }` and
    `[pacs] store_port = 11113`. Prefer `kit pacs get` where the PACS supports C-GET.

    No --web: DICOMweb has no C-MOVE (`kit pacs get --web` retrieves by WADO-RS).

    \b
    Examples:
      kit pacs move --study 1.2.826.0.1.3680043.8.498.22392439809703793720631504221462815849 --out-dir ct
    """
    client = _client(ctx, url, host, port, aet, called_aet, timeout)
    df = client.move(study_uid=study_uid, series_uid=series_uid, dest=Path(dest), move_aet=move_aet,
                     store_port=store_port, progress=True)
    _received(df, dest, output, as_json)


@pacs.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_dimse_options
@_web_options
@output_options
@click.pass_context
@handle_errors
def store(ctx: click.Context, paths: tuple[str, ...], url: Any, host: str | None, port: int | None,
          aet: str | None, called_aet: str | None, timeout: float | None, web: bool,
          base: str | None, output: str | None, as_json: bool) -> None:
    """Send DICOM files (or every file under folders) to the PACS (C-STORE, or STOW-RS with --web).

    \b
    Examples:
      kit pacs store data/samples/dicom/MRN1002
      kit pacs store data/samples/dicom/MRN1001 -o stored.parquet
    """
    files = _files(paths)
    if web or base:
        df = _web(ctx, base, timeout).store(files)
    else:
        df = _client(ctx, url, host, port, aet, called_aet, timeout).store(files, progress=True)
    click.echo(f"stored {df.height} instance(s)", err=True)
    if output or as_json:
        emit_frame(df, output, as_json, label="instances")


@pacs.command(cls=_DimseOnly)
@click.option("--date", type=DATE_RANGE, default=None,
              help="Scheduled date: 20261201, 2026-12-01 or a range 20261201-20261231.")
@click.option("--modality", default=None, help="Scheduled modality, e.g. CT or ES.")
@click.option("--station", type=AE_TITLE, default=None, help="Scheduled Station AE Title.")
@click.option("--patient-id", default=None, help="PatientID (MRN).")
@click.option("--limit", type=click.IntRange(min=0), default=None, metavar="N",
              help="At most N matches (the rest cancelled), with a warning when that cut the result.")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def worklist(ctx: click.Context, date: str | None, modality: str | None, station: str | None,
             patient_id: str | None, limit: int | None, url: Any, host: str | None, port: int | None,
             aet: str | None, called_aet: str | None, timeout: float | None, output: str | None,
             as_json: bool) -> None:
    """Query the Modality Worklist (scheduled procedures).

    No --web: the worklist is DIMSE only here (DICOMweb's UPS-RS is not supported).

    \b
    Examples:
      kit pacs worklist
      kit pacs worklist --modality ES --json
    """
    filters = {k: v for k, v in {"scheduled_procedure_step_start_date": date, "modality": modality,
                                 "scheduled_station_ae_title": station,
                                 "patient_id": patient_id}.items() if v is not None}
    with noting_truncation():
        df = _client(ctx, url, host, port, aet, called_aet, timeout).worklist(limit=limit, **filters)
    emit_frame(df, output, as_json, label="worklist items")
