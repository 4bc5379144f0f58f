"""kit.dicom.index: columns, values, skipped files, fast-vs-pydicom parity, parallel == serial."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

import kit.dicom.index as index_mod
from kit.cli import cli
from kit.dicom._header import Fallback, read_fast
from kit.dicom.index import INDEX_SCHEMA, index_dicom, index_frame
from kit.errors import InvalidInputError
from kit.examples.cohort import COHORT

from ._make import IMPLICIT, ct_dataset, uid, with_sequences, write


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "dicom"
    write(ct_dataset(0, 1, 1), root / "a" / "1.dcm")
    write(ct_dataset(0, 1, 2), root / "a" / "2.dcm", transfer_syntax=IMPLICIT)
    write(with_sequences(ct_dataset(1, 2, 1), undefined=True), root / "b" / "1.dcm")
    write(with_sequences(ct_dataset(1, 2, 2), undefined=False), root / "b" / "2.dcm",
          transfer_syntax=IMPLICIT)
    write(with_sequences(ct_dataset(2, 1, 1), undefined=True), root / "b" / "3.dcm",
          transfer_syntax=IMPLICIT)
    return root


def test_columns_dtypes_and_values(folder: Path) -> None:
    result = index_dicom(folder, workers=1)
    frame = result.frame
    assert dict(frame.schema) == INDEX_SCHEMA
    assert list(frame.columns)[:5] == ["patient_id", "patient_name", "patient_birth_date",
                                       "patient_sex", "study_instance_uid"]
    assert frame.schema["study_date"] == pl.Date and frame.schema["study_time"] == pl.Time
    assert frame.schema["pixel_spacing"] == pl.List(pl.Float64)
    assert frame.height == 5 and result.skipped.height == 0
    row = frame.filter(pl.col("path").str.ends_with("a/1.dcm")).row(0, named=True)
    p = COHORT[0]
    assert row["patient_id"] == p.mrn
    assert row["patient_name"] == p.dicom_name
    assert row["patient_birth_date"] == p.birth_date
    assert row["study_date"] == p.studies[0].date
    assert row["study_time"] == p.studies[0].time
    assert row["accession_number"] == p.studies[0].accession
    assert row["sop_instance_uid"] == uid(p.mrn, 1, 1)
    assert row["series_number"] == 1 and row["instance_number"] == 1
    assert row["rows"] == 8 and row["columns"] == 8 and row["number_of_frames"] is None
    assert row["pixel_spacing"] == [0.703125, 0.703125]
    assert row["slice_thickness"] == 2.5
    assert row["modality"] == "CT" and row["body_part_examined"] == "CHEST"
    assert row["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
    assert Path(row["path"]).is_absolute()
    assert row["size_bytes"] == (folder / "a" / "1.dcm").stat().st_size
    implicit = frame.filter(pl.col("path").str.ends_with("a/2.dcm")).row(0, named=True)
    assert implicit["transfer_syntax_uid"] == "1.2.840.10008.1.2"
    assert implicit["instance_number"] == 2


def test_index_frame_and_missing_path(folder: Path) -> None:
    assert index_frame(folder, workers=1).height == 5
    assert index_frame(folder, recursive=False, workers=1).height == 0
    with pytest.raises(InvalidInputError):
        index_dicom(folder / "nope")


@pytest.mark.parametrize("reader", ["fast", "pydicom"])
def test_an_integer_the_int32_columns_cannot_hold_is_null_and_the_rest_is_indexed(
        tmp_path: Path, reader: str) -> None:
    """A 12-digit InstanceNumber is valid IS; it made polars fail the whole index (an internal error)."""
    write(ct_dataset(0, 1, 1), tmp_path / "a.dcm")
    big = ct_dataset(0, 1, 2)
    big.InstanceNumber, big.SeriesNumber = "99999999999", "-2147483649"
    write(big, tmp_path / "b.dcm")
    edge = ct_dataset(0, 1, 3)
    edge.InstanceNumber, edge.SeriesNumber = "2147483647", "-2147483648"
    write(edge, tmp_path / "c.dcm")
    frame = index_dicom(tmp_path, workers=1, reader=reader).frame
    assert frame["instance_number"].to_list() == [1, None, 2147483647]
    assert frame["series_number"].to_list()[1:] == [None, -2147483648]


def test_a_folder_that_cannot_be_read_is_a_typed_error(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """(A folder the user may not read: faked, as root reads every folder.)"""
    (tmp_path / "locked").mkdir()
    write(ct_dataset(0), tmp_path / "a.dcm")
    scandir = index_mod.os.scandir

    def refuse(path: str) -> object:
        if path.endswith("locked"):
            raise PermissionError(13, "Permission denied", path)
        return scandir(path)

    monkeypatch.setattr(index_mod.os, "scandir", refuse)
    with pytest.raises(InvalidInputError, match="cannot read the folder: Permission denied"):
        index_dicom(tmp_path, workers=1)
    result = CliRunner().invoke(cli, ["index", str(tmp_path)])
    assert result.exit_code != 0 and "internal error" not in result.output, result.output
    assert "Permission denied" in result.output


def test_a_fifo_named_is_a_typed_error_not_a_read_for_ever(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="not a regular file"):
        index_dicom(fifo, workers=1)
    write(ct_dataset(0), tmp_path / "a.dcm")
    assert index_dicom(tmp_path, workers=1).frame.height == 1  # in a folder: not a file, passed by


def test_links_and_special_files_in_a_folder_are_reported_and_each_file_is_indexed_once(
        tmp_path: Path) -> None:
    """A symbolic link to a file of the tree was indexed twice (two rows, one instance); a broken
    link, a link to a folder and a FIFO passed without a word. Each file is indexed once, under the
    name that is no link; the rest are skipped rows that say why."""
    root = tmp_path / "dicom"
    real = write(ct_dataset(0, 1, 1), root / "b.dcm")
    other = write(ct_dataset(0, 1, 2), tmp_path / "elsewhere" / "c.dcm")
    (root / "a-link.dcm").symlink_to(real)  # sorts before its target
    (root / "outside.dcm").symlink_to(other)  # a file outside the tree: read
    (root / "hard.dcm").hardlink_to(real)
    (root / "broken.dcm").symlink_to(tmp_path / "gone.dcm")
    (root / "folder-link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    os.mkfifo(root / "pipe.dcm")
    for workers in (1, 2):
        result = index_dicom(root, workers=workers)
        assert result.frame["path"].to_list() == [str(real), str(root / "outside.dcm")]
        assert result.skipped.rows() == [
            (str(root / "a-link.dcm"), f"the same file as {real}"),
            (str(root / "broken.dcm"), "a broken symbolic link"),
            (str(root / "folder-link"), "a symbolic link to a folder (not followed)"),
            (str(root / "hard.dcm"), f"the same file as {real}"),
            (str(root / "pipe.dcm"), "not a regular file (a FIFO, socket or device)"),
        ]
    named = index_dicom([real, root / "a-link.dcm", real], workers=1)  # named, not walked: the first name
    assert named.frame["path"].to_list() == [str(real)]
    assert named.skipped["reason"].to_list() == [f"the same file as {real}"] * 2


def test_skipped_non_dicom_and_truncated(tmp_path: Path) -> None:
    good = write(ct_dataset(0), tmp_path / "good.dcm")
    data = good.read_bytes()
    (tmp_path / "notes.txt").write_text("not a DICOM file\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "cut_header.dcm").write_bytes(data[:400])
    (tmp_path / "cut_pixels.dcm").write_bytes(data[:-20])
    result = index_dicom(tmp_path, workers=1)
    assert result.frame["path"].to_list() == [str(good)]
    reasons = dict(result.skipped.iter_rows())
    assert set(map(Path, reasons)) == {tmp_path / n for n in
                                       ("notes.txt", "empty.dcm", "cut_header.dcm", "cut_pixels.dcm")}
    assert "not DICOM" in reasons[str(tmp_path / "notes.txt")]
    assert "truncated" in reasons[str(tmp_path / "cut_pixels.dcm")]
    assert "truncated" in reasons[str(tmp_path / "cut_header.dcm")]


def test_a_file_cut_in_its_file_meta_or_before_its_data_set_is_reported_as_cut(tmp_path: Path) -> None:
    """Cut inside its File Meta Information, or before the first element of its data set, a DICOM
    file was skipped as "not DICOM: no instance attributes": as if it were some other kind of file.
    (Cut between two elements after its instance attributes, it still gives a row of what is there,
    as pydicom reads it: such a file looks complete.)"""
    good = write(ct_dataset(0), tmp_path / "good.dcm")
    data = good.read_bytes()
    good.unlink()
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after the File Meta Information
    cuts = [132, 140, 150, meta_end - 3, meta_end, meta_end + 3]
    for n in cuts:
        (tmp_path / f"cut{n:05d}.dcm").write_bytes(data[:n])
    reasons = dict(index_dicom(tmp_path, workers=1).skipped.iter_rows())
    assert len(reasons) == len(cuts)
    for path, reason in reasons.items():
        assert "truncated" in reason or "cut short" in reason, (path, reason)
        assert "not DICOM" not in reason, (path, reason)


def _parity_files(tmp_path: Path) -> list[Path]:
    files = []
    ds = ct_dataset(3)
    ds.PatientID = "MRN1004 "  # odd length, padded
    ds.AccessionNumber = "ACC7"  # padded to even by pydicom
    ds.StudyDescription = "CT  CHEST\\SECOND"  # multi-valued LO
    ds.PixelSpacing = ["0.5", "0.625"]
    ds.SliceThickness = "1.25"
    files.append(write(ds, tmp_path / "padded.dcm"))
    files.append(write(with_sequences(ct_dataset(4), undefined=True), tmp_path / "seq_undef_impl.dcm",
                       transfer_syntax=IMPLICIT))
    files.append(write(with_sequences(ct_dataset(4, 1, 2), undefined=False), tmp_path / "seq_def.dcm"))
    latin = ct_dataset(5)
    latin.PatientName = "Müller^Jörg"
    files.append(write(latin, tmp_path / "latin1.dcm"))
    utf8 = ct_dataset(5, 1, 2)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    utf8.PatientName = "Ødegård^Zoë"
    utf8.StudyTime = "101010.123"
    utf8.NumberOfFrames = "1"
    files.append(write(utf8, tmp_path / "utf8.dcm", transfer_syntax=IMPLICIT))
    empty = ct_dataset(2)
    empty.StudyDate = ""
    empty.PatientBirthDate = "19xx0101"
    empty.SeriesNumber = None
    files.append(write(empty, tmp_path / "empty_values.dcm"))
    return files


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_fast_and_pydicom_give_identical_rows(tmp_path: Path) -> None:
    files = _parity_files(tmp_path)
    for f in files:
        read_fast(str(f))  # every one of these is read by the fast path (no Fallback)
    fast = index_dicom(files, workers=1, reader="fast")
    slow = index_dicom(files, workers=1, reader="pydicom")
    assert fast.skipped.height == 0 and slow.skipped.height == 0
    assert fast.frame.height == len(files)
    assert fast.frame.equals(slow.frame)
    row = fast.frame.filter(pl.col("path").str.ends_with("padded.dcm")).row(0, named=True)
    assert row["patient_id"] == "MRN1004"
    assert row["pixel_spacing"] == [0.5, 0.625]
    assert row["study_description"] == "CT  CHEST\\SECOND"
    utf8 = fast.frame.filter(pl.col("path").str.ends_with("utf8.dcm")).row(0, named=True)
    assert utf8["patient_name"] == "Ødegård^Zoë"
    assert utf8["study_time"] == dt.time(10, 10, 10, 123000)
    assert utf8["number_of_frames"] == 1
    empty = fast.frame.filter(pl.col("path").str.ends_with("empty_values.dcm")).row(0, named=True)
    assert empty["study_date"] is None and empty["patient_birth_date"] is None
    assert empty["series_number"] is None
    latin = fast.frame.filter(pl.col("path").str.ends_with("latin1.dcm")).row(0, named=True)
    assert latin["patient_name"] == "Müller^Jörg"


def test_unusual_files_fall_back_to_pydicom(tmp_path: Path) -> None:
    big = write(ct_dataset(0), tmp_path / "big.dcm", transfer_syntax=ExplicitVRBigEndian)
    deflated = write(ct_dataset(0, 1, 2), tmp_path / "deflate.dcm",
                     transfer_syntax=DeflatedExplicitVRLittleEndian)
    jis = ct_dataset(1)
    jis.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    jis.PatientName = "Yamada^Tarou=山田^太郎"
    japanese = write(jis, tmp_path / "jis.dcm")
    for f in (big, deflated, japanese):
        with pytest.raises(Fallback):
            read_fast(str(f))
    result = index_dicom(tmp_path, workers=1)
    assert result.skipped.height == 0
    frame = result.frame
    assert frame["patient_id"].to_list() == [COHORT[0].mrn, COHORT[0].mrn, COHORT[1].mrn]
    assert frame["rows"].to_list() == [8, 8, 8]
    assert frame.filter(pl.col("path") == str(japanese))["patient_name"].item() == \
        "Yamada^Tarou=山田^太郎"


def test_parallel_equals_serial(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "_CHUNK", 2)
    monkeypatch.setattr(index_mod, "_SERIAL_BELOW", 2)
    (folder / "junk.bin").write_bytes(b"\x00" * 300)
    serial = index_dicom(folder, workers=1)
    parallel = index_dicom(folder, workers=2)
    assert parallel.frame.height == 5
    assert parallel.frame.equals(serial.frame)
    assert parallel.skipped.equals(serial.skipped)


def test_cli_index(folder: Path, tmp_path: Path) -> None:
    (folder / "readme.txt").write_text("hello")
    out = tmp_path / "index.parquet"
    result = CliRunner().invoke(cli, ["index", str(folder), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "readme.txt" in result.stderr
    frame = pl.read_parquet(out)
    assert frame.height == 5 and dict(frame.schema) == INDEX_SCHEMA
    as_json = CliRunner().invoke(cli, ["index", str(folder / "a"), "--json"])
    assert as_json.exit_code == 0 and COHORT[0].mrn in as_json.stdout
    missing = CliRunner().invoke(cli, ["index", str(tmp_path / "missing")])
    assert missing.exit_code == 2
