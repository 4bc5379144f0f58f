"""Fast reader for the few header attributes that :mod:`kit.dicom.index` needs.

Hand-written because no library does this fast: ``pydicom.dcmread`` builds a
full :class:`~pydicom.dataset.Dataset` (every element object, the file meta, a
charset pass), which costs ~0.6 ms per small file; indexing a PACS export of
100,000 files needs something several times faster. This module walks the
tag stream of the common case itself:

* a DICOM Part 10 file (128-byte preamble + ``DICM``, explicit VR little
  endian file meta group),
* a data set in implicit VR little endian or explicit VR little endian (this
  includes every encapsulated transfer syntax: JPEG, JPEG 2000, RLE, ...),
* sequences of defined or undefined length (skipped by walking their items),
* text in the default repertoire, ISO_IR 100 or ISO_IR 192 (and any character
  set as long as the needed values are plain ASCII).

It decodes only the wanted tags, skips everything else by its length, and
stops at the pixel data (checking that the pixel data fits in the file, so a
truncated file is reported, and that no header element follows it). It never
stops early with a partial row: a value that runs past the end of the file is
reported as truncated, and anything pydicom would read differently (elements
out of order, a wanted tag with undefined length, pixel data or a character set
inside a sequence item, a malformed item) falls back. Anything else (big endian, deflate, a missing
``DICM`` prefix, ISO 2022 escapes, a wanted tag with an unexpected VR,
``UN`` sequences, ...) raises :class:`Fallback` and the caller reads the file
with pydicom instead (:func:`read_pydicom`). Both readers return the same raw
mapping, which :func:`to_row` turns into one typed index row, so the two paths
give identical rows (tested on pydicom's whole test corpus and by fuzzing).
Both require an instance attribute (SOP Instance/Class UID, Study Instance UID
or PatientID); pydicom reads with ``force=True`` so data sets without preamble
or File Meta are indexed.
"""

from __future__ import annotations

import datetime as dt
import os
import struct
import warnings
from typing import IO, Any

from kit.dicom.query import parse_da, parse_tm

__all__ = [
    "COLUMNS",
    "Fallback",
    "Skip",
    "WANTED",
    "read_fast",
    "read_file",
    "read_pydicom",
    "to_row",
]

#: wanted data set tags -> (keyword, VR)
WANTED: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00100040: ("PatientSex", "CS"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x00180050: ("SliceThickness", "DS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
}

#: the index row, in column order (name, kind); kinds map to polars dtypes in index.py
COLUMNS: tuple[tuple[str, str], ...] = (
    ("patient_id", "str"), ("patient_name", "str"), ("patient_birth_date", "date"),
    ("patient_sex", "str"), ("study_instance_uid", "str"), ("study_date", "date"),
    ("study_time", "time"), ("accession_number", "str"), ("study_description", "str"),
    ("series_instance_uid", "str"), ("series_number", "int"), ("series_description", "str"),
    ("modality", "str"), ("body_part_examined", "str"), ("sop_instance_uid", "str"),
    ("sop_class_uid", "str"), ("instance_number", "int"), ("rows", "int"), ("columns", "int"),
    ("number_of_frames", "int"), ("pixel_spacing", "floats"), ("slice_thickness", "float"),
    ("transfer_syntax_uid", "str"), ("path", "str"), ("size_bytes", "int"),
)

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
_TEXT_VRS = frozenset({"SH", "LO", "PN"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM_FALLBACK = _PIXEL_TAGS | {0x00080005}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_MAX_DEPTH = 32
_CHUNK = 16384
_unpack = struct.unpack_from


class Fallback(Exception):
    """The fast reader does not handle this file; read it with pydicom."""


class Skip(Exception):
    """The file is not an indexable DICOM instance; ``str(exc)`` is the reason."""


class _Reader:
    """A file read in chunks; ``ensure(pos, n)`` makes bytes [pos, pos+n) available."""

    __slots__ = ("f", "buf", "base", "size")

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f = f
        self.size = size
        self.base = 0
        self.buf = f.read(_CHUNK)

    def ensure(self, pos: int, n: int) -> tuple[bytes, int]:
        off = pos - self.base
        if off >= 0 and off + n <= len(self.buf):
            return self.buf, off
        if pos + n > self.size:
            raise Skip(f"truncated: element at byte {pos} needs {n} bytes, file has {self.size}")
        self.f.seek(pos)
        self.buf = self.f.read(max(n, _CHUNK))
        self.base = pos
        if len(self.buf) < n:
            raise Skip(f"truncated: short read at byte {pos}")
        return self.buf, 0


def read_file(path: str) -> tuple[dict[str, Any], str]:
    """Read the wanted header values of ``path``: fast path first, pydicom if needed.

    Returns
    -------
    (values, reader) : the raw mapping for :func:`to_row` (keyword -> raw value, plus
        ``"_size"``, the file size) and ``"fast"`` or ``"pydicom"``.

    Raises
    ------
    Skip
        Not DICOM, truncated, unreadable or a DICOMDIR.
    """
    try:
        return read_fast(path), "fast"
    except Fallback:
        return read_pydicom(path), "pydicom"


def read_fast(path: str) -> dict[str, Any]:
    """Read the wanted values with the hand-written walker (raises :class:`Fallback`)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            r = _Reader(f, size)
            return _parse(r)
    except OSError as exc:
        raise Skip(f"unreadable: {exc.strerror or exc}") from exc


def _parse(r: _Reader) -> dict[str, Any]:
    buf = r.buf
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise Fallback("no DICM prefix")
    out: dict[str, Any] = {}
    # file meta group: always explicit VR little endian
    pos = 132
    meta: dict[int, str] = {}
    while True:
        if pos + 8 > r.size:
            break
        b, o = r.ensure(pos, 8)
        group = _unpack("<H", b, o)[0]
        if group != 0x0002:
            break
        elem = _unpack("<H", b, o + 2)[0]
        vr = b[o + 4:o + 6]
        if vr in _LONG_VRS:
            b, o = r.ensure(pos, 12)
            length = _unpack("<I", b, o + 8)[0]
            hdr = 12
        elif vr in _SHORT_VRS:
            length = _unpack("<H", b, o + 6)[0]
            hdr = 8
        else:
            raise Fallback("file meta not explicit VR")
        if length == _UNDEFINED:
            raise Fallback("undefined length in file meta")
        if elem in (0x0002, 0x0010):
            b, o = r.ensure(pos + hdr, length)
            meta[elem] = b[o:o + length].decode("latin_1").rstrip("\x00 ")
        pos += hdr + length
    if pos > r.size or r.size == 132:  # no data set can follow: cut short (a message, as before a skip)
        raise Skip(f"truncated: the file ends at byte {r.size}, inside its File Meta Information")
    if pos + 8 > r.size > pos:
        raise Skip(f"truncated: the file ends at byte {r.size}, inside the element header at byte {pos}")
    ts = meta.get(0x0010)
    if not ts or ts == _EXPLICIT_BE or ts in _DEFLATED:
        raise Fallback(f"transfer syntax {ts!r}")
    if meta.get(0x0002) == _DICOMDIR_CLASS:
        raise Skip("DICOMDIR (a directory of files, not an instance)")
    out["TransferSyntaxUID"] = ts
    out["_size"] = r.size
    explicit = ts != _IMPLICIT_LE
    encoding = "latin_1"
    size = r.size
    buf, base = r.buf, r.base
    prev = 0x0002FFFF
    while pos < size:
        off = pos - base
        if off < 0 or off + 12 > len(buf):
            buf, off = r.ensure(pos, min(12, size - pos) if size - pos >= 8 else 8)
            base = pos - off
        if explicit:
            group, elem, vr, length = _unpack("<HH2sH", buf, off)
            if vr in _LONG_VRS:
                if off + 12 > len(buf):
                    buf, off = r.ensure(pos, 12)
                    base = pos - off
                length = _unpack("<I", buf, off + 8)[0]
                hdr = 12
            elif vr in _SHORT_VRS:
                hdr = 8
            else:
                raise Fallback(f"unknown VR {vr!r}")
        else:
            group, elem, length = _unpack("<HHI", buf, off)
            vr = b""
            hdr = 8
        tag = (group << 16) | elem
        if tag <= prev:  # out of order or repeated: pydicom's rules (the last one wins) apply
            raise Fallback("data elements out of order")
        prev = tag
        if tag in _PIXEL_TAGS:  # where pydicom's stop_before_pixels stops, and only there
            if length != _UNDEFINED:
                end = pos + hdr + length
                if end > size:
                    raise Skip(f"truncated: pixel data needs {length} bytes, file has {size - pos - hdr}")
                if end + 4 <= size:  # only padding or signatures may follow the pixel data
                    b, o = r.ensure(end, 4)
                    if _unpack("<H", b, o)[0] < 0x7FE0:
                        raise Skip(f"corrupt: data elements after the pixel data at byte {pos} "
                                   "(a damaged tag?)")
            break
        start = pos + hdr
        want = WANTED.get(tag)
        if length == _UNDEFINED:
            if (explicit and vr != b"SQ") or want is not None:
                raise Fallback(f"undefined length {vr!r}")
            pos = _skip_sequence(r, start, explicit, 1)
            buf, base = r.buf, r.base
            continue
        if want is not None:
            keyword, expected = want
            if explicit and vr.decode("ascii") != expected:
                raise Fallback(f"{keyword} has VR {vr!r}")
            b, o = r.ensure(start, length)
            buf, base = r.buf, r.base
            raw = b[o:o + length]
            if expected == "US":
                if length == 0:
                    out[keyword] = None
                elif length == 2:
                    out[keyword] = _unpack("<H", raw)[0]
                else:
                    raise Fallback(f"{keyword} multi-valued US")
            elif expected in _TEXT_VRS:
                out[keyword] = _decode_text(raw, encoding, expected)
            else:
                text = raw.decode("latin_1")
                out[keyword] = text.rstrip(" \x00")
                if tag == 0x00080005:
                    encoding = _charset(out[keyword])
        pos = start + length
        if pos > size:  # never stop early with a partial row: the value runs past the end
            raise Skip(f"truncated: element ({group:04X},{elem:04X}) at byte {pos - length - hdr} "
                       f"declares {length} bytes, file has {size - start}")
    else:  # the end of the file, no pixel data: a file cut between two elements looks complete
        if not _has_instance(out):
            raise Skip(f"no instance attributes before the file ends at byte {size} (cut short?)")
    _check_instance(out)
    return out


def _has_instance(values: dict[str, Any]) -> bool:
    """Whether the values hold any instance attribute (else the data set is no indexable instance)."""
    return any(values.get(k) for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "PatientID"))


def _check_instance(values: dict[str, Any]) -> None:
    """Both readers: a data set without any instance attribute is not an indexable instance."""
    if not _has_instance(values):
        raise Skip("not DICOM: no instance attributes")


def _charset(value: str) -> str:
    """Python codec for a SpecificCharacterSet; ``""`` means: only ASCII is decodable.

    A value not in :data:`_CHARSETS` is pydicom's to read (it mends some spellings, falls
    back to the default with a warning, and refuses others, e.g. one holding a NUL).
    """
    name = value.strip()
    if name not in _CHARSETS:
        raise Fallback(f"character set {name!r}")
    return _CHARSETS[name]


def _decode_text(raw: bytes, encoding: str, vr: str) -> str:
    if not encoding or encoding == "utf_8":
        if b"\x1b" in raw or (not encoding and not raw.isascii()):
            raise Fallback("character set")
        encoding = encoding or "ascii"
    try:
        if vr == "PN":
            return "\\".join(_pn(v) for v in raw.rstrip(b"\x00 ").decode(encoding).split("\\"))
        return "\\".join(v.rstrip("\x00 ") for v in raw.decode(encoding).split("\\"))
    except UnicodeDecodeError as exc:
        raise Fallback("undecodable text") from exc


def _pn(value: str) -> str:
    """One PN value as pydicom gives it: trailing empty component groups dropped (``A^B=`` -> ``A^B``)."""
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _skip_sequence(r: _Reader, pos: int, explicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; return its end."""
    if depth > _MAX_DEPTH:
        raise Fallback("sequences nested too deep")
    while True:
        b, o = r.ensure(pos, 8)
        group, elem, length = _unpack("<HHI", b, o)
        if group != 0xFFFE:
            raise Fallback("malformed sequence")
        pos += 8
        if elem == 0xE0DD:
            return pos
        if elem != 0xE000:
            raise Fallback("malformed sequence item")
        # pydicom parses every item of an undefined-length sequence (defined-length ones too),
        # so walk them all: an anomaly it would trip on makes the fast reader fall back
        pos = _skip_item(r, pos, explicit, depth, None if length == _UNDEFINED else pos + length)


def _skip_item(r: _Reader, pos: int, explicit: bool, depth: int, end: int | None) -> int:
    """Walk an item's data set to its delimiter (``end`` None) or to ``end``; return its end."""
    while True:
        if end is not None:
            if pos == end:
                return pos
            if pos > end:
                raise Fallback("element overruns its sequence item")
        b, o = r.ensure(pos, 8)
        group, elem = _unpack("<HH", b, o)
        if group == 0xFFFE:
            if elem == 0xE00D and end is None:
                return pos + 8
            raise Fallback("misplaced delimiter in a sequence item")
        if (group << 16) | elem in _ITEM_FALLBACK:  # pydicom stops or re-decodes there: let it
            raise Fallback("pixel data or character set inside a sequence item")
        if explicit:
            vr = b[o + 4:o + 6]
            if vr in _LONG_VRS:
                b, o = r.ensure(pos, 12)
                length = _unpack("<I", b, o + 8)[0]
                hdr = 12
            elif vr in _SHORT_VRS:
                length = _unpack("<H", b, o + 6)[0]
                hdr = 8
            else:
                raise Fallback(f"unknown VR {vr!r}")
            if length == _UNDEFINED and vr != b"SQ":
                raise Fallback(f"undefined length {vr!r} in sequence")
        else:
            length = _unpack("<I", b, o + 4)[0]
            hdr = 8
        pos += hdr
        if length == _UNDEFINED:
            pos = _skip_sequence(r, pos, explicit, depth + 1)
        else:
            pos += length


def read_pydicom(path: str) -> dict[str, Any]:
    """Read the wanted values with pydicom (the fallback for anything unusual)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.multival import MultiValue

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # force: a data set without preamble / File Meta is read too (the instance check below
            # rejects what is not DICOM)
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(WANTED), force=True)
            meta = ds.file_meta
            if meta.get("MediaStorageSOPClassUID") == _DICOMDIR_CLASS:
                raise Skip("DICOMDIR (a directory of files, not an instance)")
            out: dict[str, Any] = {"TransferSyntaxUID": str(meta.get("TransferSyntaxUID") or "") or None,
                                   "_size": os.path.getsize(path)}
            for tag, (keyword, vr) in WANTED.items():
                elem = ds.get(tag)
                if elem is None:
                    continue
                value = elem.value
                if value is None or value == "":
                    out[keyword] = None if vr == "US" else ""
                elif vr == "US":
                    out[keyword] = int(value[0] if isinstance(value, MultiValue) else value)
                elif isinstance(value, MultiValue):
                    out[keyword] = "\\".join(_text(v) for v in value)
                else:
                    out[keyword] = _text(value)
    except Skip:
        raise
    except (InvalidDicomError, EOFError) as exc:
        raise Skip(f"not DICOM: {exc}".splitlines()[0]) from exc
    except OSError as exc:
        raise Skip(f"unreadable: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many types on malformed input
        raise Skip(f"unreadable DICOM: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    _check_instance(out)
    return out


def _text(value: Any) -> str:
    original = getattr(value, "original_string", None)
    return str(original) if isinstance(original, str) else str(value)


def _str(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _int(v: Any) -> int | None:
    """An IS or US value as an int; None if absent, not an integer, or more than the index's Int32
    columns hold (an IS of 12 digits is valid DICOM: one such file stopped the whole index)."""
    if v is None:
        return None
    if isinstance(v, int):
        n = v
    else:
        s = str(v).strip()
        if not s or "\\" in s:
            return None
        try:
            n = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return None
            if not f.is_integer():
                return None
            n = int(f)
    return n if -(1 << 31) <= n < (1 << 31) else None


def _float(v: Any) -> float | None:
    if v is None:
        return None
    s = str(v).strip()
    if not s or "\\" in s:
        return None
    try:
        return float(s)
    except ValueError:
        return None


def _floats(v: Any) -> list[float] | None:
    if v is None:
        return None
    parts = [p.strip() for p in str(v).split("\\")]
    if not any(parts):
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def _date(v: Any) -> dt.date | None:
    return parse_da(_str(v))


def _time(v: Any) -> dt.time | None:
    return parse_tm(_str(v))


def to_row(values: dict[str, Any], path: str) -> tuple[Any, ...]:
    """One typed index row (in :data:`COLUMNS` order) from a reader's raw mapping."""
    g = values.get
    return (
        _str(g("PatientID")), _str(g("PatientName")), _date(g("PatientBirthDate")),
        _str(g("PatientSex")), _str(g("StudyInstanceUID")), _date(g("StudyDate")),
        _time(g("StudyTime")), _str(g("AccessionNumber")), _str(g("StudyDescription")),
        _str(g("SeriesInstanceUID")), _int(g("SeriesNumber")), _str(g("SeriesDescription")),
        _str(g("Modality")), _str(g("BodyPartExamined")), _str(g("SOPInstanceUID")),
        _str(g("SOPClassUID")), _int(g("InstanceNumber")), _int(g("Rows")), _int(g("Columns")),
        _int(g("NumberOfFrames")), _floats(g("PixelSpacing")), _float(g("SliceThickness")),
        _str(g("TransferSyntaxUID")), path, g("_size"),
    )
