"""Is a video source live? A few frames read from it, bounded in count and time (I/O).

What ``kit status`` and the integration API's ``endoscopy/connect`` and
``endoscopy/video-stream`` use: a TCP connect says nothing about a video
stream (a UDP stream has no connection at all, and a port that accepts may
send no video), so the probe opens the source with
:class:`~kit.endoscopy.source.FrameSource` and reads frames::

    sample = read_frames("http://127.0.0.1:8090/live.ts", 3, timeout=5)
    sample.frames        # [{"index", "timestamp", "shape", "mean"}, ...] as `kit endoscopy frames --json`

A live source is not reconnected here (a probe reports, it does not wait for a
gateway to come back). A source that gives no frame raises; one that gives
fewer frames than asked within ``timeout`` returns them with ``complete``
false. Written by hand: only the bounds and the summary; the reading is
:class:`FrameSource`'s.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Final

from kit.endoscopy.frame import Frame
from kit.endoscopy.source import FrameSource, display_url
from kit.errors import PeerTimeoutError, VideoSourceError

__all__ = ["MAX_PROBE_FRAMES", "StreamSample", "frame_record", "read_frames"]

#: Most frames one probe reads.
MAX_PROBE_FRAMES: Final = 100


def frame_record(frame: Frame) -> dict[str, Any]:
    """``{index, timestamp, shape, mean}`` of a frame (mean over all channels), as ``kit endoscopy
    frames --json`` prints it."""
    return {"index": frame.index, "timestamp": round(frame.timestamp, 6),
            "shape": list(frame.image.shape), "mean": round(float(frame.image.mean()), 3)}


@dataclasses.dataclass(frozen=True)
class StreamSample:
    """What :func:`read_frames` read.

    Attributes
    ----------
    url : str
        The source, without credentials.
    kind : str
        ``file``, ``device`` or the URL scheme.
    frames : tuple of dict
        :func:`frame_record` of each frame, in order.
    complete : bool
        All the frames asked for were read (else the source ended or ``timeout`` passed).
    first_frame_ms : float
        From opening the source to its first frame.
    seconds : float
        The whole probe.
    fps, nominal_fps : float
        Measured decode rate (0.0 under two frames) and the rate the source declares.
    dropped, reconnects : int
        As :class:`~kit.endoscopy.source.SourceStats` counts them.
    """

    url: str
    kind: str
    frames: tuple[dict[str, Any], ...]
    complete: bool
    first_frame_ms: float
    seconds: float
    fps: float
    nominal_fps: float
    dropped: int
    reconnects: int

    def as_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready values."""
        out = dataclasses.asdict(self)
        out["frames"] = list(self.frames)
        return out


def read_frames(url: str, count: int = 1, *, timeout: float = 5.0) -> StreamSample:
    """Open ``url`` and read ``count`` frames from it within ``timeout`` seconds in all.

    Parameters
    ----------
    url : str
        A stream URL, a capture device or a video file.
    count : int
        Frames to read, 1 to :data:`MAX_PROBE_FRAMES`.
    timeout : float
        Seconds for the whole probe (opening included).

    Raises
    ------
    ValueError
        ``count`` or ``timeout`` out of range.
    kit.errors.PeerTimeoutError
        No frame within ``timeout``.
    kit.errors.KitError
        The source cannot be opened or read (:class:`FrameSource`'s errors), or ended before a frame.
    """
    if isinstance(count, bool) or not 1 <= count <= MAX_PROBE_FRAMES:
        raise ValueError(f"count must be 1..{MAX_PROBE_FRAMES}, got {count!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    started = time.monotonic()
    deadline = started + timeout
    records: list[dict[str, Any]] = []
    first_ms = 0.0
    source = FrameSource(url, open_timeout=timeout, read_timeout=timeout, reconnect=False)
    try:
        source.start()
        while len(records) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                frame = source.read(timeout=left)
            except PeerTimeoutError:
                if not records:
                    raise
                break
            if frame is None:
                break
            if not records:
                first_ms = (time.monotonic() - started) * 1000.0
            records.append(frame_record(frame))
        stats = source.stats
    finally:
        source.close()
    if not records:
        if time.monotonic() >= deadline:
            raise PeerTimeoutError(f"no video frame within {timeout:g} s", peer=display_url(url))
        raise VideoSourceError("the video source ended before its first frame", peer=display_url(url))
    return StreamSample(url=display_url(url), kind=source.kind, frames=tuple(records),
                        complete=len(records) == count, first_frame_ms=round(first_ms, 3),
                        seconds=round(time.monotonic() - started, 4), fps=round(stats.fps, 3),
                        nominal_fps=stats.nominal_fps, dropped=stats.dropped, reconnects=stats.reconnects)
