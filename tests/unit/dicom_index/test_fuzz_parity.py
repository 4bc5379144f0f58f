"""Fuzzing the DICOM index on mutated real files: only KitError/skips, and fast == pydicom.

Seeds are real files from pydicom's corpus (explicit and implicit VR, sequences, no File Meta,
a UTF-8 person name with an empty ideographic group) and one of ours. Mutations: flipped bytes,
truncation, a corrupted tag, a corrupted length. For every mutant:

* ``index_dicom`` returns a row or a ``skipped`` entry and raises nothing;
* the fast reader raises only ``Skip`` or ``Fallback`` (internal) or returns values, and
  whenever it accepts a file, pydicom gives the identical row.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_charset_files, get_testdata_files

from kit.dicom._header import Fallback, Skip, read_fast, read_pydicom, to_row
from kit.dicom.index import index_dicom

from ._make import ct_dataset, with_sequences, write

_DIR = tempfile.mkdtemp(prefix="kit-index-fuzz-")
_SEED_NAMES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "image_dfl.dcm", "chrX1.dcm",
               "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm", "MR_small_implicit.dcm")
_CORPUS = {Path(f).name: f for f in get_testdata_files() + get_charset_files()}
SEEDS = [Path(_CORPUS[n]).read_bytes()[:6000] for n in _SEED_NAMES if n in _CORPUS]
SEEDS.append(write(with_sequences(ct_dataset(0), undefined=True), Path(_DIR) / "ours.dcm").read_bytes())


@pytest.fixture(autouse=True, scope="module")
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_DIR, ignore_errors=True)


def _check(data: bytes) -> None:
    path = os.path.join(_DIR, "x.dcm")
    with open(path, "wb") as f:
        f.write(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = index_dicom(path, workers=1)  # raises nothing for any content
        assert result.frame.height + result.skipped.height == 1
        if result.skipped.height:
            assert result.skipped["reason"].item()
        try:
            fast = to_row(read_fast(path), path)
        except (Skip, Fallback):
            return
        try:
            slow = to_row(read_pydicom(path), path)
        except Skip as exc:  # pragma: no cover - a disagreement, reported below
            raise AssertionError(f"fast reader accepted a file pydicom skips: {exc}") from exc
    assert fast == slow


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                   min_size=1, max_size=4))
def test_flipped_bytes(seed: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(SEEDS[seed])
    for where, value in flips:
        data[where % len(data)] = value
    _check(bytes(data))


# each as long as the seed's "ISO_IR 100" it replaces
@pytest.mark.parametrize("charset", [b"\x00SO_IR 100", b"ISO_IR\x00100", b"ISO-IR 100", b"ISO_IR 999"])
def test_a_character_set_only_pydicom_knows_is_its_to_read(charset: bytes) -> None:
    """Hypothesis found it: a NUL in SpecificCharacterSet, which pydicom refuses; the fast reader
    took it for ASCII. Any character set it does not know is now pydicom's to read."""
    seed = next(s for s in SEEDS if b"ISO_IR 100" in s)
    data = seed.replace(b"ISO_IR 100", charset, 1)
    with pytest.raises(Fallback):
        read_fast_path(data)
    _check(data)


def read_fast_path(data: bytes) -> None:
    path = os.path.join(_DIR, "x.dcm")
    with open(path, "wb") as f:
        f.write(data)
    read_fast(path)


@_FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 10**6))
def test_truncated(seed: int, cut: int) -> None:
    data = SEEDS[seed]
    _check(data[:cut % len(data)])


def _header_offsets(data: bytes) -> list[int]:
    """Byte offsets of plausible element headers (group 0x0008..0x0040, even)."""
    return [i for i in range(0, len(data) - 8, 2)
            if struct.unpack_from("<H", data, i)[0] in (0x0008, 0x0010, 0x0018, 0x0020, 0x0028)]


_OFFSETS = [_header_offsets(s) for s in SEEDS]


@_FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.integers(0, 10**6),
       st.sampled_from([0x7FE00008, 0x7FE00010, 0x7FE10010, 0xFFFEE000, 0xFFFEE0DD, 0xFFFCFFFC,
                        0x00020010, 0x00100010, 0x00080005, 0x80000000]),
       st.booleans(), st.integers(0, 0xFFFFFFFF))
def test_corrupted_tag_or_length(seed: int, pick: int, tag: int, length_too: bool, length: int) -> None:
    data = bytearray(SEEDS[seed])
    offsets = _OFFSETS[seed]
    pos = offsets[pick % len(offsets)]
    data[pos:pos + 4] = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if length_too:
        data[pos + 4:pos + 8] = struct.pack("<I", length)  # implicit: the length; explicit: VR+length
    _check(bytes(data))


_PN_TEXT = st.text(alphabet="AbZ^= \\王小東é", max_size=24)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PN_TEXT, st.sampled_from(["ISO_IR 192", "ISO_IR 100"]))
def test_person_names_fast_equals_pydicom(name: str, charset: str) -> None:
    if charset == "ISO_IR 100":
        name = name.encode("latin_1", "replace").decode("latin_1").replace("?", "")
    ds = ct_dataset(0)
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    path = write(ds, Path(_DIR) / "pn.dcm")
    fast = to_row(read_fast(str(path)), str(path))
    assert fast == to_row(read_pydicom(str(path)), str(path))
