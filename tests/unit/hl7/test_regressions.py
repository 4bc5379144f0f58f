"""Regression tests for issues #7 and #8 (HL7 parser, frames, ACK builder), on real-world-shaped messages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from kit.errors import HL7ParseError, KitError
from kit.hl7.build import MAX_ACK_TEXT, MAX_ECHO, AckError, build_ack
from kit.hl7.frames import read_file, to_frames
from kit.hl7.message import MAX_SP_LINES, content_hash, parse_message, split_messages, unescape
from kit.hl7.scheduling import analytics, appointments, conflicts, replay
from kit.hl7.typed import AckCode, Appointment

# An SIU^S12 as Epic Cadence / Cerner scheduling send it: SCH-1 (placer id) empty, the appointment id
# in SCH-2 (filler id, with its assigning authority), timing in SCH-11, resources in AIS/AIG/AIL/AIP.
EPIC_SIU = (
    "MSH|^~\\&|EPIC|EPICADT|RIS|RADIOLOGY|20260310143000|CHARRIS|SIU^S12^SIU_S12|0000049501|P|2.5.1\r"
    "SCH||10017892^EPIC|||||CHECKUP^Routine checkup^LOCAL|CT^CT exam|30|min|"
    "^^30^20260315093000^20260315093000|||||1173^MATTHEWS^JAMES^A|||||||||Booked\r"
    "PID|1||00012345^^^EPIC^MR||SMITH^JOHN^A||19700101|M|||123 MAIN ST^^CITY^ST^12345^USA||(555)555-1234\r"
    "PV1|1|O|RAD^CT1^1^HOSP||||1173^MATTHEWS^JAMES^A\r"
    "RGS|1|A\r"
    "AIS|1|A|CTHEAD^CT Head without contrast^LOCAL|20260315093000|||30|min\r"
    "AIG|1|A|CT-SCANNER-1^CT scanner 1|CT^Computed tomography\r"
    "AIL|1|A|CT1^^^HOSP|||20260315093000|||30|min\r"
    "AIP|1|A|1173^MATTHEWS^JAMES^A|RAD|||20260315093000|||30|min\r"
)


def _epic(appt: str, control_id: str, start: str, end: str, *, trigger: str = "S12",
          patient: str = "00012345", sent: str = "20260310143000") -> str:
    return (EPIC_SIU.replace("10017892", appt).replace("0000049501", control_id)
            .replace("20260315093000", start).replace(f"^^30^{start}^{start}", f"^^30^{start}^{end}")
            .replace("SIU^S12", f"SIU^{trigger}")
            .replace("00012345", patient).replace("20260310143000", sent))


# -- 8.1: an SIU with only the filler id (SCH-2) is an appointment ---------------------------------
def test_siu_with_only_filler_id_becomes_an_appointment() -> None:
    text = _epic("10017892", "0000049501", "20260315093000", "20260315100000")
    view = parse_message(text).typed()
    assert isinstance(view, Appointment)
    assert (view.placer_appointment_id, view.filler_appointment_id, view.appointment_id) == \
        ("", "10017892", "10017892")
    row = to_frames([text])["appointments"].row(0, named=True)
    assert row["appointment_id"] == "10017892" and row["filler_appointment_id"] == "10017892"
    assert row["placer_appointment_id"] is None
    assert row["start_time"] == dt.datetime(2026, 3, 15, 9, 30) and row["duration_minutes"] == 30


def test_filler_only_appointments_in_scheduling_conflicts_and_analytics() -> None:
    first = _epic("10017892", "0000049501", "20260315093000", "20260315100000")
    other = _epic("10017893", "0000049502", "20260315094500", "20260315101500", patient="00099999")
    moved = _epic("10017893", "0000049503", "20260315110000", "20260315113000", trigger="S13",
                  patient="00099999", sent="20260311080000")
    table = appointments([first, other])
    assert table["appointment_id"].to_list() == ["10017892", "10017893"]
    found = conflicts(table)
    assert set(found["kind"]) == {"location", "resource"}
    assert found["appointment_a"].to_list() == ["10017892", "10017892"]
    assert analytics(table)["appointments"].to_list() == [2]
    after = appointments([first, other, moved])
    assert after.height == 2 and conflicts(after).height == 0
    assert after.filter(pl.col("appointment_id") == "10017893")["reschedules"].item() == 1


def test_update_naming_only_the_filler_id_of_a_placer_appointment() -> None:
    booked = _epic("F-1", "C1", "20260315093000", "20260315100000").replace("SCH||F-1", "SCH|P-1|F-1")
    cancelled = _epic("F-1", "C2", "20260315093000", "20260315100000", trigger="S15", sent="20260312")
    table = appointments([booked, cancelled])
    assert table.height == 1
    assert table.row(0, named=True)["appointment_id"] == "P-1"
    assert table.row(0, named=True)["status"] == "cancelled"


# -- 8.2: one bad message does not abort the file ------------------------------------------------
def test_siu_ending_before_it_starts_is_a_skipped_row_and_the_file_is_read(tmp_path: Path) -> None:
    good = _epic("A1", "G1", "20260315093000", "20260315100000")
    bad = _epic("A2", "B1", "20260315100000", "20260315093000")  # end before start
    later = _epic("A3", "G2", "20260316093000", "20260316100000")
    path = tmp_path / "feed.hl7"
    path.write_text("\n".join([good, bad, later]))
    for frames in (read_file(path), read_file(path, vectorised=False),
                   to_frames(split_messages(path.read_text()))):
        assert frames["appointments"]["appointment_id"].to_list() == ["A1", "A3"]
        assert frames["messages"]["control_id"].to_list() == ["G1", "B1", "G2"]
        skipped = frames["skipped"].row(0, named=True)
        assert frames["skipped"].height == 1
        assert skipped["message_number"] == 2 and skipped["control_id"] == "B1"
        assert skipped["table"] == "appointments" and "ends before it starts" in skipped["reason"]
    with pytest.raises(HL7ParseError, match="ends before it starts"):
        parse_message(bad).typed()
    table, skipped_siu = replay([good, bad, later])
    assert table["appointment_id"].to_list() == ["A1", "A3"]
    assert skipped_siu["message_number"].to_list() == [2]


def test_messages_that_belong_to_a_table_but_cannot_give_a_row_are_skipped_with_the_reason() -> None:
    no_ids = _epic("X", "N1", "20260315093000", "20260315100000").replace("SCH||X^EPIC|", "SCH|||")
    oru_no_pid = ("MSH|^~\\&|LIS|H|KIT|R|20260112091400||ORU^R01|N2|P|2.5.1\r"
                  "OBR|1|PL1|F1|CODE^Panel^L\rOBX|1|NM|718-7^Hb^LN||13.5|g/dL\r")
    pid_no_id = "MSH|^~\\&|A|B|C|D|2026||ADT^A08|N3|P|2.5\rPID|1||\r"
    mdm_no_txa12 = "MSH|^~\\&|A|B|C|D|2026||MDM^T02|N4|P|2.5\rPID|1||M1\rTXA|1|RAD\rOBX|1|TX|||x\r"
    frames = to_frames([no_ids, oru_no_pid, pid_no_id, mdm_no_txa12])
    assert frames["messages"].height == 4
    skipped = frames["skipped"]
    assert list(zip(skipped["control_id"], skipped["table"], strict=True)) == [
        ("N1", "appointments"), ("N2", "orders"), ("N3", "patients"), ("N4", "documents")]
    assert frames["results"]["control_id"].to_list() == ["N2"]  # the OBX is still a result row


# -- 8.3: a UTF-8 byte-order mark ----------------------------------------------------------------
def test_file_starting_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "bom.hl7"
    path.write_bytes(b"\xef\xbb\xbf" + EPIC_SIU.encode() + b"\n" + b"\xef\xbb\xbf"
                     + EPIC_SIU.replace("0000049501", "0000049502").encode())
    for vectorised in (True, False):
        frames = read_file(path, vectorised=vectorised)
        assert frames["messages"]["control_id"].to_list() == ["0000049501", "0000049502"]
        assert frames["skipped"].height == 0
    assert parse_message(b"\xef\xbb\xbf" + EPIC_SIU.encode()).control_id == "0000049501"
    assert parse_message("\ufeff" + EPIC_SIU).control_id == "0000049501"
    # a BOM before invalid UTF-8 (Latin-1 data) is still dropped
    latin = b"\xef\xbb\xbf" + EPIC_SIU.replace("SMITH", "M\xdcLLER").encode("latin-1")
    assert parse_message(latin).get("PID-5.1") == "M\xdcLLER"


# -- 7.2 / 7.20: escapes are bounded and never raise ---------------------------------------------
@pytest.mark.parametrize("escape", ["\\.sp99999999999999999999\\", "\\.sp²\\", "\\.sp10000000\\",
                                    "\\.sp999999999\\", "\\.sp١٢\\", "\\.sp100\\"])
def test_unbounded_or_odd_line_skips_are_kept_verbatim(escape: str) -> None:
    assert unescape(f"a{escape}b") == f"a{escape}b"
    text = f"MSH|^~\\&|LAB{escape}|H|KIT|R|2026||ADT^A08|ID{escape}|P|2.5.1\rPID|1||M1\r"
    m = parse_message(text)
    assert m.sending_application == f"LAB{escape}" and m.control_id == f"ID{escape}"
    frames = to_frames([text])
    assert frames["messages"]["control_id"].to_list() == [f"ID{escape}"]
    assert len(build_ack(m)) < 2000


def test_line_skip_within_the_limit_is_resolved() -> None:
    assert unescape("a\\.sp\\b\\.sp3\\c\\.sp 2\\d") == "a\nb\n\n\nc\n\nd"
    assert unescape(f"\\.sp{MAX_SP_LINES}\\") == "\n" * MAX_SP_LINES


def test_ack_echo_is_bounded() -> None:
    """Issue 7.2: a 60-byte message turned into a 50 MB ACK."""
    huge = "X" * 5_000_000
    m = parse_message(f"MSH|^~\\&|{huge}|{huge}|K|R|2026||ADT^A01|{huge}|{huge}|{huge}\rPID|1||M\r")
    ack = build_ack(m, AckCode.AE, "t" * 1_000_000, AckError(207, "e" * 1_000_000, "P" * 10_000))
    assert len(ack) < 3 * MAX_ECHO * 5 + 2 * MAX_ACK_TEXT * 5 + 500
    parsed = parse_message(ack)
    assert parsed.get("MSA-2") == "X" * MAX_ECHO
    assert parsed.get("MSA-3") == "t" * MAX_ACK_TEXT and parsed.get("ERR-8") == "e" * MAX_ACK_TEXT


# -- 7.21: VT/FS inside a segment: one rule for both paths ---------------------------------------
@pytest.mark.parametrize("char", ["\x0b", "\x1c"])
def test_block_characters_inside_a_segment_split_it_in_both_paths(tmp_path: Path, char: str) -> None:
    good = ("MSH|^~\\&|LIS|H|KIT|R|2026||ORU^R01|C1|P|2.5.1\rPID|1||M1\rOBR|1|P|F|X\r"
            "OBX|1|ST|A^B^L||before\rOBX|2|NM|C^D^L||7|mg\r")
    cut = good.replace("before", f"bef{char}OBX|9|ST|Z||ore")
    broken = good.replace("C1", "C2").replace("before", f"bef{char}ore")
    path = tmp_path / "vtfs.hl7"
    path.write_text(cut + "\n" + broken + "\n" + good.replace("C1", "C3"))
    fast, slow = read_file(path), read_file(path, vectorised=False)
    for table in fast:
        assert fast[table].equals(slow[table]), table
    res = fast["results"]
    assert res.filter(pl.col("control_id") == "C1")["set_id"].to_list() == [1, 9, 2]
    # message 2 cannot be parsed: "ore" is no segment
    assert fast["skipped"]["control_id"].to_list() == [None]
    assert fast["skipped"]["message_number"].to_list() == [2]
    assert "C2" not in res["control_id"].to_list() and "C3" in res["control_id"].to_list()


# -- 20: only KitError from parsers and frame builders -------------------------------------------
@pytest.mark.parametrize("value", ["\\.sp²\\", "\\.sp99999999999999999999\\", "٢٠٢٦٠١٠١", "9" * 5000,
                                   "\ud800", "20260101+9999"])
def test_odd_values_everywhere_give_rows_or_kit_errors(value: str) -> None:
    texts = [EPIC_SIU.replace("20260315093000", value).replace("30|min", f"{value}|min"),
             "MSH|^~\\&|A|B|C|D|2026||ORU^R01|V1|P|2.5\rPID|1||M\rOBR|1|||X|||" + value
             + f"\rOBX|{value}|NM|X||{value}|||||F|||{value}\r"]
    try:
        frames = to_frames(texts)
    except KitError:
        return
    assert frames["messages"].height + frames["skipped"].filter(pl.col("table") == "messages").height == 2


def test_content_hash_ignores_line_endings_and_framing() -> None:
    a = parse_message(EPIC_SIU)
    b = parse_message("\x0b" + EPIC_SIU.replace("\r", "\r\n") + "\x1c\r")
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(parse_message(EPIC_SIU.replace("SMITH", "SMYTH")))


def test_reused_control_id_is_flagged_in_frames() -> None:
    a01 = "MSH|^~\\&|ADT|H|KIT|R|2026||ADT^A01|42|P|2.5\rPID|1||M1||DOE^JANE\r"
    a08 = "MSH|^~\\&|ADT|H|KIT|R|2026||ADT^A08|42|P|2.5\rPID|1||M1||DOE^JANET\r"
    frames = to_frames([a01, a08, a01])
    assert frames["messages"]["reused_control_id"].to_list() == [False, True, False]
