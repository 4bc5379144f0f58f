"""Fuzz: only KitError leaves; scrubbing twice == once; known identifiers never survive; fast == slow."""

from __future__ import annotations

import datetime as dt
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.deid._text_known import KnownMatcher, Token, tokenize
from kit.deid.text import KnownIdentifiers, PersonName, TextScrubber, scrub_fhir, scrub_hl7
from kit.errors import KitError
from kit.hl7.message import parse_message

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
JANE = KnownIdentifiers(names=(PersonName("Doe", ("Jane",)),), ids=("MRN0042",),
                        birth_dates=(dt.date(1970, 3, 4),), phones=("+41 21 555 0101",))
FORMS = ["Jane Doe", "DOE, Jane", "J. Doe", "doe", "MRN0042", "MRN 42", "1970-03-04", "04.03.1970",
         "4 March 1970", "19700304", "+41 21 555 0101", "0215550101", "021 555 01 01"]
_KNOWN_ONLY = TextScrubber(JANE, library=None)
_BOTH = TextScrubber(JANE)
# text with the characters that matter: separators, digits, letters, tokens' brackets, markup
ALPHABET = st.sampled_from(list("aeJDo  ,.-/+@:()[]<>&\n0123456789") + ["Doe", "Jane", "NAME", "[DATE]", "é"])
TEXT = st.lists(ALPHABET, max_size=60).map("".join) | st.text(max_size=80)
SEPARATOR = st.sampled_from([" ", ", ", "\n", ". ", " (", "; ", "-"])


@SETTINGS
@given(TEXT)
def test_only_kit_errors_and_idempotent(text: str) -> None:
    for s in (_KNOWN_ONLY, _BOTH):
        try:
            once = s(text)
        except KitError:
            continue
        assert s(once) == once


@SETTINGS
@given(st.lists(st.tuples(TEXT, st.sampled_from(FORMS)), min_size=1, max_size=4), SEPARATOR)
def test_known_identifiers_never_survive(parts: list[tuple[str, str]], sep: str) -> None:
    # filler made of letters never touches an identifier's tokens: keep it apart with a separator
    text = "".join(re.sub(r"[^\W_]", "", filler) + sep + form + sep for filler, form in parts)
    out = _KNOWN_ONLY(text)
    low = out.lower()
    assert "jane" not in low and "doe" not in low and "555" not in low and "1970" not in low
    assert "mrn" not in low and "0042" not in out


GAP = frozenset(" \t\r\n,.-/'’()@_:")


def _slow_find(m: KnownMatcher, text: str) -> list[tuple[int, int, str]]:
    """Reference: try every token range, longest first, against the trie by brute force."""
    tokens = tokenize(text)
    out = []
    i = 0
    while i < len(tokens):
        best = None
        for j in range(len(tokens) - 1, i - 1, -1):
            seq = tokens[i:j + 1]
            pairs = zip(seq, seq[1:], strict=False)
            if all(m._joinable(text, a, b, GAP) for a, b in pairs):
                node = m._trie
                for t in seq:
                    node = node.get(t.key) if node is not None else None
                if node is not None and "" in node:
                    best = (j, node[""])
                    break
        if best is None:
            i += 1
            continue
        end = tokens[best[0]].end
        if best[1] == "NAME" and len(tokens[best[0]].key) == 1 and text[end:end + 1] == ".":
            end += 1
        out.append((tokens[i].start, end, best[1]))
        i = best[0] + 1
    return out


@SETTINGS
@given(st.lists(st.sampled_from(["jane", "doe", "j", "x", "1970", "3", "4"]), max_size=12),
       st.lists(SEPARATOR | st.sampled_from(["", "  ", "...", "!"]), max_size=12))
def test_automaton_equals_brute_force(words: list[str], seps: list[str]) -> None:
    text = "".join(w + (seps[i] if i < len(seps) else " ") for i, w in enumerate(words))
    m = KnownMatcher([(("jane", "doe"), "NAME"), (("doe",), "NAME"), (("j", "doe"), "NAME"),
                      (("1970", "3", "4"), "DATE"), (("jane", "doe", "x", "x"), "NAME")])
    assert list(m.find(text)) == _slow_find(m, text)
    assert all(isinstance(t, Token) for t in tokenize(text))


@SETTINGS
@given(st.text(max_size=60), st.sampled_from(["ST", "TX", "FT", "NM", "CWE"]))
def test_hl7_only_kit_errors_and_reparses(value: str, vtype: str) -> None:
    text = f"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\rOBX|1|{vtype}|x||{value}\rNTE|1||{value}\r"
    try:
        msg = parse_message(text)
        out = scrub_hl7(msg, _BOTH).value
    except KitError:
        return
    assert parse_message(out.to_er7()) == out


@SETTINGS
@given(st.text(max_size=60), st.sampled_from(["<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
                                               "<div>{}</div>", "{}", "<div><p>{}</p></div>"]))
def test_fhir_narrative_only_kit_errors(value: str, shape: str) -> None:
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": shape.format(value)},
                "note": [{"text": value}]}
    try:
        scrub_fhir(resource, _BOTH)
    except KitError:
        pass
