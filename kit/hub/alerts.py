"""Alert rules over connector health checks, and the alert lifecycle, as data (pure).

A health check of one connector is a :class:`CheckResult` (when, ok or not,
how long it took). Over a window of them :func:`window_metrics` computes four
:class:`Metric` values:

====================== ===================================================================
consecutive_failures   failed checks since the last good one
error_rate             failed / all among the last ``Window.error_checks`` checks
latency_seconds        how long the latest check took, when it answered
uptime                 good / all among the checks of the last ``Window.uptime_seconds``
====================== ===================================================================

An :class:`AlertRule` compares one metric with a threshold (``>``, ``>=``,
``<``, ``<=``) and names a :class:`Severity`; it only judges a metric computed
from at least ``min_checks`` checks (one failure among four checks is not a
25 % error rate worth waking anyone for). :func:`default_rules` are the
integration hub's thresholds::

    check_failed         consecutive_failures >= 1      info
    connector_down       consecutive_failures >= 3      error
    slow_response        latency_seconds      >  5 s    warning
    error_rate_warning   error_rate           >= 10 %   warning   (10 checks at least)
    error_rate_critical  error_rate           >= 25 %   critical  (10 checks at least)
    uptime_warning       uptime               <  95 %   warning   (10 checks at least)
    uptime_critical      uptime               <  90 %   critical  (10 checks at least)

Rules are data: :func:`rules_from_dicts` builds them from plain mappings (a
configuration file), each validated on construction.

:func:`evaluate` takes the rules, each connector's window of results and the
open alerts, and says which alerts to raise and which to resolve: a rule that
holds with no open alert raises one, an open alert whose rule no longer holds
is resolved, a metric that cannot be judged (too few checks, no answer to time)
changes nothing. Each (connector, rule) changes at most once per evaluation,
and evaluating again with the same results changes nothing (no flapping).

An :class:`Alert` goes ``raised`` -> ``acknowledged`` (by a named user,
:func:`acknowledge`) -> ``resolved`` (:func:`resolve`, automatically when its
condition clears); a resolved alert stays resolved.

Written by hand: the rules are the kit's own; the storage and scheduling are
in :mod:`kit.hub.monitor`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import polars as pl

from kit.errors import InvalidInputError

__all__ = [
    "ALERT_COLUMNS",
    "Alert",
    "AlertRule",
    "AlertState",
    "CheckResult",
    "Evaluation",
    "Firing",
    "Metric",
    "Metrics",
    "Op",
    "Severity",
    "Window",
    "acknowledge",
    "alerts_frame",
    "default_rules",
    "evaluate",
    "resolve",
    "rules_from_dicts",
    "window_metrics",
]

_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
_MAX_TEXT: Final = 2000


class Severity(enum.StrEnum):
    """How urgent an alert is, least to most."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 (info) to 3 (critical)."""
        return list(Severity).index(self)


class Metric(enum.StrEnum):
    """What a rule looks at (see the module docstring)."""

    CONSECUTIVE_FAILURES = "consecutive_failures"
    ERROR_RATE = "error_rate"
    LATENCY = "latency_seconds"
    UPTIME = "uptime"


class Op(enum.StrEnum):
    """How a rule compares its metric with its threshold."""

    ABOVE = ">"
    AT_LEAST = ">="
    BELOW = "<"
    AT_MOST = "<="

    def holds(self, value: float, threshold: float) -> bool:
        """``value <op> threshold``."""
        if self is Op.ABOVE:
            return value > threshold
        if self is Op.AT_LEAST:
            return value >= threshold
        if self is Op.BELOW:
            return value < threshold
        return value <= threshold


class AlertState(enum.StrEnum):
    """Where an alert is in its lifecycle."""

    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


def _enum(cls: type[enum.StrEnum], value: object, what: str) -> Any:
    try:
        return cls(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise InvalidInputError(f"{what} must be one of {', '.join(m.value for m in cls)}, got {value!r}") \
            from None


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _text(value: object, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > _MAX_TEXT:
        raise InvalidInputError(f"{what} must be a non-empty string of at most {_MAX_TEXT} characters")
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _NAME.fullmatch(value):
        raise InvalidInputError(f"{what} must be a lower-case name like 'connector_down', got {value!r}")
    return value


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One health check of one connector.

    Parameters
    ----------
    connector : str
        The connector's registry name (``pacs-dimse``, ``ehr-fhir``...).
    at : float
        When the check ran (seconds since the epoch).
    ok : bool
        Whether the peer answered.
    latency_seconds : float
        How long the check took (>= 0).
    reason : str, optional
        Why it failed (the typed error's class and message).
    """

    connector: str
    at: float
    ok: bool
    latency_seconds: float
    reason: str | None = None

    def __post_init__(self) -> None:
        _text(self.connector, "connector")
        object.__setattr__(self, "at", _finite(self.at, "at"))
        if not isinstance(self.ok, bool):
            raise InvalidInputError(f"ok must be True or False, got {self.ok!r}")
        latency = _finite(self.latency_seconds, "latency_seconds")
        if latency < 0:
            raise InvalidInputError(f"latency_seconds must not be negative, got {latency}")
        object.__setattr__(self, "latency_seconds", latency)
        if self.reason is not None and not isinstance(self.reason, str):
            raise InvalidInputError("reason must be a string or None")


@dataclasses.dataclass(frozen=True)
class Window:
    """How far back the metrics look.

    Parameters
    ----------
    error_checks : int
        The error rate is over this many latest checks.
    uptime_seconds : float
        Uptime is over the checks of this many latest seconds.
    """

    error_checks: int = 20
    uptime_seconds: float = 24 * 3600.0

    def __post_init__(self) -> None:
        if isinstance(self.error_checks, bool) or not isinstance(self.error_checks, int) or \
                not 1 <= self.error_checks <= 1_000_000:
            raise InvalidInputError(f"error_checks must be 1..1000000, got {self.error_checks!r}")
        if _finite(self.uptime_seconds, "uptime_seconds") <= 0:
            raise InvalidInputError("uptime_seconds must be positive")


@dataclasses.dataclass(frozen=True)
class Metrics:
    """A connector's metrics over its window (None: not computable, e.g. no check yet)."""

    checks: int
    consecutive_failures: int
    error_rate: float | None
    error_checks: int
    latency_seconds: float | None
    uptime: float | None
    uptime_checks: int

    def value(self, metric: Metric) -> tuple[float | None, int]:
        """(value, how many checks it is computed from) of ``metric``."""
        if metric is Metric.CONSECUTIVE_FAILURES:
            return (float(self.consecutive_failures) if self.checks else None), self.checks
        if metric is Metric.ERROR_RATE:
            return self.error_rate, self.error_checks
        if metric is Metric.UPTIME:
            return self.uptime, self.uptime_checks
        return self.latency_seconds, 1 if self.latency_seconds is not None else 0


def window_metrics(results: Sequence[CheckResult], now: float, window: Window = Window()) -> Metrics:
    """The metrics of one connector's check results (any order; sorted by time here).

    Parameters
    ----------
    results : sequence of CheckResult
        One connector's checks.
    now : float
        The evaluation time (seconds since the epoch): uptime counts the checks
        in ``(now - window.uptime_seconds, now]``.
    window : Window
    """
    now = _finite(now, "now")
    ordered = sorted(results, key=lambda r: r.at)
    trailing = 0
    for r in reversed(ordered):
        if r.ok:
            break
        trailing += 1
    recent = ordered[-window.error_checks:]
    since = now - window.uptime_seconds
    in_uptime = [r for r in ordered if since < r.at <= now]
    last = ordered[-1] if ordered else None
    return Metrics(
        checks=len(ordered),
        consecutive_failures=trailing,
        error_rate=(sum(not r.ok for r in recent) / len(recent)) if recent else None,
        error_checks=len(recent),
        latency_seconds=last.latency_seconds if last is not None and last.ok else None,
        uptime=(sum(r.ok for r in in_uptime) / len(in_uptime)) if in_uptime else None,
        uptime_checks=len(in_uptime),
    )


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """``metric <op> threshold`` on at least ``min_checks`` checks raises an alert of ``severity``.

    Parameters
    ----------
    name : str
        Lower-case identifier (``connector_down``); one alert per connector and rule.
    metric : Metric or str
    op : Op or str
        ``>``, ``>=``, ``<`` or ``<=``.
    threshold : float
        Ratios (error rate, uptime) are 0..1; seconds and counts are >= 0.
    severity : Severity or str
    min_checks : int
        Judge the metric only when computed from at least this many checks.
    summary : str, optional
        What the alert means, for people (default: the condition).
    """

    name: str
    metric: Metric
    op: Op
    threshold: float
    severity: Severity
    min_checks: int = 1
    summary: str = ""

    def __post_init__(self) -> None:
        _name(self.name, "rule name")
        object.__setattr__(self, "metric", _enum(Metric, self.metric, "metric"))
        object.__setattr__(self, "op", _enum(Op, self.op, "op"))
        object.__setattr__(self, "severity", _enum(Severity, self.severity, "severity"))
        threshold = _finite(self.threshold, "threshold")
        if threshold < 0 or (self.metric in (Metric.ERROR_RATE, Metric.UPTIME) and threshold > 1):
            allowed = "0..1" if self.metric in (Metric.ERROR_RATE, Metric.UPTIME) else ">= 0"
            raise InvalidInputError(f"rule {self.name}: threshold {threshold} is outside {allowed}")
        object.__setattr__(self, "threshold", threshold)
        if isinstance(self.min_checks, bool) or not isinstance(self.min_checks, int) or \
                not 1 <= self.min_checks <= 1_000_000:
            raise InvalidInputError(f"rule {self.name}: min_checks must be 1..1000000, "
                                    f"got {self.min_checks!r}")
        if not isinstance(self.summary, str) or len(self.summary) > _MAX_TEXT:
            raise InvalidInputError(f"rule {self.name}: summary must be a string of at most {_MAX_TEXT} "
                                    "characters")

    def firing(self, metrics: Metrics) -> bool | None:
        """Whether the rule holds for ``metrics``; None when it cannot be judged."""
        value, checks = metrics.value(self.metric)
        if value is None or checks < self.min_checks:
            return None
        return self.op.holds(value, self.threshold)

    def describe(self, value: float) -> str:
        """``<summary>: <metric> <value> <op> <threshold>``, ratios as percentages."""
        def show(v: float) -> str:
            if self.metric in (Metric.ERROR_RATE, Metric.UPTIME):
                return f"{v * 100:.1f}%"
            if self.metric is Metric.LATENCY:
                return f"{v:.3g} s"
            return f"{v:g}"

        head = self.summary or self.name.replace("_", " ")
        return f"{head}: {self.metric.value} {show(value)} {self.op.value} {show(self.threshold)}"


def default_rules(*, consecutive_failures: int = 3, slow_seconds: float = 5.0,
                  error_rate_warning: float = 0.10, error_rate_critical: float = 0.25,
                  uptime_warning: float = 0.95, uptime_critical: float = 0.90,
                  min_rate_checks: int = 10) -> tuple[AlertRule, ...]:
    """The integration hub's rules (see the module docstring), thresholds adjustable.

    Parameters
    ----------
    consecutive_failures : int
        Failed checks in a row that mean the connector is down.
    slow_seconds : float
        A check that took longer is a slow response.
    error_rate_warning, error_rate_critical : float
        Error rates (0..1) for a warning and a critical alert.
    uptime_warning, uptime_critical : float
        Uptimes (0..1) below which a warning and a critical alert are raised.
    min_rate_checks : int
        Checks the error rate and uptime need before they are judged.
    """
    return (
        AlertRule("check_failed", Metric.CONSECUTIVE_FAILURES, Op.AT_LEAST, 1, Severity.INFO,
                  summary="a health check failed"),
        AlertRule("connector_down", Metric.CONSECUTIVE_FAILURES, Op.AT_LEAST, consecutive_failures,
                  Severity.ERROR, summary="the connector is down"),
        AlertRule("slow_response", Metric.LATENCY, Op.ABOVE, slow_seconds, Severity.WARNING,
                  summary="the connector answers slowly"),
        AlertRule("error_rate_warning", Metric.ERROR_RATE, Op.AT_LEAST, error_rate_warning, Severity.WARNING,
                  min_checks=min_rate_checks, summary="health checks fail often"),
        AlertRule("error_rate_critical", Metric.ERROR_RATE, Op.AT_LEAST, error_rate_critical,
                  Severity.CRITICAL, min_checks=min_rate_checks, summary="health checks fail very often"),
        AlertRule("uptime_warning", Metric.UPTIME, Op.BELOW, uptime_warning, Severity.WARNING,
                  min_checks=min_rate_checks, summary="uptime is low"),
        AlertRule("uptime_critical", Metric.UPTIME, Op.BELOW, uptime_critical, Severity.CRITICAL,
                  min_checks=min_rate_checks, summary="uptime is very low"),
    )


def rules_from_dicts(items: Iterable[Mapping[str, Any]]) -> tuple[AlertRule, ...]:
    """Rules from plain mappings (``name``, ``metric``, ``op``, ``threshold``, ``severity``,
    optional ``min_checks`` and ``summary``); names must be unique.

    Raises
    ------
    InvalidInputError
        A mapping with unknown or missing keys, a bad value, a repeated name.
    """
    fields = {f.name for f in dataclasses.fields(AlertRule)}
    required = {"name", "metric", "op", "threshold", "severity"}
    rules: list[AlertRule] = []
    for k, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"rule {k} must be a mapping, got {type(item).__name__}")
        keys = {str(x) for x in item}
        if keys - fields or required - keys:
            raise InvalidInputError(f"rule {k}: unknown keys {sorted(keys - fields)}, missing "
                                    f"{sorted(required - keys)}; known: {', '.join(sorted(fields))}")
        rules.append(AlertRule(**{str(x): v for x, v in item.items()}))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise InvalidInputError(f"rule names must be unique: {repeated}")
    return tuple(rules)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert: a rule that held for a connector, and where it is in its lifecycle.

    Parameters
    ----------
    id : int
        Its number (given by the store, > 0).
    connector, rule : str
    severity : Severity or str
    message : str
        What was seen when it was raised.
    value : float
        The metric's value when raised.
    raised_at : float
        Seconds since the epoch.
    state : AlertState or str
    acknowledged_by : str, optional
        Who acknowledged it (with ``acknowledged_at``).
    acknowledged_at, resolved_at : float, optional
    """

    id: int
    connector: str
    rule: str
    severity: Severity
    message: str
    value: float
    raised_at: float
    state: AlertState = AlertState.RAISED
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    resolved_at: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1:
            raise InvalidInputError(f"alert id must be a positive integer, got {self.id!r}")
        _text(self.connector, "connector")
        _name(self.rule, "rule")
        object.__setattr__(self, "severity", _enum(Severity, self.severity, "severity"))
        object.__setattr__(self, "state", _enum(AlertState, self.state, "state"))
        _text(self.message, "message")
        object.__setattr__(self, "value", _finite(self.value, "value"))
        raised = _finite(self.raised_at, "raised_at")
        object.__setattr__(self, "raised_at", raised)
        acked = self.acknowledged_by is not None or self.acknowledged_at is not None
        if acked:
            _text(self.acknowledged_by, "acknowledged_by")
            if self.acknowledged_at is None or _finite(self.acknowledged_at, "acknowledged_at") < raised:
                raise InvalidInputError("an acknowledged alert needs acknowledged_at, not before raised_at")
        if self.state is AlertState.ACKNOWLEDGED and not acked:
            raise InvalidInputError("an acknowledged alert needs acknowledged_by and acknowledged_at")
        resolved = self.state is AlertState.RESOLVED
        if resolved != (self.resolved_at is not None):
            raise InvalidInputError("resolved_at is set exactly when the state is resolved")
        if self.resolved_at is not None and _finite(self.resolved_at, "resolved_at") < raised:
            raise InvalidInputError("resolved_at must not be before raised_at")

    @property
    def active(self) -> bool:
        """Raised or acknowledged (not yet resolved)."""
        return self.state is not AlertState.RESOLVED

    @property
    def key(self) -> tuple[str, str]:
        """(connector, rule): at most one active alert per key."""
        return self.connector, self.rule


def acknowledge(alert: Alert, user: str, at: float) -> Alert:
    """``alert`` acknowledged by ``user`` at ``at``; an acknowledged one is returned unchanged.

    Raises
    ------
    InvalidInputError
        The alert is resolved, or ``user`` is empty.
    """
    _text(user, "user")
    if alert.state is AlertState.RESOLVED:
        raise InvalidInputError(f"alert {alert.id} is resolved; there is nothing to acknowledge")
    if alert.state is AlertState.ACKNOWLEDGED:
        return alert
    return dataclasses.replace(alert, state=AlertState.ACKNOWLEDGED, acknowledged_by=user,
                               acknowledged_at=max(_finite(at, "at"), alert.raised_at))


def resolve(alert: Alert, at: float) -> Alert:
    """``alert`` resolved at ``at`` (a resolved one is returned unchanged)."""
    if alert.state is AlertState.RESOLVED:
        return alert
    return dataclasses.replace(alert, state=AlertState.RESOLVED, resolved_at=max(_finite(at, "at"),
                                                                                   alert.raised_at))


@dataclasses.dataclass(frozen=True)
class Firing:
    """A rule that holds for a connector with no open alert: an alert to raise."""

    connector: str
    rule: AlertRule
    value: float
    message: str


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What one :func:`evaluate` changes.

    Attributes
    ----------
    raised : tuple of Firing
        Alerts to open.
    resolved : tuple of Alert
        Open alerts whose condition cleared (or whose connector or rule is no
        longer monitored), now resolved.
    metrics : dict of str to Metrics
        Each connector's metrics.
    """

    raised: tuple[Firing, ...]
    resolved: tuple[Alert, ...]
    metrics: dict[str, Metrics]

    @property
    def changed(self) -> bool:
        """True when an alert is raised or resolved."""
        return bool(self.raised or self.resolved)


def evaluate(rules: Sequence[AlertRule], windows: Mapping[str, Sequence[CheckResult]],
             open_alerts: Iterable[Alert], *, now: float, window: Window = Window()) -> Evaluation:
    """Which alerts to raise and to resolve (see the module docstring).

    Parameters
    ----------
    rules : sequence of AlertRule
        Unique names.
    windows : mapping of str to sequence of CheckResult
        Each monitored connector's recent checks.
    open_alerts : iterable of Alert
        The alerts not yet resolved (at most one per connector and rule).
    now : float
        The evaluation time (seconds since the epoch).
    window : Window

    Raises
    ------
    InvalidInputError
        Repeated rule names, two open alerts for one connector and rule, a
        resolved alert among the open ones, a result under another connector.
    """
    now = _finite(now, "now")
    by_name: dict[str, AlertRule] = {}
    for rule in rules:
        if not isinstance(rule, AlertRule):
            raise InvalidInputError(f"rules must be AlertRule, got {type(rule).__name__}")
        if rule.name in by_name:
            raise InvalidInputError(f"rule names must be unique: {rule.name!r} repeats")
        by_name[rule.name] = rule
    open_by_key: dict[tuple[str, str], Alert] = {}
    for alert in open_alerts:
        if not isinstance(alert, Alert) or not alert.active:
            raise InvalidInputError("open_alerts must be active Alert objects")
        if alert.key in open_by_key:
            raise InvalidInputError(f"two open alerts for {alert.key}: "
                                    f"{open_by_key[alert.key].id} and {alert.id}")
        open_by_key[alert.key] = alert
    metrics: dict[str, Metrics] = {}
    raised: list[Firing] = []
    resolved: list[Alert] = []
    for connector, results in windows.items():
        if any(r.connector != connector for r in results):
            raise InvalidInputError(f"the window of {connector!r} holds another connector's results")
        m = metrics[connector] = window_metrics(results, now, window)
        for rule in by_name.values():
            holds = rule.firing(m)
            current = open_by_key.get((connector, rule.name))
            if holds is None:
                continue  # cannot judge: keep what is
            if holds and current is None:
                value = m.value(rule.metric)[0]
                assert value is not None  # firing() judged it
                raised.append(Firing(connector, rule, value, f"{connector}: {rule.describe(value)}"))
            elif not holds and current is not None:
                resolved.append(resolve(current, now))
    for key, alert in open_by_key.items():
        if key[0] not in windows or key[1] not in by_name:  # no longer monitored
            resolved.append(resolve(alert, now))
    return Evaluation(tuple(raised), tuple(resolved), metrics)


#: Columns of :func:`alerts_frame`.
ALERT_COLUMNS: Final[Mapping[str, pl.DataType]] = {
    "id": pl.Int64(), "connector": pl.String(), "rule": pl.String(), "severity": pl.String(),
    "state": pl.String(), "message": pl.String(), "value": pl.Float64(),
    "raised_at": pl.Datetime("us", "UTC"), "acknowledged_by": pl.String(),
    "acknowledged_at": pl.Datetime("us", "UTC"), "resolved_at": pl.Datetime("us", "UTC"),
}


def alerts_frame(alerts: Iterable[Alert]) -> pl.DataFrame:
    """Alerts as a frame (:data:`ALERT_COLUMNS`), most severe then newest first."""
    def stamp(t: float | None) -> int | None:
        return None if t is None else round(t * 1_000_000)

    items = sorted(alerts, key=lambda a: (-a.severity.rank, -a.raised_at, -a.id))
    rows = [{"id": a.id, "connector": a.connector, "rule": a.rule, "severity": a.severity.value,
             "state": a.state.value, "message": a.message, "value": a.value, "raised_at": stamp(a.raised_at),
             "acknowledged_by": a.acknowledged_by, "acknowledged_at": stamp(a.acknowledged_at),
             "resolved_at": stamp(a.resolved_at)} for a in items]
    raw = {**ALERT_COLUMNS, **{c: pl.Int64() for c in ("raised_at", "acknowledged_at", "resolved_at")}}
    frame = pl.DataFrame(rows, schema=raw)
    return frame.with_columns(pl.col(c).cast(pl.Datetime("us", "UTC"))
                              for c in ("raised_at", "acknowledged_at", "resolved_at"))
