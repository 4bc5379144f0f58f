"""Alert rules and the alert lifecycle (kit.hub.alerts, pure): thresholds, evaluation, hypothesis fuzz."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import InvalidInputError, KitError
from kit.hub.alerts import (
    ALERT_COLUMNS,
    Alert,
    AlertRule,
    AlertState,
    CheckResult,
    Metric,
    Op,
    Severity,
    Window,
    acknowledge,
    alerts_frame,
    default_rules,
    evaluate,
    resolve,
    rules_from_dicts,
    window_metrics,
)

FUZZ = settings(max_examples=150, deadline=None)


def checks(pattern: str, *, latency: float = 0.01, start: float = 1000.0, step: float = 1.0,
           connector: str = "hl7-mllp") -> list[CheckResult]:
    """``"..xx"``: one check per character, ``.`` good, ``x`` failed."""
    return [CheckResult(connector, start + k * step, c == ".", latency) for k, c in enumerate(pattern)]


class Sim:
    """What the monitor does with evaluations: open alerts are kept, raised ones get ids."""

    def __init__(self, rules: Sequence[AlertRule], window: Window | None = None) -> None:
        self.rules, self.window = tuple(rules), window or Window()
        self.open: dict[tuple[str, str], Alert] = {}
        self.next_id = 1
        self.log: list[tuple[str, str, str]] = []

    def step(self, windows: dict[str, list[CheckResult]], now: float) -> Any:
        ev = evaluate(self.rules, windows, list(self.open.values()), now=now, window=self.window)
        for alert in ev.resolved:
            assert alert.state is AlertState.RESOLVED
            del self.open[alert.key]
            self.log.append(("resolved", *alert.key))
        for f in ev.raised:
            alert = Alert(self.next_id, f.connector, f.rule.name, f.rule.severity, f.message, f.value, now)
            self.next_id += 1
            self.open[alert.key] = alert
            self.log.append(("raised", f.connector, f.rule.name))
        return ev


# -- the seed's thresholds ------------------------------------------------------------------------


def test_default_rules_are_the_integration_hubs_thresholds() -> None:
    rules = {r.name: r for r in default_rules()}
    assert {(r.metric, r.op, r.threshold, r.severity) for r in rules.values()} == {
        (Metric.CONSECUTIVE_FAILURES, Op.AT_LEAST, 1.0, Severity.INFO),
        (Metric.CONSECUTIVE_FAILURES, Op.AT_LEAST, 3.0, Severity.ERROR),
        (Metric.LATENCY, Op.ABOVE, 5.0, Severity.WARNING),
        (Metric.ERROR_RATE, Op.AT_LEAST, 0.10, Severity.WARNING),
        (Metric.ERROR_RATE, Op.AT_LEAST, 0.25, Severity.CRITICAL),
        (Metric.UPTIME, Op.BELOW, 0.95, Severity.WARNING),
        (Metric.UPTIME, Op.BELOW, 0.90, Severity.CRITICAL),
    }
    assert {s.value for s in Severity} == {"info", "warning", "error", "critical"}
    assert [s.rank for s in Severity] == [0, 1, 2, 3]


def test_connector_down_is_raised_at_exactly_the_third_failure_and_resolved_when_it_answers() -> None:
    sim = Sim(default_rules())
    pattern = "....xxx."
    raised_at = None
    for k in range(1, len(pattern) + 1):
        results = checks(pattern[:k])
        sim.step({"hl7-mllp": results}, results[-1].at)
        if ("hl7-mllp", "connector_down") in sim.open and raised_at is None:
            raised_at = k
    assert raised_at == 7  # 4 good checks, then the 3rd failure
    assert ("raised", "hl7-mllp", "connector_down") in sim.log
    assert sim.log[-2:] == [("resolved", "hl7-mllp", "check_failed"),
                            ("resolved", "hl7-mllp", "connector_down")]
    assert not sim.open


def test_rates_are_judged_on_enough_checks_only() -> None:
    rules = [r for r in default_rules() if r.metric in (Metric.ERROR_RATE, Metric.UPTIME)]
    sim = Sim(rules)
    sim.step({"c": checks("...x", connector="c")}, 1004.0)  # 25 % of 4 checks: too few to judge
    assert not sim.open
    sim.step({"c": checks("........x.", connector="c")}, 1010.0)  # 10 % of 10 checks, uptime 90 %
    assert set(k[1] for k in sim.open) == {"error_rate_warning", "uptime_warning"}
    sim.step({"c": checks(".......xxx", connector="c")}, 1010.0)  # 30 %: critical too, uptime 70 %
    assert set(k[1] for k in sim.open) == {"error_rate_warning", "error_rate_critical", "uptime_warning",
                                           "uptime_critical"}


def test_uptime_counts_the_checks_of_its_window_only() -> None:
    results = checks("xxxxx" + "." * 20, step=60.0)  # failures more than 20 minutes ago
    m = window_metrics(results, results[-1].at, Window(error_checks=20, uptime_seconds=20 * 60.0))
    assert m.uptime == 1.0 and m.uptime_checks == 20
    m = window_metrics(results, results[-1].at, Window(error_checks=25, uptime_seconds=3600.0))
    assert m.uptime == pytest.approx(20 / 25) and m.error_rate == pytest.approx(5 / 25)


def test_slow_responses_raise_the_latency_alert_and_a_failure_changes_nothing() -> None:
    rule = AlertRule("slow_response", "latency_seconds", ">", 0.5, "warning")
    sim = Sim([rule])
    sim.step({"f": checks("..", latency=0.7, connector="f")}, 1002.0)
    assert ("f", "slow_response") in sim.open
    sim.step({"f": checks("..x", latency=0.7, connector="f")}, 1003.0)  # no answer: cannot judge
    assert ("f", "slow_response") in sim.open
    sim.step({"f": checks("..x.", latency=0.1, connector="f")}, 1004.0)
    assert not sim.open


def test_alerts_of_connectors_or_rules_no_longer_monitored_are_resolved() -> None:
    sim = Sim(default_rules())
    sim.step({"a": checks("xxx", connector="a")}, 1003.0)
    assert ("a", "connector_down") in sim.open
    sim.step({}, 1004.0)
    assert not sim.open


# -- lifecycle -----------------------------------------------------------------------------------


def test_lifecycle_raised_acknowledged_resolved() -> None:
    alert = Alert(1, "ehr-fhir", "connector_down", "error", "down", 3.0, 100.0)
    assert alert.state is AlertState.RAISED and alert.active
    acked = acknowledge(alert, "alice", 120.0)
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at) == \
        (AlertState.ACKNOWLEDGED, "alice", 120.0)
    assert acknowledge(acked, "bob", 130.0) is acked  # the first acknowledgement stands
    done = resolve(acked, 150.0)
    assert done.state is AlertState.RESOLVED and done.acknowledged_by == "alice" and not done.active
    assert resolve(done, 160.0) is done
    with pytest.raises(InvalidInputError, match="resolved"):
        acknowledge(done, "carol", 170.0)
    with pytest.raises(InvalidInputError):
        acknowledge(alert, "  ", 120.0)


@pytest.mark.parametrize("changes", [
    {"id": 0}, {"id": True}, {"state": "acknowledged"}, {"state": "resolved"}, {"resolved_at": 5.0},
    {"severity": "fatal"}, {"rule": "Not A Name"}, {"value": float("nan")},
    {"acknowledged_by": "a", "acknowledged_at": 1.0}, {"message": ""},
])
def test_an_inconsistent_alert_is_refused(changes: dict[str, Any]) -> None:
    base = {"id": 1, "connector": "c", "rule": "r", "severity": "info", "message": "m", "value": 1.0,
            "raised_at": 10.0}
    with pytest.raises(InvalidInputError):
        Alert(**{**base, **changes})


def test_alerts_frame_sorts_most_severe_then_newest() -> None:
    alerts = [Alert(1, "a", "check_failed", "info", "m", 1.0, 10.0),
              Alert(2, "a", "connector_down", "error", "m", 3.0, 12.0),
              Alert(3, "b", "check_failed", "info", "m", 1.0, 11.0)]
    frame = alerts_frame(alerts)
    assert dict(frame.schema) == dict(ALERT_COLUMNS)
    assert frame["id"].to_list() == [2, 3, 1]
    assert alerts_frame([]).height == 0


# -- rules as data -------------------------------------------------------------------------------


def test_rules_from_dicts() -> None:
    rules = rules_from_dicts([{"name": "down", "metric": "consecutive_failures", "op": ">=", "threshold": 2,
                               "severity": "critical"}])
    assert rules[0].severity is Severity.CRITICAL and rules[0].threshold == 2.0
    for bad in ([{"name": "x"}],
                [{"name": "x", "metric": "m", "op": ">", "threshold": 1, "severity": "info"}],
                [{"name": "x", "metric": "uptime", "op": ">", "threshold": 2, "severity": "info"}],
                [{"name": "x", "metric": "uptime", "op": "!=", "threshold": 0.5, "severity": "info"}],
                [{"name": "a", "metric": "uptime", "op": "<", "threshold": 0.5, "severity": "info"}] * 2,
                [{"name": "x", "metric": "uptime", "op": "<", "threshold": 0.5, "severity": "info",
                  "extra": 1}],
                ["not a mapping"]):
        with pytest.raises(InvalidInputError):
            rules_from_dicts(bad)  # type: ignore[arg-type]


def test_evaluate_refuses_inconsistent_input() -> None:
    alert = Alert(1, "a", "check_failed", "info", "m", 1.0, 10.0)
    with pytest.raises(InvalidInputError, match="two open alerts"):
        evaluate(default_rules(), {}, [alert, dataclasses.replace(alert, id=2)], now=11.0)
    with pytest.raises(InvalidInputError, match="another connector"):
        evaluate(default_rules(), {"b": checks("x", connector="a")}, [], now=11.0)
    with pytest.raises(InvalidInputError, match="unique"):
        evaluate([*default_rules(), default_rules()[0]], {}, [], now=11.0)


# -- hypothesis ----------------------------------------------------------------------------------

JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                     max_size=3),
                       max_leaves=8)
RULE_DICT = st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "down", "Bad Name", ""]) | st.text(max_size=6),
     "metric": st.sampled_from([m.value for m in Metric]) | JSONISH,
     "op": st.sampled_from([o.value for o in Op]) | JSONISH,
     "threshold": st.floats(allow_nan=True) | st.integers(-5, 5) | JSONISH,
     "severity": st.sampled_from([s.value for s in Severity]) | JSONISH},
    optional={"min_checks": st.integers(-2, 20) | JSONISH, "summary": JSONISH, "other": JSONISH})


@FUZZ
@given(st.lists(RULE_DICT | JSONISH, max_size=4))
def test_rules_from_any_data_are_rules_or_a_kit_error(items: list[Any]) -> None:
    try:
        rules = rules_from_dicts(items)
    except KitError:
        return
    assert all(isinstance(r, AlertRule) for r in rules)


@FUZZ
@given(st.text(max_size=5), JSONISH | st.floats(), JSONISH, JSONISH | st.floats())
def test_check_results_from_any_values_are_valid_or_a_kit_error(connector: str, at: Any, ok: Any,
                                                                 latency: Any) -> None:
    try:
        CheckResult(connector, at, ok, latency)
    except KitError:
        pass


PATTERN = st.lists(st.tuples(st.booleans(), st.floats(0.0, 10.0)), max_size=40)
RULES = st.lists(st.builds(
    AlertRule, name=st.sampled_from(["r1", "r2", "r3", "r4"]), metric=st.sampled_from(list(Metric)),
    op=st.sampled_from(list(Op)), threshold=st.floats(0.0, 1.0), severity=st.sampled_from(list(Severity)),
    min_checks=st.integers(1, 12)), max_size=4, unique_by=lambda r: r.name)


def _results(pattern: list[tuple[bool, float]], connector: str = "c") -> list[CheckResult]:
    return [CheckResult(connector, 1000.0 + k, ok, lat) for k, (ok, lat) in enumerate(pattern)]


@FUZZ
@given(PATTERN, RULES, st.integers(1, 25))
def test_no_flapping_one_change_per_alert_and_a_second_evaluation_changes_nothing(
        pattern: list[tuple[bool, float]], rules: list[AlertRule], error_checks: int) -> None:
    sim = Sim(rules, Window(error_checks=error_checks, uptime_seconds=30.0))
    for k in range(len(pattern) + 1):
        windows = {"c": _results(pattern[:k]), "d": _results(pattern[:k][::-1], "d")}
        ev = sim.step(windows, 1000.0 + k)
        keys = [(f.connector, f.rule.name) for f in ev.raised] + [a.key for a in ev.resolved]
        assert len(keys) == len(set(keys))  # each (connector, rule) changes at most once
        again = evaluate(sim.rules, windows, list(sim.open.values()), now=1000.0 + k, window=sim.window)
        assert not again.changed
        # what is open is exactly what holds (or cannot be judged and was open)
        for connector, m in ev.metrics.items():
            for rule in rules:
                holds = rule.firing(m)
                if holds is not None:
                    assert ((connector, rule.name) in sim.open) == holds


@FUZZ
@given(PATTERN, st.booleans())
def test_failures_in_a_row_are_monotone(pattern: list[tuple[bool, float]], ok: bool) -> None:
    rules = [r for r in default_rules() if r.metric is Metric.CONSECUTIVE_FAILURES]
    sim = Sim(rules)
    before = _results(pattern)
    sim.step({"c": before}, 2000.0)
    was = set(sim.open)
    ev = sim.step({"c": [*before, CheckResult("c", 1999.0, ok, 0.1)]}, 2000.0)
    if ok:
        assert not ev.raised  # a good check never raises a failures-in-a-row alert
        assert not sim.open
    else:
        assert not ev.resolved and was <= set(sim.open)  # a failure never resolves one


@FUZZ
@given(st.sampled_from(list(Op)), st.floats(0, 1e6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_rules_are_monotone_in_their_metric(op: Op, threshold: float, a: float, b: float) -> None:
    low, high = sorted((a, b))
    if op in (Op.ABOVE, Op.AT_LEAST):
        assert not op.holds(low, threshold) or op.holds(high, threshold)
    else:
        assert not op.holds(high, threshold) or op.holds(low, threshold)


def _naive(results: list[CheckResult], now: float, window: Window) -> tuple[Any, ...]:
    ordered = sorted(results, key=lambda r: r.at)
    trailing = 0
    for r in ordered:
        trailing = 0 if r.ok else trailing + 1
    recent = ordered[len(ordered) - min(len(ordered), window.error_checks):]
    inside = [r for r in ordered if now - window.uptime_seconds < r.at <= now]
    return (len(ordered), trailing,
            None if not recent else len([r for r in recent if not r.ok]) / len(recent),
            None if not inside else len([r for r in inside if r.ok]) / len(inside),
            ordered[-1].latency_seconds if ordered and ordered[-1].ok else None)


@FUZZ
@given(PATTERN, st.integers(1, 30), st.floats(0.5, 50.0), st.randoms(use_true_random=False))
def test_window_metrics_equal_a_naive_count(pattern: list[tuple[bool, float]], error_checks: int,
                                            uptime: float, rnd: Any) -> None:
    results = _results(pattern)
    rnd.shuffle(results)  # any order in, the same metrics out
    window = Window(error_checks=error_checks, uptime_seconds=uptime)
    now = 1000.0 + len(pattern)
    m = window_metrics(results, now, window)
    assert (m.checks, m.consecutive_failures, m.error_rate, m.uptime, m.latency_seconds) == \
        _naive(results, now, window)
