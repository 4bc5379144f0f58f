"""``kit.hl7._leanc`` (the sender's lean round trip in C) makes the pure-Python lean path's two
checks: the same texts take it, the same replies are a plain AA (on generated input) -- and under
CI=true it is built. Its round trips over real sockets: tests/integration/mllp/test_leanc_round_trip.py;
the sender's own tests run on both paths (``lean_path`` in tests/integration/mllp/conftest.py)."""

from __future__ import annotations

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from kit.hl7 import sender
from kit.hl7.ack_fast import _HEAD, aa_tail
from kit.hl7.build import build_ack
from kit.hl7.framing import frame
from kit.hl7.message import parse_message
from kit.hl7.typed import AckCode
from tests.conftest import require_built

leanc = sender._leanc
needs_c = pytest.mark.skipif(leanc is None, reason="kit.hl7._leanc is not built")

MESSAGE = "MSH|^~\\&|A|B|C|D|20260301120000||ADT^A01|C1|P|2.5.1\rPID|1||123\r"


def test_the_c_round_trip_is_built() -> None:
    require_built(leanc, "kit.hl7._leanc")


def python_aa_frame(data: bytes, control_id: str) -> bool:
    """aa_read's own test (before it hands over to ack_frame)."""
    tail = aa_tail(control_id)
    return (tail[:1] == b"\r" and data.endswith(tail)
            and _HEAD.fullmatch(data, 0, len(data) - len(tail)) is not None)


# -- the two checks, on generated input --------------------------------------------------------
_FIELD = st.lists(st.sampled_from(["A", "b", "1", " ", "^", "~", "\\", "&", "|", "\r", "é", "\x7f", "\x7e",
                                   "\x1f", "}", "{", "ACK", "\x0b", "\x1c", "\n"]), max_size=6).map("".join)
_ID = st.sampled_from(["C1", "", "X9", "A B", "}{", "é", "A~B", "A\\B", "a|b", "\x7f", "ACK"]) | _FIELD


_PLAIN_FIELD = st.sampled_from(["A", "KIT", "", "20260301120000", "ACK", "ACK^A01^ACK", "ADT^A01", "^X",
                                "ACK^", "ACKX", "AC", "XACK", "ack", "P", "2.5.1", "a b", "}{"])


@st.composite
def replies(draw: st.DrawFn) -> tuple[bytes, str]:
    """Mostly plain AA frames (MSH-3... of any length, MSH-9 of every shape), some odd bytes in."""
    control_id = draw(_ID)
    odd = draw(st.integers(0, 3)) == 0  # a quarter with odd bytes in MSH, and odd ends
    fields = draw(st.lists(_PLAIN_FIELD | _FIELD if odd else _PLAIN_FIELD, max_size=12))
    msa_id = draw(st.sampled_from([control_id, "C1", control_id + "x"])) if odd else control_id
    code = draw(st.sampled_from(["AA", "AE", "CA"])) if odd else "AA"
    sep = draw(st.sampled_from(["|", "|", "^", ""])) if odd else "|"
    end = draw(st.sampled_from(["\r", "", "|t\r", "\rERR|x\r"])) if odd else "\r"
    text = "MSH|^~\\&|" + "|".join(fields) + "\rMSA|" + code + sep + msa_id + end
    data = text.encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
    if odd:
        data = draw(st.sampled_from([b"\x0b", b"", b"x\x0b"])) + data \
            + draw(st.sampled_from([b"\x1c\r", b"\x1c", b"\x1c\r\x0b", b"\x1c\n", b"\x1c\x1c", b"\r\r"]))
    else:
        data = b"\x0b" + data + b"\x1c\r"
    return data, control_id


@needs_c
@settings(max_examples=1500, deadline=None)
@given(replies())
def test_the_plain_aa_test_is_aa_reads(reply: tuple[bytes, str]) -> None:
    data, control_id = reply
    assert leanc is not None
    expected = python_aa_frame(data, control_id)
    event(f"plain AA: {expected}")
    assert leanc.aa_frame(data, control_id.encode("utf-8")) == expected


def test_every_message_type_and_header_length_is_judged_as_by_aa_read() -> None:
    taken = 0
    for kind in ["ACK", "ACK^A01^ACK", "", "^A01", "ACK^", "ADT^A01", "ACKX", "ack", "ACK~X", "AC", "XACK",
                 "ACK&A", "A\\CK", "AC^K", "ACX", "ABK", "ACK ", " ACK"]:
        for length in range(12):
            for odd, at in (("", 0), ("\\", 4), ("~", 4), ("\x7f", 4), ("é", 4), ("~", 7), ("\\", 9),
                            ("|", 2)):
                msh = ["A", "B", "C", "D", "20260101", "", kind, "X1", "P", "2.5", "x"]
                msh[min(at, 10)] += odd
                data = frame("MSH|^~\\&|" + "|".join(msh[:length]) + "\rMSA|AA|C1\r")
                expected = python_aa_frame(data, "C1")
                taken += expected
                if leanc is not None:
                    assert leanc.aa_frame(data, b"C1") == expected, data
    assert taken > 50


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), _ID)
def test_any_bytes_before_a_tail_are_judged_as_by_aa_read(head: bytes, control_id: str) -> None:
    assert leanc is not None
    for data in (head, b"\x0bMSH|^~\\&|" + head + aa_tail(control_id), head + aa_tail(control_id)):
        assert leanc.aa_frame(data, control_id.encode("utf-8")) == python_aa_frame(data, control_id)


def test_the_listeners_aa_is_a_plain_aa_to_both() -> None:
    m = parse_message(MESSAGE)
    data = frame(build_ack(m, AckCode.AA))
    assert python_aa_frame(data, "C1")
    if leanc is not None:
        assert leanc.aa_frame(data, b"C1")


@st.composite
def texts(draw: st.DrawFn) -> str:
    head = draw(st.sampled_from(["MSH|^~\\&|", "MSH|^~\\&|", "MSH|^~\\#|", "MSH|", "PID|"]))
    fields = draw(st.lists(_FIELD, max_size=12))
    body = draw(st.lists(_FIELD, max_size=3))
    return head + "|".join(fields) + "\r" + "\r".join(body) + draw(st.sampled_from(["\r", "", "\n", "\r\n"]))


@needs_c
@settings(max_examples=1500, deadline=None)
@given(texts())
@example(MESSAGE)
# an MSH-10 holding a separator or the escape (each declined: the listener's MSA-2 may escape it)
@example(MESSAGE.replace("|C1|", "|C^1|"))
@example(MESSAGE.replace("|C1|", "|C~1|"))
@example(MESSAGE.replace("|C1|", "|C\\1|"))
@example(MESSAGE.replace("|C1|", "|C&1|"))
def test_the_same_texts_take_the_lean_path(text: str) -> None:
    assert leanc is not None
    expected = sender._lean_id(text)
    assert leanc.lean_text(text.encode("utf-8")) == (None if expected is None else expected.encode("utf-8"))


