"""The DIMSE command set codec (PS3.7 E.1: group 0000, Implicit VR Little Endian): pure.

Written by hand for the per-instance paths of :mod:`kit.dicom._fastnet` (pydicom encodes a
command set as a whole data set, several times slower); tested equal to pydicom's encoding.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "C_ECHO_RQ", "C_ECHO_RSP", "C_GET_RQ", "C_GET_RSP", "C_STORE_RQ", "C_STORE_RSP", "NO_DATASET",
    "command_int", "command_str", "decode_command", "encode_command", "status_fields",
]

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATASET = 0x0101

# Command-set elements the kit writes, with their VR (PS3.7 E.1-1).
_VR = {
    0x00000002: "UI", 0x00000100: "US", 0x00000110: "US", 0x00000120: "US", 0x00000600: "AE",
    0x00000700: "US", 0x00000800: "US", 0x00000900: "US", 0x00000902: "LO", 0x00001000: "UI",
    0x00001020: "US",
    0x00001021: "US", 0x00001022: "US", 0x00001023: "US", 0x00001030: "AE", 0x00001031: "US",
}


def encode_command(fields: Mapping[int, int | str]) -> bytes:
    """Encode a command set (group 0000, Implicit VR Little Endian) with its group length.

    Parameters
    ----------
    fields : mapping of int to int or str
        ``{tag: value}``; US values as int, UI/AE/LO values as str (ASCII).
    """
    body = bytearray()
    for tag in sorted(fields):
        value = fields[tag]
        vr = _VR[tag]
        if vr == "US":
            data = struct.pack("<H", int(value))
        else:
            data = str(value).encode("ascii", "replace")
            if len(data) % 2:
                data += b"\x00" if vr == "UI" else b" "
        body += struct.pack("<HHI", 0x0000, tag & 0xFFFF, len(data)) + data
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + bytes(body)


def decode_command(buf: bytes) -> dict[int, bytes]:
    """``{element number: raw value}`` of an Implicit VR Little Endian command set.

    Elements of other groups after group 0000 are skipped (DCMTK, so Orthanc, puts a
    failed sub-operation's (0008,0058) Failed SOP Instance UID List there; pynetdicom
    and dcmtk ignore it too).
    """
    out: dict[int, bytes] = {}
    pos, end = 0, len(buf)
    while pos + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        if pos + length > end or (group != 0x0000 and not out):
            raise ValueError(f"malformed command set at byte {pos - 8}")
        if group == 0x0000:
            out[elem] = buf[pos:pos + length]
        pos += length
    if pos != end:
        raise ValueError("malformed command set (trailing bytes)")
    return out


def command_int(command: Mapping[int, bytes], elem: int) -> int | None:
    """A US/UL command element as int (None if absent)."""
    raw = command.get(elem)
    if raw is None or len(raw) not in (2, 4):
        return None
    return int.from_bytes(raw, "little")


def command_str(command: Mapping[int, bytes], elem: int) -> str:
    """A UI/AE command element as str (padding stripped; '' if absent)."""
    return command.get(elem, b"").decode("ascii", "replace").rstrip("\x00 ")


def status_fields(command: Mapping[int, bytes]) -> dict[str, Any]:
    """Status and sub-operation counts of a response command set, by DICOM keyword."""
    out: dict[str, Any] = {"Status": command_int(command, 0x0900)}
    for elem, keyword in ((0x1020, "NumberOfRemainingSuboperations"),
                          (0x1021, "NumberOfCompletedSuboperations"),
                          (0x1022, "NumberOfFailedSuboperations"),
                          (0x1023, "NumberOfWarningSuboperations")):
        value = command_int(command, elem)
        if value is not None:
            out[keyword] = value
    return out
