"""The header reader never crashes: random bytes give a row or a skip reason."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.dicom._header import Skip, read_file, to_row

from ._make import ct_dataset, write

_DIR = tempfile.mkdtemp(prefix="kit-header-fuzz-")
_PATH = os.path.join(_DIR, "x.dcm")
_VALID = write(ct_dataset(0), Path(_DIR) / "valid.dcm").read_bytes()


@pytest.fixture(autouse=True, scope="module")
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_DIR, ignore_errors=True)


def _check(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        values, reader = read_file(_PATH)
    except Skip as exc:
        assert str(exc)
        return
    assert reader in ("fast", "pydicom")
    row = to_row(values, _PATH)
    assert row[-2] == _PATH


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_after_dicm(data: bytes) -> None:
    _check(b"\x00" * 128 + b"DICM" + data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=132, max_value=len(_VALID) - 1), st.binary(min_size=1, max_size=8),
       st.booleans())
def test_mutated_valid_file(offset: int, patch: bytes, cut: bool) -> None:
    data = _VALID[:offset] if cut else _VALID[:offset] + patch + _VALID[offset + len(patch):]
    _check(data)
