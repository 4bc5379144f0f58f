"""The identifiers a retrieve checks each instance by: :func:`kit.dicom._getphase.read_identity`
reads what pydicom reads, in every transfer syntax, past nested sequences of defined and undefined
length; :class:`~kit.dicom._getphase.Expected` refuses what was not asked."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode

from kit.dicom._getphase import Expected, read_identity
from tests.integration.pacs_client.test_retrieve_integrity import ASKED, OTHER, ct

SOP, STUDY, SERIES = 0x00080018, 0x0020000D, 0x0020000E


def _with_sequences(undefined: bool) -> Dataset:
    ds = ct(ASKED, ASKED + ".1", ASKED + ".1.7")
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = OTHER + ".1.1"
    inner.StudyInstanceUID = OTHER  # a study UID inside a sequence is not the instance's
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedImageSequence = Sequence([inner, inner])
    ds.SourceImageSequence = Sequence([item])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    for seq in (ds.SourceImageSequence, ds.ReferencedImageSequence, item.ReferencedImageSequence):
        seq.is_undefined_length = undefined
        for each in seq:
            each.is_undefined_length_sequence_item = undefined
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_read_identity_reads_what_pydicom_reads(syntax: str, undefined: bool) -> None:
    ds = _with_sequences(undefined)
    data = encode(ds, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian,
                  syntax == DeflatedExplicitVRLittleEndian)
    assert data is not None
    assert read_identity(data, syntax) == {SOP: ASKED + ".1.7", STUDY: ASKED, SERIES: ASKED + ".1"}
    assert Expected(ASKED, ASKED + ".1")(ASKED + ".1.7", syntax, data) == (0, "")


def test_expected_refuses_what_was_not_asked() -> None:
    data = encode(ct(ASKED, ASKED + ".1", ASKED + ".1.7"), True, True)
    assert data is not None
    expect = Expected(ASKED)
    assert expect(ASKED + ".1.7", ImplicitVRLittleEndian, data) == (0, "")
    assert expect(ASKED + ".1.8", ImplicitVRLittleEndian, data)[0] == 0xA900  # not the command's
    assert expect(ASKED + ".1.7", ImplicitVRLittleEndian, data[:40])[0] == 0xC000  # cut short
    assert Expected(OTHER)(ASKED + ".1.7", ImplicitVRLittleEndian, data)[0] == 0xA900
    assert Expected(ASKED, sop_uid=ASKED + ".1.9")(ASKED + ".1.7", ImplicitVRLittleEndian, data)[0] == 0xA900
    assert len(expect.refused) == 2


@pytest.mark.parametrize("uid", ["1.2." + "3" * 248, "1.2\x003", "../1.2", ".1.2", "1/2", "1.2\ufffd", ""])
def test_expected_refuses_a_uid_that_cannot_name_a_file(uid: str) -> None:
    """Checked before the data set is read: refused (0xC000), never a local write failure."""
    status, why = Expected(ASKED)(uid, ImplicitVRLittleEndian, b"")
    assert status == 0xC000 and "cannot name a file" in why


def test_a_uid_that_only_breaks_ps35_syntax_is_kept() -> None:
    data = encode(ct(ASKED, ASKED + ".1", ASKED + ".01..x"), True, True)
    assert data is not None
    assert Expected(ASKED)(ASKED + ".01..x", ImplicitVRLittleEndian, data) == (0, "")
