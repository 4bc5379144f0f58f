"""The widgets' charts, drawn by plotly from polars frames (no I/O).

Each chart has a builder (a frame in, a figure out) and an updater that puts a
new frame into an existing figure in place, so a ``plotly.graph_objects.FigureWidget``
on screen changes without being rebuilt. The data shaping is pure and lives with
its protocol (:func:`kit.fhir.timeline.timeline_lanes`, the counter's samples in
:mod:`kit.widgets.hl7`); nothing here writes SVG or HTML. plotly is imported
when a figure is built, not at ``import kit``.

Why plotly: its ``FigureWidget`` updates in place from Python (the live HL7 rate),
it takes polars frames and series directly, and both the widget's JavaScript and
JupyterLab's renderer ship inside the wheel, so charts render on a machine with
no internet (the embedded stack's promise), on Binder and in CI's browser test.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from kit.errors import InvalidInputError
from kit.fhir.timeline import KIND_COLOURS, LANES_SCHEMA, TimelineKind

if TYPE_CHECKING:
    from plotly.basedatatypes import BaseFigure

__all__ = ["HEALTH_SCHEMA", "RATE_SCHEMA", "health_figure", "rate_figure", "timeline_figure", "update_health",
           "update_rate", "update_timeline"]

#: Columns of the frame a rate chart shows (see :class:`kit.widgets.hl7.StoreCounter`).
RATE_SCHEMA: Final[pl.Schema] = pl.Schema({"seconds": pl.Float64(), "count": pl.Int64(),
                                           "per_second": pl.Float64()})

#: Columns of the frame a health chart shows (:meth:`kit.hub.monitor.Monitor.history`).
HEALTH_SCHEMA: Final[pl.Schema] = pl.Schema({"connector": pl.String(), "at": pl.Datetime("us", "UTC"),
                                             "ok": pl.Boolean(), "latency_seconds": pl.Float64()})

_MARGIN: Final = {"l": 10, "r": 10, "t": 30, "b": 10}


def _figure(widget: bool) -> Any:
    import plotly.graph_objects as go

    return go.FigureWidget() if widget else go.Figure()


def _check(frame: pl.DataFrame, schema: pl.Schema, what: str) -> None:
    missing = [c for c in schema if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"not a {what} frame: missing {missing}")


def timeline_figure(lanes: pl.DataFrame, *, widget: bool = False, title: str | None = None) -> BaseFigure:
    """A strip chart of one patient's events: a lane per kind, a dot per event, hover for details.

    Parameters
    ----------
    lanes : polars.DataFrame
        :func:`kit.fhir.timeline.timeline_lanes` output.
    widget : bool
        Return a ``FigureWidget`` (live in a notebook) instead of a ``Figure``.
    title : str, optional
        Chart title.

    Returns
    -------
    plotly.graph_objects.Figure or FigureWidget
        One scatter trace per :class:`~kit.fhir.timeline.TimelineKind`, in that
        order (empty when the kind has no event); clicking a legend entry hides
        its lane.
    """
    fig = _figure(widget)
    for kind in TimelineKind:
        fig.add_scatter(name=kind.value, mode="markers", hoverinfo="text",
                        marker={"color": KIND_COLOURS[kind], "size": 11, "opacity": 0.85})
    fig.update_layout(height=260, margin=_MARGIN, title=title, hovermode="closest",
                      legend={"orientation": "h", "y": -0.2}, xaxis={"type": "date"},
                      yaxis={"type": "category", "categoryorder": "array",
                             "categoryarray": [k.value for k in reversed(TimelineKind)]})
    update_timeline(fig, lanes, title=title)
    return fig


def update_timeline(fig: BaseFigure, lanes: pl.DataFrame, *, title: str | None = None) -> None:
    """Put ``lanes`` into a :func:`timeline_figure` in place (one update on screen)."""
    _check(lanes, LANES_SCHEMA, "timeline lanes")
    with fig.batch_update():
        for trace, kind in zip(fig.data, TimelineKind, strict=True):
            rows = lanes.filter(pl.col("kind") == kind.value)
            trace.x = rows["time"].to_list()
            trace.y = rows["kind"].to_list()
            # plotly reads a few HTML tags in hover text as markup: the label is shown as written
            trace.hovertext = [html.escape(label) for label in rows["label"].to_list()]
            trace.visible = True if rows.height else "legendonly"
        fig.layout.title = title


def rate_figure(rate: pl.DataFrame, *, widget: bool = False,
                title: str = "messages per second") -> BaseFigure:
    """A line of messages per second over the seconds since the counter started.

    Parameters
    ----------
    rate : polars.DataFrame
        :data:`RATE_SCHEMA` (``seconds``, ``count``, ``per_second``).
    widget : bool
        Return a ``FigureWidget`` (live in a notebook) instead of a ``Figure``.
    title : str
        Chart title.
    """
    fig = _figure(widget)
    fig.add_scatter(name="per second", mode="lines+markers", line={"shape": "hv"},
                    hovertemplate="%{x:.1f} s: %{y:.1f}/s<extra></extra>")
    fig.update_layout(height=220, margin=_MARGIN, title=title, showlegend=False,
                      xaxis={"title": "seconds", "rangemode": "tozero"},
                      yaxis={"title": "per second", "rangemode": "tozero"})
    update_rate(fig, rate)
    return fig


def update_rate(fig: BaseFigure, rate: pl.DataFrame) -> None:
    """Put ``rate`` into a :func:`rate_figure` in place."""
    _check(rate, RATE_SCHEMA, "rate")
    with fig.batch_update():
        fig.data[0].x = rate["seconds"].to_list()
        fig.data[0].y = rate["per_second"].to_list()


def health_figure(history: pl.DataFrame, *, widget: bool = False,
                  title: str = "connector health") -> BaseFigure:
    """Latency of the good checks (top) and the failed checks (bottom) over time, per connector.

    Parameters
    ----------
    history : polars.DataFrame
        :data:`HEALTH_SCHEMA` (``connector``, ``at``, ``ok``, ``latency_seconds``),
        e.g. :meth:`kit.hub.monitor.Monitor.history`.
    widget : bool
        Return a ``FigureWidget`` (live in a notebook) instead of a ``Figure``.
    title : str
        Chart title.

    Returns
    -------
    plotly.graph_objects.Figure or FigureWidget
        Two traces per connector, one colour each: a line of latency in
        milliseconds, and an ``x`` for each failed check on the connector's row.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    base = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08,
                         subplot_titles=("latency of good checks (ms)", "failed checks"))
    fig = go.FigureWidget(base) if widget else go.Figure(base)
    fig.update_layout(height=380, margin={**_MARGIN, "t": 50}, title=title, hovermode="closest",
                      legend={"orientation": "h", "y": -0.12})
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(type="category", row=2, col=1)
    fig.update_xaxes(type="date")
    update_health(fig, history, title=title)
    return fig


def update_health(fig: BaseFigure, history: pl.DataFrame, *, title: str | None = None) -> None:
    """Put ``history`` into a :func:`health_figure` in place (traces added when a connector appears)."""
    from plotly.colors import qualitative

    _check(history, HEALTH_SCHEMA, "health history")
    connectors = sorted(history["connector"].unique().to_list())
    shown = [t.name for t in fig.data[::2]]
    palette = qualitative.Plotly
    with fig.batch_update():
        for name in connectors:
            if name in shown:
                continue
            colour = palette[len(shown) % len(palette)]
            shown.append(name)
            fig.add_scatter(name=name, legendgroup=name, mode="lines+markers", marker={"size": 5},
                            line={"color": colour}, row=1, col=1,
                            hovertemplate="%{x}<br>%{y:.1f} ms")
            fig.add_scatter(name=name, legendgroup=name, mode="markers", showlegend=False, row=2, col=1,
                            marker={"symbol": "x", "size": 9, "color": colour}, hovertext=[],
                            hoverinfo="x+text")
        for k, name in enumerate(shown):
            rows = history.filter(pl.col("connector") == name)
            good = rows.filter(pl.col("ok"))
            bad = rows.filter(~pl.col("ok"))
            fig.data[2 * k].x = good["at"].to_list()
            fig.data[2 * k].y = (good["latency_seconds"] * 1000.0).to_list()
            fig.data[2 * k + 1].x = bad["at"].to_list()
            fig.data[2 * k + 1].y = bad["connector"].to_list()
            reasons = bad["reason"].to_list() if "reason" in bad.columns else [None] * bad.height
            fig.data[2 * k + 1].hovertext = [html.escape(r or "failed") for r in reasons]
        if title is not None:
            fig.layout.title = title
