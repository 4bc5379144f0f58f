"""Index DICOM files: one row per instance, from the headers only, in parallel.

:func:`index_dicom` walks files and folders, reads the header of every file and
returns a :class:`DicomIndex`: ``.frame`` (one row per instance) and
``.skipped`` (files that are not indexable DICOM instances, with the reason;
never fatal).

Headers are read by a small hand-written walker (:mod:`kit.dicom._header`) for
the common case (Part 10, implicit or explicit VR little endian); pydicom
(``dcmread(stop_before_pixels=True)``) reads anything unusual (big endian,
deflate, no preamble or File Meta, ISO 2022 character sets, ...). Both give
identical rows. Files are spread over worker processes in chunks, a few in
flight at a time; ``index_dicom(..., out="index.parquet")`` writes the rows to
a parquet file chunk by chunk instead of holding them (peak memory stays flat
as the number of files grows; ``bench/memory.py`` measures it).

Columns of ``.frame`` (stable; the first ones are the cross-system join keys):

======================  ==============  ==========================================
column                  dtype           DICOM attribute
======================  ==============  ==========================================
patient_id              String          PatientID (0010,0020), the MRN
patient_name            String          PatientName (0010,0010), ``Family^Given``
patient_birth_date      Date            PatientBirthDate (0010,0030)
patient_sex             String          PatientSex (0010,0040)
study_instance_uid      String          StudyInstanceUID (0020,000D)
study_date              Date            StudyDate (0008,0020)
study_time              Time            StudyTime (0008,0030)
accession_number        String          AccessionNumber (0008,0050)
study_description       String          StudyDescription (0008,1030)
series_instance_uid     String          SeriesInstanceUID (0020,000E)
series_number           Int32           SeriesNumber (0020,0011)
series_description      String          SeriesDescription (0008,103E)
modality                String          Modality (0008,0060)
body_part_examined      String          BodyPartExamined (0018,0015)
sop_instance_uid        String          SOPInstanceUID (0008,0018)
sop_class_uid           String          SOPClassUID (0008,0016)
instance_number         Int32           InstanceNumber (0020,0013)
rows                    Int32           Rows (0028,0010)
columns                 Int32           Columns (0028,0011)
number_of_frames        Int32           NumberOfFrames (0028,0008); null if absent
pixel_spacing           List[Float64]   PixelSpacing (0028,0030), [row, column] mm
slice_thickness         Float64         SliceThickness (0018,0050), mm
transfer_syntax_uid     String          TransferSyntaxUID (0002,0010); null without File Meta
path                    String          absolute path of the file
size_bytes              Int64           file size
======================  ==============  ==========================================

Empty or malformed values are null. ``.skipped`` has columns ``path``
(String) and ``reason`` (String).
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, overload

import polars as pl

from kit._parquet import ParquetSink
from kit._progress import counter
from kit.dicom._header import COLUMNS, Fallback, Skip, read_fast, read_file, read_pydicom, to_row
from kit.errors import InvalidInputError

__all__ = ["DicomIndex", "DicomIndexFile", "INDEX_SCHEMA", "SKIPPED_SCHEMA", "index_chunk", "index_dicom",
           "index_frame", "list_files", "walk_files"]

_DTYPES: dict[str, Any] = {
    "str": pl.String, "date": pl.Date, "time": pl.Time, "int": pl.Int32,
    "float": pl.Float64, "floats": pl.List(pl.Float64),
}
#: dtypes of :attr:`DicomIndex.frame`
INDEX_SCHEMA: dict[str, Any] = {name: _DTYPES[kind] for name, kind in COLUMNS}
INDEX_SCHEMA["size_bytes"] = pl.Int64
#: dtypes of :attr:`DicomIndex.skipped`
SKIPPED_SCHEMA: dict[str, Any] = {"path": pl.String, "reason": pl.String}

_CHUNK = 128  # files per worker task
_SERIAL_BELOW = 2 * _CHUNK  # fewer files than this: no worker processes


@dataclasses.dataclass(frozen=True)
class DicomIndex:
    """The result of :func:`index_dicom`.

    Attributes
    ----------
    frame : polars.DataFrame
        One row per DICOM instance; columns documented in :mod:`kit.dicom.index`.
    skipped : polars.DataFrame
        Files that were not indexed: ``path``, ``reason``.
    """

    frame: pl.DataFrame
    skipped: pl.DataFrame

    def __post_init__(self) -> None:
        if dict(self.frame.schema) != INDEX_SCHEMA:
            raise InvalidInputError("index frame does not have the index schema")
        if dict(self.skipped.schema) != SKIPPED_SCHEMA:
            raise InvalidInputError("skipped frame must have columns path, reason")


def list_files(paths: Iterable[str | os.PathLike[str]], recursive: bool = True) -> list[str]:
    """Absolute paths of the files named or found (sorted per folder) under ``paths``.

    Hidden entries (``.name``) inside folders are ignored, and so are the entries that
    :func:`walk_files` passes over (with their reasons).

    Raises
    ------
    kit.errors.InvalidInputError
        A path does not exist or is not a regular file or a folder, or a folder cannot be read.
    """
    return [path for path, reason in walk_files(paths, recursive) if reason is None]


def walk_files(paths: Iterable[str | os.PathLike[str]],
               recursive: bool = True) -> list[tuple[str, str | None]]:
    """Every entry named or found under ``paths``: ``(absolute path, None)`` for a file to read, or
    ``(path, reason)`` for one passed over, in walk order (sorted per folder, files before subfolders).

    Inside folders, hidden entries (``.name``) are ignored; symbolic links to files are read, but
    symbolic links to folders are not followed (a loop would never end). Passed over, with the
    reason: a broken symbolic link; a FIFO, socket or device (a read could block for ever); a
    further name of a file already listed (a symbolic or hard link to it, or a path named twice).

    Raises
    ------
    kit.errors.InvalidInputError
        A path named does not exist or is not a regular file or a folder, or a folder cannot be read.
    """
    entries: list[_Entry] = []
    for p in paths:
        path = os.path.abspath(os.fspath(p))
        if os.path.isdir(path):
            _walk(path, recursive, entries)
        elif os.path.isfile(path):
            entries.append((path, None, None))
        elif os.path.exists(path):  # a FIFO would block the read for ever, a device read for ever
            raise InvalidInputError("not a regular file or a folder", source=path)
        else:
            raise InvalidInputError("no such file or directory", source=path)
    return _first_names(entries)


#: an entry of the walk: path, why it is passed over (None: read it), its (device, inode) if known
_Entry = tuple[str, str | None, tuple[int, int] | None]


def _by_path(row: tuple[str, str]) -> str:
    """The sort key of skipped rows (stable: a path named twice keeps its order)."""
    return row[0]


def _walk(folder: str, recursive: bool, entries: list[_Entry]) -> None:
    dirs: list[str] = []
    try:
        device = os.stat(folder).st_dev  # of its files too (a mount point is a folder)
        with os.scandir(folder) as it:
            found = sorted(it, key=lambda e: e.name)
    except OSError as exc:  # a folder the user may not read: a typed error, not an internal one
        raise InvalidInputError(f"cannot read the folder: {exc.strerror or exc}", source=folder) from exc
    for entry in found:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            dirs.append(entry.path)
        elif entry.is_file(follow_symlinks=False):
            entries.append((entry.path, None, (device, entry.inode())))  # no system call
        elif not entry.is_symlink():
            entries.append((entry.path, "not a regular file (a FIFO, socket or device)", None))
        elif entry.is_file():
            entries.append((entry.path, None, None))
        elif entry.is_dir():
            entries.append((entry.path, "a symbolic link to a folder (not followed)", None))
        elif not os.path.exists(entry.path):
            entries.append((entry.path, "a broken symbolic link", None))
        else:
            entries.append((entry.path, "a symbolic link to a FIFO, socket or device", None))
    if recursive:
        for d in dirs:
            _walk(d, recursive, entries)


def _first_names(entries: list[_Entry]) -> list[tuple[str, str | None]]:
    """The entries, each further name of a file listed (same device and inode) passed over: the first
    name found in a folder that is not a symbolic link is kept, else the first name."""
    first: dict[tuple[int, int], int] = {}  # (device, inode) -> the index of the name kept
    for at, (_, reason, key) in enumerate(entries):  # a name that is no link comes first
        if reason is None and key is not None:
            first.setdefault(key, at)
    out: list[tuple[str, str | None]] = []
    for path, reason, key in entries:
        if reason is None:
            if key is None:  # a file named, or a symbolic link: where it leads
                try:
                    st = os.stat(path)
                except OSError:  # gone since: the reader says so
                    out.append((path, None))
                    continue
                key = (st.st_dev, st.st_ino)
            earlier = first.setdefault(key, len(out))
            if earlier != len(out):
                reason = f"the same file as {entries[earlier][0]}"
        out.append((path, reason))
    return out


_Result = tuple[list[tuple[Any, ...]], list[tuple[str, str]]]


def index_chunk(paths: list[str], reader: str = "auto") -> _Result:
    """Index a chunk of files: ``(rows, skipped)``; the unit of work of a process pool or a Dask task.

    Parameters
    ----------
    paths : list of str
        The files, in the order the rows are wanted.
    reader : {"auto", "fast", "pydicom"}
        As :func:`index_dicom`'s ``reader``.

    Returns
    -------
    tuple
        Rows (tuples in :data:`INDEX_SCHEMA` order) and ``(path, reason)`` of each file skipped.
    """
    read: Callable[[str], Any] = {"auto": read_file, "fast": _fast_only,
                                  "pydicom": _pydicom_only}[reader]
    rows: list[tuple[Any, ...]] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        try:
            values, _ = read(path)
        except Skip as exc:
            skipped.append((path, str(exc)))
            continue
        except OSError as exc:
            skipped.append((path, f"unreadable: {exc.strerror or exc}"))
            continue
        rows.append(to_row(values, path))
    return rows, skipped


def _fast_only(path: str) -> tuple[dict[str, Any], str]:
    try:
        return read_fast(path), "fast"
    except Fallback as exc:  # internal: never leaves the package
        raise Skip(f"the fast reader does not read this file ({exc}); use reader='auto'") from exc


def _pydicom_only(path: str) -> tuple[dict[str, Any], str]:
    return read_pydicom(path), "pydicom"


def _pool(workers: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


@dataclasses.dataclass(frozen=True)
class DicomIndexFile:
    """The result of :func:`index_dicom` with ``out``: the frame is in a parquet file.

    Attributes
    ----------
    path : pathlib.Path
        The parquet file: the rows :attr:`DicomIndex.frame` would hold, same
        columns, same order.
    rows : int
        Rows written.
    skipped : polars.DataFrame
        Files that were not indexed: ``path``, ``reason``.
    """

    path: Path
    rows: int
    skipped: pl.DataFrame

    def scan(self) -> pl.LazyFrame:
        """The index as a lazy frame over :attr:`path` (read only what a query needs)."""
        return pl.scan_parquet(self.path)


@overload
def index_dicom(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *, recursive: bool = ...,
                workers: int | None = ..., progress: bool = ..., reader: str = ..., out: None = ...,
                chunk_size: int | None = ...) -> DicomIndex: ...


@overload
def index_dicom(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *, recursive: bool = ...,
                workers: int | None = ..., progress: bool = ..., reader: str = ...,
                out: str | os.PathLike[str], chunk_size: int | None = ...) -> DicomIndexFile: ...


def index_dicom(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    workers: int | None = None,
    progress: bool = False,
    reader: str = "auto",
    out: str | os.PathLike[str] | None = None,
    chunk_size: int | None = None,
) -> DicomIndex | DicomIndexFile:
    """Index DICOM files and folders: one row per instance, headers only.

    Memory is bounded by the number of files (their paths) and, without
    ``out``, the frame itself: chunks of files go to the worker processes a few
    at a time (at most two per worker in flight) and each chunk's rows become a
    polars frame at once. With ``out`` the rows go to a parquet file chunk by
    chunk (:class:`kit._parquet.ParquetSink`), for folders whose index would
    not fit in memory.

    Parameters
    ----------
    paths : path or iterable of paths
        Files and/or folders. Hidden entries (``.name``) inside folders are ignored.
    recursive : bool
        Descend into sub-folders.
    workers : int or None
        Worker processes; ``None`` = one per CPU, ``1`` = in this process.
        Small inputs are always read in this process.
    progress : bool
        Show a progress bar (on stderr, when it is a terminal).
    reader : {"auto", "fast", "pydicom"}
        ``"auto"`` uses the fast reader with pydicom as the fallback; the
        others force one reader (for testing and benchmarks; ``"fast"``
        reports files it cannot read as skipped).
    out : path, optional
        Write the frame to this parquet file (its folder must exist; written
        atomically: a failed run leaves no partial file) and return a
        :class:`DicomIndexFile` instead of a :class:`DicomIndex`.
    chunk_size : int, optional
        Files per chunk (default 128): the unit of work of a worker process.

    Returns
    -------
    DicomIndex or DicomIndexFile
        ``.frame`` (or the file at ``.path``) sorted by path, ``.skipped`` with
        one reason per file, also sorted by path.

    Raises
    ------
    kit.errors.InvalidInputError
        A given path does not exist.
    kit.errors.StoreError
        ``out`` cannot be written.
    """
    if reader not in ("auto", "fast", "pydicom"):
        raise ValueError(f"reader must be auto, fast or pydicom, not {reader!r}")
    if chunk_size is not None and chunk_size < 1:
        raise InvalidInputError(f"chunk_size must be at least 1, not {chunk_size}")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    # sorted up front: chunks come back in order, so rows (and skipped files) are in path order as
    # they are produced, and the parquet file needs no sort at the end
    entries = walk_files(paths, recursive)
    files = sorted(path for path, reason in entries if reason is None)
    size = chunk_size or _CHUNK
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    sink = ParquetSink(Path(out), INDEX_SCHEMA) if out is not None else None
    frames: list[pl.DataFrame] = []
    pending: list[pl.DataFrame] = []
    n_pending = 0
    skipped: list[tuple[str, str]] = [(path, reason) for path, reason in entries if reason is not None]
    bar = _bar(len(files), progress)
    try:
        for rows, skips, n in _chunk_results(files, size, n_workers, reader):
            skipped += skips
            bar(n)
            if rows:
                pending.append(pl.DataFrame(rows, schema=INDEX_SCHEMA, orient="row"))
                n_pending += len(rows)
            if n_pending >= _PART_ROWS or sink is None:
                frames, pending, n_pending = _flush(sink, frames, pending), [], 0
        frames = _flush(sink, frames, pending)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        bar(-1)
    skipped_frame = pl.DataFrame(sorted(skipped, key=_by_path), schema=SKIPPED_SCHEMA, orient="row")
    if sink is not None:
        return DicomIndexFile(path=sink.close(), rows=sink.rows, skipped=skipped_frame)
    frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=INDEX_SCHEMA)
    return DicomIndex(frame=frame.sort("path", maintain_order=True), skipped=skipped_frame)


_PART_ROWS = 16384  # rows gathered before a part of the parquet file is written


def _flush(sink: ParquetSink | None, frames: list[pl.DataFrame],
           pending: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Write the pending frames to the sink, or keep them (in memory, without a sink)."""
    if sink is None:
        frames.extend(pending)
        return frames
    if pending:
        sink.write(pl.concat(pending, how="vertical"))
    return frames


def _chunk_results(files: list[str], size: int, n_workers: int,
                   reader: str) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[str, str]], int]]:
    """(rows, skipped, files read) per chunk of ``size`` files, in file order.

    With worker processes, at most two chunks per worker are in flight: the
    results waiting to be consumed stay bounded however many files there are.
    """
    chunks = (files[i:i + size] for i in range(0, len(files), size))
    if n_workers == 1 or len(files) < _SERIAL_BELOW:
        for chunk in chunks:
            yield (*index_chunk(chunk, reader), len(chunk))
        return
    n_chunks = -(-len(files) // size)
    with _pool(min(n_workers, n_chunks)) as pool:
        window: collections.deque[tuple[int, Future[_Result]]] = collections.deque()
        for chunk in chunks:
            window.append((len(chunk), pool.submit(index_chunk, chunk, reader)))
            if len(window) >= 2 * n_workers:
                n, fut = window.popleft()
                yield (*fut.result(), n)
        while window:
            n, fut = window.popleft()
            yield (*fut.result(), n)


def _bar(total: int, show: bool) -> Callable[[int], None]:
    """A tqdm bar advanced by ``update(n)``; ``update(-1)`` closes it."""
    return counter(total, show, desc="index", unit="file")


def index_frame(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> pl.DataFrame:
    """Like :func:`index_dicom` but return only the frame (skipped files are dropped)."""
    return index_dicom(paths, recursive=recursive, workers=workers, progress=progress).frame
