"""The File Meta Information group (PS3.10 7.1), encoded by hand.

pydicom's writer takes ~0.2 ms per file, which matters at hundreds of C-STOREs
per second; the group is always Explicit VR Little Endian and holds a handful of
UIDs, so it is written here directly. Pure (no I/O); used by the C-STORE/C-GET
receivers (:mod:`kit.dicom._fastnet`) and the store (:mod:`kit.dicom.store`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["PREAMBLE", "encode_file_meta"]

#: The 128-byte preamble and the "DICM" prefix of every Part 10 file.
PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (the file meta group is always so encoded)."""
    head = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    if vr in (b"OB", b"UN", b"SQ", b"UT"):
        return head + vr + b"\x00\x00" + len(value).to_bytes(4, "little") + value
    return head + vr + len(value).to_bytes(2, "little") + value


def encode_file_meta(meta: Dataset | Mapping[str, Any]) -> bytes:
    """Encode the File Meta Information group (PS3.10 7.1) by hand: pydicom's writer
    takes ~0.2 ms per file, which matters at hundreds of C-STOREs per second."""
    body = _element(0x00020001, b"OB", b"\x00\x01")
    for tag, keyword, vr in ((0x00020002, "MediaStorageSOPClassUID", b"UI"),
                             (0x00020003, "MediaStorageSOPInstanceUID", b"UI"),
                             (0x00020010, "TransferSyntaxUID", b"UI"),
                             (0x00020012, "ImplementationClassUID", b"UI"),
                             (0x00020013, "ImplementationVersionName", b"SH"),
                             (0x00020016, "SourceApplicationEntityTitle", b"AE")):
        value = meta.get(keyword)
        if value is None or str(value) == "":
            continue
        data = str(value).encode("ascii", "replace")
        if len(data) % 2:
            data += b"\x00" if vr == b"UI" else b" "
        body += _element(tag, vr, data)
    return _element(0x00020000, b"UL", len(body).to_bytes(4, "little")) + body
