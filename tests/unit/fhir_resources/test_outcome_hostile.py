"""outcome_issues / outcome_message on whatever a server sends (they run on every error response):
never an exception, unreadable parts left out, and a bounded message; parse_retry_after never raises."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.fhir import policy, resources
from kit.fhir.policy import parse_retry_after
from kit.fhir.resources import outcome_issues, outcome_message

OO = "OperationOutcome"

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["severity", "code", "diagnostics", "details", "text", "expression", "issue",
                         "resourceType", "x"]), inner, max_size=5),
    max_leaves=25)


@pytest.mark.parametrize(("outcome", "expected"), [
    ({"resourceType": OO, "issue": None}, "OperationOutcome without issues"),
    ({"resourceType": OO, "issue": 5}, "OperationOutcome without issues"),
    ({"resourceType": OO, "issue": "boom"}, "OperationOutcome without issues"),
    ({"resourceType": OO, "issue": {"severity": "error"}}, "OperationOutcome without issues"),
    ({"resourceType": OO, "issue": [{"severity": "error", "details": "x"}]}, "error"),
    ({"resourceType": OO, "issue": [{"code": "invalid", "details": ["x"]}]}, "invalid"),
    ({"resourceType": OO, "issue": [{"details": {"text": 7}, "code": "invalid"}]}, "invalid"),
    ({"resourceType": OO, "issue": [{"diagnostics": 12, "code": "invalid"}]}, "invalid"),
    ({"resourceType": OO, "issue": [{"code": "x", "expression": [1, 2]}]}, "x"),
    ({"resourceType": OO, "issue": [{"code": "x", "expression": 7}]}, "x"),
    ({"resourceType": OO, "issue": [{"code": "x", "expression": [1, "Patient.name", None]}]},
     "x (Patient.name)"),
    ({"resourceType": OO, "issue": [{"code": "x", "expression": "Patient.id"}]}, "x (Patient.id)"),
    ({"resourceType": OO, "issue": [{}]}, "no detail"),
    ({"resourceType": OO, "issue": ["text", 3, {"diagnostics": "bad id"}]}, "bad id"),
    ({"resourceType": OO, "issue": [{"details": {"text": "gone"}}, {"diagnostics": "and this"}]},
     "gone; and this"),
], ids=lambda v: repr(v)[:60])
def test_malformed_outcomes_give_a_message_without_the_unreadable_parts(outcome: dict[str, Any],
                                                                         expected: str) -> None:
    assert outcome_message(outcome) == expected
    assert all(isinstance(i, dict) for i in outcome_issues(outcome))


@pytest.mark.parametrize("outcome", [None, 5, "x", [1], {"resourceType": 5},
                                     {"resourceType": OO, "issue": []}])
def test_what_is_not_an_outcome_has_no_issues(outcome: Any) -> None:
    assert outcome_issues(outcome) == []
    assert outcome_message(outcome) == "OperationOutcome without issues"


@settings(max_examples=300, deadline=None)
@given(issue=_json, top=_json)
def test_any_json_shape_never_raises(issue: Any, top: Any) -> None:
    for outcome in ({"resourceType": OO, "issue": issue}, {"resourceType": OO, "issue": [issue, top]},
                    {"resourceType": OO, "issue": [{"severity": "error", "code": top, "details": issue,
                                                    "diagnostics": top, "expression": issue}]}, top):
        issues = outcome_issues(outcome)
        message = outcome_message(outcome)
        assert isinstance(issues, list) and isinstance(message, str) and message


def test_huge_diagnostics_are_cut_and_say_so() -> None:
    huge = {"severity": "error", "code": "x", "diagnostics": "D" * (5 << 20), "expression": ["E" * 100_000]}
    outcome = {"resourceType": OO, "issue": [huge] * 3}
    message = outcome_message(outcome)
    assert len(message) <= resources.MAX_OUTCOME_MESSAGE + 200
    assert "[cut: " in message and "more characters]" in message
    assert message.startswith("D" * 100)


def test_many_issues_are_cut_and_say_how_many_were_left_out() -> None:
    outcome = {"resourceType": OO, "issue": [{"severity": "error", "diagnostics": f"issue {n}"}
                                             for n in range(100_000)]}
    message = outcome_message(outcome)
    assert len(message) <= resources.MAX_OUTCOME_MESSAGE + 200
    assert message.startswith("issue 0; issue 1; ") and message.endswith("more issues]")


def test_a_short_message_is_whole() -> None:
    text = "x" * (resources.MAX_DIAGNOSTICS - 10)
    assert outcome_message({"resourceType": OO, "issue": [{"diagnostics": text}]}) == text


NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("header", "expected"), [
    ("Fri, 31 Dec 9999999999 23:59:59 GMT", "max"),
    ("Fri, 31 Dec 99999 23:59:59 GMT", "max"),
    ("Fri, 31 Dec 9999 23:59:59 GMT", "max"),
    ("1e400", "max"), ("inf", "max"), ("9" * 500, "max"),
    ("-inf", 0.0), ("-5", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ("nan", None), ("-nan", None), ("garbage", None), ("", None), ("Fri, 99 Foo 2025 99:99:99 GMT", None),
    ("120", 120.0), ("Wed, 01 Jan 2025 00:01:00 GMT", 60.0),
])
def test_parse_retry_after_is_bounded_and_never_raises(header: str, expected: Any) -> None:
    got = parse_retry_after(header, now=NOW)
    if expected == "max":
        assert got == policy.MAX_RETRY_AFTER == 365 * 86_400.0
    else:
        assert got == expected
    assert got is None or (not math.isnan(got) and 0.0 <= got <= 365 * 86_400.0)
