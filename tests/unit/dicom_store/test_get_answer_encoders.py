"""The C-GET answer path's hand-built bytes equal the general encoders' (kit.dicom._getphase)."""

from __future__ import annotations

import pytest
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from kit.dicom._command import C_STORE_RSP, NO_DATASET, encode_command
from kit.dicom._filemeta import PREAMBLE, encode_file_meta, part10_head
from kit.dicom._getphase import read_identity, store_rsp

CASES = [
    ("1.2.840.10008.5.1.4.1.1.2", 7, 0x0000, "1.2.826.0.1.3680043.8.498.1"),
    ("1.2.840.10008.5.1.4.1.1.7", 0xFFFF, 0xA900, "1.2.3.44"),
    ("", 0, 0xC000, ""),
    ("1.2.3\u00e9", 1, 0x0122, "x\u00e9y"),  # not ASCII: replaced as encode_command does
]


@pytest.mark.parametrize(("sop_class", "msg_id", "status", "sop_uid"), CASES)
def test_store_rsp_is_encode_command(sop_class: str, msg_id: int, status: int, sop_uid: str) -> None:
    assert store_rsp(sop_class, msg_id, status, sop_uid) == encode_command({
        0x00000002: sop_class, 0x00000100: C_STORE_RSP, 0x00000120: msg_id,
        0x00000800: NO_DATASET, 0x00000900: status, 0x00001000: sop_uid})


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"])
@pytest.mark.parametrize("sop_uid", ["1.2.3.4", "1.2.3.45", ""])
def test_part10_head_is_preamble_and_encode_file_meta(syntax: str, sop_uid: str) -> None:
    for sop_class in ("1.2.840.10008.5.1.4.1.1.2", "1.2.3"):
        assert part10_head(sop_class, sop_uid, syntax, PYNETDICOM_IMPLEMENTATION_UID,
                           PYNETDICOM_IMPLEMENTATION_VERSION) == PREAMBLE + encode_file_meta({
            "MediaStorageSOPClassUID": sop_class, "MediaStorageSOPInstanceUID": sop_uid,
            "TransferSyntaxUID": syntax, "ImplementationClassUID": PYNETDICOM_IMPLEMENTATION_UID,
            "ImplementationVersionName": PYNETDICOM_IMPLEMENTATION_VERSION})


def _explicit(tag: int, vr: bytes, value: bytes, little: bool = True) -> bytes:
    order = "little" if little else "big"
    head = (tag >> 16).to_bytes(2, order) + (tag & 0xFFFF).to_bytes(2, order) + vr
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        return head + b"\x00\x00" + len(value).to_bytes(4, order) + value
    return head + len(value).to_bytes(2, order) + value


@pytest.mark.parametrize("little", [True, False])
def test_read_identity_skips_long_values_and_sequences(little: bool) -> None:
    order = "little" if little else "big"
    item = (0xFFFE).to_bytes(2, order) + (0xE000).to_bytes(2, order) + (0xFFFFFFFF).to_bytes(4, order)
    item_end = (0xFFFE).to_bytes(2, order) + (0xE00D).to_bytes(2, order) + bytes(4)
    seq_end = (0xFFFE).to_bytes(2, order) + (0xE0DD).to_bytes(2, order) + bytes(4)
    sequence = _explicit(0x00081140, b"SQ", b"", little)[:-4] + (0xFFFFFFFF).to_bytes(4, order) + item \
        + _explicit(0x00081155, b"UI", b"9.9\x00", little) + item_end + seq_end
    data = b"".join((_explicit(0x00080016, b"UI", b"1.2\x00", little),
                     _explicit(0x00080018, b"UI", b"1.2.3\x00", little),
                     _explicit(0x00090010, b"OB", b"\x01" * 6, little), sequence,
                     _explicit(0x0020000D, b"UI", b"7.7\x00", little),
                     _explicit(0x0020000E, b"UI", b"8.8\x00", little),
                     _explicit(0x7FE00010, b"OB", b"\x00" * 4, little)))
    syntax = "1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2"
    assert read_identity(data, syntax) == {0x00080018: "1.2.3", 0x0020000D: "7.7", 0x0020000E: "8.8"}
    assert read_identity(memoryview(data), syntax) == read_identity(data, syntax)
    with pytest.raises(ValueError):
        read_identity(data[:30], syntax)
