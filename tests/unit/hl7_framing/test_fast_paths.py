"""The MLLP hot paths equal their general paths: the one-frame decode and the plain-ACK read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import KitError
from kit.hl7.ack_fast import _timestamp, fast_ack
from kit.hl7.build import AckError, build_ack
from kit.hl7.framing import CR, FS, VT, MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.typed import Ack, AckCode, parse_dtm


def slow_ack(data: bytes) -> Ack | None:
    """What the sender reads without the fast path: the full parse's typed view, if an Ack."""
    try:
        typed = parse_message(data).typed()
    except KitError:
        return None
    return typed if isinstance(typed, Ack) else None


# -- one-frame decode -----------------------------------------------------------------------------
_bytes = st.lists(st.sampled_from([VT, FS, CR, b"\n", b" ", b"x", b"MSH|^~\\&|", b"\xff"]), max_size=12) \
    .map(b"".join)
_chunks = st.lists(st.one_of(_bytes, st.lists(st.binary(max_size=30), max_size=3).map(
    lambda parts: frame(b"".join(parts).replace(VT, b"v").replace(FS, b"f")))), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None)
@given(_chunks, st.integers(1, 40))
def test_decoder_fast_path_equals_the_general_path(chunks: list[bytes], limit: int) -> None:
    fast, slow = MLLPDecoder(limit), MLLPDecoder(limit)
    for chunk in chunks:
        assert fast.feed(chunk) == slow._feed(chunk)
        assert (fast.in_frame, fast.buffered) == (slow.in_frame, slow.buffered)
    assert fast.flush() == slow.flush()


def test_decoder_fast_path_takes_whole_frames_only() -> None:
    d = MLLPDecoder(10)
    assert d.feed(frame(b"MSH|a")) == [b"MSH|a"]
    assert d.feed(frame(b"0123456789")) == [b"0123456789"]
    oversize = d.feed(frame(b"0123456789A"))
    assert len(oversize) == 1 and not isinstance(oversize[0], bytes) and oversize[0].kind == "oversize"
    assert d.feed(b" " + frame(b"MSH|b")) == [b"MSH|b"]  # whitespace before: the general path
    assert d.feed(frame(b"a") + frame(b"b")) == [b"a", b"b"]


# -- plain ACKs -----------------------------------------------------------------------------------
_plain = st.text(st.sampled_from("AZaz09 .-+_/:#^&"), max_size=12)
_any = st.text(st.sampled_from("AZaz09 .-+_/:#^~&\\|é\t"), max_size=12)
_code = st.one_of(st.sampled_from(["AA", "CA"]),
                  st.sampled_from(["AA", "AE", "AR", "CA", "CE", "CR", "XX", "", "AA^X"]))
_ts = st.one_of(st.sampled_from(["", "20260301", "20261129141620.7030+0000", "20261129141620-0500",
                                 "202613", "20261129141620.1234567", "2026^1", " 2026 "]),
                st.text(st.sampled_from("0123456789.+-"), max_size=24))


@st.composite
def acks(draw: st.DrawFn) -> bytes:
    _value = _plain if draw(st.booleans()) else st.one_of(_plain, _any)  # plain ones: the fast path
    msh = ["MSH", "^~\\&", *(draw(_value) for _ in range(4)), draw(_ts), draw(_value),
           draw(st.one_of(st.just("ACK^A01^ACK"),
                          st.sampled_from(["ACK", "ACK^A01^ACK", "", "ADT^A01", "ACK~X", "ack"]))),
           draw(_value), draw(_value), draw(_value)][: draw(st.integers(2, 12))]
    msa = ["MSA", draw(_code), draw(_value), draw(_value)][: draw(st.one_of(st.integers(3, 4),
                                                                        st.integers(1, 4)))]
    segments = ["|".join(msh), "|".join(msa)]
    if draw(st.integers(0, 3)) == 0:
        segments.append(draw(st.sampled_from(["ERR|||207^x^HL70357|E", "ERR|^^^207&x", "ZZZ|1", "", " "])))
    if draw(st.integers(0, 5)) == 0:
        segments.reverse()
    end = draw(st.sampled_from(["\r", "\r", "\r", "\n", "\r\n"]))
    text = end.join(segments) + draw(st.sampled_from(["", end, end + end]))
    return text.encode(draw(st.sampled_from(["utf-8", "latin-1"])))


@settings(max_examples=600, deadline=None)
@given(acks())
def test_fast_ack_equals_the_full_parse(data: bytes) -> None:
    fast = fast_ack(data)  # never raises: it only reads what it can read exactly
    assert fast is None or fast == slow_ack(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fast_ack_on_any_bytes_is_none_or_the_full_parse(data: bytes) -> None:
    fast = fast_ack(b"MSH|^~\\&|" + data)
    assert fast is None or fast == slow_ack(b"MSH|^~\\&|" + data)


@pytest.mark.parametrize(("code", "text", "error"), [
    (AckCode.AA, None, None), (AckCode.AA, "duplicate: already stored as #12", None),
    (AckCode.CA, None, None), (AckCode.AE, "not stored", AckError(207, "store failure")),
    (AckCode.AR, "bad", AckError(101, "MSH-10 empty", "MSH", 1, 10))])
def test_the_listeners_acks_take_the_fast_path_when_positive(code: AckCode, text: str | None,
                                                             error: AckError | None) -> None:
    message = parse_message("MSH|^~\\&|ADT|HOSP|KIT|R|20260301080000||ADT^A01|C1|P|2.5.1\rPID|1||M1\r")
    data = build_ack(message, code, text, error).encode()
    fast = fast_ack(data)
    assert slow_ack(data) is not None
    if error is None:  # MSH + MSA: read without the full parse
        assert fast == slow_ack(data)
        assert fast is not None and fast.control_id == "C1" and fast.code is code
    else:  # with an ERR segment: the full parse
        assert fast is None
    # an escape anywhere (here in MSA-3) means the full parse
    assert fast_ack(build_ack(message, code, "a|b", error).encode()) is None


@st.composite
def plain_acks(draw: st.DrawFn) -> bytes:
    """MSH (standard delimiters) + MSA, plain ASCII values, CR ends: always the fast path."""
    msh = ["MSH", "^~\\&", *(draw(_plain) for _ in range(4)), draw(_ts.filter(lambda t: t.strip() == t)),
           draw(_plain), draw(st.sampled_from(["ACK", "ACK^A01^ACK", "", "ACK^R01"])),
           draw(_plain), draw(_plain), draw(_plain)][: draw(st.integers(3, 12))]
    msa = ["MSA", draw(st.sampled_from([c.value for c in AckCode])), draw(_plain), draw(_plain)][
        : draw(st.integers(2, 4))]
    return ("|".join(msh) + "\r" + "|".join(msa) + draw(st.sampled_from(["", "\r"]))).encode()


@settings(max_examples=300, deadline=None)
@given(plain_acks())
def test_plain_acks_are_read_by_the_fast_path_as_by_the_full_parse(data: bytes) -> None:
    fast = fast_ack(data)
    assert fast is not None
    assert fast == slow_ack(data)


_digits = st.text(st.sampled_from("0123456789"), min_size=14, max_size=14)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.tuples(_digits, st.sampled_from(["", "."]), st.text(st.sampled_from("0123456789"), max_size=8),
              st.sampled_from(["", "+", "-", "x"]), st.text(st.sampled_from("0123456789"), max_size=5))
    .map("".join),
    st.text(st.sampled_from("0123456789.+- ²"), max_size=26)))
def test_ack_timestamps_read_as_parse_dtm(value: str) -> None:
    assert _timestamp(value) == parse_dtm(value)


_two = st.sampled_from(["00", "01", "09", "12", "13", "23", "24", "28", "29", "30", "31", "32", "59", "60",
                        "99"])


@settings(max_examples=500, deadline=None)
@given(st.tuples(st.sampled_from(["2024", "2026", "1900", "0000", "9999"]), _two, _two, _two, _two, _two,
                 st.sampled_from(["", ".7", ".7030", ".123456", ".1234567", "."]),
                 st.sampled_from(["", "+0000", "-0000", "+0530", "-1200", "+2359", "+2400", "+0060", "+00"]))
       .map("".join))
def test_plausible_ack_timestamps_read_as_parse_dtm(value: str) -> None:
    assert _timestamp(value) == parse_dtm(value)
    if _timestamp(value) is not None:
        assert _timestamp(value).utcoffset() == parse_dtm(value).utcoffset()  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["20261129141620", "20261129141620.7030+0000", "20261129141620-0530",
                                   "20261329141620", "20261129141620+2400", "20261129141620.1234567",
                                   "20261129141620.", "2026.5", " 20261129141620", "20261129240000",
                                   "20261129235960", "20240229120000", "20260229120000",
                                   "20261129141620+0060"])
def test_ack_timestamp_edges(value: str) -> None:
    assert _timestamp(value) == parse_dtm(value)
