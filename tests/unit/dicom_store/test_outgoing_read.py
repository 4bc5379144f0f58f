"""Outgoing's file read (5 system calls) returns what Path.read_bytes returns; the transfer
syntax decision, cached, equals pydicom's properties."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID

from kit.dicom._outgoing import _RAW_SYNTAXES, _read_or_map, _sent_raw


def _read(path: Path) -> bytes:
    """The bytes ``_read_or_map`` gives for a file (under LARGE_FILE: read, not mapped)."""
    with contextlib.ExitStack() as held:
        return bytes(_read_or_map(path, held)[0])


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
