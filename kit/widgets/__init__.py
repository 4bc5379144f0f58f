"""kit.widgets: ipywidgets views over the kit's data; no logic of their own.

:class:`StudyBrowser` picks a study/series from a frame of DICOM files (or a PACS
query, retrieving through a client) and drives an :class:`ImageViewer`
(``browser.link(viewer)``), which shows a series with slice and window/level controls;
:class:`PatientTimeline` shows one patient's FHIR events over time (plotly chart, table);
:class:`StoreCounter` counts the messages an MLLP listener has stored, with a live rate chart;
:class:`MaskOverlay` draws an analysis result's masks over its series;
:class:`ResultReview` reviews a result (findings, conclusion, targets) and sends it;
:class:`ProcedurePicker` picks an endoscopy from the worklist and :class:`FrameViewer` plays
its live video with a detection overlay, captures stills and a clip and stores them.

Charts are plotly (:mod:`kit.widgets.charts`), tables itables (:mod:`kit.widgets.tables`),
long work shows a :class:`~kit.widgets.progress.ProgressBar`; no markup is written by hand.
plotly and itables are imported when a widget is built, not by ``import kit``.
"""

from kit.widgets.dicom import ImageViewer, StudyBrowser
from kit.widgets.endoscopy import FrameViewer, ProcedurePicker
from kit.widgets.fhir import PatientTimeline
from kit.widgets.hl7 import StoreCounter, paced
from kit.widgets.results import MaskOverlay, ResultReview

__all__ = ["FrameViewer", "ImageViewer", "MaskOverlay", "PatientTimeline", "ProcedurePicker", "ResultReview",
           "StoreCounter", "StudyBrowser", "paced"]
