"""The listener's hot path equals the slow path: MSH values as ``Message.get`` reads them, the
positive ACK as ``build_ack`` writes it -- on the sample feed and on generated headers."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import KitError
from kit.examples.hl7 import feed
from kit.hl7 import listen_fast
from kit.hl7.build import build_ack
from kit.hl7.listen_fast import MshValues, msh_values, positive_ack
from kit.hl7.message import Message, parse_message
from kit.hl7.typed import AckCode, format_dtm

FEED = [parse_message(text) for text in feed()]
PATHS = {"sending_application": "MSH-3.1", "sending_facility": "MSH-4.1", "receiving_application": "MSH-5.1",
         "receiving_facility": "MSH-6.1", "message_code": "MSH-9.1", "trigger": "MSH-9.2",
         "control_id": "MSH-10", "processing_id": "MSH-11.1", "version": "MSH-12.1"}
WHEN = dt.datetime(2026, 11, 29, 20, 1, 2, 345600, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
TEXTS = [None, "", "duplicate: already stored as #12",
         "stored as #3, flagged: control id reused with other content"]


def slow_values(m: Message) -> MshValues:
    return MshValues(**{name: m.get(path) for name, path in PATHS.items()})


def assert_same(m: Message) -> None:
    values = msh_values(m)
    assert values == slow_values(m)
    assert values.message_type == m.message_type
    for text in TEXTS:
        for when in (WHEN, WHEN.replace(microsecond=0, tzinfo=None)):
            expected = build_ack(m, AckCode.AA, text, control_id="c0ffee", timestamp=when)
            assert positive_ack(m, values, text, control_id="c0ffee", timestamp=when) == expected
            assert positive_ack(m, values, text, control_id="c0ffee", timestamp=when,
                                stamp=format_dtm(when)) == expected


@pytest.mark.parametrize("m", FEED, ids=lambda m: m.control_id)
def test_the_sample_feed_reads_and_acknowledges_as_the_slow_path(m: Message) -> None:
    assert_same(m)


VERSIONS = ["", "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7.1", "2.8.2", "2", "3",
            "2.04", "2.10", "02.3", "2.4.x", "2.3.1.9", "x", "٢.٥", "٢.٣", "2.33333", "00002.3", "22222.1",
            "2..3", "2.3^1"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["ADT^A01", "ADT^A01^ADT_A01", "ORU", "ADT~ORU^R01"])
def test_every_version_rule_and_message_type_acknowledges_as_the_slow_path(version: str, kind: str) -> None:
    assert_same(parse_message(f"MSH|^~\\&|A|F|R|RF|20260101||{kind}|ID1|P|{version}\rPID|1\r"))


@pytest.mark.parametrize("header", [
    "MSH|^~\\&|A\x7f|F|R|RF|20260101||ADT^A01|ID1|P|2.5.1",       # DEL: escaped as \X7F\\
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID1~ID2|P|2.5.1",        # a repeated MSH-10
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID^1|P^X|2.5.1^Y",       # components in MSH-10/11/12
    "MSH|^~\\&|" + "A" * 300 + "|F|R|RF|20260101||ADT^A01|" + "I" * 300 + "|P|2.5.1",  # cut to 199
    "MSH|^~\\&|A\\S\\B|F|R|RF|20260101||ADT^A01|ID1|P|2.5.1",  # an escape in MSH
    "MSH|^~\\&#|A|F|R|RF|20260101||ADT^A01|ID1|P|2.9",              # a truncation character
    "MSH|^~\\&|A|F",                                                # a short header
])
def test_edge_headers_read_and_acknowledge_as_the_slow_path(header: str) -> None:
    assert_same(parse_message(header + "\rPID|1\r"))
    m = parse_message(header + "\rPID|1\r")
    long_text = "t" * 300
    assert positive_ack(m, msh_values(m), long_text, control_id="x", timestamp=WHEN) == \
        build_ack(m, AckCode.AA, long_text, control_id="x", timestamp=WHEN)


def test_the_sample_feed_takes_the_one_pass_read_and_the_written_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain headers never reach the slow path (else the fast path would be equal and useless)."""
    expected = {m.control_id: (slow_values(m), build_ack(m, AckCode.AA, None, control_id="c", timestamp=WHEN))
                for m in FEED}

    def slow(*args: object, **kwargs: object) -> str:
        raise AssertionError("the slow path was taken")

    monkeypatch.setattr(Message, "get", slow)
    monkeypatch.setattr(listen_fast, "build_ack", slow)
    for m in FEED:
        values = msh_values(m)
        assert (values, positive_ack(m, values, None, control_id="c", timestamp=WHEN)) == \
            expected[values.control_id]


_plain = st.text(st.sampled_from("AZaz09 .-_/:#é"), max_size=8)
_special = st.text(st.sampled_from("Az^~&\\|\t\n\x7f"), min_size=1, max_size=4)
_value = st.one_of(_plain, _special)
_version = st.one_of(st.sampled_from(["", "2.1", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.8.2", "2", "3",
                                      "2.04", "2.10", "02.3", "2.4.x", "2.3.1.9", "x", "٢.٥", "22222.1"]),
                     st.text(st.sampled_from("0123456789.^~&\\"), max_size=8))
_delimiters = st.sampled_from(["^~\\&", "^~\\&", "^~\\&", "^~\\&#", "@~\\&", "^~/&", "^!\\&"])


_type = st.one_of(st.sampled_from(["ADT^A01", "ADT^A01^ADT_A01", "ORU^R01", "ACK", "", "ADT^", "^A01",
                                   "ADT~ORU^R01", "ADT^A\\S\\1", "ADT^A01~X^Y"]),
                  st.tuples(_plain, _plain).map("^".join), st.tuples(_value, _value).map("^".join))


_odd = st.one_of(st.just([]), st.lists(st.tuples(st.integers(0, 9), _special), min_size=1, max_size=2))
_text = st.one_of(st.none(), _plain, _special)
_cut = st.sampled_from([10] * 6 + [0, 3, 6, 7, 9])


@settings(max_examples=500, deadline=None)
@given(st.lists(_plain, min_size=10, max_size=10), _odd, _type, _version, _delimiters,
       st.sampled_from([True, True, True, False]), _text, _cut)
def test_generated_headers_read_and_acknowledge_as_the_slow_path(
        fields: list[str], odd: list[tuple[int, str]], kind: str, version: str, msh2: str, pipe: bool,
        text: str | None, cut: int) -> None:
    """Any MSH: escapes, delimiters in values, other delimiters, a truncation character, short headers."""
    sep = "|" if pipe else "#" if "#" not in msh2 else "$"
    for at, value in odd:  # a few values that need escaping (or hold another delimiter)
        fields[at] = value
    values = [v.replace("\r", "").replace("\n", " ") for v in fields]
    values[6], values[9] = kind, version  # MSH-9, MSH-12
    values = [v.replace(sep, "") for v in values][:cut]  # cut: a short header
    line = f"MSH{sep}{msh2}{sep}" + sep.join(values)
    try:
        m = parse_message(line + "\rPID" + sep + "1\r")
    except KitError:
        return
    try:
        slow = build_ack(m, AckCode.AA, text, control_id="id", timestamp=WHEN)
    except KitError:
        return
    assert msh_values(m) == slow_values(m)
    assert positive_ack(m, msh_values(m), text, control_id="id", timestamp=WHEN) == slow
