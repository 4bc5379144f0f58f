"""Connector health monitoring: scheduled checks, alerts, history and Prometheus metrics (I/O).

A :class:`Monitor` probes every connector of a :class:`~kit.hub.manager.Hub`
(C-ECHO, FHIR metadata, MLLP connect, ...: :meth:`Hub.status`, each probe
bounded by ``probe_timeout``) once per ``interval`` seconds in a background
thread, or once per :meth:`Monitor.run_once` call. Each round:

1. the probes' results are :class:`~kit.hub.alerts.CheckResult` rows;
2. :func:`kit.hub.alerts.evaluate` judges them against the rules over each
   connector's window (latency, error rate, uptime, failures in a row);
3. the checks, the alerts raised and the alerts resolved are written in one
   transaction to ``<workspace>/monitor.db`` (:class:`~kit.hub.monitor_store.MonitorStore`,
   pruned to ``retention_days``);
4. the Prometheus metrics of the monitor's own ``CollectorRegistry`` are updated.

Alerts are acknowledged by id and user (:meth:`Monitor.acknowledge`) and are
resolved by the monitor when their condition clears. A restarted monitor on
the same workspace carries on: its windows and open alerts come from the database.

A worker that dies (a store that cannot write, a bug) is loud: the thread
records why, :attr:`Monitor.healthy` turns False, ``kit_monitor_up`` 0 and
:meth:`Monitor.check` raises :class:`~kit.errors.ServiceFailedError`; it never
stops silently.

Metrics (:meth:`Monitor.metrics_text`, Prometheus text format), per connector:
``kit_connector_up``, ``kit_connector_latency_seconds`` (the last check),
``kit_connector_check_duration_seconds`` (histogram), ``kit_connector_checks_total``,
``kit_connector_failures_total``, ``kit_connector_consecutive_failures``,
``kit_connector_error_rate``, ``kit_connector_uptime_ratio``; and
``kit_alerts_active{severity}``, ``kit_monitor_up``,
``kit_monitor_last_round_timestamp_seconds``.

Written by hand: the scheduling and wiring; probes are the Hub's, metrics
prometheus-client's, storage sqlite3's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kit.config import MonitorSettings, Settings, load_settings
from kit.errors import InvalidInputError, KitError, ServiceFailedError
from kit.hub.alerts import (
    Alert,
    AlertRule,
    CheckResult,
    Metrics,
    Severity,
    Window,
    acknowledge,
    alerts_frame,
    default_rules,
    evaluate,
)
from kit.hub.monitor_store import MonitorStore

__all__ = ["LATENCY_BUCKETS", "METRICS_CONTENT_TYPE", "SUMMARY_COLUMNS", "Monitor", "rules_from_settings"]

log = logging.getLogger(__name__)

#: The media type of :meth:`Monitor.metrics_text` (Prometheus text format 0.0.4).
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: Histogram buckets of the check duration (seconds).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Checks a connector's window holds in memory at most.
MAX_WINDOW: Final = 20_000
#: Rounds between two prunings of the history.
PRUNE_EVERY: Final = 50

#: Columns of :meth:`Monitor.summary`.
SUMMARY_COLUMNS: Final = {
    "connector": pl.String(), "address": pl.String(), "up": pl.Boolean(), "latency_seconds": pl.Float64(),
    "consecutive_failures": pl.Int64(), "error_rate": pl.Float64(), "uptime": pl.Float64(),
    "checks": pl.Int64(), "reason": pl.String(),
}


def rules_from_settings(settings: MonitorSettings) -> tuple[AlertRule, ...]:
    """:func:`kit.hub.alerts.default_rules` with the thresholds of ``[monitor]``."""
    return default_rules(
        consecutive_failures=settings.consecutive_failures, slow_seconds=settings.slow_seconds,
        error_rate_warning=settings.error_rate_warning, error_rate_critical=settings.error_rate_critical,
        uptime_warning=settings.uptime_warning, uptime_critical=settings.uptime_critical,
        min_rate_checks=settings.min_rate_checks)


class _Metrics:
    """The monitor's Prometheus collectors, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, c = self.registry, ["connector"]
        self.up = Gauge("kit_connector_up", "1 when the last health check answered", c, registry=r)
        self.latency = Gauge("kit_connector_latency_seconds", "Duration of the last health check", c,
                             registry=r)
        self.duration = Histogram("kit_connector_check_duration_seconds", "Duration of health checks", c,
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.checks = Counter("kit_connector_checks", "Health checks run", c, registry=r)
        self.failures = Counter("kit_connector_failures", "Health checks failed", c, registry=r)
        self.consecutive = Gauge("kit_connector_consecutive_failures",
                                 "Failed checks since the last good one", c, registry=r)
        self.error_rate = Gauge("kit_connector_error_rate", "Failed share of the recent checks (0..1)", c,
                                registry=r)
        self.uptime = Gauge("kit_connector_uptime_ratio", "Good share of the checks in the uptime window",
                            c, registry=r)
        self.alerts = Gauge("kit_alerts_active", "Alerts raised or acknowledged, not resolved", ["severity"],
                            registry=r)
        self.monitor_up = Gauge("kit_monitor_up", "1 while the monitor's worker runs", registry=r)
        self.last_round = Gauge("kit_monitor_last_round_timestamp_seconds", "When the last round ended",
                                registry=r)
        for s in Severity:
            self.alerts.labels(s.value).set(0)
        self.monitor_up.set(1)

    def round(self, results: Sequence[CheckResult], metrics: dict[str, Metrics], open_alerts: list[Alert],
              at: float) -> None:
        for r in results:
            name = r.connector
            self.up.labels(name).set(1 if r.ok else 0)
            self.latency.labels(name).set(r.latency_seconds)
            self.duration.labels(name).observe(r.latency_seconds)
            self.checks.labels(name).inc()
            if not r.ok:
                self.failures.labels(name).inc()
            else:
                self.failures.labels(name).inc(0)  # the series exists from the first check
        for name, m in metrics.items():
            self.consecutive.labels(name).set(m.consecutive_failures)
            if m.error_rate is not None:
                self.error_rate.labels(name).set(m.error_rate)
            if m.uptime is not None:
                self.uptime.labels(name).set(m.uptime)
        for s in Severity:
            self.alerts.labels(s.value).set(sum(a.severity is s for a in open_alerts))
        self.last_round.set(at)


class Monitor:
    """Health checks of a Hub's connectors on a schedule, with alerts, history and metrics.

    Parameters
    ----------
    settings : Settings, optional
        Where the peers are and ``[monitor]`` (default :func:`kit.load_settings`).
    hub : kit.hub.Hub, optional
        The Hub to probe (default: one built from ``settings`` with ``probe_timeout``).
    workspace : path, optional
        Where ``monitor.db`` goes (default ``[monitor] workspace``).
    in_memory : bool
        Keep the history in memory only (nothing written; for one round).
    interval : float, optional
        Seconds between the starts of two rounds (default ``[monitor] interval``).
    probe_timeout : float, optional
        Seconds each probe may take (default ``[monitor] probe_timeout``).
    rules : sequence of AlertRule, optional
        Default :func:`rules_from_settings`.
    window : Window, optional
        Default from ``[monitor] error_checks`` and ``uptime_hours``.
    retention_seconds : float, optional
        How long checks and resolved alerts are kept (default ``[monitor] retention_days``).
    max_checks : int
        Checks kept per connector at most.
    clock : callable
        Seconds since the epoch (``time.time``); tests pass their own.
    """

    def __init__(self, settings: Settings | None = None, *, hub: Any = None,
                 workspace: str | Path | None = None, in_memory: bool = False, interval: float | None = None,
                 probe_timeout: float | None = None, rules: Sequence[AlertRule] | None = None,
                 window: Window | None = None, retention_seconds: float | None = None,
                 max_checks: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings if settings is not None else load_settings()
        ms = self.settings.monitor
        self.interval = float(interval if interval is not None else ms.interval)
        self.probe_timeout = float(probe_timeout if probe_timeout is not None else ms.probe_timeout)
        self.retention_seconds = float(retention_seconds if retention_seconds is not None
                                       else ms.retention_days * 86400.0)
        for name, value in (("interval", self.interval), ("probe_timeout", self.probe_timeout),
                            ("retention_seconds", self.retention_seconds)):
            if not value > 0 or value != value or value == float("inf"):
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value}")
        if max_checks < 1:
            raise InvalidInputError(f"max_checks must be positive, got {max_checks}")
        self.max_checks = max_checks
        self.rules = tuple(rules) if rules is not None else rules_from_settings(ms)
        evaluate(self.rules, {}, [], now=0.0)  # repeated names fail here, not in the worker
        self.window = window if window is not None else Window(ms.error_checks, ms.uptime_hours * 3600.0)
        self._clock = clock
        self._own_hub = hub is None
        if hub is None:
            from kit.hub.manager import Hub

            hub = Hub.from_settings(self.settings, probe_timeout=self.probe_timeout)
        self.hub = hub
        folder = None if in_memory else (Path(workspace).expanduser() if workspace is not None
                                         else ms.resolved_workspace())
        self.store = MonitorStore(folder)
        self._metrics = _Metrics()
        self._windows: dict[str, deque[CheckResult]] = {}
        self._last: dict[str, Metrics] = {}
        self._addresses: dict[str, str] = {}
        self._reasons: dict[str, str | None] = {}
        self._round_lock = threading.Lock()
        self._rounds = 0
        self._last_round: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._load()

    def __repr__(self) -> str:
        state = "failed" if self._failure else ("running" if self.running else "idle")
        return f"Monitor({len(self.connectors)} connectors, every {self.interval:g}s, {state})"

    # -- state -----------------------------------------------------------------------------------

    @property
    def connectors(self) -> tuple[str, ...]:
        """The connectors probed (the Hub's)."""
        return tuple(self.hub.connectors)

    def _load(self) -> None:
        now = self._clock()
        limit = min(self.max_checks, MAX_WINDOW)
        for name in self.connectors:
            recent = self.store.recent(name, since=now - self.window.uptime_seconds,
                                       at_least=self.window.error_checks, limit=limit)
            self._windows[name] = deque(recent, maxlen=limit)

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def healthy(self) -> bool:
        """False once the worker died (or its thread ended without :meth:`stop`)."""
        if self._failure is not None or self._closed:
            return False
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    @property
    def failure(self) -> BaseException | None:
        """What killed the worker, or None."""
        return self._failure

    @property
    def last_round(self) -> float | None:
        """When the last round ended (seconds since the epoch), None before the first."""
        return self._last_round

    def check(self) -> None:
        """Raise ServiceFailedError when the monitor is not healthy (for a serving loop).

        Raises
        ------
        kit.errors.ServiceFailedError
            The worker died (its error on ``__cause__``) or the monitor was closed.
        """
        if self.healthy:
            return
        exc = self._failure
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else (
            "it was closed" if self._closed else "its thread stopped")
        raise ServiceFailedError(f"the monitor stopped checking: {reason}", service="monitor") from exc

    # -- a round ---------------------------------------------------------------------------------

    def run_once(self) -> pl.DataFrame:
        """Probe every connector once, judge the alerts, store and publish; the round's checks.

        Returns
        -------
        polars.DataFrame
            The Hub's status frame (``connector``, ``address``, ``probe``,
            ``status``, ``reason``, ``latency_ms``).

        Raises
        ------
        kit.errors.StoreError
            The history could not be written.
        kit.errors.ServiceFailedError
            The monitor was closed or its worker died.
        """
        if self._closed or self._failure is not None:
            self.check()
        with self._round_lock:
            return self._round()

    def _round(self) -> pl.DataFrame:
        status = self.hub.status()
        at = self._clock()
        results = [CheckResult(row["connector"], at, row["status"] == "ok",
                               max(float(row["latency_ms"] or 0.0), 0.0) / 1000.0, row["reason"])
                   for row in status.iter_rows(named=True)]
        for r in results:
            self._windows.setdefault(r.connector, deque(maxlen=min(self.max_checks, MAX_WINDOW))).append(r)
        since = at - self.window.uptime_seconds
        for win in self._windows.values():
            while len(win) > self.window.error_checks and win[0].at <= since:
                win.popleft()
        open_alerts = self.store.alerts(active_only=True)
        ev = evaluate(self.rules, {n: list(w) for n, w in self._windows.items() if n in self.connectors},
                      open_alerts, now=at, window=self.window)
        new = self.store.record(results, ev.raised, ev.resolved, at)
        for alert in new:
            log.info("alert %d raised: %s [%s]", alert.id, alert.message, alert.severity.value)
        for alert in ev.resolved:
            log.info("alert %d resolved: %s", alert.id, alert.message)
        gone = {a.id for a in ev.resolved}
        still = [a for a in open_alerts if a.id not in gone] + new
        self._rounds += 1
        if self._rounds % PRUNE_EVERY == 1:
            self.store.prune(before=at - self.retention_seconds, max_per_connector=self.max_checks)
        self._last = ev.metrics
        for row in status.iter_rows(named=True):
            self._addresses[row["connector"]] = row["address"]
            self._reasons[row["connector"]] = row["reason"]
        self._metrics.round(results, ev.metrics, still, at)
        self._last_round = at
        return status

    def refresh(self, max_age: float | None = None) -> None:
        """Run a round unless one ended less than ``max_age`` seconds ago (default ``interval``).

        For a monitor driven by its readers (the API's ``/metrics``) instead of
        a thread: a burst of scrapes probes the peers once.
        """
        limit = self.interval if max_age is None else max_age
        if self._closed or self._failure is not None:
            self.check()
        with self._round_lock:  # a scrape waiting for another's round uses it
            last = self._last_round
            if last is None or self._clock() - last >= limit:
                self._round()

    # -- the worker ------------------------------------------------------------------------------

    def start(self) -> Monitor:
        """Run a round every ``interval`` seconds in a background thread until :meth:`stop`; return self."""
        if self.running:
            return self
        self.check()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kit-monitor", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.run_once()
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        except BaseException as exc:  # noqa: BLE001 - recorded and reported: the monitor is failed, loudly
            self._failure = exc
            self._metrics.monitor_up.set(0)
            log.critical("the monitor's worker died (%s: %s); no more health checks", type(exc).__name__, exc,
                         exc_info=exc)

    def stop(self) -> None:
        """Stop the background thread (idempotent); waits for a round in progress."""
        thread = self._thread
        self._stop.set()
        if thread is not None:
            thread.join(2 * self.probe_timeout + 10.0)
            if thread.is_alive():
                log.error("the monitor's round did not end within %.0fs", 2 * self.probe_timeout + 10.0)

    def close(self) -> None:
        """Stop, close the history and the Hub this monitor built (idempotent)."""
        self.stop()
        if self._closed:
            return
        self._closed = True
        self._metrics.monitor_up.set(0)
        with self._round_lock:
            self.store.close()
        if self._own_hub:
            try:
                self.hub.disconnect_all()
            except KitError as exc:
                log.warning("closing the monitor's Hub: %s", exc)

    def __enter__(self) -> Monitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------

    def summary(self) -> pl.DataFrame:
        """One row per connector as of the last round (:data:`SUMMARY_COLUMNS`)."""
        rows = []
        for name in self.connectors:
            m = self._last.get(name)
            win = self._windows.get(name)
            last = win[-1] if win else None
            rows.append({"connector": name, "address": self._addresses.get(name),
                         "up": None if last is None else last.ok,
                         "latency_seconds": None if last is None else last.latency_seconds,
                         "consecutive_failures": None if m is None else m.consecutive_failures,
                         "error_rate": None if m is None else m.error_rate,
                         "uptime": None if m is None else m.uptime,
                         "checks": 0 if m is None else m.checks, "reason": self._reasons.get(name)})
        return pl.DataFrame(rows, schema=SUMMARY_COLUMNS)

    def history(self, connector: str | None = None, *, since: float | None = None,
                limit: int = 100_000) -> pl.DataFrame:
        """Stored checks, oldest first (:data:`kit.hub.monitor_store.CHECK_COLUMNS`)."""
        return self.store.history(connector, since=since, limit=limit)

    def alerts(self, *, active_only: bool = True) -> pl.DataFrame:
        """Alerts as a frame (:data:`kit.hub.alerts.ALERT_COLUMNS`), most severe and newest first."""
        return alerts_frame(self.store.alerts(active_only=active_only))

    def alert_list(self, *, active_only: bool = True) -> list[Alert]:
        """Alerts as :class:`~kit.hub.alerts.Alert` objects, newest first."""
        return self.store.alerts(active_only=active_only)

    def acknowledge(self, alert_id: int, user: str) -> Alert:
        """Acknowledge an alert by id, in ``user``'s name; the alert as stored.

        Raises
        ------
        kit.errors.RecordNotFoundError
            No alert with this id.
        kit.errors.InvalidInputError
            The alert is resolved, or ``user`` is empty.
        """
        if isinstance(alert_id, bool) or not isinstance(alert_id, int):
            raise InvalidInputError(f"alert_id must be an integer, got {alert_id!r}")
        with self._round_lock:  # not between a round's read of the open alerts and its write
            alert = acknowledge(self.store.alert(alert_id), user, self._clock())
            self.store.save_acknowledgement(alert)
            return self.store.alert(alert_id)

    @property
    def registry(self) -> CollectorRegistry:
        """The monitor's own Prometheus registry."""
        return self._metrics.registry

    def metrics_text(self) -> bytes:
        """The metrics in Prometheus text format."""
        self._metrics.monitor_up.set(1 if self.healthy else 0)
        return bytes(generate_latest(self._metrics.registry))
