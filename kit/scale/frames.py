"""HL7 archives and FHIR NDJSON to frames on Dask: one partition per input file.

- :func:`hl7_dataset`: :func:`kit.hl7.frames.read_file` (what ``kit hl7 parse``
  runs) on each file, on a worker; every table becomes a dataset folder
  (``OUT/TABLE/part-00000.parquet``, ...), one part per input file, empty parts
  included, so every table has the same partitions. Messages that cannot be read
  are rows of ``skipped`` (``OUT/skipped``), as locally; a file that cannot be
  read raises its :class:`~kit.errors.InvalidInputError`, as locally.
- :func:`fhir_dataset`: :func:`kit.fhir.frames.to_frames` on each ``.ndjson``
  (or ``.json`` Bundle) file; one dataset folder per resource type
  (``OUT/Observation/part-00003.parquet``; a part only where the file holds that
  type). Malformed input raises its :class:`~kit.errors.FhirValidationError`
  (``source`` names the file and line), as ``to_frames`` does.

A partition is a whole file: ``message_number`` and ``reused_control_id`` in the
HL7 tables count within a file, and the file's decoding (UTF-8, else Latin-1)
is decided per file, so a file cut into byte ranges would not give the same rows.
Concatenating the parts in name order gives the frames of the local path,
row for row.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kit.scale.run import prepare_dataset, run_partitions, write_part

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["FramesDataset", "fhir_dataset", "fhir_partition", "hl7_dataset", "hl7_partition"]

Files = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


@dataclasses.dataclass(frozen=True)
class FramesDataset:
    """What :func:`hl7_dataset` or :func:`fhir_dataset` wrote.

    Attributes
    ----------
    folder : Path
        One sub-folder per table (HL7) or resource type (FHIR), each a dataset.
    rows : dict of str to int
        Rows per table, in the order of the tables (HL7) or of first appearance (FHIR).
    partitions : int
        Input files (one partition each).
    """

    folder: Path
    rows: dict[str, int]
    partitions: int

    def scan(self, table: str) -> pl.LazyFrame:
        """One table as a lazy frame (rows in input order).

        Raises
        ------
        kit.errors.InvalidInputError
            No such table in the dataset.
        """
        from kit.errors import InvalidInputError

        if table not in self.rows:
            raise InvalidInputError(f"no table {table!r} in the dataset; it has {', '.join(self.rows)}",
                                    source=str(self.folder))
        return pl.scan_parquet(self.folder / table)

    def collect(self) -> dict[str, pl.DataFrame]:
        """Every table in memory."""
        return {t: self.scan(t).collect() for t in self.rows}


def _files(files: Files) -> list[str]:
    from kit.errors import InvalidInputError

    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    out = []
    for f in items:
        path = os.path.abspath(os.fspath(f))
        if not os.path.isfile(path):
            raise InvalidInputError("no such file", source=path)
        out.append(path)
    return out


def hl7_partition(path: str, tables: list[str], folder: str, index: int, total: int,
                  max_message_bytes: int | None = None) -> dict[str, int]:
    """Read one HL7 file (on a worker) and write one part per table; rows per table.

    The file is read a chunk at a time (:func:`kit.hl7.archive.read_file_chunks`, whose tables
    concatenate to ``read_file``'s), so a message longer than ``max_message_bytes`` (default the
    archive reader's cap) raises instead of being read whole.
    """
    import polars as pl

    from kit.hl7 import archive

    cap = archive.DEFAULT_MAX_MESSAGE_BYTES if max_message_bytes is None else max_message_bytes
    chunks = list(archive.read_file_chunks(path, tables=tables, max_message_bytes=cap))
    frames = {name: pl.concat([c[name] for c in chunks], how="vertical") for name in chunks[0]}
    for name, frame in frames.items():
        write_part(frame, os.path.join(folder, name), index, total)
    return {name: frame.height for name, frame in frames.items()}


def hl7_dataset(files: Files, out_dir: str | os.PathLike[str], *, client: Client | None = None,
                tables: Sequence[str] | None = None, timeout: float = 30.0,
                progress: bool = False, max_message_bytes: int | None = None) -> FramesDataset:
    """HL7 v2 files to a partitioned parquet dataset per table, on Dask or in this process.

    Parameters
    ----------
    files : path or iterable of paths
        HL7 files (as ``kit hl7 parse`` takes them).
    out_dir : path
        The dataset folder (created; part files of an earlier run are replaced).
    client : distributed.Client, optional
        The cluster; ``None``: this process.
    tables : sequence of str, optional
        Tables to build (default all; ``skipped`` always).
    timeout : float
        Seconds the cluster may have no worker before the job fails.
    progress : bool
        Show a progress bar (stderr, when a terminal).
    max_message_bytes : int, optional
        Longest message read (default :data:`kit.hl7.archive.DEFAULT_MAX_MESSAGE_BYTES`);
        a longer one fails the job with :class:`~kit.errors.InvalidInputError` naming
        the file and the message's byte offset.

    Returns
    -------
    FramesDataset
        Folders ``messages``, ``patients``, ..., ``skipped``.

    Raises
    ------
    kit.errors.InvalidInputError
        A file does not exist or cannot be read, or an unknown table.
    kit.errors.ServiceFailedError
        The cluster failed.
    """
    from kit.errors import InvalidInputError
    from kit.hl7.frames import TABLES, empty_frames

    wanted = list(tables) if tables is not None else list(TABLES)
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise InvalidInputError(f"unknown table(s) {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    wanted = [t for t in TABLES if t in wanted or t == "skipped"]
    paths = _files(files)
    out = prepare_dataset(out_dir)
    if not paths:
        for name, frame in empty_frames().items():
            if name in wanted:
                write_part(frame, str(out / name), 0, 1)
        return FramesDataset(out, dict.fromkeys(wanted, 0), 0)
    parts = [(p, wanted, str(out), i, len(paths), max_message_bytes) for i, p in enumerate(paths)]
    results = run_partitions(client, hl7_partition, parts, out_dir=out, timeout=timeout,
                             progress=progress, desc="hl7")
    return FramesDataset(out, {t: sum(r[t] for r in results) for t in wanted}, len(paths))


def fhir_partition(path: str, strict: bool, folder: str, index: int, total: int) -> dict[str, int]:
    """Read one FHIR file (on a worker) and write one part per resource type in it; rows per type."""
    from kit.fhir.frames import to_frames

    frames = to_frames(path, strict=strict)
    for rtype, frame in frames.items():
        write_part(frame, os.path.join(folder, rtype), index, total)
    return {rtype: frame.height for rtype, frame in frames.items()}


def fhir_dataset(files: Files, out_dir: str | os.PathLike[str], *, client: Client | None = None,
                 strict: bool = True, timeout: float = 30.0, progress: bool = False) -> FramesDataset:
    """FHIR NDJSON (or JSON Bundle) files to a partitioned parquet dataset per resource type.

    Each file gives :func:`kit.fhir.frames.to_frames` ``(file, strict=strict)``;
    a type's parts, in name order, concatenate to the frames of the files in input order.

    Parameters
    ----------
    files : path or iterable of paths
        ``.ndjson`` / ``.ndjson.gz`` files (Bulk Data export output) or ``.json`` Bundles.
    out_dir : path
        The dataset folder (created; part files of an earlier run are replaced).
    client : distributed.Client, optional
        The cluster; ``None``: this process.
    strict : bool
        As in :func:`~kit.fhir.frames.to_frames`.
    timeout : float
        Seconds the cluster may have no worker before the job fails.
    progress : bool
        Show a progress bar (stderr, when a terminal).

    Returns
    -------
    FramesDataset
        One folder per resource type found.

    Raises
    ------
    kit.errors.FhirValidationError
        Malformed input (the first failing file in input order), as ``to_frames`` raises it.
    kit.errors.InvalidInputError
        A file does not exist or cannot be read.
    kit.errors.ServiceFailedError
        The cluster failed.
    """
    paths = _files(files)
    out = prepare_dataset(out_dir)
    parts = [(p, strict, str(out), i, len(paths)) for i, p in enumerate(paths)]
    results = run_partitions(client, fhir_partition, parts, out_dir=out, timeout=timeout,
                             progress=progress, desc="fhir")
    rows: dict[str, int] = {}
    for r in results:
        for rtype, n in r.items():
            rows[rtype] = rows.get(rtype, 0) + n
    return FramesDataset(out, rows, len(paths))
