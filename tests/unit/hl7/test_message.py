"""Parsing HL7 v2: delimiters, escapes, segment ends, terser access, robustness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import HL7ParseError
from kit.hl7.message import Encoding, escape, parse_message, split_messages, unescape

ADT = ("MSH|^~\\&|EPIC|HOSP|KIT|RES|20260112091400+0100||ADT^A01^ADT_A01|MSG001|P|2.5.1\r"
       "EVN|A01|20260112091000\r"
       "PID|1||MRN1001^^^HOSP^MR~987654^^^SSN^SS||Moreau^Alice^M||19580314|F|||"
       "Rue 1^^Lausanne^VD^1005^CH||+41 21 555 0101\r"
       "PV1|1|I|RAD^R1^1\r"
       "ZPI|custom|data^with^components\r")


def test_header_fields() -> None:
    m = parse_message(ADT)
    assert m.message_type == "ADT^A01"
    assert (m.message_code, m.trigger, m.structure) == ("ADT", "A01", "ADT_A01")
    assert m.control_id == "MSG001"
    assert m.version == "2.5.1"
    assert (m.sending_application, m.sending_facility) == ("EPIC", "HOSP")
    assert (m.receiving_application, m.receiving_facility) == ("KIT", "RES")
    assert m.get("MSH-1") == "|" and m.get("MSH-2") == "^~\\&"


def test_terser_paths_with_repetitions_and_subcomponents() -> None:
    m = parse_message(ADT)
    assert m.get("PID-3.1") == "MRN1001"
    assert m.get("PID-3(2).1") == "987654"
    assert m.get("PID-3(2).5") == "SS"
    assert m.get("PID-3(3).1") == ""
    assert m.get("PID-5.2") == "Alice"
    assert m.get("PID-11.3") == "Lausanne"
    assert m.get("PID-99", "none") == "none"
    assert m.get("OBX-5") == ""
    with pytest.raises(HL7ParseError):
        m.get("PID3")


def test_z_segments_are_kept() -> None:
    m = parse_message(ADT)
    (z,) = m.segments("ZPI")
    assert z.field(1) == "custom"
    assert m.get("ZPI-2.3") == "components"
    assert [s.name for s in m.segments()] == ["MSH", "EVN", "PID", "PV1", "ZPI"]


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_segment_terminators(end: str) -> None:
    m = parse_message(ADT.replace("\r", end))
    assert len(m.segments()) == 5
    assert m.get("PV1-3.2") == "R1"


def test_mllp_framing_bytes_are_ignored() -> None:
    m = parse_message(b"\x0b" + ADT.encode() + b"\x1c\r")
    assert m.control_id == "MSG001"


def test_custom_encoding_characters() -> None:
    custom = ADT.replace("|", "!").replace("^", "$").replace("~", "*").replace("&", "%")
    custom = custom.replace("!$*\\%!", "!$*\\%!")
    m = parse_message(custom)
    assert m.encoding == Encoding("!", "$", "*", "\\", "%")
    assert m.message_type == "ADT^A01"  # always shown with the standard "^"
    assert m.get("PID-3(2).1") == "987654"
    assert m.get("ZPI-2") == "data^with^components"


def test_custom_escape_character_and_escapes() -> None:
    text = "MSH|^~#&|A|B|C|D|20260101||ORU^R01|X|P|2.5\rOBX|1|ST|C||a#F#b#S#c#T#d#R#e#E#f#.br#g\r"
    m = parse_message(text)
    assert m.get("OBX-5") == "a|b^c&d~e#f\ng"


@pytest.mark.parametrize(("raw", "text"), [
    ("\\F\\\\S\\\\T\\\\R\\\\E\\", "|^&~\\"),
    ("line1\\.br\\line2", "line1\nline2"),
    ("a\\.sp2\\b", "a\n\nb"),
    ("\\X41C3A9\\", "Aé"),
    ("\\XE9\\", "é"),  # not UTF-8: Latin-1
    ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # formatting kept verbatim
    ("trailing\\", "trailing\\"),
])
def test_unescape(raw: str, text: str) -> None:
    assert unescape(raw) == text


def test_truncation_character_v27() -> None:
    m = parse_message("MSH|^~\\&#|A|B|C|D|20260101||ADT^A04|X|P|2.7\rPID|1||M#1\\P\\2\r")
    assert m.encoding.truncation == "#"
    assert m.get("PID-3") == "M#1#2"


@pytest.mark.parametrize(("text", "segment", "field"), [
    ("", None, None),
    ("   \r\n", None, None),
    ("PID|1||X\r", "MSH", None),
    ("MSH|^~|A\r", "MSH", 2),
    ("MSH|^^\\&|A|B\r", "MSH", 2),
    ("MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\rpid|1\r", "pid", None),
    ("MSH|^~\\&|A|B|C|D|2026||ADT^A01|1|P|2.5\rPIDX|1\r", "PID", None),
])
def test_parse_errors(text: str, segment: str | None, field: int | None) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse_message(text)
    assert info.value.segment == segment
    assert info.value.field == field


def test_to_er7_round_trip() -> None:
    m = parse_message(ADT)
    assert m.to_er7() == ADT
    assert parse_message(m.to_er7()) == m


def test_split_messages_files_mllp_and_batches() -> None:
    two = ADT + "\n" + ADT.replace("MSG001", "MSG002") + "\n"
    assert [parse_message(t).control_id for t in split_messages(two)] == ["MSG001", "MSG002"]
    framed = b"".join(b"\x0b" + t.encode() + b"\x1c\r" for t in (ADT, ADT.replace("MSG001", "MSG3")))
    assert [parse_message(t).control_id for t in split_messages(framed)] == ["MSG001", "MSG3"]
    batch = "FHS|^~\\&|A\rBHS|^~\\&|A\r" + ADT + ADT.replace("MSG001", "M4") + "BTS|2\rFTS|1\r"
    msgs = [parse_message(t) for t in split_messages(batch)]
    assert [m.control_id for m in msgs] == ["MSG001", "M4"]
    assert msgs[-1].segments()[-1].name == "ZPI"
    with pytest.raises(HL7ParseError):
        list(split_messages("garbage\r" + ADT))


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@given(_text)
def test_escape_unescape_round_trip(value: str) -> None:
    assert unescape(escape(value)) == value


@given(_text, st.sampled_from([Encoding(), Encoding("!", "$", "*", "#", "%"), Encoding(truncation="@")]))
def test_escaped_value_survives_a_message(value: str, enc: Encoding) -> None:
    text = f"MSH{enc.field}{enc.msh2}{enc.field}A{enc.field}B\rOBX{enc.field}1{enc.field}ST{enc.field}" \
           f"{enc.field}{enc.field}{escape(value, enc)}\r"
    assert parse_message(text).get("OBX-5.1.1") == value


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        parse_message(b"MSH" + data)
        parse_message(data)
    except HL7ParseError:
        pass


@settings(max_examples=200)
@given(st.text(alphabet="MSHPIDOBX|^~\\&\r\n1AZ#", max_size=120))
def test_hl7ish_text_never_crashes(text: str) -> None:
    try:
        m = parse_message(text)
        m.get("PID-3(2).1.1")
        m.typed()
    except HL7ParseError:
        pass


@pytest.mark.parametrize("data_type", [str, bytes])
def test_max_segments_refuses_a_message_before_splitting_it(data_type: type) -> None:
    """A parse holds about 300 bytes a segment: ``max_segments`` bounds it, counted before a split."""
    head = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5\r"

    def as_type(text: str) -> str | bytes:
        return text if data_type is str else text.encode()

    assert len(parse_message(as_type(head + "ZZZ|a\r" * 9), max_segments=10).segments_) == 10
    with pytest.raises(HL7ParseError, match="more than 10 segments"):
        parse_message(as_type(head + "ZZZ|a\r" * 10), max_segments=10)
    with pytest.raises(HL7ParseError, match="more than 10 segments"):
        parse_message(as_type(head + "ZZZ|a\n" * 10), max_segments=10)
    many_fields = head + "ZZZ" + "|a" * 200 + "\r"
    with pytest.raises(HL7ParseError, match="more than 200 fields"):
        parse_message(as_type(many_fields), max_segments=10)
    assert parse_message(as_type(many_fields)).segments_[1].field(200) == "a"  # no bound by default
    custom = "MSH#^~\\&#A#B\rZZZ#" + "|" * 500 + "\r"  # the message's own field separator counts
    assert parse_message(as_type(custom), max_segments=10).segments_[1].field(1) == "|" * 500
