"""The sender's one-piece receive equals its general path: ``ack_frame(data, control_id)`` is the
ACK the decoder + ``fast_ack`` + MSA-2 match give for the same bytes, or None -- on the listener's
own ACKs and on generated replies (pieces, several frames, garbage, other codes, other ids)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.examples.hl7 import feed
from kit.hl7.ack_fast import aa_read, aa_tail, ack_frame, fast_ack
from kit.hl7.build import AckError, build_ack
from kit.hl7.framing import CR, FS, VT, MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.typed import Ack, AckCode
from tests.unit.hl7_framing.test_fast_paths import acks, plain_acks, slow_ack
from tests.unit.hl7_framing.test_sender_fast import _assert_same_ack


def general(data: bytes, control_id: str) -> Ack | None:
    """What the sender's general path makes of one receive: exactly one frame, a plain ACK whose
    MSA-2 is ``control_id`` (its fast read equal to the full parse), else None."""
    items = MLLPDecoder().feed(data)
    if len(items) != 1 or not isinstance(items[0], bytes):
        return None
    ack = fast_ack(items[0])
    if ack is None or ack.control_id != control_id:
        return None
    assert ack == slow_ack(items[0])
    return ack


def _check(data: bytes, control_id: str) -> None:
    fast = ack_frame(data, control_id)
    expected = aa_read(data, aa_tail(control_id), control_id)  # the sender's: its own test, then ack_frame
    slow = general(data, control_id)
    if fast is not None:
        assert slow is not None
        _assert_same_ack(fast, slow)
    if expected is not None:
        assert slow is not None
        _assert_same_ack(expected, slow)
    assert (expected is None) == (fast is None)  # both take every plain frame of the ACK


@pytest.mark.parametrize("m", [parse_message(t) for t in list(feed())[:20]], ids=lambda m: m.control_id)
@pytest.mark.parametrize("text", [None, "duplicate: already stored as #4", "a|b"])
@pytest.mark.parametrize("code", [AckCode.AA, AckCode.CA, AckCode.AE])
def test_the_listeners_acks_are_read_in_one_piece_as_by_the_general_path(m: object, text: str | None,
                                                                        code: AckCode) -> None:
    assert hasattr(m, "control_id")
    when = dt.datetime(2026, 11, 29, 20, 1, 2, 345600, tzinfo=dt.UTC)
    error = AckError(207, "x") if not code.is_positive else None
    data = frame(build_ack(m, code, text, error, timestamp=when))  # type: ignore[arg-type]
    fast = ack_frame(data, m.control_id)  # type: ignore[attr-defined]
    if code.is_positive and text != "a|b":  # plain MSH + MSA: the one-piece read
        assert fast is not None
    _check(data, m.control_id)  # type: ignore[attr-defined]
    assert ack_frame(data, m.control_id + "X") is None  # type: ignore[attr-defined]  # another id: general


@settings(max_examples=400, deadline=None)
@given(plain_acks(), st.sampled_from(["", "C1", "x"]), st.integers(0, 6))
def test_plain_acks_in_one_frame_are_read_as_by_the_general_path(content: bytes, control_id: str,
                                                                  shape: int) -> None:
    ack = fast_ack(content)
    assert ack is not None
    cid = ack.control_id if control_id == "" else control_id  # mostly the matching id
    data = [frame(content), frame(content) + frame(content), VT + content + FS, b" " + frame(content),
            frame(content)[:-1], frame(content) + b"x", VT + content + FS + CR + CR][shape]
    _check(data, cid)
    if shape == 0 and cid == ack.control_id:
        assert ack_frame(data, cid) is not None  # the shape it is for: taken


@settings(max_examples=400, deadline=None)
@given(acks(), st.sampled_from(["C1", "", "A"]))
def test_any_ack_shape_is_read_as_by_the_general_path_or_left_to_it(content: bytes, control_id: str) -> None:
    _check(VT + content + FS + CR, control_id)
    ack = fast_ack(content)
    if ack is not None:
        _check(VT + content + FS + CR, ack.control_id)


_field = st.one_of(st.text(st.sampled_from("AZaz09 .-+_/:#^&"), max_size=6),
                   st.text(st.sampled_from("Az^&~\\é\x7f\t\x0b\x1c"), min_size=1, max_size=3))
_types = st.sampled_from(["ACK", "ACK^A01^ACK", "", "^A01", "ACK^", "ADT^A01", "ACKX", "ack", "ACK~X", "AC",
                          "XACK", "ACK&A"])


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, str]:
    """One receive: an MSH + MSA reply of any field count, type, code and MSA-2, in any framing
    (mostly the plain shape that the one-piece read takes, so that its every condition is tried)."""
    plain = st.text(st.sampled_from("AZaz09 .-+_/:#^&"), max_size=6)
    msh = [draw(plain) for _ in range(10)]
    msh[6] = draw(_types)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1]))):  # a value the plain shape does not hold
        msh[draw(st.integers(0, 9))] = draw(_field)
    msh = msh[: draw(st.sampled_from([10, 10, 9, 8, 7, 7, 6, 5, 3, 0]))]
    control_id = draw(st.sampled_from(["C1", "", "C1^X", "c1"]))
    msa = [draw(st.sampled_from(["AA", "AA", "AE", "AR", "CA", "CE", "CR", "XX", "", "A", "AAA"])),
           draw(st.sampled_from([control_id, control_id, control_id, "C2", ""])),
           draw(st.one_of(plain, _field)), draw(plain)]
    msa = msa[: draw(st.sampled_from([2, 2, 3, 4, 1]))]
    text = "MSH|^~\\&|" + "|".join(msh) + "\rMSA|" + "|".join(msa) + draw(st.sampled_from(["\r", "", "\r\r"]))
    content = text.encode(draw(st.sampled_from(["ascii", "utf-8", "latin-1"])), "replace")
    data = draw(st.sampled_from([VT + content + FS + CR] * 6 + [VT + content + FS, content + FS + CR,
                                                                VT + content + FS + CR + VT]))
    return data, control_id


IDS = ["C1", "", "A~B", "A\\B", "é", "a\x7fb", "a\tb", "A^B", "A&B", " "]


@pytest.mark.parametrize("control_id", IDS)
def test_any_control_id_is_read_as_by_the_general_path(control_id: str) -> None:
    for msa in (f"AA|{control_id}", f"AA|{control_id}|t", f"CA|{control_id}", "AA|C1"):
        for end in ("\r", ""):
            for encoding in ("utf-8", "latin-1"):
                text = f"MSH|^~\\&|A|B|C|D|20260101||ACK^A01^ACK|X1|P|2.5\rMSA|{msa}{end}"
                data = frame(text.encode(encoding))
                _check(data, control_id)
                _check(data, "C1")


def test_the_listeners_aa_is_read_by_one_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply nearly every message gets takes aa_read's own test, not ack_frame's match."""
    from kit.hl7 import ack_fast

    messages = [parse_message(t) for t in list(feed())[:10]]
    replies = [frame(build_ack(m, AckCode.AA)) for m in messages]
    expected = [general(r, m.control_id) for r, m in zip(replies, messages, strict=True)]

    def unused(data: bytes, control_id: str) -> None:
        raise AssertionError("read by ack_frame")

    monkeypatch.setattr(ack_fast, "ack_frame", unused)
    for reply, m, slow in zip(replies, messages, expected, strict=True):
        fast = aa_read(reply, aa_tail(m.control_id), m.control_id)
        assert fast is not None and slow is not None
        _assert_same_ack(fast, slow)


@pytest.mark.parametrize("control_id", ["é1", "C\x7f", "\x01"])
def test_a_control_id_no_plain_ack_holds_reads_no_reply_as_positive(control_id: str) -> None:
    """Such an id's tail is one that no frame has: a reply ending like it (an MSH, no MSA) is no ACK."""
    tail = aa_tail(control_id)
    heads = (b"MSH|^~\\&|A|B", b"MSH|^~\\&|", b"MSH|^~\\&|A|B|C|D|E|F|ACK")
    for data in (VT + head + tail for head in heads):
        assert aa_read(data, tail, control_id) is None
        _check(data, control_id)


def test_every_message_type_and_header_length_is_read_as_by_the_general_path() -> None:
    taken = 0
    for kind in ["ACK", "ACK^A01^ACK", "", "^A01", "ACK^", "ADT^A01", "ACKX", "ack", "ACK~X", "AC", "XACK",
                 "ACK&A", "ACK|X", "A\\CK"]:
        for length in range(11):
            for odd, at in (("", 0), ("\\", 4), ("~", 4), ("\x7f", 4), ("é", 4), ("~", 7), ("\\", 9)):
                msh = ["A", "B", "C", "D", "20260101", "", kind, "X1", "P", "2.5"]
                msh[at] += odd
                msh = msh[:length]
                for msa in ("AA|C1", "AA|C1|ok", "AA|C1|", "XX|C1", "AA", "CR|C1|x|y", "AA|C1|x|y" + odd):
                    data = frame("MSH|^~\\&|" + "|".join(msh) + "\rMSA|" + msa + "\r")
                    _check(data, "C1")
                    taken += ack_frame(data, "C1") is not None
    assert taken > 100


@settings(max_examples=600, deadline=None)
@given(replies())
def test_generated_replies_are_read_as_by_the_general_path(reply: tuple[bytes, str]) -> None:
    _check(*reply)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["C1", ""]))
def test_any_bytes_are_none_or_the_general_path(data: bytes, control_id: str) -> None:
    for candidate in (data, VT + data + FS + CR, VT + b"MSH|^~\\&|" + data + FS + CR):
        _check(candidate, control_id)
