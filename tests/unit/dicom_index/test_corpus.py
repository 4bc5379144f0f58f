"""kit.dicom.index on pydicom's own test corpus and on the shapes of issues #7.21 and #8.7.

The corpus is every file pydicom ships (``pydicom.data``: the wheel's test and charset files,
plus the ``pydicom-data`` package of the test extra, which ships the larger files offline).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import polars as pl
import pytest
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from kit.dicom._header import Fallback, Skip, read_fast, read_file, read_pydicom, to_row
from kit.dicom.index import index_dicom

from ._make import ct_dataset, write

CORPUS = sorted(set(get_testdata_files()) | set(get_charset_files()))
NO_META = ("rtstruct.dcm", "ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "OT-PAL-8-face.dcm")


def _corpus(name: str) -> str:
    found = [f for f in CORPUS if Path(f).name == name]
    assert found, f"{name} is not in pydicom's test corpus (is pydicom-data installed?)"
    return found[0]


def test_corpus_is_complete() -> None:
    # the wheel's files and pydicom-data's (OT-PAL-8-face.dcm is only in pydicom-data)
    assert len(CORPUS) > 250
    for name in NO_META:
        _corpus(name)


@pytest.mark.filterwarnings("ignore")
def test_fast_equals_pydicom_on_every_corpus_file() -> None:
    """Every file the fast reader accepts gives exactly pydicom's row."""
    accepted = 0
    for path in CORPUS:
        try:
            fast = to_row(read_fast(path), path)
        except (Fallback, Skip):
            continue
        accepted += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = to_row(read_pydicom(path), path)
        assert fast == slow, Path(path).name
    assert accepted > 150


@pytest.mark.filterwarnings("ignore")
def test_files_without_preamble_or_file_meta_are_indexed() -> None:
    result = index_dicom([_corpus(n) for n in NO_META], workers=1)
    assert result.skipped.height == 0, result.skipped.to_dicts()
    frame = result.frame
    assert frame.height == 4
    assert frame["study_instance_uid"].null_count() == 0
    assert frame["sop_instance_uid"].null_count() == 0
    assert frame["transfer_syntax_uid"].null_count() == 4  # there is no File Meta to name one
    face = frame.filter(pl.col("path").str.ends_with("OT-PAL-8-face.dcm")).row(0, named=True)
    assert face["rows"] == 480 and face["columns"] == 640


def test_pn_with_empty_trailing_group_same_in_every_encoding(tmp_path: Path) -> None:
    """``Wang^XiaoDong=王^小東=``: the fast reader drops the empty group as pydicom does."""
    chr_x1 = _corpus("chrX1.dcm")
    assert to_row(read_fast(chr_x1), "p") == to_row(read_pydicom(chr_x1), "p")
    assert to_row(read_fast(chr_x1), "p")[1] == "Wang^XiaoDong=王^小東"
    ds = ct_dataset(0)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Wang^XiaoDong=王^小東="
    ds.ReferringPhysicianName = "A^B="
    plain = write(ds, tmp_path / "plain.dcm")
    deflated = write(ds, tmp_path / "deflated.dcm", transfer_syntax=DeflatedExplicitVRLittleEndian)
    frame = index_dicom([plain, deflated], workers=1).frame
    assert frame["patient_name"].to_list() == ["Wang^XiaoDong=王^小東"] * 2


def test_reader_fast_never_lets_fallback_escape(tmp_path: Path) -> None:
    big = write(ct_dataset(0), tmp_path / "big.dcm", transfer_syntax=ExplicitVRBigEndian)
    result = index_dicom(big, workers=1, reader="fast")
    assert result.frame.height == 0
    assert "fast reader" in result.skipped["reason"].item()


def _element_offset(data: bytes, tag: int) -> int:
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    pos = data.index(needle, 132)
    return pos


def test_corrupted_tag_beyond_pixel_data_does_not_stop_the_fast_reader(tmp_path: Path) -> None:
    """Issue #7.21: a tag >= (7FE0,0008) before PatientID made the fast reader stop early."""
    good = write(ct_dataset(0), tmp_path / "good.dcm").read_bytes()
    pos = _element_offset(good, 0x00080020)  # StudyDate, before the patient and study tags
    for corrupt in (0x7FE00008, 0x7FE10010, 0xFFF00020, 0x80000000):
        data = bytearray(good)
        data[pos:pos + 4] = struct.pack("<HH", corrupt >> 16, corrupt & 0xFFFF)
        path = tmp_path / f"corrupt_{corrupt:08X}.dcm"
        path.write_bytes(bytes(data))
        if corrupt == 0x7FE00008:  # a pixel data tag with the header going on after it: corrupt
            with pytest.raises(Skip, match="after the pixel data"):
                read_file(str(path))
            continue
        values, _ = read_file(str(path))  # out of order now: the fast reader falls back
        row = to_row(values, str(path))
        assert row == to_row(read_pydicom(str(path)), str(path))
        assert row[0] is not None and row[4] is not None  # PatientID, StudyInstanceUID


def test_value_overrunning_the_file_is_skipped_not_a_partial_row(tmp_path: Path) -> None:
    good = write(ct_dataset(0), tmp_path / "good.dcm").read_bytes()
    pos = _element_offset(good, 0x00081030)  # StudyDescription (LO, short length field)
    data = bytearray(good)
    data[pos:pos + 4] = struct.pack("<HH", 0x0009, 0x1030)  # now a private tag: not read
    data[pos + 4:pos + 6] = b"OB"
    data[pos + 6:pos + 8] = b"\x00\x00"
    data[pos + 8:pos + 12] = struct.pack("<I", 0x7FFFFFF0)  # OB has a 4-byte length
    path = tmp_path / "overrun.dcm"
    path.write_bytes(bytes(data))
    with pytest.raises(Skip, match="truncated"):
        read_file(str(path))
    result = index_dicom(path, workers=1)
    assert result.frame.height == 0 and "truncated" in result.skipped["reason"].item()
