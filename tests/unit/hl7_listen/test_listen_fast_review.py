"""Review of the listener's one-pass header read and positive ACK writer against ``Message.get`` and
``build_ack``: the header shapes of the review brief, and generated headers over all of Unicode."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import KitError
from kit.hl7.build import build_ack
from kit.hl7.listen_fast import msh_values, positive_ack
from kit.hl7.message import parse_message
from kit.hl7.typed import AckCode, format_dtm
from tests.unit.hl7_listen.test_listen_fast import slow_values

WHEN = dt.datetime(2026, 11, 30, 0, 1, 2, 3000, tzinfo=dt.UTC)
LONG = "L" * 1000

HEADERS = [
    "MSH|^~\\&#|A|F|R|RF|20260101||ADT^A01|ID1|P|2.9",                  # a truncation character
    "MSH|!@#$|A!x|F@y|R#S#z|RF$w|20260101||ADT!A01!ADT_A01|ID!1|P|2.5",  # other encoding characters
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID1|P|2.5|||||||UNICODE UTF-8",  # MSH-18
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID1|P|2.3|||||||8859/1~ISO IR87",
    "MSH|^~\\&|Müller|Hôpital|放射科|🏥|20260101||ADT^A01|ÄÖÜ1|P|2.5.1",   # not ASCII
    "MSH|^~\\&|A\x85B|F\u2028G|R|RF|20260101||ADT^A01|I\u2029D|P|2.5.1",  # other line breaks in values
    "MSH|^~\\&|A~B|F~G|R~S|RF~T|20260101||ADT^A01~ORU^R01|ID1~ID2|P~T|2.5~2.3",  # repetitions
    "MSH|^~\\&|A^B^C|F&G^H|R^S|RF^T|20260101||ADT^A01^ADT_A01^X|ID1^X|P^Y|2.5.1^Z",  # components
    "MSH|^~\\&|A\\F\\B|F\\S\\G|R\\T\\S|RF\\R\\T|20260101||ADT^A\\E\\1|I\\F\\D|P|2.5.1",  # escapes
    "MSH|^~\\&|A\\X0D\\B|F\\.br\\G|R|RF|20260101||ADT^A01|I\\X0B\\D\\X1C\\|P|2.5.1",  # control escapes
    f"MSH|^~\\&|{LONG}|{LONG}|{LONG}|{LONG}|20260101||ADT^{LONG}|{LONG}|{LONG}|{LONG}",  # very long
    "MSH|^~\\&", "MSH|^~\\&|", "MSH|^~\\&|A", "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01",  # MSH-3... missing
    "MSH|^~\\&|||||||||||", "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID1",
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|ID1|P|",
    "MSH|^~\\&|A|F|R|RF|20260101||ADT^A01|I&D|P|2.5.1",                 # a subcomponent in MSH-10
]


def _same(header: str, text: str | None = None) -> None:
    try:
        m = parse_message(header + "\rPID|1\r")
    except KitError:
        return
    values = msh_values(m)
    assert values == slow_values(m)
    for note in (None, text, "duplicate: already stored as #1"):
        expected = build_ack(m, AckCode.AA, note, control_id="c0ffee", timestamp=WHEN)
        assert positive_ack(m, values, note, control_id="c0ffee", timestamp=WHEN,
                            stamp=format_dtm(WHEN)) == expected


@pytest.mark.parametrize("header", HEADERS, ids=range(len(HEADERS)))
def test_the_briefs_header_shapes_read_and_acknowledge_as_the_slow_path(header: str) -> None:
    _same(header, "t" * 400)


_any = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_delims = st.sampled_from(["^~\\&", "^~\\&", "^~\\&#", "!@#$", "^~/&"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_any, min_size=0, max_size=16), _delims, st.one_of(st.none(), _any))
def test_generated_headers_over_all_of_unicode_read_and_acknowledge_as_the_slow_path(
        fields: list[str], msh2: str, text: str | None) -> None:
    _same(f"MSH|{msh2}|" + "|".join(v.replace("|", "") for v in fields), text)
