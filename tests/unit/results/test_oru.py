"""kit.results.oru: an AnalysisResult as a strictly valid, deterministic ORU^R01 that kit.hl7 reads back."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import hl7
import polars as pl
import pytest
from hypothesis import given, settings

from kit.errors import InvalidInputError, KitError
from kit.hl7 import parse_message, read_file, to_frames, validate_er7
from kit.hl7.typed import ResultReport
from kit.results import Algorithm, Code, Label, Measurement
from kit.results.oru import (
    CONCLUSION_CODE,
    MAX_COMPONENT,
    control_id,
    encode_oru,
    oru_conclusion,
    read_oru,
)
from tests.unit.results.samples import CONCLUSION, DIAMETER, MM, SOLID, STUDY, results, sample, with_subject


def test_valid_strictly_and_laid_out_as_documented() -> None:
    r = sample()
    text = encode_oru(r, receiving_application="RIS", receiving_facility="HOSP")
    validate_er7(text)  # hl7apy strict, again, from the outside
    lines = text.split("\r")
    assert text.endswith("\r") and "\n" not in text
    names = [line[:3] for line in lines if line]
    assert names == ["MSH", "PID", "ORC", "OBR"] + ["OBX"] * (len(names) - 5) + ["ZDS"]
    m = parse_message(text)
    assert m.control_id == control_id(r) and len(m.control_id) == 20
    assert (m.get("MSH-5"), m.get("MSH-6"), m.get("MSH-7")) == ("RIS", "HOSP", "20260112091430+0000")
    assert m.get("PID-3.1") == "MRN1001" and m.get("PID-3.5") == "MR" and m.get("PID-5.1.1") == "Moreau"
    assert (m.get("ORC-1"), m.get("ORC-2.1"), m.get("ORC-3.1")) == ("RE", "ACC1001", "res-1")
    assert (m.get("OBR-18"), m.get("OBR-4.1"), m.get("OBR-25")) == ("ACC1001", "18748-4", "F")
    report = m.typed()
    assert isinstance(report, ResultReport)
    order = report.orders[0]
    assert order.study_instance_uid == STUDY and order.accession_number == "ACC1001"
    obx = report.results
    # measurement 1: NM + its finding and finding site, all sub-id 1; measurement 2: sub-id 2
    assert [(o.value_type, o.code, o.sub_id) for o in obx[:5]] == [
        ("NM", "81827009", "1"), ("CE", "121071", "1"), ("CE", "363698007", "1"),
        ("NM", "118565006", "2"), ("CE", "F-1", "3")]
    assert obx[0].value == "12.5" and obx[0].units == "mm" and obx[3].value == "0.0001"
    assert m.get("OBX(1)-6") == "mm^millimeter^UCUM"
    assert m.get("OBX(1)-17") == "lesion-finder^1.2.0" and m.get("OBX(1)-19") == "20260112091430+0000"
    # the label's value keeps its delimiters as text, the score follows in an NM OBX
    assert m.get("OBX(5)-5.2") == SOLID.meaning and m.get("OBX(5)-5.1") == "S-1"
    assert (obx[5].value_type, obx[5].code, obx[5].sub_id, obx[5].value) == ("NM", "score", "3", "0.93")
    assert all(o.status == "F" for o in obx)


def test_the_same_result_is_the_same_message() -> None:
    a, b = encode_oru(sample()), encode_oru(sample())
    assert a == b
    other = encode_oru(sample(result_id="res-2"))
    assert control_id(sample(result_id="res-2")) != control_id(sample())
    assert parse_message(other).control_id == control_id(sample(result_id="res-2"))


def test_conclusion_escaped_and_read_back_exactly() -> None:
    text = encode_oru(sample())
    tx = [line for line in text.split("\r") if line.startswith("OBX") and "|TX|" in line]
    assert len(tx) == 3  # three lines
    assert tx[0].split("|")[5] == r"Solid nodule \F\\S\\R\\E\\T\ in the right upper lobe,"
    assert tx[1].split("|")[5] == r"12.5 mm.\X0D\\"[:-1]
    assert oru_conclusion(read_oru(text)) == CONCLUSION
    # and python-hl7, another parser, sees the same number of segments and OBX fields
    parsed = hl7.parse(text)
    assert len(parsed.segments("OBX")) == len([x for x in text.split("\r") if x.startswith("OBX")])


@pytest.mark.parametrize("conclusion", [
    "x" * 500,                                    # one long line, no spaces: hard cuts
    ("word " * 120).strip(),                      # cut before a space
    "|" * 300,                                    # every character escapes to three
    "\n\nlead\n  indented\t\r\ntrailing   ",     # empty lines, leading/trailing blanks, CR, tab
    "é漢字🙂" * 80,                               # beyond ASCII
])
def test_long_and_odd_conclusions_round_trip(conclusion: str) -> None:
    text = encode_oru(sample(conclusion=conclusion))
    for line in text.split("\r"):
        if line.startswith("OBX"):
            assert len(line.split("|")[5]) <= MAX_COMPONENT
    assert oru_conclusion(read_oru(text)) == conclusion


def test_frames_carry_values_units_and_join_keys(tmp_path: Path) -> None:
    r = sample()
    path = tmp_path / "oru.hl7"
    path.write_text(encode_oru(r).replace("\r", "\n"))
    for frames in (read_file(path), read_file(path, vectorised=False), to_frames([encode_oru(r)])):
        res = frames["results"]
        assert frames["skipped"].height == 0
        nm = res.filter(pl.col("value_type") == "NM")
        assert nm["value_numeric"].to_list() == [12.5, 0.0001, 0.93]
        assert nm["units"].to_list() == ["mm", "mL", "1"]
        assert nm["observation_code"].to_list() == ["81827009", "118565006", "score"]
        assert set(res["accession_number"]) == {"ACC1001"} and set(res["patient_id"]) == {"MRN1001"}
        assert set(res["control_id"]) == {control_id(r)}
        assert frames["orders"]["study_instance_uid"].to_list() == [STUDY]
        assert oru_conclusion(res) == CONCLUSION


def test_without_name_accession_or_conclusion() -> None:
    r = with_subject(sample(conclusion=None), accession_number=None, patient_name=None,
                     patient_birth_date=None, patient_sex=None)
    text = encode_oru(r)
    m = parse_message(text)
    assert m.get("PID-5") == '""' and m.get("ORC-2") == "" and m.get("OBR-18") == ""
    assert oru_conclusion(read_oru(text)) is None


@pytest.mark.parametrize("change, where", [
    ({"measurements": (Measurement(Code("a" + "\t" * 50, "LN", "x"), 1.0, MM),)}, "measurements[0]"),
    ({"algorithm": Algorithm("a" + "\t" * 50, "1")}, "Algorithm.name"),
])
def test_what_hl7_cannot_hold_is_invalid_input_naming_the_field(change: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        encode_oru(sample(**change))
    assert err.value.source == where


@pytest.mark.parametrize("value", [1e300, -1e-250, 5e-324])
def test_numbers_beyond_nm_are_exact_st(value: float) -> None:
    r = sample(measurements=(Measurement(DIAMETER, value, MM),), labels=(Label(DIAMETER, MM, 3e-240),))
    obx = parse_message(encode_oru(r)).typed().results  # type: ignore[union-attr]
    assert (obx[0].value_type, float(obx[0].value)) == ("ST", value)
    assert obx[0].units == "mm"
    score = next(o for o in obx if o.code == "score")
    assert (score.value_type, float(score.value)) == ("ST", 3e-240)


def test_longest_display_texts_fit_with_their_escapes() -> None:
    # 64 characters (the model's limit) that all need escaping still fit hl7apy's 199 after escaping.
    long = Code("c-1", "99KIT", "ä^" * 32)
    text = encode_oru(sample(labels=(Label(long, long, 0.5),)))
    m = parse_message(text)
    label = next(i for i in range(1, 20) if m.get(f"OBX({i})-3.1") == "c-1")
    assert m.get(f"OBX({label})-5.1") == "c-1"
    assert m.get(f"OBX({label})-5.2") == long.meaning


def test_read_oru_rejects_what_is_not_one_oru() -> None:
    with pytest.raises(KitError):
        read_oru("not hl7")
    adt = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5.1\rPID|1||M1||X^Y\r"
    with pytest.raises(KitError):
        read_oru(adt)
    with pytest.raises(InvalidInputError):
        encode_oru("result")  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None)
@given(results())
def test_any_valid_result_encodes_strictly_and_round_trips(result: Any) -> None:
    text = encode_oru(result)  # validated strictly with hl7apy inside
    res = read_oru(text)
    nm = res.filter(pl.col("value_type").is_in(["NM", "ST"]) & (pl.col("observation_code") != "score"))
    assert [float(v) for v in nm["value"]] == [m.value for m in result.measurements]
    assert nm["units"].to_list() == [m.unit.value for m in result.measurements]
    assert nm["observation_code"].to_list() == [m.name.value for m in result.measurements]
    assert oru_conclusion(res) == result.conclusion
    assert set(res["patient_id"]) == {result.subject.patient_id}
    assert encode_oru(result) == text
    assert parse_message(text).control_id == control_id(result)


def test_created_offset_is_kept() -> None:
    tz = dt.timezone(dt.timedelta(hours=1))
    text = encode_oru(sample(created=dt.datetime(2026, 1, 12, 10, 0, tzinfo=tz)))
    assert parse_message(text).get("MSH-7") == "20260112100000+0100"
    assert CONCLUSION_CODE.value in text


def test_a_message_with_non_ascii_text_says_it_is_utf8_in_msh18() -> None:
    """Sent as UTF-8 with no MSH-18, 'Müller^Zoë' reached a receiver assuming Latin-1 garbled."""
    plain = sample()
    named = dataclasses.replace(plain, subject=dataclasses.replace(plain.subject, patient_name="Müller^Zoë"))
    assert parse_message(encode_oru(named)).get("MSH-18") == "UNICODE UTF-8"
    assert parse_message(encode_oru(plain)).get("MSH-18") == ""  # ASCII: no claim made
