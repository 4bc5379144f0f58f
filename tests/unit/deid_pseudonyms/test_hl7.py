"""kit.deid.hl7: HL7 v2 messages de-identified field by field, consistent with DICOM and FHIR."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.deid.hl7 import HL7Deidentifier
from kit.deid.policy import BirthDate, DeidPolicy, TextField
from kit.deid.pseudonyms import Pseudonymiser
from kit.errors import HL7ParseError, KitError
from kit.hl7.frames import to_frames
from kit.hl7.message import parse_message

KEY = "unit-test-key-0123456789"
MRN = "MRN-4711"
ORU = "\r".join([
    "MSH|^~\\&|RIS|HOSP|KIT|RES|202601121014+0100||ORU^R01^ORU_R01|C1|P|2.5.1",
    "PID|1|EXT-1|MRN-4711^^^HOSP^MR~756.1234^^^CH^SS~OLD-9^^^HOSP^MR||Zeller^Hanna^^^Dr||19610405|F|Alias^A||"
    "Bahnhofstrasse 1^^Chur^GR^7000^CH||+41 79 555 1234|||||ACCT-5|756.1234",
    "PD1|||Clinic||DR-9^Who^Doctor",
    "NK1|1|Zeller^Otto|SON|||+41 79 555 9999",
    "PV1|1|I|W1^R2^B3||||DR-1^House^Greg|||MED|||||||||VIS-77|||||||||||||||||||||||||2026011208",
    "ORC|RE|PL-ACC-9|ACC-9||CM||^^^20260112&S^2026011209||20260111091400|||DR-2^Wilson^James",
    "OBR|1|PL-ACC-9|ACC-9|CT^CT CHEST^L|||20260112091400.12-0500|||||||||DR-2^Wilson^James||ACC-9||||||CT|F",
    "OBX|1|TX|59776-5^Findings^LN||Hanna \\T\\ Otto: a \\F\\ b\\.br\\line 2||||||F|||20260112",
    "OBX|2|DT|DATE^Date||20251224||||||F",
    "OBX|3|XPN|NAME^Name||Zeller^Hanna||||||F",
    "OBX|4|NM|SIZE^Size||18.0|mm|||||F",
    "NTE|1||Called Hanna Zeller at +41 79 555 1234",
    "ZDS|1.2.3.4.5^^Application^DICOM",
    "ZXY|secret stuff Zeller",
]) + "\r"


def test_fields_are_pseudonymised_removed_or_shifted() -> None:
    p = Pseudonymiser(KEY)
    d = HL7Deidentifier(p)
    out = d.message(ORU)
    shift = p.date_shift(MRN)

    def moved(yyyymmdd: str) -> str:
        return (dt.datetime.strptime(yyyymmdd, "%Y%m%d").date() + shift).strftime("%Y%m%d")

    assert out.repetitions("PID-3") == [f"{p.patient_id(MRN)}^^^HOSP^MR",
                                        f"{p.patient_id('OLD-9')}^^^HOSP^MR"]
    assert out.get("PID-2") == p.patient_id("EXT-1")
    for gone in ("PID-5", "PID-7", "PID-9", "PID-11", "PID-13", "PID-19"):
        assert out.get(gone) == ""
    assert out.get("PID-8") == "F"
    assert out.get("PID-18") == p.identifier("ACCT-5")
    assert [s.name for s in out.segments()] == ["MSH", "PID", "PV1", "ORC", "OBR", "OBX", "OBX", "OBX",
                                               "OBX", "NTE", "ZDS"]
    assert [d.counts[f"segment_removed:{n}"] for n in ("NK1", "PD1", "ZXY")] == [1, 1, 1]
    assert out.get("MSH-7") == moved("20260112") + "1014+0100"
    assert out.get("PV1-7") == p.identifier("DR-1") and out.get("PV1-3") == "W1^R2^B3"
    assert out.get("PV1-19") == p.identifier("VIS-77")
    assert out.get("PV1-44") == moved("20260112") + "08"
    assert out.get("ORC-2") == out.get("OBR-2") == p.identifier("PL-ACC-9")
    assert out.get("ORC-3") == out.get("OBR-3") == out.get("OBR-18") == p.accession_number("ACC-9")
    assert out.get("ORC-7.4") == moved("20260112") + "&S"  # TQ start: the subcomponent kept
    assert out.get("ORC-7.5") == moved("20260112") + "09"
    assert out.get("OBR-7") == moved("20260112") + "091400.12-0500"
    assert out.get("ORC-12") == p.identifier("DR-2")
    assert out.get("OBX(2)-5") == moved("20251224")
    assert out.get("OBX(3)-5") == ""
    assert out.get("OBX(4)-5") == "18.0"
    assert out.get("ZDS-1") == p.uid("1.2.3.4.5") + "^^Application^DICOM"
    er7 = out.to_er7()
    assert "OBX|1|TX|59776-5^Findings^LN||Hanna \\T\\ Otto: a \\F\\ b\\.br\\line 2|" in er7  # escapes kept
    assert d.counts["text_unscrubbed"] == 2
    for secret in ("Zeller^", "19610405", "756.1234", "Bahnhof", "555 9999", "ACC-9", "EXT-1", "VIS-77",
                   "House", "1.2.3.4.5^"):
        assert secret not in er7
    again = parse_message(er7)
    assert again == out and again.to_er7() == er7
    frames = to_frames([er7])
    assert frames["orders"]["accession_number"].to_list() == [p.accession_number("ACC-9")]
    assert frames["orders"]["study_instance_uid"].to_list() == [p.uid("1.2.3.4.5")]
    assert frames["patients"]["patient_id"].to_list() == [p.patient_id(MRN)]


def test_scrubber_seam_and_birth_year() -> None:
    p = Pseudonymiser(KEY)
    fields: list[TextField] = []

    def scrub(text: str, field: TextField) -> str:
        fields.append(field)
        assert field.facts is not None
        for name in field.facts.names + field.facts.phones:
            for word in name.replace("^", " ").split():
                text = text.replace(word, "[X]")
        return text

    out = HL7Deidentifier(p, policy=DeidPolicy(BirthDate.YEAR), scrub=scrub).message(ORU)
    assert out.get("PID-7") == str((dt.date(1961, 4, 5) + p.date_shift(MRN)).year)
    assert out.get("OBX(1)-5") == "[X] & Otto: a | b\nline 2"  # scrubbed, escaped again
    assert "\\F\\" in out.to_er7()
    assert out.get("NTE-3") == "Called [X] [X] at [X] [X] [X] [X]"
    assert {f.path for f in fields} == {"OBX-5", "NTE-3"} and fields[0].facts.mrn == MRN  # type: ignore[union-attr]


def test_other_delimiters_and_no_patient() -> None:
    p = Pseudonymiser(KEY)
    msg = ("MSH#:*!$#RIS#H#K#R#20260112##ORM:O01#C2#P#2.5.1\r"
           "PID#1##MRN-4711:::H:MR##Zeller:Hanna\rORC#NW#P!1#ACC$9\r")
    out = HL7Deidentifier(p).message(msg)
    assert out.encoding.component == ":" and out.get("ORC-3") == p.accession_number("ACC&9")
    assert out.get("ORC-2") == p.identifier("P!1")  # a lone escape character is kept
    assert "Zeller" not in out.to_er7()
    ack = HL7Deidentifier(p).message("MSH|^~\\&|A|B|C|D|20260112||ACK|C3|P|2.5.1\rMSA|AA|C2\r")
    assert ack.get("MSH-7") == (dt.date(2026, 1, 12) + p.date_shift("")).strftime("%Y%m%d")
    with pytest.raises(HL7ParseError):
        HL7Deidentifier(p).message("not hl7")
    bad = HL7Deidentifier(p).message("MSH|^~\\&|A|B|C|D|20261399||ACK|C3|P\rEVN|A01|yesterday\r")
    assert bad.get("MSH-7") == "" and bad.get("EVN-2") == ""


_VALUE = st.text(alphabet=st.sampled_from("AZaz09^~&\\|. +-é\x00\n"), max_size=12) | st.sampled_from(
    ["20260112", "202601120914+0100", MRN + "^^^H^MR", "\\F\\", "\\X0D\\", "1.2.3"])


_SEGMENTS = ["PID", "PV1", "ORC", "OBR", "OBX", "NTE", "TXA", "SCH", "ZDS", "MRG", "NK1", "AIS", "EVN", "TQ1",
             "SPM"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_SEGMENTS), st.lists(_VALUE, max_size=30)), max_size=6),
       st.sampled_from(["|^~\\&", "#:*!$"]))
def test_fuzz_only_kit_errors_and_output_parses(segments: list[tuple[str, list[str]]], delims: str) -> None:
    sep = delims[0]
    text = f"MSH{delims}A{sep}B{sep}C{sep}D{sep}20260112{sep}{sep}ORU{delims[1]}R01{sep}X{sep}P{sep}2.5.1\r"
    text += "".join(f"{name}{sep}{sep.join(fields)}\r" for name, fields in segments)
    try:
        out = HL7Deidentifier(Pseudonymiser(KEY)).message(text)
    except KitError:
        return
    er7 = out.to_er7()
    assert parse_message(er7) == out
    assert HL7Deidentifier(Pseudonymiser(KEY)).message(text) == out  # deterministic
    try:
        to_frames([er7])
    except KitError:
        pass
