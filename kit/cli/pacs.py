"""``kit pacs``: echo, find, get, move, store and worklist against a PACS (DIMSE or DICOMweb)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kit.cli.common import emit_frame, handle_errors, output_options, settings_from

__all__ = ["pacs"]

F = TypeVar("F", bound=Callable[..., Any])


def _dimse_options(func: F) -> F:
    """--host/--port/--aet/--called-aet/--timeout, defaulting to kit.toml [pacs]."""
    for option in reversed([
        click.option("--host", default=None, help="PACS host (default: kit.toml [pacs], else the "
                     "embedded stack on 127.0.0.1)."),
        click.option("--port", type=int, default=None, help="PACS DICOM port (default 11112)."),
        click.option("--aet", default=None, help="Our calling AE title (default KITSCU)."),
        click.option("--called-aet", default=None, help="The PACS's AE title (default KIT)."),
        click.option("--timeout", type=float, default=None, help="Seconds to wait (default 30)."),
    ]):
        func = option(func)
    return func


def _web_options(func: F) -> F:
    """--web/--base URL: use DICOMweb instead of DIMSE."""
    func = click.option("--base", default=None,
                        help="DICOMweb root URL (default: kit.toml [dicomweb]); implies --web.")(func)
    func = click.option("--web", is_flag=True, help="Use DICOMweb (QIDO/WADO/STOW) instead of DIMSE.")(func)
    return func


def _client(ctx: click.Context, host: str | None, port: int | None, aet: str | None,
            called_aet: str | None, timeout: float | None) -> Any:
    from kit.dicom.dimse import PacsClient

    settings = settings_from(ctx).pacs
    overrides = {k: v for k, v in {"host": host, "port": port, "aet": aet, "called_aet": called_aet,
                                   "timeout": timeout}.items() if v is not None}
    return PacsClient.from_settings(dataclasses.replace(settings, **overrides))  # type: ignore[arg-type]


def _web(ctx: click.Context, base: str | None, timeout: float | None) -> Any:
    from kit.dicom.web import DicomWebClient

    settings = settings_from(ctx).dicomweb
    overrides = {k: v for k, v in {"base": base, "timeout": timeout}.items() if v is not None}
    return DicomWebClient.from_settings(dataclasses.replace(settings, **overrides))  # type: ignore[arg-type]


def _files(paths: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")))
        else:
            out.append(p)
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
@click.pass_context
@handle_errors
def echo(ctx: click.Context, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None) -> None:
    """C-ECHO the PACS and print the round-trip time."""
    client = _client(ctx, host, port, aet, called_aet, timeout)
    took = client.echo()
    click.echo(f"{client.address} answered C-ECHO in {took * 1000:.1f} ms")


@pacs.command()
@click.option("--level", type=click.Choice(["patient", "study", "series", "image"], case_sensitive=False),
              default="study", show_default=True, help="Query level.")
@click.option("--patient-id", default=None, help="PatientID (MRN); wildcards * and ? allowed.")
@click.option("--patient-name", default=None, help="PatientName, e.g. 'Moreau*'.")
@click.option("--study-date", default=None,
              help="StudyDate: 20260112, 2026-01-12 or a range 20260101-20260301 (open ends allowed).")
@click.option("--modality", default=None,
              help="Modality (series/image level) or ModalitiesInStudy (study level).")
@click.option("--accession", default=None, help="AccessionNumber.")
@click.option("--study", "study_uid", default=None, help="StudyInstanceUID.")
@click.option("--series", "series_uid", default=None, help="SeriesInstanceUID (series/image level).")
@_dimse_options
@_web_options
@output_options
@click.pass_context
@handle_errors
def find(ctx: click.Context, level: str, patient_id: str | None, patient_name: str | None,
         study_date: str | None, modality: str | None, accession: str | None, study_uid: str | None,
         series_uid: str | None, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None, web: bool, base: str | None,
         output: str | None, as_json: bool) -> None:
    """Find patients, studies, series or images (C-FIND, or QIDO-RS with --web).

    \b
    Examples:
      kit pacs find --patient-id MRN1001
      kit pacs find --study-date 20260101-20260131 --modality CT -o studies.parquet
      kit pacs find --level image --study 1.2.826... --json
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
    if web or base:
        df = _web(ctx, base, timeout).find(lvl, **filters)
    else:
        df = _client(ctx, host, port, aet, called_aet, timeout).find(lvl, **filters)
    emit_frame(df, output, as_json, label=f"{level.lower()} matches")


@pacs.command()
@click.option("--study", "study_uid", required=True, help="StudyInstanceUID to retrieve.")
@click.option("--series", "series_uid", default=None, help="Only this SeriesInstanceUID.")
@click.option("-o", "--output-dir", "dest", type=click.Path(file_okay=False), required=True,
              help="Folder for the files (<SOPInstanceUID>.dcm).")
@click.option("--json", "as_json", is_flag=True, help="Print the received-files frame as JSON.")
@_dimse_options
@_web_options
@click.pass_context
@handle_errors
def get(ctx: click.Context, study_uid: str, series_uid: str | None, dest: str, as_json: bool,
        host: str | None, port: int | None, aet: str | None, called_aet: str | None,
        timeout: float | None, web: bool, base: str | None) -> None:
    """Retrieve a study or series into a folder (C-GET, or WADO-RS with --web)."""
    if web or base:
        df = _web(ctx, base, timeout).get(study_uid, series_uid, dest=Path(dest))
    else:
        df = _client(ctx, host, port, aet, called_aet, timeout).get(
            study_uid=study_uid, series_uid=series_uid, dest=Path(dest), progress=True)
    click.echo(f"received {df.height} instance(s) into {dest}", err=True)
    if as_json:
        emit_frame(df, None, True)


@pacs.command()
@click.option("--study", "study_uid", required=True, help="StudyInstanceUID to retrieve.")
@click.option("--series", "series_uid", default=None, help="Only this SeriesInstanceUID.")
@click.option("-o", "--output-dir", "dest", type=click.Path(file_okay=False), required=True,
              help="Folder for the files (<SOPInstanceUID>.dcm).")
@click.option("--move-aet", default=None,
              help="Destination AE title the PACS sends to (default: --aet). The PACS must know it.")
@click.option("--store-port", type=int, default=None,
              help="Port of our temporary storage SCP (default kit.toml [pacs] store_port).")
@click.option("--json", "as_json", is_flag=True, help="Print the received-files frame as JSON.")
@_dimse_options
@click.pass_context
@handle_errors
def move(ctx: click.Context, study_uid: str, series_uid: str | None, dest: str, move_aet: str | None,
         store_port: int | None, as_json: bool, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None) -> None:
    """Retrieve a study or series by C-MOVE to a temporary storage SCP.

    The PACS must have our AE title (or --move-aet), host and --store-port in
    its list of destinations. Prefer `kit pacs get` where the PACS supports C-GET.
    """
    client = _client(ctx, host, port, aet, called_aet, timeout)
    df = client.move(study_uid=study_uid, series_uid=series_uid, dest=Path(dest), move_aet=move_aet,
                     store_port=store_port, progress=True)
    click.echo(f"received {df.height} instance(s) into {dest}", err=True)
    if as_json:
        emit_frame(df, None, True)


@pacs.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@_dimse_options
@_web_options
@output_options
@click.pass_context
@handle_errors
def store(ctx: click.Context, paths: tuple[str, ...], host: str | None, port: int | None,
          aet: str | None, called_aet: str | None, timeout: float | None, web: bool,
          base: str | None, output: str | None, as_json: bool) -> None:
    """Send DICOM files (or every file under folders) to the PACS (C-STORE, or STOW-RS with --web)."""
    files = _files(paths)
    if web or base:
        df = _web(ctx, base, timeout).store(files)
    else:
        df = _client(ctx, host, port, aet, called_aet, timeout).store(files, progress=True)
    click.echo(f"stored {df.height} instance(s)", err=True)
    if output or as_json:
        emit_frame(df, output, as_json, label="instances")


@pacs.command()
@click.option("--date", default=None,
              help="Scheduled date: 20261201, 2026-12-01 or a range 20261201-20261231.")
@click.option("--modality", default=None, help="Scheduled modality, e.g. CT or ES.")
@click.option("--station", default=None, help="Scheduled Station AE Title.")
@click.option("--patient-id", default=None, help="PatientID (MRN).")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def worklist(ctx: click.Context, date: str | None, modality: str | None, station: str | None,
             patient_id: str | None, host: str | None, port: int | None, aet: str | None,
             called_aet: str | None, timeout: float | None, output: str | None, as_json: bool) -> None:
    """Query the Modality Worklist (scheduled procedures)."""
    filters = {k: v for k, v in {"scheduled_procedure_step_start_date": date, "modality": modality,
                                 "scheduled_station_ae_title": station,
                                 "patient_id": patient_id}.items() if v is not None}
    df = _client(ctx, host, port, aet, called_aet, timeout).worklist(**filters)
    emit_frame(df, output, as_json, label="worklist items")
