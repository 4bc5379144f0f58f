"""kit.dicom.received: the strict check of a received data set (pure), against pydicom's reader."""

from __future__ import annotations

import zlib
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, generate_uid

from kit.dicom.received import CANNOT_UNDERSTAND, DATASET_MISMATCH, check_received
from kit.dicom.store import INDEX_TAGS, index_attributes, verdict_attributes
from tests.unit.core.test_purity import FORBIDDEN, KIT, _closure

EXPLICIT, IMPLICIT, BIG, DEFLATED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2",
                                     "1.2.840.10008.1.2.1.99")
JPEG = "1.2.840.10008.1.2.4.50"


def instance(*, rows: int = 4, cols: int = 4, frames: int | None = None, name: str = "Doe^Jane") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.5"
    ds.PatientName, ds.PatientID = name, "P1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20260101", "CT", 1, 3
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\x01\x00" * rows * cols * (frames or 1)
    return ds


def encode(ds: Dataset, syntax: str = EXPLICIT) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = syntax != BIG, syntax == IMPLICIT
    write_dataset(buf, ds)
    data = buf.getvalue()
    if syntax == DEFLATED:
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return packer.compress(data) + packer.flush()
    return data


def check(data: bytes, syntax: str = EXPLICIT, uid: str = "1.2.3.4.5") -> tuple[int, str]:
    verdict = check_received(data, syntax, CTImageStorage, uid)
    return verdict.status, verdict.reason


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT, BIG, DEFLATED])
def test_valid_data_sets_pass_in_every_syntax(syntax: str) -> None:
    assert check(encode(instance(frames=3), syntax), syntax) == (0, "")


def test_the_issue_cases_are_refused() -> None:
    good = encode(instance())
    assert check(b"")[0] == CANNOT_UNDERSTAND
    assert check(b"\x08\x00\x16\x00UI\x1a\x00")[0] == CANNOT_UNDERSTAND
    assert check(bytes(range(256)) * 40)[0] == CANNOT_UNDERSTAND
    assert check(good[:-5])[0] == CANNOT_UNDERSTAND  # value length overrun (pixel data cut)
    short = instance()
    short.PixelData = short.PixelData[:-2]
    status, reason = check(encode(short))
    assert status == CANNOT_UNDERSTAND and "pixel data" in reason
    frames = instance(frames=4)
    frames.PixelData = frames.PixelData[: len(frames.PixelData) // 2]
    assert check(encode(frames))[0] == CANNOT_UNDERSTAND
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        missing = instance()
        delattr(missing, keyword)
        assert check(encode(missing))[0] == DATASET_MISMATCH, keyword
    assert check(good, uid="1.2.3.4.6")[0] == DATASET_MISMATCH  # not the instance the command names
    bad_uid = instance()
    bad_uid.StudyInstanceUID = "1.2.abc"
    assert check(encode(bad_uid))[0] == DATASET_MISMATCH


def test_sequences_defined_and_undefined_lengths_and_their_overruns() -> None:
    ds = instance()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "121", "DCM"
    item = Dataset()
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.ContentSequence = Sequence([item, Dataset()])
    for syntax in (EXPLICIT, IMPLICIT):
        assert check(encode(ds, syntax), syntax) == (0, "")  # defined lengths
    for element, owner in ((ds["ContentSequence"], item), (item["ConceptNameCodeSequence"], inner)):
        element.is_undefined_length = True
        owner.is_undefined_length_sequence_item = True
    for syntax in (EXPLICIT, IMPLICIT):
        assert check(encode(ds, syntax), syntax) == (0, "")  # undefined lengths and delimiters
    data = encode(ds)
    start = data.index(b"\xfe\xff\xdd\xe0")  # the inner sequence delimiter
    assert check(data[:start] + data[start + 8:])[0] == CANNOT_UNDERSTAND  # delimiter missing
    deep = instance()
    nest: Dataset = deep
    for _ in range(80):
        child = Dataset()
        nest.ContentSequence = Sequence([child])
        nest = child
    assert "deeper" in check(encode(deep))[1]


def test_encapsulated_pixel_data() -> None:
    ds = instance()
    ds.PixelData = encapsulate([b"\xff\xd8frame\xff\xd9\x00"])
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    data = encode(ds)
    assert check(data, JPEG) == (0, "")
    assert check(data[:-8], JPEG)[0] == CANNOT_UNDERSTAND  # no sequence delimiter
    native = encode(instance())
    assert check(native, JPEG)[0] == CANNOT_UNDERSTAND  # a compressed syntax needs fragments


def test_deflate_bomb_is_bounded() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(b"\x00" * (8 << 20)) + packer.flush()
    verdict = check_received(bomb, DEFLATED, CTImageStorage, "1.2.3.4.5", max_inflated=1 << 20)
    assert verdict.status == CANNOT_UNDERSTAND and "inflates beyond" in verdict.reason


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([EXPLICIT, IMPLICIT, BIG, DEFLATED, JPEG]))
def test_any_bytes_give_a_verdict_never_an_exception(data: bytes, syntax: str) -> None:
    verdict = check_received(data, syntax, CTImageStorage, "1.2.3.4.5")
    assert verdict.status in (0, DATASET_MISMATCH, CANNOT_UNDERSTAND)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=4), st.sampled_from([EXPLICIT, IMPLICIT]))
def test_corrupted_data_sets_never_raise(position: int, junk: bytes, syntax: str) -> None:
    data = bytearray(encode(instance(rows=8, cols=8), syntax))
    position %= len(data)
    data[position:position + len(junk)] = junk
    verdict = check_received(bytes(data), syntax, CTImageStorage, "1.2.3.4.5")
    assert verdict.status in (0, DATASET_MISMATCH, CANNOT_UNDERSTAND)


def _boundaries(data: bytes, syntax: str) -> set[int]:
    """Offsets where a top-level element starts or the data set ends (per pydicom)."""
    from pydicom.filereader import data_element_generator

    out = {0, len(data)}
    fp = BytesIO(data)
    for _ in data_element_generator(fp, syntax == IMPLICIT, True):
        out.add(fp.tell())
    return out


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10_000), st.sampled_from([EXPLICIT, IMPLICIT]))
def test_a_cut_inside_an_element_is_always_refused(cut: int, syntax: str) -> None:
    data = encode(instance(rows=8, cols=8), syntax)
    cut %= len(data)
    if cut in _boundaries(data, syntax):
        return
    assert check_received(data[:cut], syntax, CTImageStorage, "1.2.3.4.5").status == CANNOT_UNDERSTAND


_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\\^="),
                max_size=20).map(str.strip)


@settings(max_examples=100, deadline=None)
@given(name=_TEXT, description=_TEXT, number=st.integers(0, 9999),
       syntax=st.sampled_from([EXPLICIT, IMPLICIT]),
       charset=st.sampled_from(["ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 100"]))
def test_index_attributes_equal_pydicoms(name: str, description: str, number: int, syntax: str,
                                         charset: str) -> None:
    """The walk's values (the fast path) give the same index row as pydicom's reader (the slow one)."""
    ds = instance(name=name)
    ds.SpecificCharacterSet = charset
    ds.StudyDescription, ds.SeriesNumber = description, number
    ds.SOPInstanceUID = generate_uid()
    data = encode(ds, syntax)
    verdict = check_received(data, syntax, CTImageStorage, ds.SOPInstanceUID, keep=INDEX_TAGS)
    assert verdict.ok, verdict.reason
    slow = index_attributes(read_dataset(BytesIO(data), syntax == IMPLICIT, True))
    assert verdict_attributes(verdict) == slow


def test_module_is_pure() -> None:
    path = KIT / "dicom" / "received.py"
    bad = [n for n in _closure(path) if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert not bad and Path(path).is_file()
