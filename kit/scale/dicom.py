"""DICOM jobs on Dask: the index and the de-identification of many files.

Both split the file list (:func:`kit.dicom.index.list_files`, the walk the local
path makes) into chunks of consecutive files; each chunk is one partition, run
on a worker by the function the local path runs on it:

- :func:`index_dataset`: the index's chunk reader (``kit.dicom.index``), one
  part file of index rows per chunk (``INDEX_SCHEMA``, sorted by path);
  unreadable files come back as ``skipped`` rows, as :func:`~kit.dicom.index.index_dicom`
  reports them.
- :func:`deid_dataset`: :meth:`kit.dicom.deid.Deidentifier.files` on the chunk,
  the de-identified files written by the worker into the output folder and
  one part file of result rows (``DEID_SCHEMA``) per chunk. The worker gets
  the key as bytes (a :class:`kit.config.Secret` is never pickled), so every
  worker gives the same pseudonyms; the pseudonyms each chunk gave come back
  to the client, which merges them into one complete
  :class:`~kit.deid.pseudonyms.ReidentificationMap` (a collision between chunks
  raises, as in one process). Only the client writes the map.

Workers and client must see the input and output folders at the same paths
(a shared file system, as on a SLURM cluster).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import polars as pl

from kit.scale.run import prepare_dataset, run_partitions, write_part

if TYPE_CHECKING:
    from distributed import Client

    from kit.config import Secret
    from kit.deid.pseudonyms import ReidentificationMap
    from kit.dicom.deid import DeidOptions, DeidResult

__all__ = ["DEID_CHUNK", "INDEX_CHUNK", "DeidDataset", "IndexDataset", "deid_dataset", "deid_partition",
           "index_dataset", "index_partition"]

#: files per partition of the index (a few hundred ms of work per task keeps the scheduler's
#: per-task cost small)
INDEX_CHUNK = 256
#: files per partition of the de-identification (each file is read, rewritten and scanned)
DEID_CHUNK = 64

Paths = str | os.PathLike[str] | Iterable[str | os.PathLike[str]]


@dataclasses.dataclass(frozen=True)
class IndexDataset:
    """What :func:`index_dataset` wrote.

    Attributes
    ----------
    folder : Path
        The dataset: ``part-00000.parquet``, ... (``polars.scan_parquet(folder)`` gives
        the rows of :func:`~kit.dicom.index.index_dicom`, in its order: sorted by path).
    rows : int
        Instances indexed.
    partitions : int
        Part files written.
    skipped : polars.DataFrame
        Files not indexed (``path``, ``reason``), as :attr:`kit.dicom.index.DicomIndex.skipped`.
    """

    folder: Path
    rows: int
    partitions: int
    skipped: pl.DataFrame

    def scan(self) -> pl.LazyFrame:
        """The index as one lazy frame (sorted by path, as the local index)."""
        return pl.scan_parquet(self.folder)


def index_partition(paths: list[str], reader: str, folder: str, index: int,
                    total: int) -> tuple[int, list[tuple[str, str]]]:
    """Index one chunk of files (on a worker) and write its part; (rows, skipped rows)."""
    from kit.dicom.index import INDEX_SCHEMA, index_chunk

    rows, skipped = index_chunk(paths, reader)
    frame = pl.DataFrame(rows, schema=INDEX_SCHEMA, orient="row").sort("path")
    write_part(frame, folder, index, total)
    return frame.height, skipped


T = TypeVar("T")


def _paths(paths: Paths) -> list[str | os.PathLike[str]]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _chunks(files: list[T], size: int) -> list[list[T]]:
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [files[i:i + size] for i in range(0, len(files), size)]


def index_dataset(paths: Paths, out_dir: str | os.PathLike[str], *, client: Client | None = None,
                  recursive: bool = True, reader: str = "auto", chunk: int = INDEX_CHUNK,
                  timeout: float = 30.0, progress: bool = False) -> IndexDataset:
    """Index DICOM files into a partitioned parquet dataset, on Dask or in this process.

    The rows are those of :func:`kit.dicom.index.index_dicom` on the same input
    (the same chunk reader runs on every chunk).

    Parameters
    ----------
    paths : path or iterable of paths
        Files and/or folders.
    out_dir : path
        The dataset folder (created; part files of an earlier run are replaced).
    client : distributed.Client, optional
        The cluster (:func:`kit.scale.cluster.dask_client`); ``None``: this process.
    recursive, reader
        As in :func:`~kit.dicom.index.index_dicom`.
    chunk : int
        Files per partition.
    timeout : float
        Seconds the cluster may have no worker before the job fails.
    progress : bool
        Show a progress bar (stderr, when a terminal).

    Returns
    -------
    IndexDataset

    Raises
    ------
    kit.errors.InvalidInputError
        A given path does not exist.
    kit.errors.ServiceFailedError
        The cluster failed (a worker died too often, no worker left).
    """
    from kit.dicom.index import INDEX_SCHEMA, SKIPPED_SCHEMA, walk_files

    if reader not in ("auto", "fast", "pydicom"):
        raise ValueError(f"reader must be auto, fast or pydicom, not {reader!r}")
    entries = walk_files(_paths(paths), recursive)
    passed = [(path, reason) for path, reason in entries if reason is not None]
    out = prepare_dataset(out_dir)
    # chunks in path order: the parts, read in name order, are the local frame (sorted by path)
    chunks = _chunks(sorted(path for path, reason in entries if reason is None), chunk)
    if not chunks:  # an empty dataset still has its schema
        write_part(pl.DataFrame(schema=INDEX_SCHEMA), str(out), 0, 1)
        return IndexDataset(out, 0, 1, pl.DataFrame(sorted(passed, key=lambda row: row[0]),
                                                    schema=SKIPPED_SCHEMA, orient="row"))
    parts = [(c, reader, str(out), i, len(chunks)) for i, c in enumerate(chunks)]
    results = run_partitions(client, index_partition, parts, out_dir=out, timeout=timeout,
                             progress=progress, desc="index")
    skipped = sorted(passed + [row for _, s in results for row in s], key=lambda row: row[0])  # as locally
    return IndexDataset(out, sum(n for n, _ in results), len(chunks),
                        pl.DataFrame(skipped, schema=SKIPPED_SCHEMA, orient="row"))


@dataclasses.dataclass(frozen=True)
class DeidDataset:
    """What :func:`deid_dataset` did.

    Attributes
    ----------
    folder : Path
        The result rows as a dataset (``part-00000.parquet``, ...; ``DEID_SCHEMA``).
    result : kit.dicom.deid.DeidResult
        The same rows in memory: one per input file, in input order.
    reid_map : kit.deid.pseudonyms.ReidentificationMap
        Every pseudonym given, by every worker (and those of the map passed in).
        Not written: save it yourself, outside the output.
    partitions : int
        Part files written.
    """

    folder: Path
    result: DeidResult
    reid_map: ReidentificationMap
    partitions: int


def deid_partition(entries: list[tuple[str, str | None]], dicom_out: str, key: bytes,
                   options: dict[str, bool], folder: str, index: int,
                   total: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """De-identify one chunk of :func:`kit.dicom.index.walk_files` entries (on a worker); (result
    rows, re-identification rows).

    The de-identified files go into ``dicom_out``, the result rows into the part file.
    """
    from kit.dicom.deid import Deidentifier, DeidOptions

    deidentifier = Deidentifier(key, options=DeidOptions(**options))
    frame = deidentifier.walked(entries, dicom_out).frame
    write_part(frame, folder, index, total)
    return frame, deidentifier.reid_map.frame


def _key_bytes(key: str | bytes | Secret) -> bytes:
    from kit.config import Secret
    from kit.deid.pseudonyms import Pseudonymiser

    Pseudonymiser(key)  # the same checks (type, length) as the local path, before any worker sees it
    raw = key.reveal() if isinstance(key, Secret) else key
    return raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)


def deid_dataset(paths: Paths, dicom_out: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                 key: str | bytes | Secret, options: DeidOptions | None = None,
                 reid_map: ReidentificationMap | None = None, client: Client | None = None,
                 chunk: int = DEID_CHUNK, timeout: float = 30.0, progress: bool = False) -> DeidDataset:
    """De-identify DICOM files on Dask (or in this process): the files of
    :meth:`kit.dicom.deid.Deidentifier.files`, and its result rows as a dataset.

    Parameters
    ----------
    paths : path or iterable of paths
        Files and/or folders (searched recursively).
    dicom_out : path
        Folder of the de-identified files (as ``Deidentifier.files`` names them).
    out_dir : path
        Folder of the result rows' dataset (``part-NNNNN.parquet``; must not be
        inside ``dicom_out``: ``path_in`` may hold identifiers).
    key : str, bytes or kit.config.Secret
        The project key; sent to the workers as bytes.
    options : kit.dicom.deid.DeidOptions, optional
        Profile options (default: none).
    reid_map : ReidentificationMap, optional
        A map to extend (e.g. loaded from an earlier run); its rows are checked
        against ``key`` first (a map made with another key raises).
    client : distributed.Client, optional
        The cluster; ``None``: this process.
    chunk : int
        Files per partition.
    timeout : float
        Seconds the cluster may have no worker before the job fails.
    progress : bool
        Show a progress bar (stderr, when a terminal).

    Returns
    -------
    DeidDataset

    Raises
    ------
    kit.errors.ConfigError
        The key is missing or too short.
    kit.errors.InvalidInputError
        A path does not exist, ``out_dir`` is inside ``dicom_out``, the map was
        made with another key, or two originals collide.
    kit.errors.ServiceFailedError
        The cluster failed.
    """
    from kit.deid.pseudonyms import Pseudonymiser, PseudonymKind, ReidentificationMap, is_inside
    from kit.dicom.deid import DeidOptions, DeidResult
    from kit.dicom.index import walk_files
    from kit.errors import InvalidInputError

    raw_key = _key_bytes(key)
    if is_inside(out_dir, dicom_out) or is_inside(dicom_out, out_dir):
        raise InvalidInputError("the result rows (with the input paths) and the de-identified files go "
                                "into separate folders", source=str(out_dir))
    merged = ReidentificationMap()
    checker = Pseudonymiser(raw_key, reid_map=merged)
    if reid_map is not None:  # a map made with another key fails here, before any file is written
        for kind, original, _ in reid_map.frame.iter_rows():
            merged.add(PseudonymKind(kind), original, checker.pseudonym(PseudonymKind(kind), original))
        for row in reid_map.frame.iter_rows():
            merged.add(PseudonymKind(row[0]), row[1], row[2])
    entries = walk_files(_paths(paths))
    dicom_folder = Path(dicom_out).absolute()
    dicom_folder.mkdir(parents=True, exist_ok=True)
    out = prepare_dataset(out_dir)
    chosen = dataclasses.asdict(options if options is not None else DeidOptions())
    chunks = _chunks(entries, chunk)
    if not chunks:
        from kit.dicom.deid import DEID_SCHEMA

        empty = pl.DataFrame(schema=DEID_SCHEMA)
        write_part(empty, str(out), 0, 1)
        return DeidDataset(out, DeidResult(empty), merged, 1)
    parts = [(c, str(dicom_folder), raw_key, chosen, str(out), i, len(chunks)) for i, c in enumerate(chunks)]
    results: list[Any] = run_partitions(client, deid_partition, parts, out_dir=out, timeout=timeout,
                                        progress=progress, desc="deid")
    for _, reid in results:  # a collision across chunks raises, as in one process
        for kind, original, pseudonym in reid.iter_rows():
            merged.add(PseudonymKind(kind), original, pseudonym)
    frame = pl.concat([f for f, _ in results], how="vertical")
    return DeidDataset(out, DeidResult(frame), merged, len(chunks))
