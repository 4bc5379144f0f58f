"""Outgoing.of(keep=True) (files read once for C-STORE) equals the re-reading path."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.dicom._outgoing import Outgoing
from kit.errors import DicomFileError, KitError

SAMPLES = sorted((Path(__file__).parents[3] / "data" / "samples" / "dicom").rglob("*.dcm"))


def _outcome(path: Path, keep: bool) -> tuple[str, object]:
    try:
        out = Outgoing.of(path, keep=keep)
        return "ok", (out.sop_class, out.sop_instance, out.transfer_syntax, out.offset,
                      bytes(out.payload()))
    except KitError as exc:
        return "error", (type(exc), str(exc))


def test_sample_cohort_kept_equals_read_again() -> None:
    assert len(SAMPLES) > 50
    for path in SAMPLES:
        kept, again = _outcome(path, True), _outcome(path, False)
        assert kept == again
        assert kept[0] == "ok"


def test_kept_bytes_are_the_checked_ones(tmp_path: Path) -> None:
    """A file rewritten after the check: the kept instance sends what was checked."""
    path = tmp_path / "a.dcm"
    original = SAMPLES[0].read_bytes()
    path.write_bytes(original)
    kept = Outgoing.of(path, keep=True)
    path.write_bytes(original[:200])
    assert bytes(kept.payload()) == original[kept.offset:]
    assert kept.size == len(original)
    assert Outgoing.of(SAMPLES[0]).size == 0  # not kept by default


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 4000), flip=st.integers(0, 4000), byte=st.integers(0, 255),
       which=st.integers(0, 10_000))
def test_damaged_files_same_outcome_and_only_kit_errors(tmp_path: Path, cut: int, flip: int, byte: int,
                                                      which: int) -> None:
    data = bytearray(SAMPLES[which % len(SAMPLES)].read_bytes())
    if flip < len(data):
        data[flip] = byte
    path = tmp_path / "damaged.dcm"
    path.write_bytes(bytes(data[:len(data) - cut]))
    kept, again = _outcome(path, True), _outcome(path, False)
    assert kept == again
    if kept[0] == "error":
        assert issubclass(kept[1][0], DicomFileError)  # type: ignore[index]


def test_missing_file_is_a_dicom_file_error(tmp_path: Path) -> None:
    with pytest.raises(DicomFileError):
        Outgoing.of(tmp_path / "nope.dcm", keep=True)


def test_unknown_transfer_syntax_is_a_dicom_file_error(tmp_path: Path) -> None:
    """pydicom raises ValueError for a transfer syntax it does not know: a DicomFileError here."""
    data = SAMPLES[0].read_bytes()
    known = b"1.2.840.10008.1.2.1\x00"
    assert known in data[:400]
    path = tmp_path / "private-ts.dcm"
    path.write_bytes(data.replace(known, b"1.2.840.10008.9.9.9\x00", 1))
    for keep in (True, False):
        with pytest.raises(DicomFileError, match="unknown transfer syntax"):
            Outgoing.of(path, keep=keep)
