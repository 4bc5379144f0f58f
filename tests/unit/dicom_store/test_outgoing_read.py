"""Outgoing's file read (5 system calls) returns what Path.read_bytes returns; a large file's
check, read in chunks where the walk needs them, gives what the walk of its bytes gives, and a
large file cut short during its check is a DicomFileError (no memory map to fault the process);
the transfer syntax decision, cached, equals pydicom's properties."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit

from kit.dicom import _outgoing
from kit.dicom._outgoing import (
    _RAW_SYNTAXES,
    Outgoing,
    _file_meta,
    _open_window,
    _sent_raw,
    _skip_dataset,
    _Window,
)
from kit.errors import DicomFileError
from kit.examples.dicom import random_ct_files


def _read(path: Path) -> bytes:
    """The bytes ``_open_window`` gives for a file (under LARGE_FILE: all of it)."""
    with contextlib.ExitStack() as held:
        return _open_window(path, held).buf


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.one_of(st.integers(0, 70_000), st.sampled_from([0, 1, 65_535, 65_536, 65_537, 200_000])),
       seed=st.integers(0, 255))
def test_read_equals_read_bytes(tmp_path: Path, size: int, seed: int) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes((seed + i) % 251 for i in range(size)))
    assert _read(path) == path.read_bytes()


def test_read_errors_are_oserrors_as_before(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _read(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        _read(tmp_path)


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A file whose walk does all it can: a sequence of undefined length holding one, and
    encapsulated pixel data of 60 fragments (JPEG Baseline, never decoded here)."""
    folder = tmp_path_factory.mktemp("layered")
    (path,) = random_ct_files(folder, 1, size=16, seed=3)
    ds = dcmread(path)
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    outer = Dataset()
    outer.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    outer.ReferencedImageSequence = Sequence([inner])
    ds.SourceImageSequence = Sequence([outer, inner])
    ds["SourceImageSequence"].is_undefined_length = True
    outer["ReferencedImageSequence"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes([i]) * (500 + 7 * i) for i in range(60)])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 60
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def _walked(window: _Window, start: int, size: int) -> tuple[str, object]:
    try:
        return "end", _skip_dataset(window, start, size, True, nested=False)
    except (ValueError, struct.error) as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.sampled_from([8, 12, 13, 64, 1000, 1 << 16]), cut=st.integers(0, 40_000),
       flips=st.lists(st.tuples(st.integers(0, 40_000), st.integers(0, 255)), max_size=3))
def test_a_large_files_walk_in_chunks_equals_the_walk_of_its_bytes(
        tmp_path: Path, layered: bytes, monkeypatch: pytest.MonkeyPatch, chunk: int, cut: int,
        flips: list[tuple[int, int]]) -> None:
    """The walk of a large file (read ``chunk`` bytes at a time where it needs them) ends where
    the walk of its bytes ends, or fails with the same message, on cut and damaged files."""
    data = bytearray(layered[:len(layered) - cut % (len(layered) - 400)])
    for at, value in flips:
        data[400 + at % (len(data) - 400)] = value  # past the file meta: the walk reads on
    found = _file_meta(bytes(data))
    assume(found is not None)
    start = found[1]
    path = tmp_path / "large.dcm"
    path.write_bytes(data)
    monkeypatch.setattr(_outgoing, "_CHUNK", chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        in_chunks = _walked(_Window(os.pread(fd, chunk, 0), fd, len(data)), start, len(data))
    finally:
        os.close(fd)
    assert in_chunks == _walked(_Window(bytes(data)), start, len(data))


def test_a_large_file_is_checked_as_a_small_one_is(tmp_path: Path, layered: bytes,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "large.dcm"
    path.write_bytes(layered)
    small = Outgoing.of(path)
    assert not small.in_pieces
    monkeypatch.setattr(_outgoing, "LARGE_FILE", 1000)
    monkeypatch.setattr(_outgoing, "_CHUNK", 512)
    large = Outgoing.of(path)
    assert large == small and large.in_pieces
    assert large.file_size == small.file_size == len(layered)
    path.write_bytes(layered[:-3])
    with pytest.raises(DicomFileError, match="truncated or corrupt: sequence has no delimiter"):
        Outgoing.of(path)


def test_a_large_file_cut_short_while_it_is_checked_is_an_error_not_a_crash(tmp_path: Path,
                                                                          layered: bytes) -> None:
    """Another program truncates the file to two memory pages after its first chunk is read.
    Through a memory map, the walk's next item header, on the third page, faulted the process
    (SIGBUS: the interpreter killed, nothing reported); read, it is a short read, reported. In a
    process of its own, so that a fault kills only it."""
    path = tmp_path / "large.dcm"
    path.write_bytes(layered)
    assert len(layered) > 3 * mmap.PAGESIZE
    script = textwrap.dedent(f"""
        import mmap
        import os
        from kit.dicom import _outgoing
        from kit.errors import DicomFileError
        _outgoing.LARGE_FILE, _outgoing._CHUNK = 1000, 512
        meta = _outgoing._file_meta

        def then_cut(buf):  # after the file is opened, before the walk reads on
            found = meta(buf)
            os.truncate({str(path)!r}, 2 * mmap.PAGESIZE)
            return found

        _outgoing._file_meta = then_cut
        try:
            _outgoing.Outgoing.of({str(path)!r})
        except DicomFileError as exc:
            print("DicomFileError:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "DicomFileError:" in done.stdout and "cut short" in done.stdout, done.stdout


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
                                "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100"])
def test_sent_raw_equals_pydicoms_properties(ts: str) -> None:
    uid = UID(ts)
    expected = uid in _RAW_SYNTAXES or (uid.is_compressed and uid.is_little_endian and not uid.is_deflated)
    assert _sent_raw(ts) == expected
    assert _sent_raw(ts) == expected  # cached


@pytest.mark.parametrize("ts", ["1.2.3.4", "not a uid", ""])
def test_sent_raw_refuses_a_uid_that_is_no_transfer_syntax(ts: str) -> None:
    with pytest.raises(ValueError):
        _sent_raw(ts)
