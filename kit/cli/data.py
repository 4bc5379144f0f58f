"""``kit index`` and ``kit deid``: local DICOM files to a table, and de-identification."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from kit.cli._dask import dask_address, dask_option, dataset_table, open_client
from kit.cli.common import OUT_DIR, emit_frame, handle_errors, output_options, settings_from
from kit.errors import ConfigError, InvalidInputError, StoreError

__all__ = ["deid", "index"]


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes (default: one per CPU).")
@click.option("--no-recursive", is_flag=True, help="Do not descend into sub-folders.")
@dask_option
@click.option("--out-dir", type=OUT_DIR, default=None,
              help="With --dask: the folder the index is written to, one part-NNNNN.parquet per chunk "
                   "of files (read it with polars.scan_parquet(DIR)).")
@output_options
@click.pass_context
@handle_errors
def index(ctx: click.Context, paths: tuple[str, ...], workers: int | None, no_recursive: bool,
          dask: str | None, out_dir: str | None, output: str | None, as_json: bool) -> None:
    """Index DICOM files and folders: one row per instance, from the headers.

    Columns: patient_id, patient_name, study_instance_uid, accession_number,
    series_instance_uid, sop_instance_uid, modality, dates, sizes, path, ...
    (see kit.dicom.index). Files that are not DICOM are listed on stderr as
    warnings and left out; if no file is DICOM, exit 1 with the reasons.
    Symbolic links to files are read, links to folders are not followed; a file
    reached by a second name (a link to it) is read once, the other name listed.
    With -o X.parquet the rows are written as they are read (any number of files).

    \b
    Examples:
      kit index data/samples/dicom
      kit index data/samples/dicom -o index.parquet --workers 2
      kit index data/samples/dicom --dask local --out-dir index
    """
    from kit.dicom.index import index_dicom

    address = dask_address(ctx, dask)
    if address and workers is not None:
        raise click.UsageError("--workers is for the local path; on Dask the cluster's workers run the job")
    if address:
        _index_on_dask(ctx, address, paths, not no_recursive, out_dir, output, as_json)
        return
    if out_dir:
        raise click.UsageError("--out-dir writes the partitioned index of a Dask run: give --dask too "
                               "(or -o FILE for one file)")
    if output and Path(output).suffix.lower() == ".parquet":  # rows streamed to the file, not held
        _index_to_parquet(paths, output, workers=workers, recursive=not no_recursive)
        return
    result = index_dicom(list(paths), recursive=not no_recursive, workers=workers, progress=True)
    if result.frame.is_empty():
        raise InvalidInputError(f"no DICOM found in {', '.join(paths)} ({_skipped(result.skipped)})")
    for path, reason in result.skipped.iter_rows():
        click.echo(f"kit: warning: skipped {path}: {reason}", err=True)
    emit_frame(result.frame, output, as_json, label="instances")


def _dask_outputs(out_dir: str | None, output: str | None, as_json: bool) -> str:
    if not out_dir:
        raise click.UsageError("with --dask the result is a partitioned parquet folder: give --out-dir DIR")
    if output or as_json:
        raise click.UsageError("with --dask the result goes to --out-dir, not -o/--json")
    return out_dir


def _index_on_dask(ctx: click.Context, address: str, paths: tuple[str, ...], recursive: bool,
                   out_dir: str | None, output: str | None, as_json: bool) -> None:
    from kit.scale.dicom import index_dataset
    from kit.scale.run import remove_parts

    folder = _dask_outputs(out_dir, output, as_json)
    s = settings_from(ctx).dask
    with open_client(ctx, address) as client:
        result = index_dataset(list(paths), folder, client=client, recursive=recursive, timeout=s.timeout,
                               progress=True)
    if result.rows == 0:
        remove_parts(result.folder)
        raise InvalidInputError(f"no DICOM found in {', '.join(paths)} ({_skipped(result.skipped)})")
    for path, reason in result.skipped.iter_rows():
        click.echo(f"kit: warning: skipped {path}: {reason}", err=True)
    emit_frame(dataset_table([("index", result.rows, result.folder)], result.partitions), None, False)


def _index_to_parquet(paths: tuple[str, ...], output: str, *, workers: int | None, recursive: bool) -> None:
    """``kit index -o X.parquet``: written chunk by chunk; X is replaced only if some file is DICOM."""
    from kit._files import atomic_path
    from kit.dicom.index import index_dicom

    if not Path(output).absolute().parent.is_dir():
        raise click.BadParameter(f"folder {Path(output).absolute().parent} does not exist", param_hint="-o")
    try:
        with atomic_path(output) as tmp:
            result = index_dicom(list(paths), recursive=recursive, workers=workers, progress=True, out=tmp)
            if result.rows == 0:
                raise InvalidInputError(f"no DICOM found in {', '.join(paths)} ({_skipped(result.skipped)})")
    except OSError as exc:
        raise StoreError(f"cannot write {output}: {exc.strerror or exc}") from exc
    for path, reason in result.skipped.iter_rows():
        click.echo(f"kit: warning: skipped {path}: {reason}", err=True)
    click.echo(f"wrote {result.rows} instances to {output}", err=True)


def _skipped(skipped: Any, shown: int = 3) -> str:
    """``3 files skipped: a.txt: not DICOM; ...`` in one line."""
    if skipped.is_empty():
        return "no files"
    rows = [f"{Path(p).name}: {' '.join(str(r).split())[:80]}" for p, r in skipped.head(shown).iter_rows()]
    more = f"; and {skipped.height - shown} more" if skipped.height > shown else ""
    return f"{skipped.height} file(s) skipped: " + "; ".join(rows) + more


@click.command()
@click.argument("in_path", metavar="IN", type=click.Path(exists=True))
@click.argument("out_dir", metavar="OUT", type=OUT_DIR)
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the project key (default: $KIT_DEID_KEY).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Re-identification map to append to (.parquet or .csv); "
                   "default: OUT.reid-map.parquet beside OUT. Keep it safe.")
@click.option("--shift-dates", is_flag=True,
              help="Retain Longitudinal Temporal Information with Modified Dates Option: shift dates by "
                   "a per-patient offset instead of removing them (the birth date is still removed).")
@click.option("--retain-patient-characteristics", is_flag=True,
              help="Retain Patient Characteristics Option: keep age, sex, size, weight and the like.")
@dask_option
@click.option("--out-dir", "rows_dir", type=OUT_DIR, default=None,
              help="With --dask: the folder the per-file result rows are written to, one "
                   "part-NNNNN.parquet per chunk of files (not inside OUT: the rows name the input "
                   "paths). The de-identified files still go to OUT.")
@output_options
@click.pass_context
@handle_errors
def deid(ctx: click.Context, in_path: str, out_dir: str, key_file: str | None, map_path: str | None,
         shift_dates: bool, retain_patient_characteristics: bool, dask: str | None, rows_dir: str | None,
         output: str | None, as_json: bool) -> None:
    """De-identify DICOM files from IN into OUT (PS3.15 Basic Profile).

    The Basic Profile alone removes or empties dates (the birth date always);
    the profile's options are off unless chosen (--shift-dates,
    --retain-patient-characteristics) and are named in each output's
    DeidentificationMethodCodeSequence. Every output is scanned for the
    input's identifying values before it is written; a file with a leak is
    not written and counts as failed.

    Pseudonyms are keyed: the same key gives the same pseudonymous PatientID,
    PatientName, AccessionNumber and UIDs in every run. The key comes from
    --key-file or $KIT_DEID_KEY and is never printed. Files whose pixels may
    carry burned-in text are flagged for review. Prints one row per file and
    a summary on stderr; exit 1 if no file could be de-identified.

    \b
    Examples:
      KIT_DEID_KEY=my-project-key kit deid data/samples/dicom/MRN1002 deid
      KIT_DEID_KEY=my-project-key kit deid data/samples/dicom/MRN1003 d3 --map map.parquet -o d3.csv
      KIT_DEID_KEY=my-project-key kit deid data/samples/dicom/MRN1001 d1 --shift-dates
      KIT_DEID_KEY=my-project-key kit deid data/samples/dicom deid --dask local --out-dir deid-rows

    With --dask the files are de-identified on the Dask cluster's workers (they
    must see IN and OUT at the same paths), the key is sent to them, and the
    re-identification map is merged and written here only.
    """
    from kit.dicom.deid import Deidentifier, DeidOptions, ReidentificationMap

    key = _key(key_file)
    out = Path(out_dir).absolute()
    reid_path = Path(map_path).absolute() if map_path else out.with_name(out.name + ".reid-map.parquet")
    if reid_path.is_relative_to(out):
        raise click.UsageError("the re-identification map must not be written inside OUT")
    if reid_path.suffix.lower() not in (".parquet", ".csv"):
        raise click.UsageError("--map must end in .parquet or .csv")
    if not reid_path.parent.is_dir():
        raise click.BadParameter(f"folder {reid_path.parent} does not exist", param_hint="--map")
    address = dask_address(ctx, dask)
    if address:
        rows_dir = _dask_outputs(rows_dir, output, as_json)
        if Path(rows_dir).absolute().resolve() in (reid_path.resolve(), *reid_path.resolve().parents):
            raise click.UsageError("the re-identification map must not be written inside --out-dir")
    elif rows_dir:
        raise click.UsageError("--out-dir holds the result rows of a Dask run: give --dask too")
    reid_map = ReidentificationMap.load(reid_path) if reid_path.exists() else None
    options = DeidOptions(retain_longitudinal_modified_dates=shift_dates,
                          retain_patient_characteristics=retain_patient_characteristics)
    if address:
        from kit.scale.dicom import deid_dataset

        s = settings_from(ctx).dask
        with open_client(ctx, address) as client:
            done = deid_dataset(in_path, out, str(rows_dir), key=key, options=options, reid_map=reid_map,
                                client=client, timeout=s.timeout, progress=True)
        result, new_map, parts = done.result, done.reid_map, done.partitions
    else:
        deidentifier = Deidentifier(key, options=options, reid_map=reid_map)
        result, new_map = deidentifier.files(in_path, out, progress=True), deidentifier.reid_map
    frame = result.frame
    if result.n_deidentified:
        new_map.save(reid_path)
    n_skipped, n_failed = result.count("skipped"), result.count("failed")
    if result.n_deidentified == 0:
        reasons = frame.filter(frame["reason"].is_not_null())["reason"].head(1).to_list()
        raise InvalidInputError(f"no file of {in_path} could be de-identified ({frame.height} files: "
                                f"{n_skipped} skipped, {n_failed} failed"
                                + (f"; first: {' '.join(str(reasons[0]).split())[:120]})" if reasons
                                   else ")"))
    if address:
        emit_frame(dataset_table([("files", frame.height, done.folder)], parts), None, False)
    else:
        emit_frame(frame.select("path_in", "path_out", "patient_id", "burned_in_annotation", "status",
                                "reason"), output, as_json, label="files")
    click.echo(f"kit: de-identified {result.n_deidentified} of {frame.height} files into {out} "
               f"({n_skipped} skipped, {n_failed} failed, {result.n_burned_in} flagged for burned-in "
               f"annotation); re-identification map: {reid_path}", err=True)
    if n_failed:
        first = frame.filter(frame["status"] == "failed")
        raise InvalidInputError(f"{n_failed} of {frame.height} files failed and were not written; first: "
                                f"{first['path_in'][0]}: {' '.join(str(first['reason'][0]).split())[:160]}")


def _key(key_file: str | None) -> str:
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("--key-file", f"cannot read {key_file} as UTF-8 text: {exc}") from exc
    else:
        key = os.environ.get("KIT_DEID_KEY", "").strip()
    if not key:
        raise click.UsageError("no de-identification key: pass --key-file FILE or set KIT_DEID_KEY")
    if len(key.encode()) < 8:
        raise click.UsageError("the de-identification key must be at least 8 bytes")
    return key
