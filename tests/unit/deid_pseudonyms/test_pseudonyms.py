"""kit.deid.pseudonyms and kit.deid.policy: one keyed map, date shifts, the re-id map, the key."""

from __future__ import annotations

import datetime as dt
import pickle
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from kit.deid.policy import BirthDate, DeidPolicy, PatientFacts, merge_facts, shift_date_text
from kit.deid.pseudonyms import (
    SHIFT_DAYS,
    Pseudonymiser,
    PseudonymKind,
    ReidentificationMap,
    key_fingerprint,
    load_key,
)
from kit.dicom.deid import Deidentifier
from kit.errors import ConfigError, InvalidInputError, KitError

from ..dicom_index._make import ct_dataset

KEY = "unit-test-key-0123456789"
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(st.text(min_size=0, max_size=40))
def test_deterministic_and_the_same_as_dicom(mrn: str) -> None:
    a, b = Pseudonymiser(KEY), Pseudonymiser(KEY.encode())
    assert a.patient_id(mrn) == b.patient_id(mrn) and a.date_shift(mrn) == b.date_shift(mrn)
    assert re.fullmatch(r"P[0-9A-F]{15}", a.patient_id(mrn))
    assert re.fullmatch(r"A[0-9A-F]{15}", a.accession_number(mrn))
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*|2\.25\.0", a.uid(mrn))
    assert len(a.uid(mrn)) <= 64  # a valid DICOM UID
    assert SHIFT_DAYS[0] <= a.date_shift(mrn).days <= SHIFT_DAYS[1]
    d = Deidentifier(KEY)  # DICOM gives the very same values
    assert d.pseudonym(PseudonymKind.PATIENT_ID, mrn) == a.patient_id(mrn)
    assert d.pseudonym(PseudonymKind.UID, mrn) == a.uid(mrn)
    assert d.date_shift(mrn) == a.date_shift(mrn)
    assert Pseudonymiser("another-key-0123").patient_id(mrn) != a.patient_id(mrn)


def test_kinds_do_not_collide_and_many_mrns_do_not_either() -> None:
    p = Pseudonymiser(KEY)
    assert p.patient_id("X123")[1:] != p.identifier("X123")[1:]
    assert p.patient_id("X123")[1:] != p.accession_number("X123")[1:]
    mrns = [f"MRN{n:07d}" for n in range(50_000)]
    assert len({p.patient_id(m) for m in mrns}) == len(mrns)  # the reid map would raise anyway
    assert len(p.reid_map) >= len(mrns)
    shifts = {p.date_shift(m).days for m in mrns[:5000]}
    assert min(shifts) == SHIFT_DAYS[0] and max(shifts) == SHIFT_DAYS[1]  # the whole range is used


def test_a_collision_raises_instead_of_merging_two_patients() -> None:
    m = ReidentificationMap()
    m.add(PseudonymKind.PATIENT_ID, "MRN1", "P000000000000001")
    m.add(PseudonymKind.PATIENT_ID, "MRN1", "P000000000000001")
    with pytest.raises(InvalidInputError, match="collision") as info:
        m.add(PseudonymKind.PATIENT_ID, "MRN2", "P000000000000001")
    assert "MRN" not in str(info.value)
    assert m.original(PseudonymKind.PATIENT_ID, "P000000000000001") == "MRN1"
    assert m.pseudonym(PseudonymKind.PATIENT_ID, "MRN2") is None
    m.add(PseudonymKind.DATE_SHIFT, "MRN1", "-40")
    m.add(PseudonymKind.DATE_SHIFT, "MRN2", "-40")  # shared shifts are not collisions


def test_reid_map_written_only_outside_the_output(tmp_path: Path) -> None:
    p = Pseudonymiser(KEY)
    p.patient_id("MRN1001")
    out = tmp_path / "out"
    out.mkdir()
    for inside in (out / "map.parquet", out / "a" / ".." / "map.csv", out / "deep" / "map.csv"):
        with pytest.raises(InvalidInputError, match="inside"):
            p.reid_map.save(inside, output_dir=out)
    saved = p.reid_map.save(tmp_path / "map.csv", output_dir=out)
    assert ReidentificationMap.load(saved).original(PseudonymKind.PATIENT_ID, p.patient_id("MRN1001")) \
        == "MRN1001"
    assert list(out.iterdir()) == []


def test_key_is_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = Pseudonymiser(KEY)
    assert KEY not in repr(p) and p.fingerprint in repr(p)
    assert p.fingerprint == key_fingerprint(KEY) != key_fingerprint("another-key-0123")
    assert re.fullmatch(r"[0-9a-f]{16}", p.fingerprint)
    with pytest.raises(TypeError):
        pickle.dumps(p)
    for bad in ("short", "", "        x", 12345):
        with pytest.raises(ConfigError):
            Pseudonymiser(bad)  # type: ignore[arg-type]
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert Pseudonymiser(load_key(key_file)).fingerprint == p.fingerprint
    assert KEY not in repr(load_key(key_file))
    monkeypatch.setenv("KIT_DEID_KEY", KEY)
    assert Pseudonymiser(load_key()).fingerprint == p.fingerprint
    monkeypatch.delenv("KIT_DEID_KEY")
    with pytest.raises(ConfigError):
        load_key()
    with pytest.raises(ConfigError):
        load_key(tmp_path / "missing")
    key_file.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError):
        load_key(key_file)


@FAST
@given(st.one_of(st.text(max_size=30), st.integers(), st.none(), st.binary(max_size=10)))
def test_only_kit_errors(value: object) -> None:
    p = Pseudonymiser(KEY)
    for kind in PseudonymKind:
        try:
            p.pseudonym(kind, value)  # type: ignore[arg-type]
        except KitError:
            assert not isinstance(value, str)


def test_other_patient_ids_keep_a_pseudonymised_patient_id() -> None:
    # before kit.deid, the whole sequence was removed: another MRN of the patient could not join
    ds = ct_dataset(0)
    item = Dataset()
    item.PatientID = "OLD-MRN-77"
    item.IssuerOfPatientID = "Old Hospital Name"
    item.TypeOfPatientID = "TEXT"
    empty = Dataset()
    empty.IssuerOfPatientID = "Nobody"
    ds.OtherPatientIDsSequence = Sequence([item, empty])
    d = Deidentifier(KEY)
    out = d.dataset(ds)
    assert len(out.OtherPatientIDsSequence) == 1
    kept = out.OtherPatientIDsSequence[0]
    assert kept.PatientID == Pseudonymiser(KEY).patient_id("OLD-MRN-77")
    assert kept.TypeOfPatientID == "TEXT" and "IssuerOfPatientID" not in kept
    only_empty = ct_dataset(0)
    only_empty.OtherPatientIDsSequence = Sequence([empty])
    assert "OtherPatientIDsSequence" not in d.dataset(only_empty)


def test_deidentifier_shares_a_pseudonymiser() -> None:
    p = Pseudonymiser(KEY)
    d = Deidentifier(p, shift_dates=True)
    out = d.dataset(ct_dataset(1))
    assert d.reid_map is p.reid_map and d.pseudonymiser is p
    assert p.reid_map.original(PseudonymKind.PATIENT_ID, out.PatientID) == ct_dataset(1).PatientID
    with pytest.raises(ConfigError):
        Deidentifier(p, reid_map=ReidentificationMap())


@pytest.mark.parametrize(("value", "syntax", "expected"), [
    ("2026-01-12", "fhir", "2025-12-31"),
    ("2026-01-12T09:14:00+01:00", "fhir", "2025-12-31T09:14:00+01:00"),
    ("2026-03-01T23:59:59.123456Z", "fhir", "2026-02-17T23:59:59.123456Z"),
    ("2026-01", "fhir", "2026-01"),
    ("2026", "fhir", "2026"),
    ("20260112", "hl7", "20251231"),
    ("202601120914", "hl7", "202512310914"),
    ("20260112091400.1234-0500", "hl7", "20251231091400.1234-0500"),
    ("20260112+0100", "hl7", "20251231+0100"),
    ("2026-13-01", "fhir", None), ("2026-01-12T25", "fhir", None), ("yesterday", "fhir", None),
    ("2026011", "hl7", None), ("20260112 0914", "hl7", None), ("00010105", "hl7", None),
    ("2026-01-12T09:14", "fhir", "2025-12-31T09:14"), ("١٢٣٤", "hl7", None),
])
def test_shift_date_text_keeps_precision_and_zone(value: str, syntax: str, expected: str | None) -> None:
    assert shift_date_text(value, dt.timedelta(days=-12), syntax=syntax) == expected


def test_policy_and_facts_are_validated() -> None:
    assert DeidPolicy("year").birth_date is BirthDate.YEAR  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DeidPolicy("keep")  # type: ignore[arg-type]
    a = PatientFacts("M1", names=("A^B", "A^B", " "), phones=("1",))
    assert a.names == ("A^B",)
    merged = merge_facts([a], [PatientFacts("M1", names=("C",)), PatientFacts("M2")])
    assert merged["M1"].names == ("A^B", "C") and set(merged) == {"M1", "M2"}
    with pytest.raises(ConfigError):
        a.merge(PatientFacts("M2"))
