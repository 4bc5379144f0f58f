"""Frames: schemas and dtypes, empty input, fast file path == message-by-message path, the sample feed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import InvalidInputError
from kit.examples.cohort import COHORT, studies
from kit.examples.hl7 import feed, generate
from kit.hl7.frames import SCHEMAS, TABLES, empty_frames, read_file, to_frames
from kit.hl7.message import Encoding, escape, parse_message, split_messages

ORU = ("MSH|^~\\&|LIS|H|KIT|R|20260112091400||ORU^R01^ORU_R01|{cid}|P|2.5.1\r"
       "PID|1||MRN1^^^H^MR~OTHER^^^X||Doe^Jane||19800101|F\r"
       "ORC|RE|PL1|F1\r"
       "OBR|1|PL1|F1|CODE^Panel^L|||20260112080000|||||||||||ACC\\T\\1\r"
       "OBX|1|NM|718-7^Hb^LN||13.5|g/dL|12-16|H~A|||F|||20260112081500+0100\r"
       "OBX|2|ST|X^Esc \\F\\ aped^L||a\\S\\b\\.br\\c~second^comp&sub|||||||F\r"
       "OBX|3|CWE|Y^Coded^L||C1^Text^SYS~C2^T2^SYS||||||F\r"
       "ZDS|1.2.3^^Application^DICOM\r"
       "OBR|2|PL2|F2|CODE2^Other^L|||202601120900\r"
       "OBX|1|NM|2160-0^Crea^LN||abc|umol/L||||F\r")
NO_OBR = "MSH|^~\\&|A|B|C|D|2026||ORU^R01|N1|P|2.5\rPID|1||MRN9\rOBX|1|NM|X^Y||7|mg\r"
MDM = ("MSH|^~\\&|A|B|C|D|2026||MDM^T02|D1|P|2.5\rPID|1||MRN9\rTXA|1|RAD||20260101||||||||DOC1\r"
       "OBX|1|TX|||line one\rOBX|2|TX|||line \\T\\ two\r")


def _custom(text: str) -> str:
    return text.replace("|", "!").replace("^", "$").replace("~", "*").replace("&", "%").replace("\\", "#")


def _mixed_feed() -> str:
    parts = [ORU.format(cid="C1"), ORU.format(cid="C2").replace("\r", "\r\n"),
             _custom(ORU.format(cid="C3")), NO_OBR, MDM, ORU.format(cid="C4").replace("\r", "\n"),
             "\x0b" + ORU.format(cid="C5") + "\x1c\r", "MSH|^~\\&#|A|B|C|D|2026||ORU^R01|T1|P|2.7\r"
             "OBX|1|ST|X||a\\P\\b#trunc\r"]
    return "\n".join(parts) + "\n"


def test_schemas_of_empty_input() -> None:
    frames = to_frames([])
    assert list(frames) == list(TABLES)
    for name, df in frames.items():
        assert df.height == 0
        assert df.schema == pl.Schema(SCHEMAS[name])
    assert empty_frames(["results"])["results"].columns == list(SCHEMAS["results"])


def test_read_empty_file_keeps_schemas(tmp_path: Path) -> None:
    path = tmp_path / "empty.hl7"
    path.write_text("\n\n")
    for name, df in read_file(path).items():
        assert df.height == 0 and df.schema == pl.Schema(SCHEMAS[name])


def test_results_columns_escapes_reps_and_types() -> None:
    res = to_frames([ORU.format(cid="C1")], tables=["results"])["results"]
    assert res.schema == pl.Schema(SCHEMAS["results"])
    assert res["control_id"].to_list() == ["C1"] * 4
    assert res["patient_id"].to_list() == ["MRN1"] * 4
    assert res["accession_number"].to_list() == ["ACC&1", "ACC&1", "ACC&1", "F2"]  # OBR-18, else filler
    assert res["set_id"].to_list() == [1, 2, 3, 1]
    assert res["observation_text"].to_list()[1] == "Esc | aped"
    assert res["value"].to_list()[:3] == ["13.5", "a^b\nc~second^comp&sub", "C1^Text^SYS~C2^T2^SYS"]
    assert res["value_numeric"].to_list() == [13.5, None, None, None]  # "abc" is not a number
    assert res["abnormal_flags"][0] == "H~A"
    assert res["observation_time"].to_list() == [
        dt.datetime(2026, 1, 12, 8, 15), dt.datetime(2026, 1, 12, 8), dt.datetime(2026, 1, 12, 8),
        dt.datetime(2026, 1, 12, 9)]  # OBX-14 (wall clock), else the OBR-7


def test_results_without_obr_and_mdm_excluded() -> None:
    res = to_frames([NO_OBR, MDM], tables=["results"])["results"]
    assert res["control_id"].to_list() == ["N1"]
    assert res["accession_number"].to_list() == [None]
    docs = to_frames([MDM], tables=["documents"])["documents"]
    assert docs["text"].to_list() == ["line one\nline & two"]
    assert docs["activity_time"].dtype == pl.Datetime("us")


def test_fast_path_equals_message_by_message_path(tmp_path: Path) -> None:
    text = _mixed_feed()
    path = tmp_path / "mixed.hl7"
    path.write_bytes(text.encode())
    fast = read_file(path, tables=["results"])["results"]
    slow = to_frames(split_messages(text), tables=["results"])["results"]
    assert fast.height == 22  # 5 ORU x 4 OBX, one OBX without OBR, one v2.7
    assert fast.equals(slow), (fast, slow)
    # the custom-delimiter message reads the same as the standard one (escapes such as \\S\\
    # stand for the message's own delimiter, so escaped values legitimately differ)
    cols = ["patient_id", "set_id", "observation_code", "units", "value_numeric", "abnormal_flags",
            "observation_time", "filler_order_number"]
    c1, c3 = (fast.filter(pl.col("control_id") == c) for c in ("C1", "C3"))
    assert c1.select(cols).equals(c3.select(cols))
    assert c3["value"][2] == "C1^Text^SYS~C2^T2^SYS"
    assert c3["value"][1] == "a$b\nc~second^comp&sub"
    assert fast.filter(pl.col("control_id") == "T1")["value"].to_list() == ["a#b#trunc"]


_value = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_value, _value, st.sampled_from(["\r", "\n", "\r\n"]), st.booleans()),
                min_size=1, max_size=5))
def test_fast_equals_slow_for_arbitrary_values(tmp_path_factory: pytest.TempPathFactory,
                                               items: list[tuple[str, str, str, bool]]) -> None:
    texts = []
    for i, (value, units, end, custom) in enumerate(items):
        enc = Encoding("!", "$", "*", "#", "%") if custom else Encoding()
        f, c = enc.field, enc.component
        msg = "\r".join([
            f"MSH{f}{enc.msh2}{f}A{f}B{f}C{f}D{f}20260101{f}{f}ORU{c}R01{f}M{i}{f}P{f}2.5",
            f"PID{f}1{f}{f}P{i}", f"OBR{f}1{f}{f}F{i}",
            f"OBX{f}1{f}ST{f}C{c}{escape(units, enc)}{f}{f}{escape(value, enc)}{f}{escape(units, enc)}"])
        texts.append((msg + "\r").replace("\r", end))
    path = tmp_path_factory.mktemp("hyp") / "f.hl7"
    path.write_bytes("\n".join(texts).encode())
    fast = read_file(path, tables=["results"])["results"]
    slow = to_frames(split_messages(path.read_text()), tables=["results"])["results"]
    assert fast.equals(slow)
    assert fast["value"].fill_null("").to_list() == [v for v, _, _, _ in items]


def test_read_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        read_file(tmp_path / "missing.hl7")
    bad = tmp_path / "bad.hl7"
    # data before the first MSH and a bad segment are skipped rows with the reason; the rest is read
    bad.write_text("hello\r" + ORU.format(cid="X") + "bad segment here\r" + ORU.format(cid="Y"))
    for vectorised in (True, False):
        frames = read_file(bad, tables=["results"], vectorised=vectorised)
        assert list(frames) == ["results", "skipped"]
        assert frames["results"]["control_id"].unique().to_list() == ["Y"]
        skipped = frames["skipped"]
        assert skipped["message_number"].to_list() == [None, 1]
        assert skipped["table"].to_list() == ["messages", "messages"]
        assert "before the first MSH" in skipped["reason"][0] and "'hello'" in skipped["reason"][0]
        assert "not followed by the field separator" in skipped["reason"][1]
    everything = read_file(bad)
    assert everything["messages"]["control_id"].to_list() == ["Y"]
    assert everything["skipped"].equals(frames["skipped"])
    with pytest.raises(InvalidInputError):
        read_file(bad, tables=["nope"])


def test_sample_feed_frames(tmp_path: Path) -> None:
    (path,) = generate(tmp_path)
    assert path == tmp_path / "hl7" / "feed.hl7"
    assert generate(tmp_path)[0].read_bytes() == path.read_bytes()  # deterministic
    frames = read_file(path)
    for name, df in frames.items():
        assert df.schema == pl.Schema(SCHEMAS[name]), name
    msgs = frames["messages"]
    assert set(msgs["message_type"]) >= {"ADT^A04", "ADT^A01", "ADT^A08", "ORM^O01", "ORU^R01", "MDM^T02",
                                         "SIU^S12", "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S26"}
    assert msgs["control_id"].n_unique() == msgs.height
    assert set(frames["patients"]["patient_id"]) == {p.mrn for p in COHORT}
    orders = frames["orders"].filter(pl.col("message_type") == "ORM^O01")
    all_studies = studies(scheduled=None)
    assert sorted(orders["accession_number"]) == sorted(s.accession for s in all_studies)
    assert dict(zip(orders["accession_number"], orders["study_instance_uid"], strict=True)) == {
        s.accession: s.study_uid for s in all_studies}
    res = frames["results"]
    assert res.filter(pl.col("value_type") == "NM")["value_numeric"].null_count() == 0
    assert {"H", "N"} <= set(res["abnormal_flags"].drop_nulls())
    appts = frames["appointments"]
    assert "S15" in appts["trigger"].to_list() and "Cancelled" in appts["status"].to_list()
    booked = appts.filter((pl.col("trigger") == "S12") & (pl.col("location") == "CT1"))
    overlaps = booked.join(booked, how="cross").filter(
        (pl.col("placer_appointment_id") < pl.col("placer_appointment_id_right"))
        & (pl.col("start_time") < pl.col("end_time_right"))
        & (pl.col("start_time_right") < pl.col("end_time")))
    assert overlaps.height >= 1
    assert frames["documents"].height == len(studies(modality="CT"))
    assert "\n" in frames["documents"]["text"][0]
    # every message of the feed is what the feed() generator gives
    assert [parse_message(m).control_id for m in feed()] == msgs["control_id"].to_list()
