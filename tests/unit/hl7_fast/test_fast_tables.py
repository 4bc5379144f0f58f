"""The vectorised tables of kit.hl7.frames_fast equal the per-message path, table for table.

Sample feed, hand-made edge cases (escapes, repetitions, empty fields, missing segments, line
endings, byte-order marks, truncated messages, Z-segments, non-ASCII, dates with offsets and
fractions, appointments that cannot be rows, reused control ids) and the proof that clean
messages do not go through the per-message parser at all.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import kit.hl7.frames as frames_module
from kit.examples.hl7 import feed
from kit.hl7 import frames_fast
from kit.hl7.frames import TABLES, read_file
from kit.hl7.message import Message
from kit.hl7.typed import parse_dtm

FAST = list(frames_fast.FAST_TABLES)

MSH = "MSH|^~\\&|{app}|FAC|KIT|R|20260315093000||{type}|{cid}|P|2.5.1"
PID = "PID|1||{mrn}^^^HOSP&1.2.3&ISO^MR~OTHER^^^X||Doe^John^Q||19700101|M|||Main St 1^^City^ST^1234^CH||+41 1"


def msg(kind: str, *segments: str, cid: str = "C1", app: str = "APP", end: str = "\r") -> str:
    return end.join([MSH.format(app=app, type=kind, cid=cid), *segments]) + end


def _write(tmp_path: Path, text: str | bytes, name: str = "feed.hl7") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def assert_same(path: Path, tables: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """Fast and per-message paths agree on every table, also when asked for one table at a time."""
    fast, slow = read_file(path, tables=tables), read_file(path, tables=tables, vectorised=False)
    assert list(fast) == list(slow)
    for name in fast:
        assert_frame_equal(fast[name], slow[name], check_exact=True, check_dtypes=True)
    if tables is None:
        for table in FAST:
            one = read_file(path, tables=[table])
            assert_frame_equal(one[table], slow[table], check_exact=True)
            assert_frame_equal(one["skipped"], read_file(path, tables=[table], vectorised=False)["skipped"],
                               check_exact=True)
    return fast


def test_sample_feed_every_table(tmp_path: Path) -> None:
    path = _write(tmp_path, "\n".join(feed()))
    out = assert_same(path)
    assert {t: out[t].height for t in TABLES} == {
        "messages": 63, "patients": 63, "visits": 37, "orders": 30, "results": 39, "appointments": 9,
        "documents": 6, "skipped": 0}


def test_clean_messages_do_not_go_through_the_per_message_parser(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "\n".join(feed()))
    expected = read_file(path, vectorised=False)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fast path parsed a message one by one")

    monkeypatch.setattr(frames_module, "parse_message", refuse)
    monkeypatch.setattr(frames_fast, "parse_message", refuse)
    monkeypatch.setattr(Message, "typed", refuse)
    fast = read_file(path)
    for name in TABLES:
        assert_frame_equal(fast[name], expected[name], check_exact=True)


ESCAPED = ["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X41\\", "\\X0D0A\\", "\\XC3A9\\",
           "\\.sp\\", "\\.sp3\\", "\\.sp0\\", "\\.br\\", "\\H\\",
           "\\N\\", "\\", "\\E\\F\\", "a\\^\\E\\", "\\X4^1\\", "\\P\\"]


@pytest.mark.parametrize("esc", ESCAPED)
def test_escapes_in_every_table(tmp_path: Path, esc: str) -> None:
    e = esc
    text = "".join([
        msg("ADT^A01", f"EVN|A01|2026031509{e}", PID.format(mrn=f"M{e}1").replace("Doe", f"D{e}oe"),
            f"PV1|1|I{e}|W{e}^R{e}1^B~X^Y|||||D{e}7^Fam{e}&x^Giv{e}||SVC{e}|||||||||V{e}N^^^A",
            cid=f"C{e}"),
        msg(f"ORM^O01{e}", PID.format(mrn="M2"), f"ORC|NW{e}|P{e}1|F{e}1||SC{e}||||20260315",
            f"OBR|1||F1|CODE{e}^Text{e}^SYS{e}|||2026|||||||||||ACC{e}||||||CT{e}|F{e}",
            f"ZDS|1.2.{e}3^^Application^DICOM", cid="C2"),
        msg("ORM^O01", PID.format(mrn="M3"), f"ORC|NW|{e}", "OBR|1|||C", cid="C3"),
        msg("SIU^S12", f"SCH|P{e}|F{e}||||R{e}^Why{e}|T{e}|||^^^202603150930^202603151000||||||||||||||"
            f"Booked{e}||ACC{e}", PID.format(mrn="M4"), f"AIS|1|A|SVC{e}^Svc{e}", f"AIG|1|A|RES{e}|CT{e}",
            f"AIL|1|A|ROOM{e}", f"AIP|1|A|DOC{e}", cid="C4"),
        msg("MDM^T02", PID.format(mrn="M5"), f"TXA|1|DT{e}||20260315||||||||DOC{e}^X|||ACC{e}||AU{e}||AV{e}",
            f"OBX|1|TX|||Line one {e}~rep {e}^c&s", "OBX|2|TX|||", f"OBX|3|TX|||{e}", cid="C5"),
        msg(f"MD{e}^T02", PID.format(mrn="M6"), "TXA|1|DT||||||||||DOC1", cid="C6"),
    ])
    assert_same(_write(tmp_path, text))


def test_missing_segments_and_empty_fields_give_the_same_rows_and_skips(tmp_path: Path) -> None:
    text = "".join([
        msg("ORU^R01", "OBR|1|||X", "OBX|1|NM|A||1", cid="no-pid"),
        msg("ORU^R01", "PID|1||", "OBR|1|||X", cid="empty-pid3"),
        msg("ORM^O01", PID.format(mrn="M1"), "NTE|1", cid="no-orders"),
        msg("OML^O21", PID.format(mrn="M1"), "ZDS|1.2.3", "OBR|1", "OBR|2", "ZDS|4.5", "ZDS|6.7", "ORC|NW",
            "ORC|CA|P2", "OBR|3||||||||||||||||||||||||", "ORC", cid="groups"),
        msg("SIU^S12", "SCH||||||", PID.format(mrn="M1"), cid="no-sch-id"),
        msg("SIU^S15", "SCH|A1", cid="sch-only"),
        msg("SIU^S99", "SCH|A1", cid="other-trigger"),
        msg("MDM^T04", PID.format(mrn="M1"), "TXA|1|DT", cid="no-txa12"),
        msg("MDM^T02", "TXA|1||||||||||||DOC", cid="mdm-no-pid"),
        msg("MDM^T02", PID.format(mrn="M1"), "TXA|1||||||||||||DOC", cid="mdm-no-obx"),
        msg("ADT^A08", "PID", "PV1", "EVN", cid="bare"),
        msg("ADT^A08", "PV1|1|O", cid=""),
        msg("ACK", "MSA|AA|C1", "ZZZ|x|y", "ZPI|1|2^3", cid="ack"),
        "MSH|^~\\&\r",
        "MSH|^~\\&|\r",
    ])
    out = assert_same(_write(tmp_path, text))
    assert out["orders"].height == 5 and out["skipped"].height >= 5


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n", "\n\r", "\x1c\r\x0b"])
@pytest.mark.parametrize("head", ["", "\ufeff", "\x0b", "FHS|^~\\&|X\rBHS|^~\\&\r", "garbage\r", " \n",
                                  "\t\x1f\n"])
def test_line_endings_bom_batches_and_leading_data(tmp_path: Path, end: str, head: str) -> None:
    parts = [msg("ADT^A04", "EVN|A04|20260101", PID.format(mrn="M1"), "PV1|1|O", cid="C1", end=end),
             msg("ORM^O01", PID.format(mrn="M2"), "ORC|NW|P|F", "OBR|1|P|F|C^T", cid="C2", end=end),
             "\ufeff" + msg("SIU^S12", "SCH|A", PID.format(mrn="M3"), cid="C3", end=end), "BTS|3\rFTS|1\r"]
    assert_same(_write(tmp_path, head + end.join(parts)))


def test_truncated_non_ascii_latin1_and_other_delimiters(tmp_path: Path) -> None:
    base = "".join([
        msg("ADT^A01", PID.format(mrn="MRN-é").replace("Doe", "Ωmega😀"), "PV1|1|I|Zürich"),
        msg("ORU^R01", PID.format(mrn="M2"), "OBR|1||F|C", "OBX|1|ST|C||täxt", cid="C2"),
        # other delimiters: the per-message builders take these, numbered in place
        "MSH|^~\\&#|APP|FAC|||20260101||ADT^A01|C3|P|2.7\rPID|1||M3\rPV1|1|O\r",
        "MSH$^~\\&$APP$FAC$$$20260101$$ORM^O01$C4$P$2.5\rPID$1$$M4\rORC$NW$P\r",
        "MSH|^~\\&|APP|FAC|||20260101||ADT^A01|C5|P\rPid|bad\r",
        msg("SIU^S12", "SCH|A|B|||||||||^^^20260101100000^2026010111", PID.format(mrn="M6"), cid="C6"),
    ])
    path = _write(tmp_path, base)
    assert_same(path)
    for cut in (len(base) - 3, len(base) // 2, 40, 9, 5):
        assert_same(_write(tmp_path, base[:cut], f"cut{cut}.hl7"))
    assert_same(_write(tmp_path, base.replace("é", "e").encode("utf-8") + "Zéro".encode("latin-1"), "l1.hl7"))


DATES = ["20260315093000", "2026031509", "20260315", "2026", "202603", "20260315093000.1234+0100",
         "20260315093000-0530", "2026031509+0100", "2026.5", "202603.123456", "20260315093000.1234567",
         "20260315093000+9999", "20260315093000+2359", "20260315093000+2400", "20260315093000+0099",
         "99991231235959", "99991231235959.9999", "00010101", "00000101", "20261341", "20260229",
         "20240229", "20260101240000", "20260101236000", "20261231235960", " 20260101", "20260101 ",
         "20260101\x1f", "\t2026", "٢٠٢٦٠١٠١", "2026²", "20260315093000-0000", "2026031", "", "x"]


def test_dates_parse_as_parse_dtm() -> None:
    t, o = frames_fast._dtm(pl.Series("d", DATES))
    for value, got, off in zip(DATES, t.to_list(), o.to_list(), strict=True):
        want = parse_dtm(value)
        assert got == (want.replace(tzinfo=None) if want else None), value
        offset = want.utcoffset() if want else None
        assert off == (int(offset.total_seconds() // 60) if offset is not None else None), value


def test_py_space_is_what_str_strip_strips() -> None:
    assert set(frames_fast.PY_SPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def _siu(cid: str, sch11: str, ais4: str = "", ais7: str = "", sch9: str = "", ail6: str = "",
         aig8: str = "") -> str:
    return msg("SIU^S12", f"SCH|A{cid}||||||||{sch9}||{sch11}", PID.format(mrn="M"),
               f"AIS|1|A|S^T|{ais4}|||{ais7}", f"AIL|1|A|R|||{ail6}", f"AIG|1|A|G|CT||||{aig8}", cid=cid)


def test_appointment_times_durations_and_the_skips_of_typed(tmp_path: Path) -> None:
    text = "".join([
        _siu("ok", "^^^20260315093000^20260315100000"),
        _siu("from-ais", "", ais4="20260315093000", ais7="45"),
        _siu("ais7-zero", "", ais4="20260315093000", ais7="0", sch9="20"),
        _siu("ais7-zero-none", "", ais4="20260315093000", ais7="0"),
        _siu("sch9-spaces", "", ail6="20260315093000", sch9=" 30 "),
        _siu("aig-only", "", aig8="2026031509+0100", ais7="15"),
        _siu("bad-first", "^^^2026XX", ais4="20261341", ail6="20260315", ais7="10"),
        _siu("backwards", "^^^20260315100000^20260315093000"),
        _siu("mixed-tz", "^^^20260315093000+0100^20260315100000"),
        _siu("tz-shift", "^^^20260315100000+0200^20260315093000+0000"),
        _siu("tz-backwards", "^^^20260315093000+0000^20260315100000+0200"),
        _siu("overflow", "", ais4="99991231230000", ais7="999999999"),
        _siu("too-long", "^^^00010101^99991231"),
        _siu("long-fraction", "^^^00010101000000.0001^04000101000000.9999"),
        _siu("fraction", "^^^20260315093000.5^20260315093100.4"),
        _siu("ten-digits", "", ais4="2026031509", ais7="1234567890"),
        _siu("x", "", ais7="30"),
        _siu("same", "^^^20260315093000^20260315093000"),
    ])
    out = assert_same(_write(tmp_path, text))
    reasons = out["skipped"]["reason"].to_list()
    assert any("ends before it starts" in r for r in reasons)
    assert any(r.startswith("TypeError") for r in reasons)
    assert any("out of range" in r for r in reasons)
    row = out["appointments"].filter(pl.col("control_id") == "tz-shift").row(0, named=True)
    assert row["duration_minutes"] == 90 and row["start_time"] == dt.datetime(2026, 3, 15, 10)


def test_reused_control_ids_across_fast_and_per_message_messages(tmp_path: Path) -> None:
    one = msg("ADT^A08", PID.format(mrn="M1"), cid="DUP")
    other = msg("ADT^A08", PID.format(mrn="M2"), cid="DUP")
    slow = "MSH|^~\\&#|APP|FAC|KIT|R|20260315093000||ADT^A08|DUP|P|2.5.1\rPID|1||M3\r"
    text = "\n".join([one, one.replace("\r", "\n"), other, slow, msg("ADT^A08", cid="DUP", app="OTHER"),
                      slow, one, msg("ADT^A08", cid="D\\E\\UP"), msg("ADT^A08", cid="D\\UP")])
    out = assert_same(_write(tmp_path, text))
    # compared with the first message of the sender and (unescaped) control id: D\E\UP is D\UP
    assert out["messages"]["reused_control_id"].to_list() == [False, False, True, True, False, True, False,
                                                               False, True]
