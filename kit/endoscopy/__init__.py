"""kit.endoscopy: the endoscopy suite's worklist, live video, captures and findings.

Pure: :mod:`~kit.endoscopy.frame` (the :class:`Frame` every module passes around),
:mod:`~kit.endoscopy.buffer` (the drop-oldest frame buffer), :mod:`~kit.endoscopy.vendors`
(vendor profiles as data), :mod:`~kit.endoscopy.capture` (frames to VL Endoscopic / Video
Endoscopic DICOM), :mod:`~kit.endoscopy.detections` (per-frame detections to an
AnalysisResult). I/O: :mod:`~kit.endoscopy.source` (:class:`FrameSource`: frames from a
file, stream or capture device), :mod:`~kit.endoscopy.stream_server`
(:class:`VideoStreamServer`: a clip as a live stream), :mod:`~kit.endoscopy.procedures`
(worklist and ES studies in the PACS), :mod:`~kit.endoscopy.store` (capture a procedure:
store and find again). PyAV is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kit.endoscopy.frame import Frame

if TYPE_CHECKING:
    from kit.endoscopy.source import FrameSource, SourceStats
    from kit.endoscopy.stream_server import VideoStreamServer

__all__ = ["Frame", "FrameSource", "SourceStats", "VideoStreamServer"]

_LAZY = {"FrameSource": "kit.endoscopy.source", "SourceStats": "kit.endoscopy.source",
         "VideoStreamServer": "kit.endoscopy.stream_server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kit.endoscopy' has no attribute {name!r}")
