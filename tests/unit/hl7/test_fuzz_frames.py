"""Hypothesis fuzzing of the HL7 parser, typed views, ACK builder and every frame builder.

Properties (issue #7 items 20/21, issue #8 item 2):

- only :class:`~kit.errors.KitError` leaves the package, whatever the input;
- the vectorised ``read_file`` path and the per-message path give the same tables
  (``results`` and ``skipped`` included), with VT/FS bytes, escapes, odd digits,
  byte-order marks and other line breaks mixed in;
- every message is in the tables or in ``skipped`` (nothing vanishes);
- an ACK never grows with what the peer sent.

Bounded: a few hundred examples per property, well under a minute in all.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kit.errors import KitError
from kit.hl7.build import build_ack
from kit.hl7.frames import TABLES, read_file, to_frames
from kit.hl7.framing import FrameError, MLLPDecoder
from kit.hl7.message import Message, group_messages, parse_message, segment_lines
from kit.hl7.scheduling import analytics, conflicts, replay
from kit.hl7.typed import AckCode

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: for the properties that build every table per example (polars has a per-frame cost)
FUZZ_FRAMES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# atoms that broke something once, or could: escapes (bounded, unbounded, non-ASCII digits), block
# characters, other line breaks, BOMs, non-ASCII digits and letters, long numbers, dates
ESCAPES = ["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\.br\\", "\\.sp\\", "\\.sp3\\", "\\.sp²\\",
           "\\.sp99999999999999999999\\", "\\.sp10000000\\", "\\X0D0A\\", "\\X41\\", "\\XZZ\\", "\\H\\", "\\",
           "\\P\\", "\\Cxxyy\\"]
ODD = ["\x0b", "\x1c", "\x1d", "\x1f", "\x0c", "\x85", "\u2028", "\ufeff", "\r", "\n", "\r\n", "\t", " ",
       "٣", "²", "é", "Ω", "9" * 30, "nan", "-1", "0"]
DATES = ["20260315093000", "2026031509", "20260315", "2026", "20260315093000.1234+0100", "99991231235959",
         "00010101", "20261341", "٢٠٢٦٠١٠١", "20260315093000+9999", ""]
PLAIN = st.text(alphabet=st.sampled_from(list("ABCxyz019 .-_/")), max_size=6)


def _atom() -> st.SearchStrategy[str]:
    return st.one_of(PLAIN, st.sampled_from(ESCAPES), st.sampled_from(ODD), st.sampled_from(DATES))


value = st.lists(_atom(), max_size=4).map("".join)
component = st.lists(value, min_size=1, max_size=3).map("&".join)
repetition = st.lists(component, min_size=1, max_size=4).map("^".join)
field = st.lists(repetition, min_size=1, max_size=2).map("~".join)


@st.composite
def segment(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["PID", "PV1", "ORC", "OBR", "OBX", "OBX", "SCH", "AIS", "AIG", "AIL", "AIP",
                                 "TXA", "EVN", "MRG", "ZDS", "NTE", "RGS", "MSA", "ERR", "Pid", "P1",
                                 "BHS", "FTS", "XX"]))
    fields = draw(st.lists(st.one_of(field, st.sampled_from(DATES)), max_size=28))
    return "|".join([name, *fields])


@st.composite
def message(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["ORU^R01", "ORM^O01", "OML^O21", "SIU^S12", "SIU^S13", "SIU^S15",
                                 "MDM^T02", "ADT^A01", "ADT^A08", "ACK", "ZZZ^Z01", "MD\\X4D\\^T02"]))
    enc = draw(st.sampled_from(["^~\\&", "^~\\&", "^~\\&#", "^^~\\", "$*#%"]))
    control = draw(st.one_of(PLAIN, value))
    msh = (f"MSH|{enc}|{draw(value)}|{draw(value)}|KIT|R|{draw(st.sampled_from(DATES))}||{kind}|"
           f"{control}|P|2.5.1")
    segments = [msh, *draw(st.lists(segment(), max_size=7))]
    ending = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    text = ending.join(segments) + ending
    if enc == "$*#%":  # the same message in other delimiters
        text = text.replace("|", "!", 1) if draw(st.booleans()) else text
    return text


@st.composite
def feed(draw: st.DrawFn) -> str:
    msgs = draw(st.lists(message(), min_size=0, max_size=5))
    sep = draw(st.sampled_from(["\n", "\r", "", "\x1c\r\x0b", "\ufeff"]))
    head = draw(st.sampled_from(["", "\ufeff", "\x0b", "FHS|^~\\&|X\rBHS|^~\\&\r", "garbage\r", " \n"]))
    return head + sep.join(msgs)


def _write(text: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="hl7fuzz"))
    path = folder / "feed.hl7"
    path.write_bytes(text.encode("utf-8"))
    return path


def _same(fast: dict[str, pl.DataFrame], slow: dict[str, pl.DataFrame]) -> None:
    assert list(fast) == list(slow)
    for name in fast:
        assert_frame_equal(fast[name], slow[name], check_exact=True), name


@FUZZ_FRAMES
@given(feed())
def test_vectorised_path_equals_per_message_path(text: str) -> None:
    path = _write(text)
    try:
        fast_results = read_file(path, tables=["results"])
    except KitError:
        fast_results = None
    try:
        slow_results = read_file(path, tables=["results"], vectorised=False)
    except KitError:
        slow_results = None
    assert (fast_results is None) == (slow_results is None)
    if fast_results is not None and slow_results is not None:
        _same(fast_results, slow_results)
        _same(read_file(path), read_file(path, vectorised=False))


@FUZZ_FRAMES
@given(feed())
def test_every_message_is_in_the_tables_or_skipped(text: str) -> None:
    groups = list(group_messages(segment_lines(text)))
    texts = ["\r".join(lines) for leading, lines in groups if not leading]
    frames = to_frames(texts)
    assert list(frames) == list(TABLES)
    lost = frames["skipped"].filter(pl.col("table") == "messages")
    assert frames["messages"].height + lost.height == len(texts)
    numbers = set(lost["message_number"].to_list())
    assert numbers <= set(range(1, len(texts) + 1))
    # every SIU^S12-S15 that parsed is one appointment row or one skipped row saying why not
    sius = 0
    for i, t in enumerate(texts, 1):
        if i not in numbers:
            m = parse_message(t)
            sius += m.message_code == "SIU" and m.trigger in ("S12", "S13", "S15")
    skipped = frames["skipped"].filter(pl.col("table") == "appointments").height
    assert frames["appointments"].height + skipped == sius


@FUZZ
@given(st.one_of(message(), st.binary(max_size=300), st.text(max_size=200),
                 message().map(lambda t: t.encode("utf-8")),
                 message().map(lambda t: b"\xef\xbb\xbf" + t.encode("latin-1", "replace"))))
def test_parser_typed_view_and_ack_raise_only_kit_errors(data: str | bytes) -> None:
    try:
        m = parse_message(data)
    except KitError:
        return
    assert isinstance(m, Message)
    for path in ("MSH-3", "MSH-10", "MSH-9.1", "PID-3.1", "SCH-11.4", "OBX-5", "OBX(2)-5(2).1.1"):
        assert isinstance(m.get(path), str)
    try:
        m.typed()
    except KitError:
        pass
    for code in (AckCode.AA, AckCode.AE, AckCode.AR):
        ack = build_ack(m, code, m.control_id, ValueError(m.sending_application))
        assert len(ack) < 6000  # bounded whatever the message holds
        assert parse_message(ack).get("MSA-1") == code.value


@FUZZ_FRAMES
@given(st.lists(st.one_of(message(), st.binary(max_size=120)), max_size=6))
def test_scheduling_builders_raise_only_kit_errors(items: list[str | bytes]) -> None:
    table, skipped = replay(items)
    assert skipped["table"].to_list() == ["appointments"] * skipped.height
    conflicts(table)
    analytics(table)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80).map(lambda b: b.replace(b"Q", b"\x0b").replace(b"Z", b"\x1c\r")),
                max_size=8), st.integers(min_value=1, max_value=64))
def test_mllp_decoder_returns_frames_or_frame_errors(chunks: list[bytes], limit: int) -> None:
    decoder = MLLPDecoder(limit)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            assert isinstance(item, FrameError) or len(item) <= limit
    for item in decoder.flush():
        assert isinstance(item, bytes | FrameError)
