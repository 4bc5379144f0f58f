"""The sender's own fast paths equal their slow paths: MSH-10 of an outgoing message read from its
first line (against the full parse), and the lazily built ACK header (against the full parse's Ack,
for every reader of an Ack: fields, ==, hash, repr, replace, copy, pickle)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import KitError
from kit.hl7.ack_fast import fast_ack
from kit.hl7.message import parse_message
from kit.hl7.sender import MLLPSender, _control_id
from kit.hl7.typed import Ack, AckCode
from tests.unit.hl7_framing.test_fast_paths import plain_acks, slow_ack

FIELDS = [f.name for f in dataclasses.fields(Ack)]


def _full(text: str) -> str:
    return parse_message(text).control_id


# -- MSH-10 of an outgoing message ----------------------------------------------------------------
@pytest.mark.parametrize("value", ["C1", "a~b", "a&b", "a^b", "a\\T\\b", "a#b", "", " x ", "~", "&"])
def test_control_id_of_a_message_is_the_full_parse(value: str) -> None:
    text = f"MSH|^~\\&|ADT|H|KIT|R|20260301||ADT^A01|{value}|P|2.5.1\rPID|1||M1\r"
    try:
        expected = _full(text)
    except KitError:
        with pytest.raises(KitError):
            _control_id(text)
        return
    assert _control_id(text) == expected


def test_a_repeated_control_id_is_its_first_repetition_as_the_listener_reads_it() -> None:
    """The old fast path returned ``a~b`` where the full parse (and so the listener's MSA-2) says
    ``a``: the sender skipped its own ACK as stale and timed out."""
    assert _control_id("MSH|^~\\&|A|B|C|D|2026||ADT^A01|a~b|P|2.5\rPID|1\r") == "a"


_value = st.text(st.sampled_from("AZaz09 .-_^~&\\#|"), max_size=8)


@st.composite
def outgoing(draw: st.DrawFn) -> str:
    chars = draw(st.sampled_from(["^~\\&", "^~\\&#", "^~\\", "^~", "", "^~\\&\\", "~^\\&"]))
    fields = ["MSH", chars, *(draw(_value) for _ in range(6)), draw(st.sampled_from(["ADT^A01", "ORU^R01"])),
              draw(_value), draw(_value), draw(_value)][: draw(st.integers(1, 12))]
    sep = draw(st.sampled_from(["|", "|", "!"]))
    return sep.join(fields) + draw(st.sampled_from(["\r", "\rPID|1||M1\r", "", "\r\r"]))


@settings(max_examples=400, deadline=None)
@given(outgoing())
def test_control_id_equals_the_full_parse_on_generated_headers(text: str) -> None:
    """Equal to the full parse; where the full parse fails, only KitError, or (the sender reads the
    header only, the peer judges the rest) the full parse of the header line alone."""
    try:
        expected: str | None = _full(text)
    except KitError:
        expected = None
    try:
        fast = _control_id(text)
    except KitError:
        assert expected is None
        return
    if expected is None:
        expected = _full(text.split("\r", 1)[0] + "\r")
    assert fast == expected


@settings(max_examples=200, deadline=None)
@given(outgoing())
def test_prepare_frames_the_text_and_names_its_full_parse_control_id(text: str) -> None:
    try:
        data, control_id = MLLPSender._prepare(text)
    except KitError:
        return  # only KitError leaves
    assert data.startswith(b"\x0b") and data.endswith(b"\x1c\r")
    body = data[1:-2].decode()
    try:
        expected = _full(body)
    except KitError:  # a bad segment after the header: the peer judges it
        expected = _full(body.split("\r", 1)[0] + "\r")
    assert control_id == expected


# -- the lazily built ACK -------------------------------------------------------------------------
def _assert_same_ack(fast: Ack, slow: Ack) -> None:
    assert isinstance(fast, Ack)
    assert [getattr(fast, f) for f in FIELDS] == [getattr(slow, f) for f in FIELDS]
    assert fast == slow and slow == fast and not fast != slow  # noqa: SIM202 - both operators
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    for other in (pickle.loads(pickle.dumps(fast)), copy.copy(fast), copy.deepcopy(fast),
                  dataclasses.replace(fast)):
        assert type(other) is Ack and other == slow
    replaced = dataclasses.replace(fast, text="x")
    assert type(replaced) is Ack and replaced.text == "x" and replaced.header == slow.header
    assert fast.is_positive is slow.is_positive and fast.message_type == slow.message_type


@settings(max_examples=300, deadline=None)
@given(plain_acks())
def test_the_lazy_ack_is_the_full_parse_to_every_reader(data: bytes) -> None:
    fast, slow = fast_ack(data), slow_ack(data)
    assert fast is not None and slow is not None
    _assert_same_ack(fast, slow)


@settings(max_examples=100, deadline=None)
@given(plain_acks())
def test_the_lazy_ack_compares_equal_before_its_header_is_read(data: bytes) -> None:
    fast, slow = fast_ack(data), slow_ack(data)
    assert fast is not None and slow is not None
    assert slow == fast  # the comparison itself builds the header
    assert fast.header is fast.header  # built once


def test_the_lazy_ack_is_frozen() -> None:
    fast = fast_ack(b"MSH|^~\\&|A|B|C|D|20260301||ACK|X1|P|2.5\rMSA|AA|C1\r")
    assert fast is not None and fast.code is AckCode.AA and fast.control_id == "C1"
    for name in ("code", "header", "text"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(fast, name, None)
