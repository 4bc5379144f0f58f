"""A file pydicom can only half read (a damaged file meta or data set element) is refused with a
DicomFileError before anything is sent, never with pydicom's own exception.

pydicom converts an element when it is first accessed: an unknown VR raises NotImplementedError
there, a missing element AttributeError; Outgoing.of and read_for_store met those outside their
error mapping (Hypothesis found the first: test_outgoing_keep)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian

from kit.dicom._outgoing import Outgoing, read_for_store
from kit.errors import DicomFileError

SAMPLES = sorted((Path(__file__).parents[3] / "data" / "samples" / "dicom").rglob("*.dcm"))


def _damaged_vr(tmp_path: Path, marker: bytes) -> Path:
    for sample in SAMPLES:
        data = bytearray(sample.read_bytes())
        at = data.find(marker)
        if at > 0:
            data[at + 5] = 0  # "UI" -> "U\x00": a VR pydicom does not know
            path = tmp_path / "damaged.dcm"
            path.write_bytes(bytes(data))
            return path
    pytest.skip("no sample with that element")


@pytest.mark.parametrize("keep", [True, False])
def test_an_unknown_vr_in_the_file_meta_is_a_dicom_file_error(tmp_path: Path, keep: bool) -> None:
    path = _damaged_vr(tmp_path, b"\x02\x00\x03\x00UI")  # (0002,0003) Media Storage SOP Instance UID
    with pytest.raises(DicomFileError):
        Outgoing.of(path, keep=keep)


def _big_endian(tmp_path: Path, drop: str | None = None) -> Path:
    ds = dcmread(SAMPLES[0])
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if drop:
        delattr(ds, drop)
    ds.preamble = b"\x00" * 128
    path = tmp_path / "big.dcm"
    dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    return path


def test_a_big_endian_file_without_sop_class_is_a_dicom_file_error(tmp_path: Path) -> None:
    path = _big_endian(tmp_path, drop="SOPClassUID")
    with pytest.raises(DicomFileError):
        Outgoing.of(path)


def test_a_big_endian_file_with_an_unknown_vr_is_a_dicom_file_error(tmp_path: Path) -> None:
    path = _big_endian(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x00\x08\x00\x16UI")  # (0008,0016) SOP Class UID, big endian
    assert at > 0
    data[at + 5] = 0
    path.write_bytes(bytes(data))
    with pytest.raises(DicomFileError):
        Outgoing.of(path)
    with pytest.raises(DicomFileError):
        read_for_store(path)


def test_a_good_big_endian_file_still_goes(tmp_path: Path) -> None:
    path = _big_endian(tmp_path)
    out = Outgoing.of(path)
    assert out.dataset is not None and out.transfer_syntax == ExplicitVRBigEndian
    assert out.sop_class == str(dcmread(SAMPLES[0]).SOPClassUID)


def test_a_dataset_with_an_unconvertible_uid_is_a_dicom_file_error(tmp_path: Path) -> None:
    path = _big_endian(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x00\x08\x00\x16UI")
    data[at + 5] = 0
    path.write_bytes(bytes(data))
    ds = dcmread(path)  # read lazily: the damaged element is converted when first accessed
    with pytest.raises(DicomFileError):
        Outgoing.of(ds)
