"""kit.dicom.deid: every PS3.15 Basic Profile attribute, pseudonyms, UID remapping, re-id map."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from kit.cli import cli
from kit.dicom._profile_options import RETAIN_LONGITUDINAL_MODIFIED_DATES
from kit.dicom.deid import (
    BASIC_PROFILE,
    BASIC_PROFILE_REPEATING,
    Deidentifier,
    ProfileAction,
    PseudonymKind,
    ReidentificationMap,
    burned_in_reason,
    profile_action,
)
from kit.errors import ConfigError, InvalidInputError
from kit.examples.cohort import COHORT

from ..dicom_index._make import ct_dataset, uid, write

KEY = "test-project-key-0123"
SPECIAL = {0x00100020, 0x00100010, 0x00080050}  # pseudonymised, not dummied
OPERATOR = "Secret^Operator"
#: how kit resolves each PS3.15 action code (the documented choice, independent of the code)
EXPECTED = {"D": "D", "Z": "Z", "X": "X", "U": "U", "Z/D": "D", "X/Z": "Z", "X/D": "D",
            "X/Z/D": "D", "X/Z/U*": "U*"}

_VALUES: dict[str, Any] = {
    "AE": "SECRETAE", "AS": "045Y", "CS": "SECRET", "DA": "20200102", "DT": "20200102101010",
    "TM": "101010", "DS": "1.5", "IS": "7", "LO": "secret lo", "LT": "secret lt", "PN": "Secret^Person",
    "SH": "secret sh", "ST": "secret st", "UC": "secret uc", "UT": "secret ut",
    "UR": "http://secret.example/x", "US": 7, "SS": 7, "UL": 7, "FL": 1.5, "FD": 1.5,
    "OB": b"secret!!", "OW": b"secret!!", "UN": b"secret!!",
}


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return "UN"  # newer than pydicom's dictionary
    return vr.split(" or ")[0]


def _value(tag: int, vr: str) -> Any:
    if vr == "UI":
        return f"1.2.826.0.1.3680043.8.498.{tag}"
    if vr == "SQ":
        item = Dataset()
        item.OperatorsName = OPERATOR  # X/Z/D in the profile: must be replaced inside the item
        item.CodeValue = "KEEP"
        return Sequence([item])
    return _VALUES[vr]


def _profile_dataset() -> tuple[Dataset, dict[int, tuple[str, Any]]]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    originals: dict[int, tuple[str, Any]] = {}
    for tag in BASIC_PROFILE:
        if tag >> 16 == 0x0002:
            continue
        vr = _vr(tag)
        ds.add_new(tag, vr, _value(tag, vr))
        originals[tag] = (vr, _value(tag, vr))
    for tag, vr in ((0x50000005, "US"), (0x60003000, "OW"), (0x60004000, "LT")):
        ds.add_new(tag, vr, _VALUES[vr])
        originals[tag] = (vr, _VALUES[vr])
    ds.add_new(0x00091010, "LO", "private secret")
    ds.add_new(0x00280010, "US", 8)  # not in the table: kept
    return ds, originals


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, Sequence) and not value)


def _check_replaced(vr: str, original: Any, value: Any) -> None:
    assert not _empty(value)
    if vr == "SQ":
        assert value[0].OperatorsName != OPERATOR and value[0].CodeValue == "KEEP"
    elif vr == "UI":
        assert value != original and UID(str(value)).is_valid
    else:
        assert value != original


def test_profile_table_is_complete() -> None:
    assert len(BASIC_PROFILE) > 600  # PS3.15 Table E.1-1 has ~650 attributes
    assert BASIC_PROFILE[0x0020000D] is ProfileAction.U  # StudyInstanceUID
    assert BASIC_PROFILE[0x00100010] is ProfileAction.Z  # PatientName
    assert profile_action(0x60023000) is ProfileAction.X  # overlay data, repeating group
    assert profile_action(0x50100005) is ProfileAction.X  # curve data
    assert profile_action(0x00280010) is None
    assert len(BASIC_PROFILE_REPEATING) == 3


def test_every_basic_profile_attribute() -> None:
    ds, originals = _profile_dataset()
    out = Deidentifier(KEY, shift_dates=False).dataset(ds)
    checked = 0
    for tag, (vr, original) in originals.items():
        action = profile_action(tag)
        assert action is not None
        elem = out.get(tag)
        applied = EXPECTED[action.value]
        if tag in SPECIAL:
            assert elem is not None and not _empty(elem.value) and elem.value != original
        elif applied == "X":
            assert elem is None, f"{tag:08X} {action} should be removed"
        elif applied == "Z":
            assert elem is not None and _empty(elem.value), f"{tag:08X} {action} should be empty"
        elif applied == "D":
            assert elem is not None, f"{tag:08X} {action} should be replaced"
            _check_replaced(vr, original, elem.value)
        elif applied in ("U", "U*"):
            assert elem is not None, f"{tag:08X} {action} should be kept with new UIDs"
            if vr == "SQ":
                assert elem.value[0].OperatorsName != OPERATOR
            else:
                _check_replaced(vr, original, elem.value)
        checked += 1
    assert checked == len(originals) > 600
    assert 0x00091010 not in out  # private
    assert out.Rows == 8
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID
    assert ds.PatientName == "Secret^Person"  # the input is not modified


def test_dates_shifted_per_patient() -> None:
    ds, originals = _profile_dataset()
    ds.PatientID = "MRN-SHIFT"
    d = Deidentifier(KEY, shift_dates=True)
    out = d.dataset(ds)
    shift = d.date_shift("MRN-SHIFT")
    assert dt.timedelta(days=-1095) <= shift <= dt.timedelta(days=-31)
    shifted_da = (dt.date(2020, 1, 2) + shift).strftime("%Y%m%d")
    n = 0
    for tag, (vr, _) in originals.items():
        if tag not in RETAIN_LONGITUDINAL_MODIFIED_DATES:  # the option's column does not list it
            continue
        if vr == "DA":
            assert out[tag].value == shifted_da
            n += 1
        elif vr == "DT":
            assert out[tag].value == shifted_da + "101010"
        elif vr == "TM":
            assert out[tag].value == "101010"
    assert n > 50
    # Patient's Birth Date is Z in the Basic Profile and no option keeps it (was: shifted)
    assert out.PatientBirthDate in ("", None)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    other = ct_dataset(1)
    expected = (COHORT[1].studies[0].date + d.date_shift(COHORT[1].mrn)).strftime("%Y%m%d")
    assert d.dataset(other).StudyDate == expected
    assert d.dataset(ct_dataset(1, 2, 3)).StudyDate == expected  # same patient, same shift


def test_same_patient_same_pseudonym_across_files_and_runs() -> None:
    a1, a2, b = ct_dataset(0, 1, 1), ct_dataset(0, 2, 5), ct_dataset(1, 1, 1)
    d = Deidentifier(KEY)
    o1, o2, ob = d.dataset(a1), d.dataset(a2), d.dataset(b)
    assert o1.PatientID == o2.PatientID != ob.PatientID
    assert o1.PatientName == o2.PatientName != ob.PatientName
    assert o1.PatientID != COHORT[0].mrn and COHORT[0].family not in str(o1.PatientName)
    assert o1.AccessionNumber == o2.AccessionNumber != COHORT[0].studies[0].accession
    again = Deidentifier(KEY.encode()).dataset(a1)  # another run, same key
    assert (again.PatientID, again.PatientName, again.SOPInstanceUID) == \
        (o1.PatientID, o1.PatientName, o1.SOPInstanceUID)
    other_key = Deidentifier("another-key-456").dataset(a1)
    assert other_key.PatientID != o1.PatientID
    assert d.pseudonym(PseudonymKind.PATIENT_ID, COHORT[0].mrn) == o1.PatientID


def test_uids_remapped_consistently() -> None:
    d = Deidentifier(KEY)
    first, second = ct_dataset(2, 1, 1), ct_dataset(2, 1, 2)
    ref = Dataset()
    ref.ReferencedSOPClassUID = first.SOPClassUID
    ref.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([ref])
    o1, o2 = d.dataset(first), d.dataset(second)
    assert o1.StudyInstanceUID == o2.StudyInstanceUID != first.StudyInstanceUID
    assert o1.SeriesInstanceUID == o2.SeriesInstanceUID != first.SeriesInstanceUID
    assert o1.FrameOfReferenceUID == o2.FrameOfReferenceUID != first.FrameOfReferenceUID
    assert o1.SOPInstanceUID != o2.SOPInstanceUID
    assert o2.ReferencedImageSequence[0].ReferencedSOPInstanceUID == o1.SOPInstanceUID
    assert o2.ReferencedImageSequence[0].ReferencedSOPClassUID == first.SOPClassUID  # class kept
    assert o1.SOPClassUID == first.SOPClassUID
    for u in (o1.StudyInstanceUID, o1.SOPInstanceUID):
        assert UID(u).is_valid and u.startswith("2.25.")
    assert d.reid_map.original(PseudonymKind.UID, o1.SOPInstanceUID) == first.SOPInstanceUID


def test_reid_map_round_trip_and_append(tmp_path: Path) -> None:
    d1 = Deidentifier(KEY, shift_dates=True)  # records the date shift too
    d1.dataset(ct_dataset(0))
    for suffix in (".parquet", ".csv"):
        path = d1.reid_map.save(tmp_path / f"map{suffix}")
        loaded = ReidentificationMap.load(path)
        assert loaded.frame.equals(d1.reid_map.frame)
    path = tmp_path / "map.parquet"
    d2 = Deidentifier(KEY, shift_dates=True)
    d2.dataset(ct_dataset(1))
    d2.reid_map.save(path)  # a second run appends
    merged = ReidentificationMap.load(path)
    assert len(merged) == len(d1.reid_map) + len(d2.reid_map)
    # every kind DICOM gives (FHIR and HL7 add IDENTIFIER and RESOURCE_ID: kit.deid.pseudonyms)
    assert set(merged.frame["kind"]) == {k.value for k in PseudonymKind} - {"identifier", "resource_id"}
    pseudo = merged.pseudonym(PseudonymKind.PATIENT_ID, COHORT[1].mrn)
    assert pseudo is not None and merged.original(PseudonymKind.PATIENT_ID, pseudo) == COHORT[1].mrn
    d3 = Deidentifier("a-different-key!")
    d3.dataset(ct_dataset(1))
    with pytest.raises(InvalidInputError, match="conflict"):
        d3.reid_map.save(path)
    with pytest.raises(InvalidInputError):
        d1.reid_map.save(tmp_path / "map.txt")


def test_key_is_secret_and_required() -> None:
    d = Deidentifier(KEY)
    assert KEY not in repr(d) and KEY not in repr(d.reid_map)
    with pytest.raises(TypeError):
        pickle.dumps(d)
    with pytest.raises(ConfigError):
        Deidentifier("short")


def test_burned_in_flags() -> None:
    assert burned_in_reason(ct_dataset(0)) is None
    assert "ultrasound" in (burned_in_reason(ct_dataset(0, modality="US")) or "")
    flagged = ct_dataset(0)
    flagged.BurnedInAnnotation = "YES"
    assert burned_in_reason(flagged) == "BurnedInAnnotation is YES"
    sc = ct_dataset(0)
    sc.Modality = "OT"
    sc.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    assert burned_in_reason(sc) is not None


def test_files(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write(ct_dataset(0, 1, 1), src / "Moreau_Alice_1.dcm")
    write(ct_dataset(0, 1, 2), src / "Moreau_Alice_2.dcm")
    write(ct_dataset(1, 1, 1, modality="US"), src / "us.dcm")
    (src / "notes.txt").write_text("not dicom")
    d = Deidentifier(KEY)
    result = d.files(src, tmp_path / "out")
    frame = result.frame.sort("path_in")
    assert frame["status"].to_list() == ["deidentified", "deidentified", "skipped", "deidentified"]
    assert result.n_deidentified == 3 and result.n_burned_in == 1
    assert frame.filter(pl.col("path_in").str.ends_with("us.dcm"))["burned_in_annotation"].item()
    written = [Path(p) for p in frame["path_out"].drop_nulls()]
    pseudonyms = dict(zip(frame["path_out"], frame["patient_id"], strict=True))
    for p in written:
        assert p.is_relative_to(tmp_path / "out") and "Moreau" not in str(p) and "MRN" not in str(p)
        ds = dcmread(p)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == pseudonyms[str(p)] != ""
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert p.stem == ds.SOPInstanceUID
    assert written[0].parent == written[1].parent  # same series folder
    assert not any(p.suffix in (".parquet", ".csv") for p in (tmp_path / "out").rglob("*"))


def test_cli_deid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    write(ct_dataset(0), src / "a.dcm")
    monkeypatch.delenv("KIT_DEID_KEY", raising=False)
    runner = CliRunner()
    no_key = runner.invoke(cli, ["deid", str(src), str(tmp_path / "out")])
    assert no_key.exit_code == 2 and "key" in no_key.output
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    ok = runner.invoke(cli, ["deid", str(src), str(tmp_path / "out"), "--key-file", str(key_file),
                             "--map", str(tmp_path / "map.csv")])
    assert ok.exit_code == 0, ok.output
    assert KEY not in ok.output
    reid = ReidentificationMap.load(tmp_path / "map.csv")
    assert reid.pseudonym(PseudonymKind.PATIENT_ID, COHORT[0].mrn) is not None
    monkeypatch.setenv("KIT_DEID_KEY", KEY)
    inside = runner.invoke(cli, ["deid", str(src), str(tmp_path / "out"),
                                 "--map", str(tmp_path / "out" / "m.parquet")])
    assert inside.exit_code == 2
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_text("nothing")
    nothing = runner.invoke(cli, ["deid", str(junk), str(tmp_path / "out2")])
    assert nothing.exit_code == 1
    default_map = runner.invoke(cli, ["deid", str(src), str(tmp_path / "out3")])
    assert default_map.exit_code == 0 and (tmp_path / "out3.reid-map.parquet").exists()
    assert uid(COHORT[0].mrn, 1, 1) not in default_map.output
