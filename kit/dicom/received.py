"""Is a received data set readable? The strict check a C-STORE passes before it is acknowledged (pure).

A PACS that answers Success to bytes it cannot read loses the instance: the
sender deletes its copy. :func:`check_received` walks the whole encoded data
set (PS3.5 7.1 data elements, 7.5 sequences and items, A.4 encapsulated pixel
data) and checks what a reader needs:

- every element header and value lies inside the data set (no value length
  overrun, no stray bytes, sequences and items terminated, nesting bounded);
- native pixel data holds Rows x Columns x SamplesPerPixel x BitsAllocated x
  NumberOfFrames bits; encapsulated pixel data holds at least one fragment;
- SOPClassUID, SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID are
  present and well formed, PatientID is present, and the SOP Class/Instance
  UIDs equal the command's.

The answer is a :class:`Verdict`: status 0x0000, or 0xA900 (data set does not
match SOP class: identifiers missing or different from the command) or 0xC000
(cannot understand: the bytes do not parse) with a reason for ErrorComment.

Written by hand: pydicom reads leniently (a value cut short is returned short,
bytes after the last whole element are dropped, the VR mode is guessed), which
is right for reading files and wrong for deciding whether to acknowledge. The
walk only reads lengths and a few top-level values, so it costs microseconds
per instance on the receive path.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Collection, Mapping

from pydicom.datadict import DicomDictionary
from pydicom.uid import UID

from kit.errors import DicomFileError

__all__ = [
    "is_uid",
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "MAX_DEPTH",
    "MAX_INFLATED",
    "Verdict",
    "check_received",
]

#: C-STORE failure statuses (PS3.4 B.2.3).
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: Deepest sequence nesting accepted (SR trees nest deeply, but not this deep).
MAX_DEPTH = 64
#: Largest data set a Deflated Explicit VR Little Endian transfer may inflate to.
MAX_INFLATED = 1 << 30

_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_STUDY, _SERIES, _PATIENT_ID = 0x0020000D, 0x0020000E, 0x00100020
_SAMPLES, _FRAMES, _ROWS, _COLUMNS, _BITS = 0x00280002, 0x00280008, 0x00280010, 0x00280011, 0x00280100
_PHOTOMETRIC = 0x00280004
_PIXEL_DATA, _FLOAT_PIXELS, _DOUBLE_PIXELS = 0x7FE00010, 0x7FE00008, 0x7FE00009
_REQUIRED_UIDS = {_SOP_CLASS: "SOPClassUID", _SOP_INSTANCE: "SOPInstanceUID",
                  _STUDY: "StudyInstanceUID", _SERIES: "SeriesInstanceUID"}
_OWN = frozenset({*_REQUIRED_UIDS, _PATIENT_ID, _SAMPLES, _FRAMES, _ROWS, _COLUMNS, _BITS, _PHOTOMETRIC})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check_received`.

    Attributes
    ----------
    status : int
        0x0000 (store it), 0xA900 or 0xC000.
    reason : str
        Why it was refused ('' when accepted), for the response's ErrorComment.
    values : mapping of int to (str or None, bytes)
        Top-level elements asked for with ``keep`` (and the identifiers checked):
        ``{tag: (VR or None if implicit, raw value bytes)}``.
    implicit_vr, little_endian : bool
        The encoding the values are in (after inflating a deflated data set).
    """

    status: int
    reason: str = ""
    values: Mapping[int, tuple[str | None, bytes]] = dataclasses.field(default_factory=dict)
    implicit_vr: bool = False
    little_endian: bool = True

    @property
    def ok(self) -> bool:
        """Whether the data set may be stored and acknowledged."""
        return self.status == 0x0000


class _Walk:
    """One strict pass over an encoded data set (state shared by the nested calls)."""

    def __init__(self, buf: bytes | memoryview, implicit: bool, little: bool, keep: Collection[int]) -> None:
        self.buf = buf
        self.implicit, self.little = implicit, little
        self.keep = keep
        self.values: dict[int, tuple[str | None, bytes]] = {}
        self.pixels: tuple[int, int, int] | None = None  # (tag, length or -1 if encapsulated, items)

    def fail(self, message: str) -> DicomFileError:
        return DicomFileError(message)

    def dataset(self, pos: int, end: int, *, implicit: bool, little: bool, depth: int,
                delimited: bool = False) -> int:
        """Walk the elements in [pos, end); ``delimited``: an undefined-length item that
        must end with its delimiter before ``end``. Returns the position after it."""
        if depth > MAX_DEPTH:
            raise self.fail(f"sequences nested deeper than {MAX_DEPTH}")
        buf, top = self.buf, depth == 0
        fmt = "<" if little else ">"
        head, long_len = struct.Struct(fmt + "HHI"), struct.Struct(fmt + "I")
        short_len = struct.Struct(fmt + "H")
        while pos < end:
            if end - pos < 8:
                raise self.fail(f"{end - pos} stray byte(s) at offset {pos}")
            group, elem, length = head.unpack_from(buf, pos)
            tag = group << 16 | elem
            vr: bytes | None = None
            if group == 0xFFFE:
                if delimited and tag == _ITEM_END:
                    return pos + 8
                raise self.fail(f"unexpected item tag ({group:04X},{elem:04X}) at offset {pos}")
            if implicit:
                pos += 8
            else:
                vr = bytes(buf[pos + 4:pos + 6])
                if vr in _LONG_VRS:
                    if end - pos < 12:
                        raise self.fail(f"element header cut short at offset {pos}")
                    length = long_len.unpack_from(buf, pos + 8)[0]
                    pos += 12
                elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                    length = short_len.unpack_from(buf, pos + 6)[0]
                    pos += 8
                else:
                    raise self.fail(f"({group:04X},{elem:04X}) has no valid VR at offset {pos}")
            if length == _UNDEFINED:
                if tag == _PIXEL_DATA and vr in (b"OB", b"OW") and top:
                    pos, count = self.fragments(pos, end, fmt)
                    self.pixels = (tag, -1, count)
                elif vr == b"SQ" or (implicit and vr is None):
                    pos = self.sequence(pos, end, implicit=implicit, little=little, depth=depth + 1)
                elif vr == b"UN":  # PS3.5 6.2.2: an undefined-length UN is implicit VR LE items
                    pos = self.sequence(pos, end, implicit=True, little=True, depth=depth + 1)
                else:
                    raise self.fail(f"({group:04X},{elem:04X}) {vr!r} cannot have an undefined length")
                continue
            stop = pos + length
            if stop > end:
                raise self.fail(f"value of ({group:04X},{elem:04X}) overruns the data set "
                                f"({length} bytes declared, {end - pos} left)")
            if vr == b"SQ" or (implicit and _is_sequence(tag)):
                self.sequence(pos, stop, implicit=implicit, little=little, depth=depth + 1, defined=True)
            elif top:
                if tag in (_PIXEL_DATA, _FLOAT_PIXELS, _DOUBLE_PIXELS):
                    self.pixels = (tag, length, 0)
                if tag in _OWN or tag in self.keep:
                    self.values[tag] = (vr.decode("ascii") if vr else None, bytes(buf[pos:stop]))
            pos = stop
        if delimited:
            raise self.fail("sequence item without its delimiter")
        return pos

    def sequence(self, pos: int, end: int, *, implicit: bool, little: bool, depth: int,
                 defined: bool = False) -> int:
        """Walk the items of a sequence filling [pos, end) (``defined``), or ending at its
        delimiter before ``end``. Returns the position after the sequence."""
        head = struct.Struct(("<" if little else ">") + "HHI")
        buf = self.buf
        while True:
            if defined and pos == end:
                return pos
            if end - pos < 8:
                raise self.fail("sequence cut short")
            group, elem, length = head.unpack_from(buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == _SEQ_END and not defined:
                if length:
                    raise self.fail("sequence delimiter with a length")
                return pos
            if tag != _ITEM:
                raise self.fail(f"({group:04X},{elem:04X}) where a sequence item was expected")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, implicit=implicit, little=little, depth=depth, delimited=True)
            elif pos + length > end:
                raise self.fail(f"sequence item overruns ({length} bytes declared, {end - pos} left)")
            else:
                self.dataset(pos, pos + length, implicit=implicit, little=little, depth=depth)
                pos += length

    def fragments(self, pos: int, end: int, fmt: str) -> tuple[int, int]:
        """Walk encapsulated pixel data items to the sequence delimiter; (end, item count)."""
        head = struct.Struct(fmt + "HHI")
        buf, count = self.buf, 0
        while True:
            if end - pos < 8:
                raise self.fail("encapsulated pixel data cut short")
            group, elem, length = head.unpack_from(buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == _SEQ_END:
                return pos, count
            if tag != _ITEM or length == _UNDEFINED or pos + length > end:
                raise self.fail("malformed encapsulated pixel data fragment")
            pos += length
            count += 1


def _is_sequence(tag: int) -> bool:
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


def _text(raw: tuple[str | None, bytes] | None) -> str:
    return "" if raw is None else raw[1].decode("ascii", "replace").strip(" \x00")


def _us(walk: _Walk, tag: int, name: str) -> int:
    raw = walk.values.get(tag)
    if raw is None or len(raw[1]) != 2:
        raise walk.fail(f"pixel data without a valid {name}")
    return int.from_bytes(raw[1], "little" if walk.little else "big")


def _check_pixels(walk: _Walk, ts: UID) -> None:
    if walk.pixels is None:
        return
    tag, length, items = walk.pixels
    if length < 0:
        if items < 2:
            raise walk.fail("encapsulated pixel data without a fragment")
        return
    if tag == _PIXEL_DATA and ts.is_encapsulated:
        raise walk.fail(f"{ts.name} needs encapsulated pixel data")
    rows, columns = _us(walk, _ROWS, "Rows"), _us(walk, _COLUMNS, "Columns")
    samples = _us(walk, _SAMPLES, "SamplesPerPixel") if _SAMPLES in walk.values else 1
    bits = {_PIXEL_DATA: 0, _FLOAT_PIXELS: 32, _DOUBLE_PIXELS: 64}[tag] or _us(walk, _BITS, "BitsAllocated")
    frames_text = _text(walk.values.get(_FRAMES)) or "1"
    try:
        frames = int(frames_text)
    except ValueError:
        raise walk.fail(f"NumberOfFrames {frames_text!r} is not a number") from None
    if samples == 3 and _text(walk.values.get(_PHOTOMETRIC)) in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        samples = 2  # two chroma samples shared by each pair of pixels (PS3.3 C.7.6.3.1.2)
    expected = (rows * columns * samples * bits * frames + 7) // 8
    if length < expected:
        raise walk.fail(f"pixel data has {length} bytes, {rows}x{columns}x{samples}x{bits} bits "
                        f"x {frames} frame(s) need {expected}")


def _inflate(data: bytes | memoryview, limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit:
        raise DicomFileError(f"deflated data set inflates beyond {limit} bytes")
    if not inflater.eof:
        raise DicomFileError("deflated data set is cut short")
    return out


def is_uid(value: str) -> bool:
    """Whether ``value`` is a UID as PS3.5 9.1 writes one: at most 64 characters, dot-separated
    components of digits (leading zeros allowed: some systems write them, and their instances are
    read). No path, no padding, nothing too long for a file name."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def check_received(encoded: bytes | memoryview, transfer_syntax: str, sop_class_uid: str,
                   sop_instance_uid: str, *, keep: Collection[int] = (),
                   max_inflated: int = MAX_INFLATED) -> Verdict:
    """Check that a received data set is whole, readable and the instance the command names.

    Parameters
    ----------
    encoded : bytes or memoryview
        The data set as received (no preamble or file meta), in ``transfer_syntax``.
    transfer_syntax : str
        The presentation context's transfer syntax UID.
    sop_class_uid, sop_instance_uid : str
        The command's Affected SOP Class and Instance UIDs.
    keep : collection of int
        Further top-level tags whose raw values to return in :attr:`Verdict.values`.
    max_inflated : int
        Bound on the inflated size of a deflated data set.

    Returns
    -------
    Verdict
        Status 0x0000, or 0xA900 / 0xC000 with the reason. Never raises for bad bytes.
    """
    try:
        ts = UID(transfer_syntax)
        implicit, little = ts.is_implicit_VR, ts.is_little_endian
        data: bytes | memoryview = _inflate(encoded, max_inflated) if ts.is_deflated else encoded
    except (ValueError, DicomFileError, zlib.error) as exc:
        return Verdict(CANNOT_UNDERSTAND, f"cannot decode the transfer syntax: {exc}")
    if len(data) == 0:
        return Verdict(CANNOT_UNDERSTAND, "empty data set")
    walk = _Walk(data, implicit, little, keep)
    try:
        walk.dataset(0, len(data), implicit=implicit, little=little, depth=0)
        _check_pixels(walk, ts)
    except DicomFileError as exc:
        return Verdict(CANNOT_UNDERSTAND, str(exc), walk.values, implicit, little)
    except (struct.error, IndexError, RecursionError) as exc:  # defensive: the checks above should catch it
        return Verdict(CANNOT_UNDERSTAND, f"malformed data set: {exc}", walk.values, implicit, little)
    for tag, name in _REQUIRED_UIDS.items():
        value = _text(walk.values.get(tag))
        if not value:
            return Verdict(DATASET_MISMATCH, f"{name} missing", walk.values, implicit, little)
        if not is_uid(value):
            return Verdict(DATASET_MISMATCH, f"{name} is not a UID: {value[:40]!r}", walk.values,
                           implicit, little)
    if _PATIENT_ID not in walk.values:
        return Verdict(DATASET_MISMATCH, "PatientID missing", walk.values, implicit, little)
    for tag, expected in ((_SOP_CLASS, sop_class_uid), (_SOP_INSTANCE, sop_instance_uid)):
        value = _text(walk.values.get(tag))
        if value != expected.strip(" \x00"):
            return Verdict(DATASET_MISMATCH, f"{_REQUIRED_UIDS[tag]} {value} differs from the "
                           f"command's {expected.strip() or '(none)'}", walk.values, implicit, little)
    return Verdict(0x0000, "", walk.values, implicit, little)
