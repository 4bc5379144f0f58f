"""Issue #7.11-14: options and their codes, SR text, every UID, File Meta, and the leak scan.

The scan (kit.dicom.deid_check) runs inside every de-identification; here it is also run on
the output files as written, over the torture file and the whole sample cohort, and each
planted leak is shown to be found (so the scan can fail).
"""

from __future__ import annotations

import concurrent.futures
import copy
import datetime as dt
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from kit import examples
from kit.dicom.deid import Deidentifier, DeidLeakError, DeidOptions
from kit.dicom.deid_check import check_deidentified, find_leaks, identifiers, is_instance_uid

from ..dicom_index._make import ct_dataset, write
from ._torture import (
    BIRTH,
    CONCAT_SRC_UID,
    FAMILY,
    GIVEN,
    MRN,
    PHI,
    REF_UID,
    SOP_UID,
    STATION,
    TARGET_FOR_UID,
    torture_dataset,
    write_torture,
)

KEY = "leak-test-key-0123"


def _codes(ds: Dataset) -> list[str]:
    return [str(c.CodeValue) for c in ds.DeidentificationMethodCodeSequence]


def _assert_clean_file(original: Dataset, written: Path) -> None:
    """The file as written: the value scan and a raw-bytes scan of everything but the pixels."""
    out = dcmread(written)
    assert find_leaks(identifiers(original), out) == []
    raw = written.read_bytes()
    pixels = out.get("PixelData")
    if pixels:
        raw = raw.replace(pixels, b"")
    assert identifiers(original).search_bytes(raw) is None


# -- item 11: options off by default, named in the output ---------------------------------

def test_default_is_the_basic_profile_alone() -> None:
    ds = ct_dataset(0)
    ds.PatientAge, ds.PatientWeight = "052Y", "61.5"
    out = Deidentifier(KEY).dataset(ds)
    assert out.PatientBirthDate in ("", None)  # Z (was: shifted by the patient's offset)
    assert out.StudyDate in ("", None) and out.StudyTime in ("", None)  # Z without the option
    assert "PatientAge" not in out and "PatientWeight" not in out  # X
    assert out.PatientSex in ("", None)  # Z
    assert _codes(out) == ["113100"]
    assert list(out.DeidentificationMethod) == ["PS3.15 Basic Profile (kit)"] or \
        out.DeidentificationMethod == "PS3.15 Basic Profile (kit)"
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_options_are_explicit_and_named() -> None:
    ds = ct_dataset(0)
    ds.PatientAge, ds.PatientWeight = "052Y", "61.5"
    d = Deidentifier(KEY, options=DeidOptions(retain_longitudinal_modified_dates=True,
                                              retain_patient_characteristics=True))
    out = d.dataset(ds)
    assert _codes(out) == ["113100", "113107", "113108"]
    assert list(out.DeidentificationMethod) == ["PS3.15 Basic Profile (kit)",
                                               "Retain Longitudinal Modified Dates",
                                               "Retain Patient Characteristics"]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientBirthDate in ("", None)  # no option of Table E.1-1 keeps it
    shifted = (examples.cohort.COHORT[0].studies[0].date + d.date_shift(ds.PatientID))
    assert out.StudyDate == shifted.strftime("%Y%m%d")
    assert out.StudyTime == ds.StudyTime  # whole-day shift
    assert (out.PatientAge, out.PatientWeight, out.PatientSex) == ("052Y", 61.5, ds.PatientSex)
    only_chars = Deidentifier(KEY, options=DeidOptions(retain_patient_characteristics=True))
    assert _codes(only_chars.dataset(ds)) == ["113100", "113108"]
    assert only_chars.dataset(ds).StudyDate in ("", None)
    assert Deidentifier(KEY, shift_dates=True).options.retain_longitudinal_modified_dates


# -- item 12: SR content -----------------------------------------------------------------

def test_sr_content_items_are_cleaned_at_every_depth() -> None:
    ds = torture_dataset()
    out = Deidentifier(KEY).dataset(ds)
    items = list(out.ContentSequence)
    texts = [items[0].TextValue, items[5].ContentSequence[0].TextValue]
    for text in texts:
        assert FAMILY not in text and MRN not in text and "1971" not in text
    assert FAMILY not in str(items[1].PersonName)
    assert items[2].Date != BIRTH and BIRTH not in items[3].DateTime
    referenced = out.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence[0]
    assert items[4].UID == referenced.ReferencedSOPInstanceUID != REF_UID  # references still resolve


# -- item 13: every UID, File Meta ---------------------------------------------------------

def test_every_instance_uid_is_remapped_and_file_meta_rewritten(tmp_path: Path) -> None:
    src = write_torture(tmp_path / "in" / "torture.dcm")
    result = Deidentifier(KEY).files(src, tmp_path / "out")
    assert result.frame["status"].to_list() == ["deidentified"], result.frame["reason"].to_list()
    out = dcmread(result.frame["path_out"].item())
    assert out.SOPInstanceUIDOfConcatenationSource != CONCAT_SRC_UID
    assert out[0x0018991E].value != TARGET_FOR_UID
    meta = out.file_meta
    assert "SourceApplicationEntityTitle" not in meta and "PrivateInformation" not in meta
    assert meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != SOP_UID
    assert meta.ImplementationVersionName == "KIT_DEID_1"
    assert out.SOPClassUID == meta.MediaStorageSOPClassUID == torture_dataset().SOPClassUID
    ref = out.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPClassUID == CTImageStorage  # a class UID is not an identifier
    assert 0x00720777 not in out  # UN: cannot be judged, removed


def test_is_instance_uid() -> None:
    assert is_instance_uid(0x00080018, "1.2.3.4")
    assert is_instance_uid(0x00200242, "1.2.3.4")  # not in the table, still an instance
    assert not is_instance_uid(0x00080016, "1.2.3.4")  # a (private) SOP class
    assert not is_instance_uid(0x00020010, "1.2.3.4.5")  # a (private) transfer syntax
    assert not is_instance_uid(0x0008010C, "2.16.840.1.113883.6.96")  # a coding scheme UID
    assert not is_instance_uid(0x00200052, "1.2.840.10008.1.4.1.1")  # well-known frame of ref.


# -- item 14: the leak scan ----------------------------------------------------------------

def test_torture_file_leaks_nothing(tmp_path: Path) -> None:
    src = write_torture(tmp_path / "in" / "torture.dcm")
    original = dcmread(src)
    assert len(find_leaks(identifiers(original), original)) > 30  # the scan sees every planted value
    for options in (DeidOptions(), DeidOptions(True, True)):
        result = Deidentifier(KEY, options=options).files(src, tmp_path / f"out{options}")
        assert result.n_deidentified == 1, result.frame["reason"].to_list()
        _assert_clean_file(original, Path(result.frame["path_out"].item()))
        raw = Path(result.frame["path_out"].item()).read_bytes()
        for what, value in PHI.items():
            assert value.encode() not in raw, what


def _set_text(path: Callable[[Dataset], Dataset], keyword: str, value: str) -> Callable[[Dataset], None]:
    def plant(ds: Dataset) -> None:
        setattr(path(ds), keyword, value)
    return plant


def _plant_private(ds: Dataset) -> None:
    ds.private_block(0x0011, "EVIL", create=True).add_new(0x01, "UN", f"x {MRN}\x00".encode("utf_16_le"))


def _plant_meta(ds: Dataset) -> None:
    ds.file_meta.SourceApplicationEntityTitle = STATION


def _plant_odd_pn(ds: Dataset) -> None:
    ds.OperatorsName = f"=^^{GIVEN.upper()}"


def _plant_uid(ds: Dataset) -> None:
    ds.SOPInstanceUIDOfConcatenationSource = CONCAT_SRC_UID


def _plant_nested(ds: Dataset) -> None:
    item = Dataset()
    inner = Dataset()
    inner.add_new(0x00081030, "LO", f"for {FAMILY.lower()}")  # StudyDescription, lower case
    item.ReferencedImageSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([item])


def _plant_ob(ds: Dataset) -> None:
    ds.add_new(0x00420011, "OB", b"%PDF " + f"{FAMILY} {GIVEN} 1971-07-23".encode() + b"\x00")


PLANTS: dict[str, Callable[[Dataset], None]] = {
    "SR text": lambda ds: setattr(ds.ContentSequence[0], "TextValue", f"pt. {GIVEN} {FAMILY}"),
    "SR text, birth date spelled out": lambda ds: setattr(ds.ContentSequence[0], "TextValue",
                                                          "born July 23, 1971"),
    "unlisted attribute": _set_text(lambda ds: ds, "Manufacturer", f"{STATION} scope"),
    "private tag, UTF-16 bytes": _plant_private,
    "File Meta AE title": _plant_meta,
    "odd PN component": _plant_odd_pn,
    "concatenation source UID": _plant_uid,
    "nested sequence, lower case": _plant_nested,
    "raw OB bytes": _plant_ob,
}


@pytest.mark.parametrize("where", list(PLANTS))
def test_scan_finds_each_planted_leak(where: str) -> None:
    original = torture_dataset()
    clean = Deidentifier(KEY).dataset(original)
    assert find_leaks(identifiers(original), clean) == []
    dirty = copy.deepcopy(clean)
    PLANTS[where](dirty)
    findings = find_leaks(identifiers(original), dirty)
    assert findings, where
    with pytest.raises(DeidLeakError) as info:
        check_deidentified(original, dirty)
    message = str(info.value)
    for value in (FAMILY, GIVEN, MRN, STATION, "1971"):  # the error names places, not values
        assert value not in message


def test_a_leak_fails_the_file_and_nothing_is_written(tmp_path: Path) -> None:
    ds = ct_dataset(0)
    ds.Manufacturer = f"{ds.PatientID} ward scanner"  # an attribute the table does not list
    src = write(ds, tmp_path / "in" / "leaky.dcm")
    result = Deidentifier(KEY).files(src, tmp_path / "out")
    row = result.frame.row(0, named=True)
    assert row["status"] == "failed" and row["path_out"] is None
    assert "DeidLeakError" in row["reason"] and ds.PatientID not in row["reason"]
    assert not list((tmp_path / "out").rglob("*.dcm"))
    with pytest.raises(DeidLeakError):
        Deidentifier(KEY).dataset(ds)


def _unlisted(ds: Dataset) -> Dataset:
    """Attributes the 2026c table does not list, holding what identifies, as an audit found them."""
    ds.add_new(0x00400400, "LT", "DOB 3/14/1958, seen 2024-04-15")  # Comments on the Sched. Proc. Step
    ds.add_new(0x00420010, "ST", "Report of 14-Mar-1958")  # Document Title
    ds.add_new(0x00081999, "LO", "DOB 1958-3-14")  # public, unknown to the dictionary
    ds.add_new(0x00140102, "DA", "20240415")  # Secondary Review Date (DICONDE)
    ds.add_new(0x60000010, "US", 16)  # Overlay Rows: a repeating group pydicom knows, kept
    return ds


@pytest.mark.parametrize("shift", [False, True])
def test_text_dates_and_unknown_attributes_the_table_does_not_list_do_not_survive(shift: bool) -> None:
    """The table's attributes were handled; those it does not list were kept as they were, unless
    a UID, a name or SR text: a birth date typed into a comment, a date (which, kept beside
    shifted ones, gives the patient's offset away) and unknown public attributes now go."""
    ds = _unlisted(ct_dataset(0))
    d = Deidentifier(KEY, options=DeidOptions(retain_longitudinal_modified_dates=shift))
    out = d.dataset(ds)
    assert out[0x00400400].value in ("", None) and out[0x00420010].value in ("", None)  # emptied
    assert 0x00081999 not in out and out[0x60000010].value == 16
    review = out[0x00140102].value
    if shift:
        assert review == (dt.date(2024, 4, 15) + d.date_shift(ds.PatientID)).strftime("%Y%m%d")
    else:
        assert review in ("", None)


@pytest.mark.parametrize("spelled", ["DOB 3/14/1958", "14-Mar-1958", "1958-3-14", "14.03.58", "3/14/58",
                                     "14.3.1958", "born 14th March 1958", "March 14, 1958", "14031958",
                                     "Mar 14 1958", "14 mar 58"])
def test_the_scan_finds_the_birth_date_as_people_write_it(spelled: str) -> None:
    """It knew the zero-padded spellings only: "3/14/1958" and "14-Mar-1958" passed."""
    ds = ct_dataset(0)
    ds.PatientBirthDate = "19580314"
    out = Dataset()
    out.Manufacturer = f"note: {spelled}."
    assert find_leaks(identifiers(ds), out) == ["(0008,0070) Manufacturer: birth date"]


@pytest.mark.parametrize("other", ["1.2.826.0.1.14.3.58.2", "14.3.58", "3/14/1957", "1958", "314"])
def test_the_birth_date_scan_spares_what_is_not_the_birth_date(other: str) -> None:
    ds = ct_dataset(0)
    ds.PatientBirthDate = "19580314"
    out = Dataset()
    out.Manufacturer = other
    assert find_leaks(identifiers(ds), out) == []


def test_a_second_input_with_the_same_sop_instance_uid_does_not_overwrite_the_first(
        tmp_path: Path) -> None:
    """An original and a corrected re-send share their SOP Instance UID: both were reported
    de-identified and the second silently replaced the first. A re-run still writes the same bytes."""
    first, second = ct_dataset(0, 1, 1), ct_dataset(0, 1, 1)
    second.ImageType = ["DERIVED", "SECONDARY"]
    write(first, tmp_path / "in" / "a.dcm")
    write(second, tmp_path / "in" / "b.dcm")
    frame = Deidentifier(KEY).files(tmp_path / "in", tmp_path / "out").frame
    assert frame["status"].to_list() == ["deidentified", "failed"]
    assert "not overwritten" in frame["reason"][1]
    (written,) = list((tmp_path / "out").rglob("*.dcm"))
    assert "ImageType" not in dcmread(written) and str(written) == frame["path_out"][0]  # the first
    again = Deidentifier(KEY).files(tmp_path / "in" / "a.dcm", tmp_path / "out").frame
    assert again["status"].to_list() == ["deidentified"] and again["path_out"][0] == str(written)


def test_whole_sample_cohort_leaks_nothing(tmp_path: Path) -> None:
    src = examples.dicom_dir()
    for options in (DeidOptions(), DeidOptions(True, True)):
        out_dir = tmp_path / ("basic" if options == DeidOptions() else "options")
        result = Deidentifier(KEY, options=options).files(src, out_dir)
        frame = result.frame
        assert result.n_deidentified == frame.height > 100, frame["reason"].drop_nulls().to_list()
        for path_in, path_out in frame.select("path_in", "path_out").iter_rows():
            _assert_clean_file(dcmread(path_in), Path(path_out))


@pytest.mark.filterwarnings("ignore")
def test_data_set_without_file_meta_is_deidentified(tmp_path: Path) -> None:
    """Issue #8.7 for deid: what the index reads (no preamble, no File Meta), deid reads too."""
    src = Path(get_testdata_file("rtstruct.dcm"))  # type: ignore[arg-type]
    result = Deidentifier(KEY).files(src, tmp_path / "out")
    assert result.frame["status"].to_list() == ["deidentified"], result.frame["reason"].to_list()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = dcmread(src, force=True)
        _assert_clean_file(original, Path(result.frame["path_out"].item()))


def test_two_workers_writing_the_same_sop_instance_uid_at_once_never_both_succeed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers (Dask's, say) each de-identify one of two inputs that share their SOP Instance UID,
    at the same moment: the check for an existing output and the write were two steps, so both could
    find nothing and both be reported de-identified, one file silently replacing the other. Each
    worker here waits for the other after writing its file, so that both reach that step together."""
    pairs = 40
    for k in range(pairs):
        first, second = ct_dataset(0, 1, k + 1), ct_dataset(0, 1, k + 1)
        second.ImageType = ["DERIVED", "SECONDARY"]
        write(first, tmp_path / "a" / f"{k}.dcm")
        write(second, tmp_path / "b" / f"{k}.dcm")
    together = threading.Barrier(2, timeout=30)
    save_as = Dataset.save_as

    def save_then_wait(self: Dataset, *args: Any, **kwargs: Any) -> None:
        save_as(self, *args, **kwargs)
        together.wait()

    monkeypatch.setattr(Dataset, "save_as", save_then_wait)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(Deidentifier(KEY).files, sorted((tmp_path / side).glob("*.dcm"),
                                                              key=lambda p: int(p.stem)), tmp_path / "out")
                for side in ("a", "b")]
        a, b = (run.result().frame for run in runs)
    for k in range(pairs):
        statuses = sorted([a["status"][k], b["status"][k]])
        assert statuses == ["deidentified", "failed"], (k, statuses)
        winner = a if a["status"][k] == "deidentified" else b
        written = dcmread(winner["path_out"][k])
        assert ("ImageType" in written) == (winner is b), k  # the file is the one reported
