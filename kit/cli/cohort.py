"""``kit cohort``: research cohorts: ``pull`` studies resumably, ``export`` a dataset, ``verify`` it."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from kit.cli.common import (
    EPHEMERAL_PORT,
    HTTP_URL,
    OUT_DIR,
    emit_frame,
    handle_errors,
    output_options,
    settings_from,
    write_frame,
)
from kit.cli.pacs import _dimse_options

__all__ = ["cohort"]


@click.group()
def cohort() -> None:
    """Research cohorts: pull studies politely and resumably, export a dataset, verify it."""


@cohort.command()
@click.argument("cohort_file", metavar="COHORT.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", "out_dir", type=OUT_DIR, required=True,
              help="Folder for the studies (<DIR>/<StudyInstanceUID>/<SOPInstanceUID>.dcm), the journal "
                   "and report.csv; run again with the same folder to resume.")
@click.option("--web", is_flag=True,
              help="Resolve by QIDO-RS and retrieve by WADO-RS (kit.toml [dicomweb]) instead of DIMSE.")
@click.option("--base", type=HTTP_URL, default=None, help="DICOMweb root URL (implies --web).")
@click.option("--move", is_flag=True,
              help="Retrieve by C-MOVE to our AE title and --store-port (the PACS must know them) "
                   "instead of C-GET.")
@click.option("--store-port", type=EPHEMERAL_PORT, default=None,
              help="Port of the storage SCP a C-MOVE sends to (default kit.toml [pacs] store_port).")
@click.option("--max-associations", type=click.IntRange(min=1), default=None,
              help="Associations open at the PACS at once (default kit.toml [cohort], 2).")
@click.option("--images-per-second", type=click.FloatRange(min=0, min_open=True, max=1e6), default=None,
              help="Instances per second the PACS may send us (default kit.toml [cohort], 50).")
@click.option("--dask", "dask", metavar="ADDRESS", default=None,
              help="Run the retrieves on a Dask cluster: 'local' (a LocalCluster of kit.toml [dask] workers) "
                   "or a scheduler address (tcp://host:8786); the caps hold across all its workers. "
                   "Default kit.toml [dask] scheduler; '' runs them here.")
@_dimse_options
@output_options
@click.pass_context
@handle_errors
def pull(ctx: click.Context, cohort_file: str, out_dir: str, web: bool, base: str | None, move: bool,
         store_port: int | None, max_associations: int | None, images_per_second: float | None,
         dask: str | None, url: Any, host: str | None, port: int | None, aet: str | None,
         called_aet: str | None, timeout: float | None, output: str | None, as_json: bool) -> None:
    """Retrieve every study a cohort names into DIR, resuming an earlier run there.

    COHORT.csv has a column accession_number, study_instance_uid or
    patient_id (aliases accession, study_uid, mrn), and optionally
    study_date (20240101-20241231) or date_from/date_to. Each row is
    resolved by C-FIND (QIDO-RS with --web) and each study retrieved once,
    by C-GET (default), C-MOVE or WADO-RS, with at most --max-associations
    open at the PACS and --images-per-second arriving. A transient failure
    (unreachable, timeout, aborted, busy) is retried with backoff. The
    report (one row per item and study: retrieved, failed with its reason)
    is printed and written to DIR/report.csv; exit 1 if anything failed.

    With --dask the resolves and retrieves run as tasks on the cluster's
    workers, which write into DIR (a file system they share with this
    machine); the journal stays here, so resuming works the same. C-GET or
    WADO-RS only (a C-MOVE sends to one fixed address).

    \b
    Examples:
      kit cohort pull cohort.csv --out-dir cohort
      kit cohort pull cohort.csv --out-dir cohort-slow --max-associations 1 --images-per-second 20 -o r.csv
      kit cohort pull cohort.csv --out-dir cohort-web --web --base http://127.0.0.1:8042/dicom-web
      kit cohort pull cohort.csv --out-dir cohort-dask --dask local
    """
    from kit.cohort.pull import CohortPull
    from kit.cohort.retrieve import Method
    from kit.errors import CohortError

    if base is not None:
        web = True
    if web and move:
        raise click.UsageError("--web retrieves by WADO-RS: give it without --move")
    if dask and move:
        raise click.UsageError("--move sends to one fixed address, not to each Dask worker: give --dask "
                               "without --move")
    if url is not None:
        if host is not None or port is not None or called_aet is not None:
            raise click.UsageError("--url names the PACS: give it without --host, --port, --called-aet")
        called_aet, host, port = url
    settings = settings_from(ctx)
    pacs_changes = {k: v for k, v in {"host": host, "port": port, "aet": aet, "called_aet": called_aet,
                                      "timeout": timeout, "store_port": store_port}.items() if v is not None}
    web_changes = {k: v for k, v in {"base": base, "timeout": timeout}.items() if v is not None}
    settings = dataclasses.replace(
        settings, pacs=dataclasses.replace(settings.pacs, **pacs_changes),  # type: ignore[arg-type]
        dicomweb=dataclasses.replace(settings.dicomweb, **web_changes))  # type: ignore[arg-type]
    method: Method | None = "wado" if web else "c-move" if move else None
    job = CohortPull(cohort_file, out_dir, settings=settings, method=method,
                     max_associations=max_associations, images_per_second=images_per_second, dask=dask)
    report = job.run()
    failed = report.filter(report["status"] == "failed")
    if failed.is_empty():
        emit_frame(report, output, as_json, label="rows")
        return
    if output:
        write_frame(report, output)  # quietly: the one stderr line is the failure
    else:
        emit_frame(report, None, as_json)
    first = failed.row(0, named=True)
    studies = report["study_instance_uid"].drop_nulls().n_unique()
    raise CohortError(f"{failed.height} of {report.height} requested item/study rows failed ({studies} "
                      f"stud(ies) found); first: {first['item']}: {first['reason']}; report in "
                      f"{job.out_dir / 'report.csv'}", failed=failed.height)


@cohort.command("export")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the project key (default: $KIT_DEID_KEY); never printed.")
@click.option("--out-dir", "out_dir", type=OUT_DIR, required=True,
              help="The dataset folder: new, empty, or an earlier export (rewritten in place).")
@click.option("--cohort", "cohort_file", metavar="COHORT.csv", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Accession numbers, study UIDs and/or MRNs (as for `kit cohort pull`); "
                                 "default: every patient the PACS, FHIR server and HL7 store hold.")
@click.option("--from-pull", "from_pull", metavar="PULLDIR", type=click.Path(exists=True),
              default=None, help="Read the studies from this `kit cohort pull` folder instead of the PACS.")
@click.option("--hl7-store", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An MLLP listener's message store (default kit.toml [api] hl7_store; none: the "
                   "manifest says the dataset holds no HL7).")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="Re-identification map to append to (.parquet or .csv); default: DIR.reid-map.parquet "
                   "beside DIR, never inside it. Keep it safe.")
@click.option("--web", is_flag=True, help="Resolve and retrieve by DICOMweb (kit.toml [dicomweb]).")
@click.option("--fhir-base", type=HTTP_URL, default=None,
              help="FHIR root URL (default kit.toml [fhir] base).")
@_dimse_options
@click.option("--dask", "dask", metavar="ADDRESS", default=None,
              help="Pull the studies on a Dask cluster, as `kit cohort pull --dask` (default kit.toml "
                   "[dask] scheduler; '' here). The working folder beside DIR must be shared with "
                   "the workers.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's counts as JSON.")
@click.pass_context
@handle_errors
def export_(ctx: click.Context, key_file: str | None, out_dir: str, cohort_file: str | None,
            from_pull: str | None, hl7_store: str | None, map_path: str | None, web: bool,
            fhir_base: str | None, dask: str | None, url: Any, host: str | None, port: int | None,
            aet: str | None, called_aet: str | None, timeout: float | None, as_json: bool) -> None:
    """Export a de-identified research dataset: DICOM, FHIR and HL7 of a cohort, one key.

    The cohort's studies (C-FIND + C-GET from kit.toml [pacs], or
    --from-pull), its patients' FHIR resources ([fhir]) and HL7 messages
    (--hl7-store / [api] hl7_store) are de-identified together: one
    pseudonym and one date shift per patient in all three, free text
    scrubbed. DIR gets dicom/<study>/<series>/<sop>.dcm, index.parquet,
    fhir/*.parquet, hl7/*.parquet (joined on patient_id, accession_number,
    study_instance_uid), datalist.json (MONAI's data list) and, last,
    manifest.json (request, sources, key fingerprint, counts, the SHA-256
    of every file). The same key over the same sources gives the same
    bytes. Prints the counts; `kit cohort verify DIR` checks the folder.
    The re-identification map goes to DIR.reid-map.parquet (or --map),
    never into DIR. Studies already pulled (`kit cohort pull cohort.csv
    --out-dir cohort`) are read with --from-pull cohort.

    \b
    Examples:
      KIT_DEID_KEY=my-project-key kit cohort export --out-dir dataset --cohort cohort.csv
      KIT_DEID_KEY=my-project-key kit cohort export --out-dir all --hl7-store ~/.cache/kit/stack/mllp.db
    """
    import json
    from pathlib import Path

    from kit.cohort.export import export_dataset
    from kit.deid.pseudonyms import Pseudonymiser, ReidentificationMap, load_key

    out = Path(out_dir).absolute()
    reid_path = Path(map_path).absolute() if map_path else out.with_name(out.name + ".reid-map.parquet")
    if reid_path.is_relative_to(out):
        raise click.UsageError("the re-identification map must not be written inside --out-dir")
    if reid_path.suffix.lower() not in (".parquet", ".csv"):
        raise click.UsageError("--map must end in .parquet or .csv")
    if not reid_path.parent.is_dir():
        raise click.BadParameter(f"folder {reid_path.parent} does not exist", param_hint="--map")
    if url is not None:
        if host is not None or port is not None or called_aet is not None:
            raise click.UsageError("--url names the PACS: give it without --host, --port, --called-aet")
        called_aet, host, port = url
    settings = settings_from(ctx)
    pacs_changes = {k: v for k, v in {"host": host, "port": port, "aet": aet, "called_aet": called_aet,
                                      "timeout": timeout}.items() if v is not None}
    fhir_changes = {k: v for k, v in {"base": fhir_base, "timeout": timeout}.items() if v is not None}
    settings = dataclasses.replace(
        settings, pacs=dataclasses.replace(settings.pacs, **pacs_changes),  # type: ignore[arg-type]
        fhir=dataclasses.replace(settings.fhir, **fhir_changes))  # type: ignore[arg-type]
    reid_map = ReidentificationMap.load(reid_path) if reid_path.exists() else None
    pseudo = Pseudonymiser(load_key(key_file), reid_map=reid_map)
    manifest = export_dataset(settings, pseudo, out, cohort_file, from_pull=from_pull, hl7_store=hl7_store,
                              method="wado" if web else None, dask=dask,
                              echo=lambda text: click.echo(f"kit: {text}", err=True))
    pseudo.reid_map.save(reid_path, output_dir=out)
    counts = dict(manifest.counts)
    if as_json:
        click.echo(json.dumps(counts, indent=2, sort_keys=True))
    else:
        for name in ("patients", "studies", "series", "instances", "fhir_resources", "hl7_messages"):
            click.echo(f"{name:<15} {counts.get(name, 0)}")
    click.echo(f"kit: exported {len(manifest.files)} files into {out}; key {manifest.key_fingerprint}; "
               f"re-identification map: {reid_path}", err=True)


@cohort.command()
@click.argument("dataset", metavar="DIR", type=click.Path(file_okay=False))
@handle_errors
def verify(dataset: str) -> None:
    """Check a dataset folder against its manifest.json: every file present, none extra, none changed.

    Exit 0 with one line (how many files were verified); exit 1 with one
    line naming what is missing, extra or changed.

    \b
    Examples:
      kit cohort verify dataset
    """
    from kit.cohort.export import verify_dataset

    manifest = verify_dataset(dataset)
    click.echo(f"{len(manifest.files)} files verified in {dataset} (key {manifest.key_fingerprint}, "
               f"created {manifest.created})")
