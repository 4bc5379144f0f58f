"""kit.widgets: ipywidgets views over the kit's data; no logic of their own.

:class:`StudyBrowser` picks a study/series from a frame of DICOM files;
:class:`ImageViewer` shows a series with slice and window/level controls;
:class:`PatientTimeline` shows one patient's FHIR events over time;
:class:`StoreCounter` counts the messages an MLLP listener has stored, live;
:class:`MaskOverlay` draws an analysis result's masks over its series;
:class:`ResultReview` reviews a result (findings, conclusion, targets) and sends it.
"""

from kit.widgets.dicom import ImageViewer, StudyBrowser
from kit.widgets.fhir import PatientTimeline
from kit.widgets.hl7 import StoreCounter
from kit.widgets.results import MaskOverlay, ResultReview

__all__ = ["ImageViewer", "MaskOverlay", "PatientTimeline", "ResultReview", "StoreCounter", "StudyBrowser"]
