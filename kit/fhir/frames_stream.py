"""NDJSON exports of any size to typed frames on disk, one parquet file per resource type.

:func:`ndjson_to_parquet` gives the frames :func:`kit.fhir.frames.to_frames` gives
for the same NDJSON file (the same columns, types, rows in the same order; an
error of the same class where it fails), but never holds more than one block of the input and one batch of
rows per resource type in memory: the file is read :data:`CHUNK` bytes of whole
lines at a time; each block goes the fast path (:func:`kit.fhir.frames_fast.collect_block`)
or, when that declines, the slow path (orjson dicts through
:mod:`kit.fhir.frames_extract`); the block's rows are spilled every
``batch_rows`` rows per type to Arrow IPC files in a scratch folder under
``out_dir``, and each type's spills are finally streamed by polars into one
parquet file (row group by row group), with Bundle ``urn:`` references
resolved on the way as the in-memory path resolves them. So memory is bounded
by the block and the batch, not by the export.

Why block by block equals the whole file: the fast path either gives exactly the
slow path's frames or declines, so any mix of fast and slow blocks gives the
slow path's frames; the rows of a frame do not depend on other rows, except
``urn:`` references, which are resolved once all blocks are read. Two differences:
errors are found block by block, so in a file with several bad values the error
may name another one than the in-memory path (which checks a column over all rows
before the next column); and a ``resourceType`` that is not a plain name
(``[A-Z][A-Za-z0-9]*``; it names a file) raises instead of getting a generic frame.

Written by hand: the blocking and spilling (polars has no incremental parquet
writer for frames built in Python; its streaming ``sink_parquet`` writes the result).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl

from kit.errors import FhirValidationError, InvalidInputError, KitError
from kit.fhir import frames as _frames
from kit.fhir import frames_fast

__all__ = ["BATCH_ROWS", "CHUNK", "MAX_LINE", "files_to_parquet", "ndjson_to_parquet"]

#: bytes of NDJSON read (and held as Python objects) at a time
CHUNK: Final = 1 << 22
#: rows of one resource type held before they are spilled to disk
BATCH_ROWS: Final = 1 << 16
#: longest NDJSON line read (bytes, newline excluded); a longer one is refused, never held whole
MAX_LINE: Final = 1 << 26

_NDJSON: Final = (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")
#: what a resourceType must look like to name a file (FHIR's names are letters only)
_TYPE_NAME: Final = re.compile(r"[A-Z][A-Za-z0-9]{0,63}", re.ASCII)


class _Spill:
    """The partial frames of one resource type, spilled to IPC files every ``limit`` rows."""

    __slots__ = ("rtype", "folder", "limit", "parts", "rows", "files")

    def __init__(self, rtype: str, folder: Path, limit: int) -> None:
        self.rtype = rtype
        self.folder = folder
        self.limit = limit
        self.parts: list[pl.DataFrame] = []
        self.rows = 0
        self.files: list[Path] = []

    def add(self, frame: pl.DataFrame) -> None:
        self.parts.append(frame)
        self.rows += frame.height
        if self.rows >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            if self.files:
                return
            part = pl.DataFrame(schema=_frames.schema(self.rtype))  # no rows: the full schema still
        else:
            part = pl.concat(self.parts, rechunk=True) if len(self.parts) != 1 else self.parts[0]
        self.parts, self.rows = [], 0
        path = self.folder / f"{len(self.files):06d}.{self.rtype}.arrow"
        part.write_ipc(path, compression="uncompressed")
        self.files.append(path)


def _slow_items(block: bytes, first_line: int, label: str,
                urns: dict[str, tuple[str, str, bool]]) -> Iterator[tuple[Mapping[str, Any], Any]]:
    """``(resource, key)`` of one block, parsed line by line with orjson as the slow path reads NDJSON."""
    pieces = block.split(b"\n")
    last = len(pieces) - 1
    for n, line in enumerate(pieces, first_line):
        if not line.strip():
            continue
        if n - first_line < last:
            line += b"\n"  # as a file iterator yields it (orjson's error positions count it)
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise FhirValidationError(f"not JSON: {exc}", source=f"{label}:{n}") from exc
        yield from _frames._walk(item, urns, label, True)


def _block_frames(block: bytes, first_line: int, label: str, only: str | None, strict: bool,
                  urns: dict[str, tuple[str, str, bool]]) -> dict[str, pl.DataFrame]:
    """The frames of one block (``urn:`` references unresolved); its urns are added to ``urns``."""
    fast = frames_fast.collect_block(block, only, strict)
    if fast is not None:
        frames, found = fast
        urns.update(found)
        return frames
    groups = _frames._gather(_slow_items(block, first_line, label, urns), {}, only)
    out = {}
    for rt in list(groups):
        out[rt] = _frames._frame(rt, groups.pop(rt).rows, (), None, strict)
    return out


def ndjson_to_parquet(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                      resource_type: str | None = None, strict: bool = True, chunk: int = CHUNK,
                      batch_rows: int = BATCH_ROWS, max_line: int = MAX_LINE) -> dict[str, Path]:
    """Turn an NDJSON file of any size into one typed parquet file per resource type, in bounded memory.

    Parameters
    ----------
    source : str or path
        An ``.ndjson`` / ``.jsonl`` file (optionally ``.gz``), e.g. one file of a
        Bulk Data ``$export``; lines may be resources or Bundles, as
        :func:`kit.fhir.frames.to_frames` reads them.
    out_dir : str or path
        Folder for the results (created if missing): ``<ResourceType>.parquet``
        per type, each written to a temporary name and renamed when complete.
        A scratch folder ``.spill-*`` inside it is removed before returning.
    resource_type : str, optional
        Only this type (its file is written even when no resource matches), as
        :func:`kit.fhir.frames.to_frame`; by default every type found.
    strict : bool
        As in :func:`kit.fhir.frames.to_frames`.
    chunk : int
        Bytes of input read (and held as Python objects) at a time.
    batch_rows : int
        Rows of one type held in memory before they are spilled to disk.
    max_line : int
        Longest line accepted, in bytes (default :data:`MAX_LINE`, 64 MiB): a longer
        one (say a hostile multi-GB line) raises once that many bytes of it are read.

    Returns
    -------
    dict of str to pathlib.Path
        The parquet file per resource type, in order of first appearance.
        ``pl.read_parquet(path)`` equals ``to_frames(source)[resource_type]``.

    Raises
    ------
    FhirValidationError
        Malformed input or (strict) a value that does not parse, where the in-memory
        path raises it (see the module docstring for which bad value it names); a
        line longer than ``max_line`` (its ``source`` is ``<file>:<line number>``).
    InvalidInputError
        ``source`` is not an NDJSON file, cannot be read, or ``out_dir`` cannot be written;
        ``chunk``, ``batch_rows`` or ``max_line`` is not positive; ``resource_type`` is not a FHIR type.

    Examples
    --------
    >>> paths = ndjson_to_parquet("Observation.ndjson", "frames/")  # doctest: +SKIP
    >>> pl.scan_parquet(paths["Observation"]).filter(pl.col("code") == "8867-4")  # doctest: +SKIP
    """
    path = Path(source)
    if not path.name.lower().endswith(_NDJSON):
        raise InvalidInputError("not an NDJSON file (.ndjson, .jsonl, optionally .gz)", source=str(path))
    if chunk < 1 or batch_rows < 1 or max_line < 1:
        raise InvalidInputError("chunk, batch_rows and max_line must be positive "
                                f"(got {chunk}, {batch_rows}, {max_line})")
    if resource_type is not None:
        _frames._check_type(resource_type)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".spill-", dir=out))
    except OSError as exc:
        raise InvalidInputError(f"cannot write: {exc}", source=str(out)) from exc
    try:
        with _frames._gc_paused():
            spills, urns = _spill_all(path, scratch, resource_type, strict, chunk, batch_rows, max_line)
        return _write(spills, urns, out)
    except OSError as exc:
        raise InvalidInputError(f"cannot read or write: {exc}", source=str(path)) from exc
    except (KitError, MemoryError):
        raise
    except Exception as exc:  # polars errors while writing or resolving: typed
        raise FhirValidationError(f"cannot build frames: {type(exc).__name__}: {exc}",
                                  source=str(path)) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _spill_all(path: Path, scratch: Path, only: str | None, strict: bool, chunk: int, batch_rows: int,
               max_line: int) -> tuple[dict[str, _Spill], dict[str, tuple[str, str, bool]]]:
    urns: dict[str, tuple[str, str, bool]] = {}
    spills: dict[str, _Spill] = {}
    if only is not None:
        spills[only] = _Spill(only, scratch, batch_rows)
    line = 1
    label = str(path)
    try:
        reader = frames_fast.blocks(path, chunk, max_line)
        while True:
            try:
                block = next(reader, b"")
            except FhirValidationError as exc:  # a line too long: the one after the blocks read so far
                raise FhirValidationError(f"line longer than {max_line:,} bytes (max_line)",
                                          source=f"{label}:{line}") from exc
            if not block:
                break
            for rt, frame in _block_frames(block, line, label, only, strict, urns).items():
                spill = spills.get(rt)
                if spill is None:
                    if not _TYPE_NAME.fullmatch(rt):  # it names files: no paths, no odd names
                        raise FhirValidationError(f"resourceType {rt[:80]!r} is not a resource type name",
                                                  source=f"{label}:{line}")
                    spill = spills[rt] = _Spill(rt, scratch, batch_rows)
                if frame.height:
                    spill.add(frame)
            line += block.count(b"\n")
    except (EOFError, zlib.error) as exc:  # gzip: truncated or corrupt
        raise InvalidInputError(f"cannot read: {exc}", source=f"{label}:{line}") from exc
    for spill in spills.values():
        spill.flush()
    return spills, urns


def _write(spills: dict[str, _Spill], urns: dict[str, tuple[str, str, bool]], out: Path) -> dict[str, Path]:
    """Stream each type's spills into ``<out>/<type>.parquet`` (references resolved).

    Every file is written under a temporary name first and all are renamed once all
    are complete, so a failure leaves no partial result.
    """
    resolver = _frames._Resolver(urns) if urns else None
    parts: dict[str, Path] = {}
    try:
        for rt, spill in spills.items():
            lf = pl.scan_ipc(spill.files)
            if resolver is not None:
                exprs = resolver.exprs(_frames._columns_for(rt, ()))
                if exprs:
                    lf = lf.with_columns(exprs)
            parts[rt] = out / f".{rt}.parquet.part"
            lf.sink_parquet(parts[rt])
            for f in spill.files:
                f.unlink()
        written = {}
        for rt, part in parts.items():
            written[rt] = out / f"{rt}.parquet"
            os.replace(part, written[rt])
        return written
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)


def files_to_parquet(sources: list[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                     resource_type: str | None = None, strict: bool = True) -> dict[str, Path]:
    """Several NDJSON files (e.g. a Bulk Data export's) to one parquet file per resource type.

    Each file goes through :func:`ndjson_to_parquet` into a scratch folder; each type's
    files are then streamed by polars, in input order, into ``out_dir/<Type>.parquet``
    (renamed into place once complete). Memory stays bounded by one file's block and
    batch, whatever the number and size of the files. The result equals
    ``pl.concat([to_frame(f, type) for f in sources], how="vertical_relaxed")`` per type.

    Parameters
    ----------
    sources : list of str or path
        ``.ndjson`` / ``.jsonl`` files (optionally ``.gz``), streamed; any other file
        (a JSON Bundle) is read whole by :func:`kit.fhir.frames.to_frames`.
    out_dir : str or path
        Folder for ``<ResourceType>.parquet`` (created if missing).
    resource_type : str, optional
        Only this type; by default every type found.
    strict : bool
        As in :func:`kit.fhir.frames.to_frames`.

    Returns
    -------
    dict of str to pathlib.Path
        The parquet file per resource type, sorted by type.

    Raises
    ------
    FhirValidationError, InvalidInputError
        As :func:`ndjson_to_parquet` raises them, for the first failing file; the
        parquet files of an earlier run are then left as they were.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".files-", dir=out))
    except OSError as exc:
        raise InvalidInputError(f"cannot write: {exc}", source=str(out)) from exc
    try:
        parts: dict[str, list[Path]] = {}
        for i, source in enumerate(sources):
            for rtype, path in _one_file(source, scratch / f"{i:06d}", resource_type, strict).items():
                parts.setdefault(rtype, []).append(path)
        written: dict[str, Path] = {}
        for rtype in sorted(parts):
            tmp = scratch / f"{rtype}.parquet"
            pl.concat([pl.scan_parquet(p) for p in parts[rtype]], how="vertical_relaxed").sink_parquet(tmp)
            written[rtype] = tmp
        for rtype, tmp in written.items():
            os.replace(tmp, out / f"{rtype}.parquet")
            written[rtype] = out / f"{rtype}.parquet"
        return written
    except OSError as exc:
        raise InvalidInputError(f"cannot read or write: {exc}", source=str(out)) from exc
    except pl.exceptions.PolarsError as exc:
        raise FhirValidationError(f"cannot combine the frames: {type(exc).__name__}: {exc}",
                                  source=str(out)) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _one_file(source: str | os.PathLike[str], folder: Path, resource_type: str | None,
              strict: bool) -> dict[str, Path]:
    """One file's parquet per type: NDJSON streamed, anything else (a Bundle) read whole."""
    if str(source).lower().endswith(_NDJSON):
        return ndjson_to_parquet(source, folder, resource_type=resource_type, strict=strict)
    frames = _frames.to_frames(source, strict=strict)
    if resource_type is not None:
        empty = pl.DataFrame(schema=_frames.schema(resource_type))
        frames = {resource_type: frames.get(resource_type, empty)}
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for rtype, frame in frames.items():
        if not _TYPE_NAME.fullmatch(rtype):
            raise FhirValidationError(f"resourceType {rtype[:80]!r} is not a resource type name",
                                      source=str(source))
        frame.write_parquet(folder / f"{rtype}.parquet")
        written[rtype] = folder / f"{rtype}.parquet"
    return written
