"""kit.endoscopy: frames of the endoscopy suite's video.

:class:`Frame` (pure) is the unit every endoscopy module passes around;
:class:`FrameSource` reads frames from a file, stream or capture device and
:class:`VideoStreamServer` serves a clip as a live stream (both PyAV, imported
on first use).
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
