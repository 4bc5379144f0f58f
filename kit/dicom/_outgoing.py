"""Instances going out by C-STORE: checked before sending, sent as raw bytes where possible.

Used by :mod:`kit.dicom.dimse` (C-STORE) and :mod:`kit.dicom.web` (STOW-RS).
Written by hand: pydicom reads a truncated file silently and pynetdicom's
raw-file sending is a global switch, so the element walk that proves a file
is complete and the per-request C-STORE without a reactor pause live here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset

from kit.errors import DicomFileError

__all__ = ["Outgoing", "paused", "read_for_store", "send_c_store"]


def read_for_store(path: Path) -> Dataset:
    """Read a Part 10 file, so a truncated or non-DICOM file fails before anything is sent.

    pydicom reads a truncated value silently (shorter than its length); the
    check here compares every top-level value with its declared length and
    the last element's end with the file size.
    """
    try:
        size = path.stat().st_size
        ds = dcmread(path)
    except FileNotFoundError as exc:
        raise DicomFileError("no such file", source=str(path)) from exc
    except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
        raise DicomFileError(f"not a readable DICOM file: {exc}", source=str(path)) from exc
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise DicomFileError("no file meta information (not a DICOM Part 10 file)", source=str(path))
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        return ds
    if len(ds) == 0:
        raise DicomFileError("no data set after the file meta (truncated?)", source=str(path))
    end = 0
    last_undefined = False
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length = getattr(raw, "length", None)
        tell = getattr(raw, "value_tell", None)
        if length is None or tell is None:
            continue
        if length == 0xFFFFFFFF:
            last_undefined = True
            end = size
            continue
        value = raw.value
        if isinstance(value, bytes) and len(value) < length:
            raise DicomFileError(f"truncated: element {tag} is {len(value)} of {length} bytes",
                                 source=str(path))
        last_undefined = False
        end = max(end, tell + length)
    if end and end != size and not last_undefined:
        raise DicomFileError(f"truncated or trailing bytes: data ends at {end}, file is {size} bytes",
                             source=str(path))
    if last_undefined:
        with path.open("rb") as fh:
            fh.seek(max(size - 8, 0))
            if fh.read(8) != b"\xfe\xff\xdd\xe0\x00\x00\x00\x00":
                raise DicomFileError("truncated: the last sequence has no delimiter", source=str(path))
    return ds


_RAW_SYNTAXES = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"}


def _skip_dataset(buf: bytes, pos: int, end: int, explicit: bool, nested: bool) -> int:
    """Walk the elements of an encoded dataset; return where it ends.

    Raises ValueError if an element runs past ``end`` (a truncated file). A
    nested dataset of undefined length ends at an Item Delimitation Item.
    """
    while pos < end:
        if pos + 8 > end:
            raise ValueError(f"element header cut at byte {pos}")
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group == 0xFFFE:
            length = struct.unpack_from("<I", buf, pos + 4)[0]
            if nested and elem == 0xE00D:
                return pos + 8
            raise ValueError(f"unexpected delimiter at byte {pos}")
        if explicit:
            vr = buf[pos + 4:pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise ValueError(f"element header cut at byte {pos}")
                length, pos = struct.unpack_from("<I", buf, pos + 8)[0], pos + 12
            else:
                length, pos = struct.unpack_from("<H", buf, pos + 6)[0], pos + 8
        else:
            length, pos = struct.unpack_from("<I", buf, pos + 4)[0], pos + 8
        if length == 0xFFFFFFFF:
            pos = _skip_items(buf, pos, end, explicit)
        elif pos + length > end:
            raise ValueError(f"element ({group:04X},{elem:04X}) needs {length} bytes, "
                             f"{end - pos} left")
        else:
            pos += length
    if nested:
        raise ValueError("nested data set has no delimiter")
    return pos


def _skip_items(buf: bytes, pos: int, end: int, explicit: bool) -> int:
    """Skip the items of an undefined-length sequence or encapsulated pixel data."""
    while True:
        if pos + 8 > end:
            raise ValueError("sequence has no delimiter (file cut short)")
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos
        if (group, elem) != (0xFFFE, 0xE000):
            raise ValueError(f"expected an item at byte {pos - 8}")
        if length == 0xFFFFFFFF:
            pos = _skip_dataset(buf, pos, end, explicit, nested=True)
        elif pos + length > end:
            raise ValueError(f"item needs {length} bytes, {end - pos} left")
        else:
            pos += length


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One instance to C-STORE: a checked file sent raw, or a dataset to encode."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    source: str | None
    path: Path | None = None
    offset: int = 0
    dataset: Dataset | None = None

    @classmethod
    def of(cls, item: str | os.PathLike[str] | Dataset) -> Outgoing:
        if isinstance(item, Dataset):
            meta = getattr(item, "file_meta", None)
            if "SOPClassUID" not in item or "SOPInstanceUID" not in item or meta is None \
                    or "TransferSyntaxUID" not in meta:
                raise DicomFileError("a dataset to store needs SOPClassUID, SOPInstanceUID and "
                                     "file meta TransferSyntaxUID", source="dataset")
            return cls(str(item.SOPClassUID), str(item.SOPInstanceUID),
                       str(meta.TransferSyntaxUID), None, dataset=item)
        path = Path(item)
        try:
            meta, offset = split_dataset(path)
            buf = path.read_bytes()
        except FileNotFoundError as exc:
            raise DicomFileError("no such file", source=str(path)) from exc
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError) as exc:
            raise DicomFileError(f"not a readable DICOM file: {exc}", source=str(path)) from exc
        missing = [k for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                               "TransferSyntaxUID") if k not in meta]
        if missing:
            raise DicomFileError(f"not a DICOM Part 10 file (file meta lacks {', '.join(missing)})",
                                 source=str(path))
        ts = UID(str(meta.TransferSyntaxUID))
        if ts not in _RAW_SYNTAXES and not (ts.is_compressed and ts.is_little_endian
                                            and not ts.is_deflated):
            ds = read_for_store(path)  # big endian or deflated: let pydicom decode and re-encode
            return cls(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ts), str(path), dataset=ds)
        if offset >= len(buf):
            raise DicomFileError("no data set after the file meta (truncated?)", source=str(path))
        try:
            _skip_dataset(buf, offset, len(buf), ts != ImplicitVRLittleEndian, nested=False)
        except (ValueError, struct.error) as exc:
            raise DicomFileError(f"truncated or corrupt: {exc}", source=str(path)) from exc
        return cls(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID),
                   str(ts), str(path), path=path, offset=offset)


@contextlib.contextmanager
def paused(assoc: Association) -> Iterator[None]:
    """Pause pynetdicom's association reactor once for a batch of requests.

    ``send_c_store`` pauses and resumes it around every request; the reactor
    polls every millisecond, so that costs about 1 ms per instance.
    """
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused and assoc.is_established:
        time.sleep(0.0001)
    try:
        yield
    finally:
        assoc._reactor_checkpoint.set()


def send_c_store(assoc: Association, item: Outgoing, context_id: int, msg_id: int) -> int | None:
    """Send one C-STORE-RQ on a paused association; the response status, or None if none came.

    What pynetdicom's ``Association.send_c_store`` does, with a file's bytes
    sent as they are (its ``STORE_SEND_CHUNKED_DATASET`` path) and without
    the per-request reactor pause.
    """
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = 2
    req.AffectedSOPClassUID = item.sop_class
    req.AffectedSOPInstanceUID = item.sop_instance
    if item.path is not None:
        req._dataset_path = (item.path, item.offset)
    else:
        assert item.dataset is not None
        ts = UID(item.transfer_syntax)
        encoded = encode(item.dataset, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if encoded is None:
            raise DicomFileError("pydicom could not encode the dataset", source=item.sop_instance)
        req.DataSet = BytesIO(encoded)
    assoc.dimse.send_msg(req, context_id)
    _cx, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        return None
    status = rsp.Status
    return int(status) if status is not None else None
