"""A dashboard of connector health: latency and failures over time, the active alerts, acknowledge.

Only wiring over a :class:`kit.hub.monitor.Monitor`: the chart is
:func:`kit.widgets.charts.health_figure` over :meth:`Monitor.history`, the
table :func:`kit.widgets.tables.data_table` over :meth:`Monitor.alerts`, and
the button calls :meth:`Monitor.acknowledge` for the selected alert::

    monitor = Monitor(settings, workspace=ws, interval=1).start()
    dashboard = MonitorDashboard(monitor)
    dashboard.start(interval=1.0)      # refresh live
    dashboard
    ...
    dashboard.stop(); monitor.close()
"""

from __future__ import annotations

import getpass
import threading
import time
from typing import Any, Final

import ipywidgets as widgets
import polars as pl

from kit.errors import InvalidInputError, KitError
from kit.hub.alerts import Alert
from kit.widgets.charts import health_figure, update_health
from kit.widgets.tables import data_table, set_table

__all__ = ["ALERT_TABLE_COLUMNS", "MonitorDashboard"]

#: The alert columns the table shows.
ALERT_TABLE_COLUMNS: Final = ("id", "severity", "state", "connector", "rule", "message", "raised_at",
                              "acknowledged_by")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "notebook"


class MonitorDashboard(widgets.VBox):
    """Latency and failed checks per connector (plotly), the active alerts (itables), acknowledge.

    Parameters
    ----------
    monitor : kit.hub.monitor.Monitor
        The monitor to show (its thread, if any, is the caller's).
    user : str, optional
        Who acknowledges (default: the login name).
    window_seconds : float
        How much history the chart shows.
    max_points : int
        Checks the chart shows at most (the latest).

    Attributes
    ----------
    figure : plotly.graph_objects.FigureWidget
    table : itables.widget.ITable
        The active alerts; select one and press *Acknowledge*.
    """

    def __init__(self, monitor: Any, *, user: str | None = None, window_seconds: float = 900.0,
                 max_points: int = 5000) -> None:
        if not window_seconds > 0 or max_points < 1:
            raise InvalidInputError("window_seconds and max_points must be positive")
        self.monitor = monitor
        self.window_seconds = float(window_seconds)
        self.max_points = int(max_points)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = monitor.last_round
        self._alerts = monitor.alerts()
        self.figure = health_figure(self._history(), widget=True)
        self.table = data_table(self._alerts.select(ALERT_TABLE_COLUMNS), caption="active alerts",
                                select=True)
        self.user = widgets.Text(value=user or _user(), description="user",
                                 layout=widgets.Layout(width="220px"))
        self.button = widgets.Button(description="Acknowledge", icon="check",
                                     tooltip="Acknowledge the selected alert in the user's name")
        self.message = widgets.Label()
        self.button.on_click(lambda _: self._clicked())
        super().__init__([self.figure, widgets.HBox([self.user, self.button, self.message]), self.table])
        self._show_count()

    def __repr__(self) -> str:
        n = len(self.monitor.connectors)
        return f"MonitorDashboard({n} connectors, {self._alerts.height} active alerts)"

    @property
    def alerts(self) -> pl.DataFrame:
        """The active alerts last shown."""
        return self._alerts

    def _history(self) -> pl.DataFrame:
        return self.monitor.history(since=time.time() - self.window_seconds, limit=self.max_points)

    def _show_count(self) -> None:
        n = self._alerts.height
        self.message.value = f"{n} active alert{'s' if n != 1 else ''}"

    def refresh(self, *, force: bool = True) -> None:
        """Read the history and the alerts now and show them (unless ``force`` is False and no
        round of checks ended since the last refresh)."""
        with self._lock:
            stamp = self.monitor.last_round
            if not force and stamp == self._seen:
                return
            self._seen = stamp
            history = self._history()
            alerts = self.monitor.alerts()
            update_health(self.figure, history)
            if not alerts.equals(self._alerts):  # keep the user's selection while nothing changed
                self._alerts = alerts
                set_table(self.table, alerts.select(ALERT_TABLE_COLUMNS))
            self._show_count()

    def acknowledge(self, row: int | None = None) -> Alert:
        """Acknowledge the alert in table row ``row`` (default: the selected one) as :attr:`user`.

        Raises
        ------
        kit.errors.InvalidInputError
            No alert selected, or the row does not exist.
        """
        if row is None:
            rows = list(self.table.selected_rows or [])
            if not rows:
                raise InvalidInputError("select an alert in the table first")
            row = int(rows[0])
        if not 0 <= row < self._alerts.height:
            raise InvalidInputError(f"no alert in row {row}")
        alert: Alert = self.monitor.acknowledge(int(self._alerts["id"][row]), self.user.value)
        self.refresh()
        self.message.value = f"alert {alert.id} acknowledged by {alert.acknowledged_by}"
        return alert

    def _clicked(self) -> None:
        try:
            self.acknowledge()
        except KitError as exc:
            self.message.value = f"not acknowledged: {exc}"

    def start(self, interval: float = 1.0) -> None:
        """Refresh every ``interval`` seconds in a background thread until :meth:`stop`."""
        if not interval > 0:
            raise InvalidInputError(f"interval must be positive, got {interval}")
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh(force=False)
                except KitError as exc:  # the monitor was closed or its store failed: say so, stop
                    self.message.value = f"stopped refreshing: {type(exc).__name__}: {exc}"
                    return

        self._thread = threading.Thread(target=loop, name="monitor-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresh (idempotent) and show the latest state."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
        self.refresh()
