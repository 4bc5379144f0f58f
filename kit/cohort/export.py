"""A de-identified research dataset: DICOM, FHIR and HL7 of one cohort, one key (``kit cohort export``).

::

    from kit.cohort.export import export_dataset, verify_dataset

    manifest = export_dataset(settings, key, "dataset", cohort="cohort.csv")
    verify_dataset("dataset")          # raises VerificationError naming what differs

The export reads the cohort's studies from the PACS (a :class:`~kit.cohort.pull.CohortPull`
into a working folder beside the output, removed afterwards; or an existing pull
folder), the patients' FHIR resources from the FHIR server (every type its
CapabilityStatement lets us search by ``patient``) and their HL7 messages from an
MLLP listener's store (``hl7_store``, else ``[api] hl7_store``; with none the
manifest says so). Without a cohort it takes every patient the three hold.
All three are de-identified together with one key by
:func:`kit.deid.cohort.deidentify_cohort` (one pseudonym and one date shift per
patient, the free-text scrubber), then written as one folder::

    dicom/<study>/<series>/<sop>.dcm   de-identified instances (pseudonymised UIDs)
    index.parquet                      kit.dicom.index frame of those files (path relative)
    fhir/<Type>.parquet                kit.fhir.frames tables (patient_id filled from Patient)
    fhir/resources.ndjson              the de-identified resources
    hl7/TABLE.parquet                kit.hl7.frames tables
    hl7/messages.hl7                   the de-identified messages (ER7, one per line group)
    datalist.json                      MONAI's data list: {"training": [one item per series]}
    manifest.json                      written last: request, sources, key fingerprint, counts,
                                       SHA-256 and size of every other file

``patient_id``, ``accession_number`` and ``study_instance_uid`` are the pseudonyms in
every table, so the modalities join as the identified data did. The
re-identification map is never written here (the caller keeps
``pseudonymiser.reid_map``, outside the folder).

Idempotent: every file is written to a temporary name beside it and renamed (a
file whose bytes are unchanged is not rewritten); parquet is written
uncompressed with a fixed column order and sorted rows; stale files of an
earlier export into the same folder are removed. The same key over the same
sources therefore gives byte-identical files; only ``manifest.json``'s
``created`` time changes (the manifest is not in its own checksummed set).
While an export runs the folder has no manifest: ``verify`` fails until it ends.

Memory: the cohort is de-identified in one pass, in memory (pixel data
included); a cohort larger than memory should be exported in parts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import logging
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from kit._files import atomic_path
from kit.cohort._export_sources import (
    all_studies,
    fhir_resources,
    hl7_messages,
    hl7_store_path,
    pull_studies,
    read_pulled,
)
from kit.cohort.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    build_manifest,
    compare,
    from_json,
    to_json,
)
from kit.config import Secret, Settings, load_settings
from kit.deid.pseudonyms import Pseudonymiser
from kit.errors import InvalidInputError, StoreError, VerificationError

__all__ = ["DATALIST_NAME", "JOIN_KEYS", "export_dataset", "scan_folder", "verify_dataset"]

log = logging.getLogger("kit.cohort")

#: The MONAI data list's file name.
DATALIST_NAME = "datalist.json"
#: The pseudonymised columns the tables join on.
JOIN_KEYS = ("patient_id", "accession_number", "study_instance_uid")
#: Marks a folder as an export in progress (removed before the manifest is written).
_IN_PROGRESS = ".kit-export-in-progress"
_CHUNK = 1 << 20
#: The largest manifest verify reads (about 2.5 million files).
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
_UID = re.compile(r"[0-9]{1,64}(\.[0-9]{1,64}){0,63}")


# -- the folder -----------------------------------------------------------------------------------


def _sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def scan_folder(folder: str | os.PathLike[str]) -> list[FileEntry]:
    """Every file under ``folder`` but ``manifest.json`` (hidden ones too), hashed, sorted by path.

    A symbolic link or other non-regular file is listed with ``size=-1`` (never
    equal to a manifest entry); links are not followed.

    Raises
    ------
    StoreError
        The folder cannot be read.
    """
    root = Path(folder)
    out: list[FileEntry] = []
    try:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            here = Path(dirpath)
            names = list(filenames) + [d for d in dirnames if (here / d).is_symlink()]
            for name in names:
                path = here / name
                rel = path.relative_to(root).as_posix()
                if rel == MANIFEST_NAME:
                    continue
                mode = path.lstat().st_mode
                if stat.S_ISREG(mode):
                    size, digest = _sha256(path)
                    out.append(FileEntry(rel, size, digest))
                else:
                    out.append(FileEntry(rel, -1, ""))
    except OSError as exc:
        raise StoreError(f"cannot read {root}: {exc.strerror or exc}") from exc
    return sorted(out)


def verify_dataset(folder: str | os.PathLike[str]) -> Manifest:
    """Check every file of a dataset folder against its manifest; the manifest when all match.

    Raises
    ------
    VerificationError
        No or unreadable manifest, or files missing, extra or changed (the first
        line says which; ``differences`` lists every one).
    StoreError
        The folder cannot be read.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VerificationError(f"{root} is not a folder")
    try:
        with open(root / MANIFEST_NAME, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise VerificationError(f"{root / MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    except FileNotFoundError:
        raise VerificationError(f"{root} has no {MANIFEST_NAME} (not a dataset, or its export did not "
                                "finish)") from None
    except OSError as exc:
        raise StoreError(f"cannot read {root / MANIFEST_NAME}: {exc.strerror or exc}") from exc
    manifest = from_json(data)
    compare(manifest, scan_folder(root)).check()
    return manifest


class _Writer:
    """Writes files under ``root`` atomically, leaving unchanged bytes alone; remembers what it wrote."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: set[str] = set()

    def bytes(self, rel: str, data: bytes) -> None:
        FileEntry(rel, len(data), "0" * 64)  # a relative path without . or .. parts, or InvalidInputError
        target = self.root / rel
        if not target.parent.resolve().is_relative_to(self.root.resolve()):  # a folder swapped for a link
            raise StoreError(f"{target.parent} leads out of the dataset folder {self.root}: not written")
        self.written.add(rel)
        try:
            if target.is_file() and not target.is_symlink() and target.stat().st_size == len(data) \
                    and target.read_bytes() == data:
                return
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise StoreError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def parquet(self, rel: str, frame: pl.DataFrame) -> None:
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="uncompressed", statistics=False)
        self.bytes(rel, buffer.getvalue())

    def prune(self) -> int:
        """Remove every file not written this time (an earlier export's) and empty folders; how many."""
        removed = 0
        for entry in scan_folder(self.root):
            if entry.path not in self.written and entry.path != _IN_PROGRESS:
                (self.root / entry.path).unlink()
                removed += 1
        for dirpath, _, _ in sorted(os.walk(self.root), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                if Path(dirpath) != self.root:
                    Path(dirpath).rmdir()  # only empty ones go
        return removed


def _check_out(out: Path) -> None:
    """``out`` may be written: new, empty, an earlier export (has a manifest) or one in progress."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InvalidInputError(f"{out} exists and is not a folder", source="out_dir")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file() \
            and not (out / _IN_PROGRESS).is_file():
        raise InvalidInputError(f"{out} is not empty and holds no dataset (no {MANIFEST_NAME}); choose an "
                                "empty or new folder", source="out_dir")
    if not out.parent.is_dir():
        raise InvalidInputError(f"the folder {out.parent} does not exist", source="out_dir")


def _claim(out: Path) -> None:
    """Mark ``out`` as an export in progress and remove its old manifest (checked by _check_out)."""
    _check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / _IN_PROGRESS).write_text("kit cohort export is writing this folder\n", encoding="utf-8")
        (out / MANIFEST_NAME).unlink(missing_ok=True)  # until the new one: the folder is not a dataset
    except OSError as exc:
        raise StoreError(f"cannot write {out}: {exc.strerror or exc}") from exc


# -- the tables -----------------------------------------------------------------------------------


def _sorted(frame: pl.DataFrame, first: Iterable[str] = ()) -> pl.DataFrame:
    """Rows in one order whatever order they came in: by ``first``, then every scalar column."""
    scalar = [c for c, t in frame.schema.items() if not isinstance(t, pl.List | pl.Struct | pl.Array)
              and t != pl.Object]
    keys = [c for c in first if c in scalar] + [c for c in scalar if c not in first]
    return frame.sort(keys, nulls_last=True, maintain_order=True) if keys and frame.height else frame


def _fhir_tables(resources: list[dict[str, Any]]) -> dict[str, pl.DataFrame]:
    from kit.fhir.frames import to_frames, with_patient_id

    frames = to_frames(resources) if resources else {}
    patients = frames.get("Patient")
    out = {}
    for rtype, frame in sorted(frames.items()):
        if patients is not None and rtype != "Patient" and "patient_ref" in frame.columns:
            frame = with_patient_id(frame, patients)
        out[rtype] = _sorted(frame, ["id"])
    return out


def _hl7_tables(messages: Iterable[str]) -> dict[str, pl.DataFrame]:
    from kit.hl7.frames import to_frames

    return {name: _sorted(frame, ["control_id"]) for name, frame in sorted(to_frames(list(messages)).items())}


def _datalist(index: pl.DataFrame, fhir: Mapping[str, pl.DataFrame],
              hl7: Mapping[str, pl.DataFrame]) -> dict[str, Any]:
    """MONAI's decathlon data list: one item per series (its folder, relative), labels joined by key.

    ``label`` is the patient's FHIR Condition codes (sorted); ``findings`` the study's
    HL7 result abnormal flags (by accession number); the join keys and the series'
    modality, study date and instance count come with each item.
    """
    conditions: dict[str, list[str]] = {}
    cond = fhir.get("Condition")
    if cond is not None and cond.height:
        for mrn, codes in cond.filter(pl.col("patient_id").is_not_null()).group_by("patient_id").agg(
                pl.col("code").drop_nulls().unique().sort()).iter_rows():
            conditions[mrn] = list(codes)
    flags: dict[str, list[str]] = {}
    results = hl7.get("results")
    if results is not None and results.height:
        for acc, values in results.filter(pl.col("accession_number").is_not_null()).group_by(
                "accession_number").agg(pl.col("abnormal_flags").drop_nulls().unique().sort()).iter_rows():
            flags[acc] = list(values)
    series = (index.group_by("study_instance_uid", "series_instance_uid")
              .agg(pl.col("patient_id").first(), pl.col("accession_number").first(),
                   pl.col("modality").first(), pl.col("study_date").first(), pl.len().alias("instances"))
              .sort("study_instance_uid", "series_instance_uid"))
    items = []
    for row in series.iter_rows(named=True):
        date = row["study_date"]
        items.append({
            "image": f"dicom/{row['study_instance_uid']}/{row['series_instance_uid']}",
            "label": conditions.get(row["patient_id"] or "", []),
            "findings": flags.get(row["accession_number"] or "", []),
            "patient_id": row["patient_id"], "accession_number": row["accession_number"],
            "study_instance_uid": row["study_instance_uid"],
            "series_instance_uid": row["series_instance_uid"],
            "modality": row["modality"], "study_date": date.isoformat() if date else None,
            "instances": row["instances"]})
    return {"name": "kit research dataset", "description": "one item per DICOM series; image is its folder "
            "(relative to this file), label the patient's FHIR Condition codes, findings the study's HL7 "
            "abnormal flags", "numTraining": len(items), "training": items}


# -- the export -----------------------------------------------------------------------------------


def _pseudonymiser(key: Pseudonymiser | Secret | str | bytes) -> Pseudonymiser:
    if isinstance(key, Pseudonymiser):
        return key
    return Pseudonymiser(key)


def _request_rows(cohort: pl.DataFrame, pseudo: Pseudonymiser) -> list[dict[str, str]]:
    """The cohort's items as the manifest records them: identifiers pseudonymised, dates left out."""
    from kit.cohort.plan import items_from_frame

    rows = []
    for item in items_from_frame(cohort):
        row = {"row": str(item.row)}
        if item.accession_number:
            row["accession_number"] = pseudo.accession_number(item.accession_number)
        if item.study_instance_uid:
            row["study_instance_uid"] = pseudo.uid(item.study_instance_uid)
        if item.patient_id:
            row["patient_id"] = pseudo.patient_id(item.patient_id)
        if item.study_date:
            row["study_date"] = "(a date range; not recorded)"
        rows.append(row)
    return rows


class _Bar:
    """A tqdm.auto bar over the export's steps (as kit.cohort.pull shows its bar)."""

    def __init__(self, show: bool, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="export", unit="step", file=sys.stderr, disable=not show,
                        leave=True, dynamic_ncols=True)

    def step(self, what: str) -> None:
        self.bar.set_postfix_str(what, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def export_dataset(settings: Settings | None, key: Pseudonymiser | Secret | str | bytes,
                   out_dir: str | os.PathLike[str],
                   cohort: pl.DataFrame | str | os.PathLike[str] | None = None,
                   *, from_pull: str | os.PathLike[str] | None = None,
                   hl7_store: str | os.PathLike[str] | None = None, method: str | None = None,
                   scrub: Any = None, progress: bool | None = None, dask: Any = None,
                   echo: Callable[[str], None] = log.warning,
                   now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> Manifest:
    """De-identify a cohort's DICOM, FHIR and HL7 with one key and write it as a dataset folder.

    Parameters
    ----------
    settings : Settings or None
        ``[pacs]``/``[dicomweb]``/``[cohort]``, ``[fhir]`` and ``[api] hl7_store``
        (default :func:`kit.load_settings`).
    key : Pseudonymiser, Secret, str or bytes
        The project key (:func:`kit.deid.pseudonyms.load_key`); a Pseudonymiser
        collects the re-identification map for the caller to save elsewhere.
    out_dir : path
        The dataset folder: new, empty, or an earlier export (rewritten in place).
    cohort : polars.DataFrame or path, optional
        Accession numbers, study UIDs and/or MRNs (:func:`kit.cohort.pull.read_cohort`).
        None: every patient the PACS, FHIR server and HL7 store hold.
    from_pull : path, optional
        A ``kit cohort pull`` folder to read the studies from instead of the PACS.
    hl7_store : path, optional
        An MLLP listener's message store (default ``[api] hl7_store``; none: said in the manifest).
    method : {"c-get", "c-move", "wado"}, optional
        How to retrieve (default ``[cohort] retrieve``).
    scrub : TextScrubber, optional
        The free-text scrubber (default :func:`kit.deid.policy.default_scrubber`).
    progress : bool, optional
        Show progress bars (default: a terminal or a notebook).
    dask : str or distributed.Client, optional
        Run the pull's retrieves on a Dask cluster (:class:`~kit.cohort.pull.CohortPull`'s
        ``dask``; default ``[dask] scheduler``, ``""`` here). The de-identification runs here.
    echo : callable
        Receives sentences about what the sources did not hold.
    now : callable
        The clock for the manifest's ``created`` time (UTC).

    Returns
    -------
    Manifest
        What ``out_dir/manifest.json`` says.

    Raises
    ------
    KitError
        A source cannot be read (:class:`~kit.errors.PeerError`, :class:`~kit.errors.CohortError`
        when a study could not be retrieved, :class:`~kit.errors.ConfigError` for a missing
        HL7 store), the data is malformed, de-identification left an identifier
        (:class:`~kit.dicom.deid_check.DeidLeakError`), or the folder cannot be written
        (:class:`~kit.errors.StoreError`). No manifest is written then.
    """
    from kit import __version__
    from kit.cohort.pull import _in_notebook, read_cohort
    from kit.cohort.retrieve import Source
    from kit.deid.cohort import DEFAULT_SCRUBBER, deidentify_cohort
    from kit.dicom.index import index_dicom

    settings = settings if settings is not None else load_settings()
    pseudo = _pseudonymiser(key)
    out = Path(out_dir).absolute()
    frame = read_cohort(cohort) if cohort is not None else None
    request: list[dict[str, str]] | str = _request_rows(frame, pseudo) if frame is not None else "all"
    show = progress if progress is not None else (sys.stderr.isatty() or _in_notebook())
    notes: list[str] = []

    def say(text: str) -> None:
        notes.append(text)
        echo(text)

    store = hl7_store_path(settings, hl7_store)  # a configured store that is missing fails before any work
    _check_out(out)  # the sources are read first: a source that fails leaves the folder as it was
    work: Path | None = None
    bar = _Bar(show, 7)
    try:
        # 1. the studies (identified; the working folder is outside the output and removed)
        if from_pull is not None:
            pulled = Path(from_pull).absolute()
            if pulled == out or out in pulled.parents or pulled in out.parents:
                raise InvalidInputError("the pull folder and the dataset folder must not contain each other",
                                        source="from_pull")
            datasets = read_pulled(pulled)
            pacs_address = f"kit cohort pull folder {pulled}"
        else:
            work = out.parent / f".{out.name}.kit-export-pull"
            asked = frame if frame is not None else all_studies(settings, method)
            datasets = []
            if not asked.is_empty():
                report = pull_studies(asked, work, settings, method=method, progress=show, dask=dask)
                # only this cohort's studies: a crashed export of another cohort may have left others
                datasets = read_pulled(work, report["study_instance_uid"].drop_nulls().unique().to_list())
            pacs_address = Source.from_settings(settings, method).address  # type: ignore[arg-type]
        bar.step("studies read")
        # 2. the patients: the cohort's MRNs and those of its studies (all: every one the sources hold)
        mrns: set[str] | None = None
        if frame is not None:
            from kit.cohort.plan import items_from_frame

            mrns = {str(ds.get("PatientID", "") or "") for ds in datasets} - {""}
            mrns |= {i.patient_id for i in items_from_frame(frame) if i.patient_id}
        resources, _ = fhir_resources(settings, sorted(mrns) if mrns is not None else None, echo=say)
        bar.step("FHIR read")
        if store is None:
            say("no HL7 store configured ([api] hl7_store or --hl7-store): the dataset holds no HL7 messages")
            messages: tuple[str, ...] = ()
            hl7_note: dict[str, int] = {}
        else:
            read = hl7_messages(store, mrns)
            messages = read.messages
            hl7_note = {"hl7_messages_without_patient": read.without_patient,
                        "hl7_messages_unreadable": read.unreadable}
            if read.without_patient or read.unreadable:
                say(f"the HL7 store holds {read.without_patient} message(s) without a patient (PID-3) and "
                    f"{read.unreadable} it cannot parse: not exported")
        bar.step("HL7 read")
        # 3. one key over all three
        result = deidentify_cohort(pseudo, dicom=datasets, fhir=resources, hl7=messages,
                                   scrub=DEFAULT_SCRUBBER if scrub is None else scrub)
        del datasets
        bar.step("de-identified")
        # 4. the files
        _claim(out)
        writer = _Writer(out)
        for ds in result.dicom:
            uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            if not all(_UID.fullmatch(u) for u in uids):
                raise InvalidInputError(f"a de-identified instance has an invalid UID: {uids}")
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            writer.bytes("dicom/{}/{}/{}.dcm".format(*uids), buffer.getvalue())
        written = sorted(out / p for p in writer.written)  # only this export's files (stale ones go later)
        scanned = index_dicom(written, workers=1) if written else None
        if scanned is not None and scanned.skipped.height:
            raise StoreError(f"a written DICOM file does not index: {scanned.skipped.row(0)}")
        index = _dicom_table(scanned.frame if scanned is not None else None, out)
        writer.parquet("index.parquet", index)
        fhir = _fhir_tables(list(result.fhir))
        for rtype, table in fhir.items():
            writer.parquet(f"fhir/{rtype}.parquet", table)
        writer.bytes("fhir/resources.ndjson", b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n"
                                                       for r in result.fhir))
        hl7 = _hl7_tables(m.to_er7() for m in result.hl7)
        for name, table in hl7.items():
            writer.parquet(f"hl7/{name}.parquet", table)
        writer.bytes("hl7/messages.hl7", "".join(m.to_er7() + "\n" for m in result.hl7).encode("utf-8"))
        bar.step("tables written")
        writer.bytes(DATALIST_NAME, orjson.dumps(_datalist(index, fhir, hl7),
                                                 option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n")
        removed = writer.prune()
        if removed:
            log.info("export: removed %d file(s) of an earlier export of %s", removed, out)
        # 5. the manifest, last
        patients = set(index["patient_id"].drop_nulls().to_list())
        for found in (fhir.get("Patient"), hl7.get("patients")):
            if found is not None:
                patients |= set(found["patient_id"].drop_nulls().to_list())
        counts = {"patients": len(patients),
                  "studies": index["study_instance_uid"].n_unique(),
                  "series": index["series_instance_uid"].n_unique(), "instances": index.height,
                  "fhir_resources": len(result.fhir), "hl7_messages": len(result.hl7), **hl7_note}
        counts.update({f"fhir:{k}": v.height for k, v in fhir.items()})
        counts.update({f"hl7:{k}": v.height for k, v in hl7.items()})
        counts.update({f"deid:{k}": v for k, v in result.counts.items()})
        sources = {"pacs": pacs_address, "fhir": settings.fhir.base}
        if store is not None:
            sources["hl7"] = str(store.absolute())
        (out / _IN_PROGRESS).unlink(missing_ok=True)
        manifest = build_manifest(request=request, sources=sources, files=scan_folder(out),
                                  key_fingerprint=result.key_fingerprint, counts=counts,
                                  kit_version=__version__, created=now(),
                                  notes=[*notes, *([] if result.text_scrubbed
                                                   else ["free text was not scrubbed"])])
        writer.bytes(MANIFEST_NAME, to_json(manifest))
        bar.step("manifest written")
        return manifest
    except OSError as exc:
        raise StoreError(f"cannot write the dataset {out}: {exc.strerror or exc}") from exc
    finally:
        bar.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)  # identified copies never outlive the export


def _dicom_table(frame: pl.DataFrame | None, out: Path) -> pl.DataFrame:
    """The index frame with paths relative to the dataset, sorted."""
    if frame is None:
        from kit.dicom.index import index_dicom

        return index_dicom([]).frame
    root = out.as_posix().rstrip("/") + "/"
    frame = frame.with_columns(pl.col("path").str.strip_prefix(root))
    return _sorted(frame, ["study_instance_uid", "series_instance_uid", "instance_number",
                           "sop_instance_uid"])
