"""HL7 v2 archives of any size as tables, in bounded memory (pure: local files only).

:func:`read_file_chunks` reads a file the way :func:`kit.hl7.frames.read_file`
does, but a chunk of messages at a time: the file is read in blocks of about
``chunk_bytes``, cut only where a line (after a CR, LF, VT or FS) starts with
``MSH`` -- so every chunk holds whole messages -- and each chunk goes through
the vectorised tables of :mod:`kit.hl7.frames_fast`. Memory is bounded by the
chunk size (and the largest single message), not by the file. What spans chunks
is carried over, so the chunks' tables concatenated are exactly the tables of
``read_file`` (the tests hold them equal with tiny chunks):

- the text encoding: the file is UTF-8 if all of it is (checked first, in
  blocks), else Latin-1, as :func:`kit.hl7.message.decode` reads a whole file;
- ``skipped.message_number``: the position in the file, counted across chunks;
- ``messages.reused_control_id``: a sender and control id seen in an earlier
  chunk with other content. The first message of each (MSH-3, MSH-4, MSH-10)
  key is remembered as a SHA-256 of its text (~100 bytes per distinct key:
  100 MB for a million messages), not the text itself.

:func:`write_tables` streams the chunks into one parquet file per table
(:class:`kit._parquet.ParquetSink`: each file appears complete or not at all).
Written by hand: no library reads ER7 archives incrementally into frames.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl

from kit._parquet import ParquetSink
from kit.errors import InvalidInputError, KitError, StoreError
from kit.hl7 import frames as F
from kit.hl7 import frames_fast as FF

__all__ = ["DEFAULT_CHUNK_BYTES", "DEFAULT_MAX_MESSAGE_BYTES", "read_file_chunks", "write_tables"]

#: bytes read per chunk (a chunk's tables take roughly ten times as much memory while built)
DEFAULT_CHUNK_BYTES = 16 * 2 ** 20
#: longest message (the bytes from one line starting with MSH to the next, or before the first)
#: read by default: a hostile file of one multi-GB "message" is refused, not read whole
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2 ** 20
_BOM = b"\xef\xbb\xbf"
# a message starts on a line beginning with MSH; these bytes end a line (kit.hl7.message's rules)
_STARTS = (b"\rMSH", b"\nMSH", b"\x0bMSH", b"\x1cMSH")
_KEY = ("sending_application", "sending_facility", "control_id")
_BLOCK = 4 * 2 ** 20  # bytes per read
_START_RE = re.compile(rb"[\r\n\x0b\x1c]MSH")  # any of _STARTS


def _open(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The file's bytes in blocks of ``_BLOCK``."""
    try:
        with open(path, "rb") as fh:
            while block := fh.read(_BLOCK):
                yield block
    except OSError as exc:
        raise InvalidInputError(f"cannot read HL7 file: {exc.strerror or exc}", source=str(path)) from exc


def _is_utf8(path: str | os.PathLike[str]) -> bool:
    """Whether the whole file (a leading byte-order mark aside) is UTF-8, read in blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for block in _open(path):
            decoder.decode(block)  # a BOM is valid UTF-8 too: no need to drop it first
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _byte_chunks(path: str | os.PathLike[str], chunk_bytes: int,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[bytes]:
    """The file in pieces, each ending just before a line that starts with ``MSH`` (the last piece
    ends with the file): the longest such piece of at most ``chunk_bytes``, else the shortest.
    At least one piece (empty for an empty file). Linear in the file's size, also for a
    message of many blocks (the buffer grows in place; each byte is searched once).

    A message longer than ``max_message_bytes`` raises :class:`~kit.errors.InvalidInputError`
    once that many bytes of it are read (memory stays bounded by the larger of the two limits).
    """
    width = len(_STARTS[0])
    buf = bytearray()
    base = 0  # the file offset of buf[0]
    searched = 0  # no cut point starts in buf[pos:searched]
    for block in _open(path):
        buf += block
        pos = 0
        while len(buf) - pos >= chunk_bytes:
            cut = max(buf.rfind(s, pos, pos + chunk_bytes + width - 1) for s in _STARTS)
            if cut < 0:  # a message longer than a chunk: it ends where the next one starts
                found = [i for i in (buf.find(s, max(pos, searched)) for s in _STARTS) if i >= 0]
                if not found:  # read on, unless the message is already too long
                    if len(buf) - pos > max_message_bytes + width:
                        _too_long(path, base + pos, max_message_bytes)
                    searched = max(pos, len(buf) - width + 1)
                    break
                cut = min(found)
            _check_sizes(path, buf, pos, cut + 1, base, max_message_bytes)
            yield bytes(buf[pos:cut + 1])
            pos = cut + 1
        del buf[:pos]
        base += pos
        searched = max(0, searched - pos)
    _check_sizes(path, buf, 0, len(buf), base, max_message_bytes)
    yield bytes(buf)


def _check_sizes(path: str | os.PathLike[str], buf: bytearray, start: int, end: int, base: int,
                 limit: int) -> None:
    """Raise if a message of ``buf[start:end]`` (a piece: whole messages) is longer than ``limit``
    bytes; a scan only for a piece longer than the limit."""
    if end - start <= limit:
        return
    prev = start
    for match in _START_RE.finditer(buf, start, end):
        if match.start() + 1 - prev > limit:
            break
        prev = match.start() + 1
    else:
        if end - prev <= limit:
            return
    _too_long(path, base + prev, limit)


def _too_long(path: str | os.PathLike[str], offset: int, limit: int) -> None:
    raise InvalidInputError(f"the message at byte offset {offset:,} is longer than {limit:,} bytes "
                            "(max_message_bytes, kit hl7 parse --max-message-bytes); refused rather than "
                            "read whole", source=str(path))


class _Reused:
    """``reused_control_id`` across chunks: the first content (SHA-256) of every key seen so far.

    The keys seen are looked up through a 64-bit hash of the key first (a scan of
    one integer column), then compared whole: a hash collision costs a compare,
    never a wrong answer.
    """

    _ON = ["_k0", "_k1", "_k2"]

    def __init__(self) -> None:
        self.seen: pl.DataFrame | None = None  # _h, _k0, _k1, _k2, _d: one row per key

    def __call__(self, messages: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
        if not messages.height:
            return messages
        on = self._ON
        texts = (lines.filter(pl.col("msg").is_in(messages["msg"].implode()))
                 .group_by("msg", maintain_order=True).agg(pl.col("line").str.join("\r")))
        digests = [hashlib.sha256(t.encode("utf-8", "surrogatepass")).digest() for t in texts["line"]]
        m = messages.select("msg", *(pl.col(c).fill_null("").alias(k) for c, k in zip(_KEY, on, strict=True)))
        digest = texts.select("msg", pl.Series("_d", digests, pl.Binary))
        m = m.with_columns(pl.struct(on).hash().alias("_h")).join(digest, on="msg", how="left",
                                                                   maintain_order="left")
        m = m.with_columns(pl.col("_d").first().over(on).alias("_first"))
        prior = pl.DataFrame(schema={**dict.fromkeys(on, pl.String), "_prior": pl.Binary})
        if self.seen is not None:
            found = self.seen.filter(pl.col("_h").is_in(m["_h"].unique().implode()))
            prior = found.select(*on, pl.col("_d").alias("_prior"))
        m = m.join(prior, on=on, how="left", maintain_order="left")
        m = m.with_columns((pl.col("_d") != pl.coalesce("_prior", "_first")).alias("_reused"))
        new = m.filter(pl.col("_prior").is_null()).unique(on, keep="first", maintain_order=True)
        new = new.select("_h", *on, pl.col("_first").alias("_d"))
        self.seen = new if self.seen is None else pl.concat([self.seen, new], rechunk=False)
        return messages.join(m.select("msg", "_reused"), on="msg", how="left", maintain_order="left") \
            .with_columns(pl.col("_reused").fill_null(False).alias("reused_control_id")).drop("_reused")


def read_file_chunks(path: str | os.PathLike[str], *, tables: Sequence[str] | None = None,
                     chunk_bytes: int | None = None,
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Iterator[dict[str, pl.DataFrame]]:
    """The tables of :func:`kit.hl7.frames.read_file`, a chunk of messages at a time.

    Parameters
    ----------
    path : str or Path
        As for ``read_file``: messages separated by newlines, MLLP framed or in
        FHS/BHS batches; UTF-8 (a byte-order mark is fine), else Latin-1.
    tables : sequence of str, optional
        Which tables to build (default all of :data:`kit.hl7.frames.TABLES`);
        ``skipped`` is always included.
    chunk_bytes : int, optional
        About how many bytes of the file each chunk holds (default
        :data:`DEFAULT_CHUNK_BYTES`; a chunk ends where a message starts, so a
        message larger than this makes a larger chunk).
    max_message_bytes : int
        Longest message read (the bytes from a line starting with ``MSH`` to the
        next such line; also what comes before the first); a longer one raises
        once that many bytes of it are read (default :data:`DEFAULT_MAX_MESSAGE_BYTES`).

    Yields
    ------
    dict of str to polars.DataFrame
        One chunk's tables (at least one chunk, maybe empty). Concatenated
        table by table they equal ``read_file(path, tables=tables)``;
        ``skipped.message_number`` counts from the start of the file.

    Raises
    ------
    kit.errors.InvalidInputError
        The file cannot be read, an unknown table name, a bad ``chunk_bytes`` or
        ``max_message_bytes``, or a message longer than ``max_message_bytes`` (the
        message names the file and the message's byte offset).
    """
    wanted = F._check_tables(tables)
    chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    if chunk_bytes < 1:
        raise InvalidInputError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
    if max_message_bytes < 1:
        raise InvalidInputError(f"max_message_bytes must be at least 1, not {max_message_bytes}")
    utf8 = _is_utf8(path)
    reused = _Reused()
    offset = 0
    for number, piece in enumerate(_byte_chunks(path, chunk_bytes, max_message_bytes)):
        data: bytes | str = piece
        if not utf8:  # Latin-1 for the whole file (a leading BOM dropped, as decode() does)
            data = (piece[3:] if number == 0 and piece[:3] == _BOM else piece).decode("latin-1")
        try:
            out, n_messages = FF.read_chunk(data, wanted, reused)
        except KitError:
            raise
        except Exception as exc:  # noqa: BLE001 - only KitError leaves the package
            raise InvalidInputError(f"cannot read HL7 file: {type(exc).__name__}: {exc}",
                                    source=str(path)) from exc
        if offset:
            out["skipped"] = out["skipped"].with_columns(pl.col("message_number") + offset)
        offset += n_messages
        yield out


def write_tables(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 out_dir: str | os.PathLike[str], *, tables: Sequence[str] | None = None,
                 chunk_bytes: int | None = None, allow_empty: bool = False,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> pl.DataFrame:
    """Read HL7 files chunk by chunk into ``out_dir/TABLE.parquet``, one file per table.

    The files' tables are concatenated in the order given, each file read as
    by :func:`read_file_chunks` (message numbers count from each file's start,
    as ``read_file`` gives them). Memory stays bounded however large the files are.

    Parameters
    ----------
    paths : path or sequence of paths
        HL7 files.
    out_dir : path
        Folder for the parquet files (created if missing; its parent must exist).
    tables : sequence of str, optional
        Which tables to write (default all; ``skipped`` always).
    chunk_bytes : int, optional
        As for :func:`read_file_chunks`.
    allow_empty : bool
        Write the tables even if no message could be read (the ``messages``
        table is empty); by default that is an error and no file is written.
    max_message_bytes : int
        As for :func:`read_file_chunks` (a longer message: an error, no file written).

    Returns
    -------
    polars.DataFrame
        One row per table: ``table``, ``rows``, ``file``.

    Raises
    ------
    kit.errors.InvalidInputError
        A file cannot be read, holds no readable message (unless ``allow_empty``)
        or a message longer than ``max_message_bytes``, or an unknown table name.
    kit.errors.StoreError
        ``out_dir`` or a table file cannot be written.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    wanted = F._check_tables(tables)
    out = Path(out_dir)
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {out}: {exc.strerror or exc}") from exc
    sinks = {t: ParquetSink(out / f"{t}.parquet", F.SCHEMAS[t]) for t in wanted}
    try:
        for path in files:
            for chunk in read_file_chunks(path, tables=wanted, chunk_bytes=chunk_bytes,
                                          max_message_bytes=max_message_bytes):
                for t, sink in sinks.items():
                    sink.write(chunk[t])
        if not allow_empty and "messages" in sinks and sinks["messages"].rows == 0:
            raise InvalidInputError(f"no HL7 message (MSH segment) in {', '.join(map(str, files))}")
        written = [(t, sink.rows, str(sink.close())) for t, sink in sinks.items()]
    finally:
        for sink in sinks.values():
            sink.abort()
    return pl.DataFrame(written, schema={"table": pl.String, "rows": pl.Int64, "file": pl.String},
                        orient="row")
