"""The fast path of :mod:`kit.fhir.frames` for JSON bytes and files (pure: no sockets).

Hand-written for speed, and kept equal to the slow path (orjson dicts through
:mod:`kit.fhir.frames_extract`) by tests (``tests/unit/fhir_fast``: the sample
cohort, Synthea-shaped bundles, edge cases and a hypothesis fuzz comparing both).

What makes it fast: msgspec decodes each resource into a typed struct holding
only the fields the frames read (:mod:`kit.fhir.frames_fast_types`), skipping
the rest without building it, so there is no full parse of every resource and
far less to free; one tagged-union decode routes each resource by its
``resourceType``. A ``.json`` file is memory-mapped and split into entries as raw
JSON; NDJSON is read in chunks of whole lines (:data:`CHUNK`); rows are kept flat
and turned into series every :data:`BATCH` rows, merged into contiguous chunks of
``BATCH * MERGE`` rows (65,536; a longer frame comes in such chunks), where dates
are parsed and list columns grouped (:mod:`kit.fhir.frames_fast_build`: no polars
query per batch, so no wait for polars' threads on a busy machine). Both are
small on purpose: the work is bound by memory latency, not by the interpreter,
and a batch of 1,024 rows is turned into columns while its strings are still in
the CPU cache (8,192-row batches ran 2-3x slower on a busy machine, whose other
processes share the cache; 256-row batches cost more per row; 1 MiB chunks beat
4 MiB likewise). Memory stays bounded by the chunk and the batch plus the frames
built so far.

How it stays equal to the slow path, in one rule: it either builds exactly the
frames the slow path would, or gives up (:func:`collect` returns None) and the
slow path runs from the start, with its own results and errors. Per resource,
a value the typed decode refuses (a number where a string belongs, an integer
beyond 64 bits...) sends that resource through orjson and the slow extractor;
resource types without a dedicated frame always go that way. Anything else
unusual (malformed JSON or structure, a resource the slow extractor rejects,
a value a column does not take, duplicated ``resourceType`` keys) gives up.

One known difference: a number beyond the double range (``1e400``; valid JSON,
refused by orjson) in a field the frames do not read (with ``to_frame``, also
anywhere in resources of other types) is skipped here while the slow path refuses
the whole input; in a field they read, both refuse it. Input
bytes are checked to be UTF-8 as orjson checks them, and nesting deeper than
orjson's limit fails msgspec first under Python's default recursion limit.
"""

from __future__ import annotations

import codecs
import gzip
import mmap
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson
import polars as pl
from msgspec import Raw, Struct

from kit.errors import FhirValidationError
from kit.fhir.frames import _entry_key
from kit.fhir.frames_extract import EXTRACTORS, generic_extract
from kit.fhir.frames_fast_build import BATCH, MERGE, Group
from kit.fhir.frames_fast_types import DECODERS, ROW, TYPE_OF, UNION, Head

__all__ = ["BATCH", "CHUNK", "MERGE", "blocks", "collect", "collect_block"]

#: bytes of NDJSON read at a time (whole lines)
CHUNK: Final = 1 << 20

_NDJSON: Final = (".ndjson", ".jsonl", ".ndjson.gz", ".jsonl.gz")
#: the first key of an object, when it is resourceType: its value (no escapes)
_FIRST_KEY: Final = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"resourceType"[ \t\n\r]*:[ \t\n\r]*"([^"\\]+)"')
_MALFORMED: Final = (FhirValidationError, msgspec.MsgspecError, orjson.JSONDecodeError, AttributeError,
                     TypeError, KeyError, IndexError, ValueError, OverflowError, RecursionError,
                     UnicodeDecodeError, pl.exceptions.PolarsError)

# fullUrl -> (resourceType, id or key, keyed by its fullUrl), as in kit.fhir.frames
Urns = dict[str, tuple[str, str, bool]]


class _GiveUp(Exception):
    """Something the fast path does not reproduce exactly: the slow path takes over."""


class _Entry(Struct, gc=False):
    fullUrl: str | None = None
    resource: Raw = Raw()


class _Bundle(Struct, gc=False):
    resourceType: str
    id: str | None = None
    entry: list[_Entry] | None = None


_RAW = msgspec.json.Decoder(Raw)
_RAWS = msgspec.json.Decoder(list[Raw])
_BUNDLE = msgspec.json.Decoder(_Bundle)
_HEAD = msgspec.json.Decoder(Head)


class _Walker:
    """Routes resources (Bundles flattened) to their groups, as :func:`kit.fhir.frames._walk` does."""

    def __init__(self, only: str | None, strict: bool) -> None:
        self.only = only
        self.strict = strict
        self.urns: Urns = {}
        self.groups: dict[str, Group] = {}
        self.hot: dict[type, tuple[Group, Any]] = {}  # struct class -> its group and row extractor
        if only is not None:
            self.groups[only] = Group(only, strict)

    def item(self, raw: Any, full: str | None = None) -> None:
        """A resource or a Bundle (top level, or an entry's with its ``fullUrl``), routed by its keys."""
        rt = _guess(raw)
        only = self.only
        if rt is None or (only is not None and rt != only and rt != "Bundle"):
            head = _HEAD.decode(raw)  # the keys as orjson reads them (a later duplicate wins)
            rt = head.resourceType
            if rt != "Bundle" and only is not None and rt != only:
                if full is not None:
                    self._urn(full, rt, head.id)
                return
        if rt == "Bundle":
            self.bundle(raw, full)
        else:
            self.resource(raw, rt, full)

    def bundle(self, raw: Any, full: str | None) -> None:
        b = _BUNDLE.decode(raw)
        if b.resourceType != "Bundle":
            raise _GiveUp
        if full is not None:
            self._urn(full, "Bundle", b.id)
        union = UNION.decode if self.only is None else None
        hot = self.hot
        for entry in b.entry or ():
            res = entry.resource
            if not res:
                continue  # no resource (e.g. a DELETE in a transaction)
            if union is not None:  # the common case, inlined: a resource with a dedicated frame
                try:
                    r = union(res)
                except msgspec.ValidationError:
                    pass
                else:  # :meth:`typed`, inlined
                    group, extract = hot.get(r.__class__) or self._hot(r.__class__)
                    row = extract(r)
                    full = entry.fullUrl
                    if full is not None and (r.id is None or full[:4] == "urn:"):  # else _urn notes nothing
                        key = self._urn(full, group.rtype, r.id)
                        if key is not None:
                            row = (key, *row[1:])
                    if len(row) != group.width:
                        raise _GiveUp
                    flat = group.flat
                    flat += row
                    if len(flat) >= group.limit:
                        group.flush()
                    continue
            if memoryview(res)[:1] != b"n":  # null: no resource either
                self.item(res, entry.fullUrl)

    def any(self, raw: Any) -> None:
        """:meth:`item`, trying first the one decoder of every type with a dedicated frame."""
        if self.only is None:
            try:
                r = UNION.decode(raw)
            except msgspec.ValidationError:
                pass  # another type, a Bundle, or a value of an unexpected type: route it
            else:
                self.typed(r, None)
                return
        self.item(raw)

    def _hot(self, cls: type) -> tuple[Group, Any]:
        """The group and row extractor of a struct class (noted in ``hot``)."""
        rt = TYPE_OF[cls]
        group = self.groups.get(rt)
        if group is None:
            group = self.groups[rt] = Group(rt, self.strict)
        hit = self.hot[cls] = (group, ROW[rt])
        return hit

    def typed(self, r: Any, full: str | None) -> None:
        """Extract one decoded resource into its group."""
        group, extract = self.hot.get(r.__class__) or self._hot(r.__class__)
        row = extract(r)
        if full is not None and (r.id is None or full[:4] == "urn:"):  # else _urn notes nothing
            key = self._urn(full, group.rtype, r.id)
            if key is not None:
                row = (key, *row[1:])
        if len(row) != group.width:
            raise _GiveUp
        flat = group.flat
        flat += row
        if len(flat) >= group.limit:
            group.flush()

    def _urn(self, full: str, rt: str, rid: Any) -> Any:
        """Note a Bundle ``urn:`` fullUrl; the key of an entry without id (else None)."""
        key = _entry_key(full, rt) if rid is None and full else None
        if full.startswith("urn:"):
            if rid.__class__ is str and rid:
                self.urns[full] = (rt, rid, False)
            elif key is not None:
                self.urns[full] = (rt, key, True)
        return key

    def resource(self, raw: Any, rt: str, full: str | None) -> None:
        """Extract one resource; with ``full`` (its entry's fullUrl), key it and note its urn."""
        group = self.groups.get(rt)
        if group is None:
            group = self.groups[rt] = Group(rt, self.strict)
        decode = DECODERS.get(rt)
        if decode is not None:
            try:
                r = decode.decode(raw)  # checks resourceType against rt
            except msgspec.ValidationError:
                pass  # a value of an unexpected type: the slow way
            else:
                self.typed(r, full)
                return
        d = orjson.loads(memoryview(raw))
        if d.get("resourceType") != rt:
            raise _GiveUp
        row = EXTRACTORS.get(rt, generic_extract)(d)
        group.clean = False
        if full is not None:
            key = self._urn(full, rt, d.get("id"))
            if key is not None:
                row = (key, *row[1:])
        if len(row) != group.width:
            raise _GiveUp
        group.flat += row
        if len(group.flat) >= group.limit:
            group.flush()

    def frames(self) -> dict[str, pl.DataFrame]:
        return {rt: g.frame() for rt, g in self.groups.items()}


def _guess(raw: Any) -> str | None:
    """The resourceType when it is the first key (the common layout), read from the first bytes.

    A hint only: the decode that follows checks it (a Bundle's, or the typed struct's tag).
    """
    m = _FIRST_KEY.match(memoryview(raw)[:128])
    return m.group(1).decode() if m is not None else None


def _utf8(data: bytes | bytearray | mmap.mmap) -> None:
    """orjson refuses invalid UTF-8 anywhere; msgspec only where it reads: check it all.

    64 KiB at a time (a whole-file ``str`` would cost a copy of the file): a piece of
    ASCII, with no character left open by the piece before it, is valid as it is;
    any other piece goes through an incremental UTF-8 decoder (the one state kept).
    """
    if not isinstance(data, mmap.mmap) and data.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for i in range(0, len(view), 1 << 16):
        piece = bytes(view[i:i + (1 << 16)])
        if not piece.isascii() or decoder.getstate()[0]:
            decoder.decode(piece)
    decoder.decode(b"", final=True)


def _top(data: bytes | bytearray | mmap.mmap, walker: _Walker) -> None:
    """One JSON document: a resource, a Bundle or an array of them."""
    i = 0
    while data[i:i + 1] in (b" ", b"\t", b"\n", b"\r"):
        i += 1
    if data[i:i + 1] == b"[":
        for item in _RAWS.decode(data):
            walker.any(item)
    else:
        walker.item(data if i == 0 else _RAW.decode(data))


def blocks(path: Path, chunk: int | None = None, max_line: int | None = None) -> Iterator[bytes]:
    """An NDJSON file (optionally gzip) in blocks of whole lines, read ``chunk`` bytes at a time.

    A block ends with a newline, except the file's last; a line longer than
    ``chunk`` (default :data:`CHUNK`) comes whole, in one block, unless it is
    longer than ``max_line`` bytes (newline excluded): then
    :class:`~kit.errors.FhirValidationError` is raised as soon as that many bytes
    of it are read (so a hostile multi-GB line is never held whole), before the
    block holding it is yielded: the bad line is the one right after the blocks
    yielded so far. No limit when ``max_line`` is None.
    """
    if chunk is None:
        chunk = CHUNK
    if max_line is not None:
        chunk = min(chunk, max(max_line, 1))  # a line inside one read is then never too long
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        rest: list[bytes] = []
        pending = 0  # bytes of the line being read, before this read
        while True:
            data = fh.read(chunk)
            if not data:
                break
            cut = data.rfind(b"\n")
            if max_line is not None:
                head = len(data) if cut < 0 else data.find(b"\n")
                if pending + head > max_line:
                    raise FhirValidationError(f"an NDJSON line is longer than {max_line:,} bytes",
                                              source=str(path))
                pending = pending + len(data) if cut < 0 else len(data) - cut - 1
            if cut < 0:
                rest.append(data)  # joined once the line ends (no quadratic copying)
                continue
            rest.append(data[:cut + 1])
            yield b"".join(rest)
            rest = [data[cut + 1:]]
        tail = b"".join(rest)
        if tail:
            yield tail


def _block(block: bytes, walker: _Walker) -> None:
    _utf8(block)
    for line in block.split(b"\n"):
        if line.strip():
            walker.any(line)


def collect_block(block: bytes, only: str | None,
                  strict: bool) -> tuple[dict[str, pl.DataFrame], Urns] | None:
    """:func:`collect` for one block of whole NDJSON lines (see :func:`blocks`), or None for the slow path."""
    walker = _Walker(only, strict)
    try:
        _block(block, walker)
        return walker.frames(), walker.urns
    except (_GiveUp, *_MALFORMED):
        return None


def collect(source: Any, only: str | None, strict: bool) -> tuple[dict[str, pl.DataFrame], Urns] | None:
    """The frames (urn references not yet resolved) and urns of ``source``, or None to use the slow path.

    Parameters
    ----------
    source : bytes, bytearray, memoryview, str or path
        JSON bytes, or a path as :func:`kit.fhir.frames.read_resources` takes it;
        anything else returns None.
    only : str or None
        Extract only this resource type (its frame is there even when empty).
    strict : bool
        As in :func:`kit.fhir.frames.to_frames`.
    """
    walker = _Walker(only, strict)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = source.tobytes() if isinstance(source, memoryview) else source
            _utf8(data)
            _top(data, walker)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = path.name.lower()
            if name.endswith(_NDJSON):
                for block in blocks(path):
                    _block(block, walker)
            elif name.endswith(".gz"):
                data = gzip.decompress(path.read_bytes())
                _utf8(data)
                _top(data, walker)
            else:
                with path.open("rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size == 0 or not hasattr(mmap, "MAP_SHARED"):
                        return None
                    # mapped, not copied (as the slow path does); unmapped once the raw
                    # entries pointing into it are gone, when this call returns
                    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                    mapped = mmap.mmap(fh.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
                _utf8(mapped)
                _top(mapped, walker)
        else:
            return None
        return walker.frames(), walker.urns
    except (_GiveUp, OSError, EOFError, gzip.BadGzipFile, *_MALFORMED):
        return None
