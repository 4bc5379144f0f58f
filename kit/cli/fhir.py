"""``kit fhir``: talk to a FHIR R4 server (metadata, read, search, create, bulk export); NDJSON to frames."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kit.cli._dask import dask_address, dask_option, dataset_table, open_client
from kit.cli._limits import noting_truncation
from kit.cli.common import (
    HTTP_URL,
    OUT_DIR,
    SECONDS,
    emit_frame,
    handle_errors,
    json_text,
    output_options,
    progress,
    settings_from,
)
from kit.errors import FhirValidationError

__all__ = ["fhir"]

F = TypeVar("F", bound=Callable[..., Any])


#: --retries default: a refused connection gives up after ~1.5 s of backoff (0.5 s, then 1 s)
DEFAULT_RETRIES = 2


def _connection_options(func: F) -> F:
    func = click.option("--retries", type=click.IntRange(min=0), default=DEFAULT_RETRIES,
                        show_default=True,
                        help="Retries of a request that failed to connect or got 429/502/503/504 "
                             "(exponential backoff from 0.5 s).")(func)
    func = click.option("--timeout", type=SECONDS, default=None,
                        help="Seconds per request (default: fhir.timeout, 30).")(func)
    func = click.option("--base", type=HTTP_URL, default=None, metavar="URL",
                        help="FHIR base URL as `kit serve` prints it (default: fhir.base in kit.toml, "
                             "else the embedded server, http://127.0.0.1:8080/fhir/R4).")(func)
    return func


def _client(ctx: click.Context, base: str | None, timeout: float | None, retries: int,
            **bounds: int) -> Any:
    from kit.fhir.client import FhirClient, RetryPolicy

    overrides: dict[str, Any] = {"retries": RetryPolicy.with_retries(retries), **bounds}
    if base:
        overrides["base"] = base
    if timeout:
        overrides["timeout"] = timeout
    return FhirClient.from_settings(settings_from(ctx), **overrides)


# What a server answers is read defensively: a part of the wrong JSON type is left out, not a crash.
def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects in ``value`` if it is a list (other items left out), else none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _text(value: Any) -> str:
    """``value`` if it is a string, a number as text, else ``""``."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _names(value: Any, key: str) -> str:
    """The string ``key`` of each object in the list ``value``, comma-separated (others left out)."""
    return ", ".join(name for item in _objects(value) if isinstance(name := item.get(key), str) and name)


@click.group()
def fhir() -> None:
    """FHIR R4: capability statement, read, search (all pages), create, Bulk Data export, frames.

    The server and credentials come from the [fhir] section of kit.toml (and
    KIT_FHIR_* variables); without one, the embedded server of `kit serve`.
    """


@fhir.command()
@_connection_options
@output_options
@click.pass_context
@handle_errors
def metadata(ctx: click.Context, base: str | None, timeout: float | None, retries: int,
             output: str | None, as_json: bool) -> None:
    """Show what the server supports: one row per resource type.

    With --json, print the whole CapabilityStatement.

    \b
    Examples:
      kit fhir metadata
      kit fhir metadata --base http://127.0.0.1:8080/fhir/R4 --json
    """
    with _client(ctx, base, timeout, retries) as client:
        cap = client.capabilities()
    if as_json and not output:
        click.echo(json.dumps(cap, indent=1))
        return
    software = _object(cap.get("software"))
    click.echo(f"FHIR {_text(cap.get('fhirVersion')) or '?'} {_text(software.get('name'))} "
               f"{_text(software.get('version'))}".rstrip(), err=True)
    import polars as pl

    rows = []
    for rest in _objects(cap.get("rest")):
        for res in _objects(rest.get("resource")):
            rows.append({
                "resource_type": _text(res.get("type")) or None,
                "interactions": _names(res.get("interaction"), "code"),
                "search_params": _names(res.get("searchParam"), "name"),
            })
    frame = pl.DataFrame(rows, schema={"resource_type": pl.String, "interactions": pl.String,
                                       "search_params": pl.String})
    emit_frame(frame, output, as_json, label="resource types")


@fhir.command()
@click.argument("resource_type", metavar="TYPE")
@click.argument("resource_id", metavar="ID")
@_connection_options
@output_options
@click.pass_context
@handle_errors
def read(ctx: click.Context, resource_type: str, resource_id: str, base: str | None,
         timeout: float | None, retries: int, output: str | None, as_json: bool) -> None:
    """Read one resource by type and id (--json: the resource itself).

    \b
    Examples:
      kit fhir read Patient cb95ebb3-449d-530e-b015-646eeef135ce
      kit fhir read Patient cb95ebb3-449d-530e-b015-646eeef135ce --json
    """
    from kit.fhir.frames import to_frame

    with _client(ctx, base, timeout, retries) as client:
        resource = client.read(resource_type, resource_id)
    if as_json and not output:
        click.echo(json.dumps(resource, indent=1))
        return
    emit_frame(to_frame([resource], resource_type), output, as_json, label="resources")


def _search_params(pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"search parameters are name=value, got {pair!r}")
        out.append((name, value))
    return out


@fhir.command()
@click.argument("resource_type", metavar="TYPE")
@click.argument("params", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("--limit", "--max", "max_results", type=click.IntRange(min=0), default=None,
              metavar="N", help="Stop paging after N matching resources, with a warning when that "
                                "cut the result (default: all pages).")
@click.option("--count", "page_size", type=click.IntRange(min=1), default=None,
              help="Page size to ask for (_count).")
@click.option("--max-pages", type=click.IntRange(min=1), default=None, metavar="N",
              help="Pages to read at most (default 100,000): a server that pages on past them is an "
                   "error, not a partial result. Raise it for a search that large.")
@click.option("--max-resources", type=click.IntRange(min=1), default=None, metavar="N",
              help="Bundle entries to read at most, matches and includes (default 10,000,000; "
                   "as --max-pages).")
@_connection_options
@output_options
@click.pass_context
@handle_errors
def search(ctx: click.Context, resource_type: str, params: tuple[str, ...], max_results: int | None,
           page_size: int | None, max_pages: int | None, max_resources: int | None, base: str | None,
           timeout: float | None, retries: int, output: str | None, as_json: bool) -> None:
    """Search TYPE, following every page; print the results as a frame.

    Resources that _include/_revinclude bring in are kept: they follow the
    matches, and the columns resource_type and search_mode (match, include)
    tell them apart.

    \b
    Examples:
      kit fhir search Patient
      kit fhir search Patient identifier=MRN1001
      kit fhir search Observation 'code=http://loinc.org|8867-4' -o heart-rate.parquet
      kit fhir search Observation patient=cb95ebb3-449d-530e-b015-646eeef135ce --json
      kit fhir search ImagingStudy _include=ImagingStudy:subject --limit 100 --json
    """
    from kit.fhir.client import SearchMode

    query = _search_params(params)
    if page_size:
        query.append(("_count", str(page_size)))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {(resource_type, SearchMode.MATCH.value): []}
    bounds = {k: v for k, v in (("max_pages", max_pages), ("max_resources", max_resources)) if v}
    with _client(ctx, base, timeout, retries, **bounds) as client, noting_truncation():
        entries = client.search_entries(resource_type, query, limit=max_results)
        for e in progress(entries, total=max_results, desc=f"{resource_type}"):
            if e.mode is SearchMode.OUTCOME:
                continue
            kind = str(e.resource.get("resourceType") or resource_type)
            groups.setdefault((kind, e.mode.value), []).append(e.resource)
    emit_frame(_search_frame(groups), output, as_json, label=f"{resource_type} resources")


def _search_frame(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> Any:
    """One frame of every (resource type, search mode) group, matches first.

    Each group is framed by :func:`kit.fhir.frames.to_frame`; a column that two
    types give different dtypes becomes JSON text, so nothing is dropped.
    """
    import polars as pl

    from kit.fhir.frames import to_frame

    frames = [to_frame(resources, kind).with_columns(pl.lit(kind).alias("resource_type"),
                                                    pl.lit(mode).alias("search_mode"))
              for (kind, mode), resources in groups.items() if resources or mode == "match"]
    if len(frames) == 1:
        return frames[0]
    dtypes: dict[str, set[Any]] = {}
    for f in frames:
        for name, dtype in f.schema.items():
            dtypes.setdefault(name, set()).add(dtype)
    mixed = {name for name, kinds in dtypes.items() if len(kinds) > 1}
    return pl.concat([json_text(f, [c for c in f.columns if c in mixed]) for f in frames],
                     how="diagonal_relaxed")


@fhir.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--if-none-exist", "if_none_exist", metavar="QUERY", default=None,
              help="Conditional create: only if no resource matches QUERY (e.g. identifier=sys|123).")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Validate with fhir.resources (R4) before sending.")
@click.option("--batch", "as_batch", is_flag=True,
              help="Post a transaction Bundle's entries as a batch (each entry on its own).")
@click.option("--chunk", type=click.IntRange(min=1), default=None, metavar="N",
              help="Post a Bundle as transactions (or batches) of at most N entries, for servers that "
                   "cap them; urn:uuid references are resolved across the chunks.")
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the stored resource (or response Bundle).")
@click.pass_context
@handle_errors
def create(ctx: click.Context, file: Path, if_none_exist: str | None, validate: bool, as_batch: bool,
           chunk: int | None, base: str | None, timeout: float | None, retries: int,
           as_json: bool) -> None:
    """Create the resource in FILE (JSON); a transaction or batch Bundle is posted as such.

    A server that caps transactions (e.g. at 50 entries) takes the Bundle with
    --chunk 50 (each chunk all or nothing, the whole not) or --batch.

    \b
    Examples:
      kit fhir create data/samples/fhir/bundle.json
      kit fhir create data/samples/fhir/bundle.json --chunk 50
    """
    try:
        resource = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise FhirValidationError(f"not a JSON file: {exc}", source=str(file)) from exc
    if not isinstance(resource, dict):
        raise FhirValidationError("expected a JSON object", source=str(file))
    with _client(ctx, base, timeout, retries) as client:
        is_bundle = resource.get("resourceType") == "Bundle" and resource.get("type") in ("transaction",
                                                                                        "batch")
        if (as_batch or chunk) and not is_bundle:
            raise click.UsageError("--batch and --chunk take a transaction or batch Bundle")
        if is_bundle:
            result = (client.transaction(resource, validate=validate, chunk=chunk)
                      if resource["type"] == "transaction" and not as_batch
                      else client.batch(resource.get("entry") or [], chunk=chunk))
            if as_json:
                click.echo(json.dumps(result, indent=1))
                return
            for e in _objects(_object(result).get("entry")):
                r = _object(e.get("response"))
                click.echo(f"{_text(r.get('status')) or '?'}  {_text(r.get('location'))}")
            return
        stored = client.create(resource, if_none_exist=if_none_exist, validate=validate)
    if as_json:
        click.echo(json.dumps(stored, indent=1))
    else:
        version = _text(_object(stored.get("meta")).get("versionId")) or "?"
        click.echo(f"{_text(stored.get('resourceType'))}/{_text(stored.get('id'))} version {version}")


@fhir.command()
@click.option("--out-dir", "folder", type=OUT_DIR, required=True,
              help="Folder for the NDJSON files, one parquet per type and the resume state.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Resource type to export (repeatable; default all).")
@click.option("--group", "group_id", default=None, metavar="ID", help="Export Group/ID (group level).")
@click.option("--patient", "patient_level", is_flag=True, help="Patient-level export (all patients).")
@click.option("--since", default=None, metavar="INSTANT",
              help="Only resources changed since INSTANT (e.g. 2024-01-01T00:00:00Z).")
@click.option("--wait", "wait_timeout", type=SECONDS, default=3600.0, show_default=True,
              help="Seconds to wait for the server to finish the job.")
@click.option("--restart", is_flag=True, help="Ignore a previous (interrupted) export in the folder.")
@click.option("--allow-errors", is_flag=True, help="Succeed even if the manifest lists errors.")
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the file list as JSON.")
@click.pass_context
@handle_errors
def export(ctx: click.Context, folder: str, types: tuple[str, ...], group_id: str | None,
           patient_level: bool, since: str | None, wait_timeout: float, restart: bool,
           allow_errors: bool, base: str | None, timeout: float | None, retries: int,
           as_json: bool) -> None:
    """Bulk Data $export into a folder; re-run the same command to resume an interrupted one.

    \b
    Examples:
      kit fhir export --out-dir export
      kit fhir export --patient --type Patient --type Observation --out-dir export-obs
    """
    from kit.fhir.bulk import BulkExport

    if group_id and patient_level:
        raise click.UsageError("--group and --patient are exclusive")
    level = "group" if group_id else "patient" if patient_level else "system"
    with _client(ctx, base, timeout, retries) as client:
        result = BulkExport(client).run(Path(folder), level, group_id=group_id, types=list(types) or None,
                                        since=since, timeout=wait_timeout, restart=restart,
                                        fail_on_errors=not allow_errors)
    for issue in result.errors:
        click.echo(f"kit: export error: {issue.get('diagnostics', issue)}", err=True)
    total = result.files["resources"].sum() if result.files.height else 0
    click.echo(f"exported {total} resources in {result.files.height} files to {folder}", err=True)
    emit_frame(result.files, None, as_json, label="files")


@fhir.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", "out_dir", type=OUT_DIR, required=True,
              help="Folder for one parquet file per resource type (with --dask: one folder of "
                   "part-NNNNN.parquet per type).")
@click.option("--type", "resource_type", default=None, metavar="TYPE",
              help="Only this resource type (default: every type found).")
@dask_option
@click.pass_context
@handle_errors
def frames(ctx: click.Context, files: tuple[str, ...], out_dir: str, resource_type: str | None,
           dask: str | None) -> None:
    """Turn NDJSON files (a Bulk Data export's) into typed frames: parquet per resource type.

    Streams each NDJSON file in blocks, so memory stays bounded whatever the
    export's size (a JSON Bundle file is read whole); the columns are those of
    `kit.fhir.frames.to_frames`.
    Prints the rows per type. Read a result with
    `polars.scan_parquet("DIR/Observation.parquet")` (with --dask:
    `polars.scan_parquet("DIR/Observation")`).

    \b
    Examples:
      kit fhir frames export/Patient.000.ndjson export/Observation.000.ndjson --out-dir frames
      kit fhir frames export/Observation.000.ndjson --type Observation --out-dir obs
      kit fhir frames export/Observation.000.ndjson --dask local --out-dir frames-dask

    With --dask each file is turned into frames on a Dask worker (they must
    see the files at the same paths).
    """
    import polars as pl

    from kit.fhir.resources import is_resource_type

    if resource_type is not None and not is_resource_type(resource_type):
        raise click.BadParameter(f"{resource_type!r} is not a FHIR R4 resource type", param_hint="--type")
    address = dask_address(ctx, dask)
    if address:
        from kit.scale.frames import fhir_dataset

        if resource_type is not None:
            raise click.UsageError("--type is for the local path; with --dask every type is written")
        with open_client(ctx, address) as client:
            result = fhir_dataset(list(files), out_dir, client=client,
                                  timeout=settings_from(ctx).dask.timeout, progress=True)
        tables = [(t, n, result.folder / t) for t, n in sorted(result.rows.items())]
        emit_frame(dataset_table(tables, result.partitions), None, False)
        return
    from kit.fhir.frames_stream import files_to_parquet

    written = files_to_parquet(list(files), out_dir, resource_type=resource_type)
    rows = [{"type": t, "rows": pl.scan_parquet(p).select(pl.len()).collect().item(), "file": str(p)}
            for t, p in written.items()]
    if not rows:
        raise FhirValidationError("no FHIR resource in " + ", ".join(files))
    emit_frame(pl.DataFrame(rows), None, False)
