"""kit.widgets: ipywidgets views over the kit's data; no logic of their own.

:class:`StudyBrowser` picks a study/series from a frame of DICOM files;
:class:`ImageViewer` shows a series with slice and window/level controls.
"""

from kit.widgets.dicom import ImageViewer, StudyBrowser

__all__ = ["ImageViewer", "StudyBrowser"]
