"""ipywidgets view of one patient's FHIR record over time.

Only wiring: the events come from :func:`kit.fhir.timeline.timeline`, the picker
labels from :func:`~kit.fhir.timeline.patient_options`, the chart from plotly
(:func:`kit.widgets.charts.timeline_figure` over
:func:`~kit.fhir.timeline.timeline_lanes`) and the table from itables
(:func:`kit.widgets.tables.data_table`). The widget builds and updates
without a browser, so tests and nbval drive it through its attributes::

    frames = {t: client.search_frame(t) for t in ("Patient", "Encounter", "Observation")}
    view = PatientTimeline(frames["Patient"], frames)
    view.patient = "p1"; view.kinds = ("Observation",)
    view.events          # the frame shown
    view.figure.data     # the chart's traces (one per kind), view.table.df the table
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import ipywidgets as w
import polars as pl

from kit.errors import InvalidInputError
from kit.fhir.timeline import patient_options, timeline, timeline_lanes
from kit.widgets.charts import timeline_figure, update_timeline
from kit.widgets.tables import data_table, set_table

__all__ = ["PatientTimeline"]


class PatientTimeline(w.VBox):
    """Pick a patient; see their encounters, observations, conditions, procedures and studies.

    Parameters
    ----------
    patients : polars.DataFrame
        A Patient frame (needs ``id``; labels use ``patient_id``, ``family``,
        ``given``, ``birth_date``).
    frames : mapping of str to polars.DataFrame
        Resource type -> event frame (see :func:`kit.fhir.timeline.timeline`);
        other types are ignored, so ``FhirClient.search_frames`` or
        ``to_frames`` output can be passed as is.
    patient : str, optional
        Logical id of the patient shown first (default: the first by MRN).

    Attributes
    ----------
    patient : str
        Logical Patient id shown (settable).
    kinds : tuple of str
        Event kinds shown (settable; a subset of those present).
    events : polars.DataFrame
        The shown patient's events of the shown kinds (:data:`~kit.fhir.timeline.TIMELINE_SCHEMA`).
    figure : plotly.graph_objects.FigureWidget
        The chart: one trace per kind, one dot per timed event
        (:func:`~kit.fhir.timeline.timeline_lanes` of :attr:`events`).
    table : itables.widget.ITable
        Every shown event, timed or not (``table.df``).
    """

    def __init__(self, patients: pl.DataFrame, frames: Mapping[str, pl.DataFrame], *,
                 patient: str | None = None) -> None:
        options = patient_options(patients)
        if not options:
            raise InvalidInputError("PatientTimeline needs at least one patient")
        self._all = timeline(frames)
        present = sorted(set(self._all["kind"].to_list()))
        self._patient = w.Dropdown(options=options, description="Patient", layout=w.Layout(width="95%"))
        self._kinds = w.SelectMultiple(options=present, value=tuple(present), description="Show",
                                       rows=max(len(present), 1))
        self._summary = w.Label()
        if patient is not None:
            self.patient = patient
        events = self.events
        self.figure = timeline_figure(timeline_lanes(events), widget=True)
        self.table = data_table(self._table_frame(events))
        super().__init__([self._patient, self._kinds, self._summary, self.figure, self.table])
        self._render()
        self._patient.observe(self._on_change, names="value")
        self._kinds.observe(self._on_change, names="value")

    # state
    @property
    def patient(self) -> str:
        return str(self._patient.value)

    @patient.setter
    def patient(self, patient_ref: str) -> None:
        ids = [v for _, v in self._patient.options]
        if patient_ref not in ids:
            raise InvalidInputError(f"no patient with id {patient_ref!r} in the Patient frame")
        self._patient.value = patient_ref

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._kinds.value)

    @kinds.setter
    def kinds(self, kinds: Iterable[str]) -> None:
        chosen = tuple(kinds)
        unknown = [k for k in chosen if k not in self._kinds.options]
        if unknown:
            raise InvalidInputError(f"no events of kind {unknown}; present: {list(self._kinds.options)}")
        self._kinds.value = chosen

    @property
    def events(self) -> pl.DataFrame:
        return self._all.filter((pl.col("patient_ref") == self.patient)
                                & pl.col("kind").is_in(list(self.kinds)))

    def __repr__(self) -> str:
        return (f"PatientTimeline(patient={self.patient!r}, kinds={list(self.kinds)}, "
                f"events={self.events.height})")

    # wiring
    @staticmethod
    def _table_frame(events: pl.DataFrame) -> pl.DataFrame:
        return events.select("time", "kind", "code", "display", "value")

    def _render(self) -> None:
        events = self.events
        label = {v: k for k, v in self._patient.options}[self.patient]
        self._summary.value = f"{label}: {events.height} events"
        update_timeline(self.figure, timeline_lanes(events))
        set_table(self.table, self._table_frame(events))

    def _on_change(self, _change: dict[str, Any]) -> None:
        self._render()
