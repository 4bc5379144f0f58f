"""Video frames as numpy from a file, a stream URL or a capture device (I/O, PyAV).

::

    from kit.endoscopy.source import FrameSource

    with FrameSource("http://127.0.0.1:8090/live.ts") as source:   # the embedded stack's stream
        for frame in source:                                        # kit.endoscopy.frame.Frame
            model(frame.image)                                      # uint8 (height, width, 3) RGB
            if frame.index > 300:
                break
        print(source.stats)                                         # fps, decoded, dropped, reconnects

What it opens (PyAV/FFmpeg does the demuxing and decoding):

- a file path (``clip.mp4``): every frame, in order, equal to a bare PyAV decode;
  ``realtime=True`` paces it at the stream's rate, as if it were live;
- an RTSP URL (``rtsp://gateway/stream``; TCP transport unless ``options`` say
  otherwise; ``options={"rtsp_flags": "listen"}`` waits for a gateway to push);
- MPEG-TS or any FFmpeg format over HTTP(S), UDP, TCP, SRT, RTMP;
- a V4L2 capture card or camera (``/dev/video0``; pass ``options`` such as
  ``{"video_size": "1920x1080", "framerate": "30"}``).

For a live source (and a ``realtime`` file) a capture thread decodes into a
bounded buffer and never waits for the consumer: when the buffer is full the
oldest frame is dropped (counted in :attr:`FrameSource.stats`; frame indices
show the gap). A plain file is decoded in the consumer's own thread as it reads,
so nothing is lost and nothing is handed between threads. A live stream that stops (end of
stream, reset, silence past ``read_timeout``) is reopened with exponential
backoff until ``reconnect_deadline``; the time and the estimated frames missed
are counted, indices skip the missed frames and timestamps keep running across
the gap. A live stream's frame the decoder flags corrupt (a peer gone mid-frame) is
not delivered, nor are the last frames drained with it; they are counted. Every open
and read has a timeout, so iteration never hangs: a URL that does not answer raises
:class:`~kit.errors.PeerTimeoutError` (a closed port
:class:`~kit.errors.PeerUnreachableError`) within ``open_timeout``; a stream
that stays away raises :class:`~kit.errors.PeerDisconnectedError` after the
frames already decoded; a corrupt or truncated file raises
:class:`~kit.errors.VideoFileError` (after the frames that could be decoded).
Written here: the threading, buffering, reconnecting and bookkeeping; PyAV does
all the video work.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Generator, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kit.endoscopy.buffer import DropOldestBuffer, RateMeter
from kit.endoscopy.frame import Frame
from kit.errors import (
    KitError,
    PeerDisconnectedError,
    PeerTimeoutError,
    PeerUnreachableError,
    VideoFileError,
    VideoSourceError,
)

if TYPE_CHECKING:
    from av.container import InputContainer

__all__ = ["FrameSource", "SourceStats", "describe_source", "display_url"]

log = logging.getLogger(__name__)

#: URL schemes of network streams (reconnected by default)
NETWORK_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt"})


@dataclasses.dataclass(frozen=True)
class SourceStats:
    """What a :class:`FrameSource` has seen so far.

    Attributes
    ----------
    decoded : int
        Frames decoded.
    delivered : int
        Frames handed to the consumer.
    dropped : int
        Frames decoded but dropped unread because the consumer fell behind (live sources).
    corrupt : int
        Frames the decoder flagged corrupt, plus packets it could not decode (a live
        stream's are not delivered, nor the frames drained with one at a connection's end).
    reconnects : int
        Times a dropped live stream was reopened.
    missed : int
        Frames estimated lost while disconnected (gap seconds x nominal fps).
    gap_seconds : float
        Time spent disconnected, in total.
    fps : float
        Measured decode rate over the last frames (0.0 before two frames).
    nominal_fps : float
        The rate the stream declares (0.0 when it declares none).
    elapsed : float
        Seconds since the source was opened.
    """

    decoded: int = 0
    delivered: int = 0
    dropped: int = 0
    corrupt: int = 0
    reconnects: int = 0
    missed: int = 0
    gap_seconds: float = 0.0
    fps: float = 0.0
    nominal_fps: float = 0.0
    elapsed: float = 0.0


def display_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (for messages and logs)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1***@", url)


def describe_source(url: str) -> tuple[str, str | None]:
    """``(kind, format)`` of a source: kind is ``file``, ``device`` or the URL scheme.

    ``format`` is the FFmpeg input format to force (``v4l2`` for ``/dev/video*``), else None.
    """
    if url.startswith("/dev/video"):
        return "device", "v4l2"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return scheme, None
    if scheme in ("v4l2",):
        return "device", "v4l2"
    return "file", None


def _ffmpeg_options(kind: str, read_timeout: float, open_timeout: float,
                    extra: Mapping[str, str]) -> dict[str, str]:
    """The protocol's own I/O timeouts (microseconds for FFmpeg), under what the caller passed."""
    micro = str(int(read_timeout * 1_000_000))
    opts: dict[str, str] = {}
    if kind in ("http", "https", "tcp", "rtmp", "rtmps", "srt"):
        opts["rw_timeout"] = micro
    elif kind in ("rtsp", "rtsps"):
        opts["timeout"] = micro
        if "listen" in str(extra.get("rtsp_flags", "")):
            opts["listen_timeout"] = str(max(1, math.ceil(open_timeout)))
        else:
            opts["rtsp_transport"] = "tcp"
    elif kind in ("udp", "rtp"):
        opts["timeout"] = micro
        opts["overrun_nonfatal"] = "1"
    opts.update({str(k): str(v) for k, v in extra.items()})
    return opts


def _resolve(url: str, kind: str) -> None:
    """A host name that does not resolve is unreachable, said plainly (FFmpeg says 'I/O error')."""
    if kind in ("file", "device"):
        return
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise PeerUnreachableError(f"cannot resolve host {host!r}", peer=display_url(url)) from exc


def _error(exc: BaseException, url: str, kind: str, *, waited: float, timeout: float, what: str) -> KitError:
    """The kit's error for a PyAV/OS failure while opening or reading ``url``."""
    import av

    shown = display_url(url)
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    if kind == "file":
        if isinstance(exc, FileNotFoundError):
            return VideoFileError("no such file", source=shown)
        return VideoFileError(f"cannot {what} it: not a video file, truncated or corrupt ({reason})",
                              source=shown)
    if isinstance(exc, (av.error.ExitError, TimeoutError)) or waited >= 0.9 * timeout:
        return PeerTimeoutError(f"the video source did not answer within {timeout:g} s ({what})", peer=shown)
    if isinstance(exc, ConnectionRefusedError):
        return PeerUnreachableError(f"cannot {what} the video source: connection refused", peer=shown)
    if isinstance(exc, FileNotFoundError) and kind == "device":
        return PeerUnreachableError("no such capture device", peer=shown)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, EOFError)):
        return PeerDisconnectedError(f"the video source went away ({reason})", peer=shown)
    if isinstance(exc, av.error.HTTPError):
        return VideoSourceError(f"cannot {what} the video source: HTTP {reason}", peer=shown)
    return VideoSourceError(f"cannot {what} the video source: {reason}", peer=shown)


class FrameSource:
    """Decoded RGB frames from a file, a stream URL or a capture device, with timestamps.

    Parameters
    ----------
    url : str or path
        A file path, a stream URL (``rtsp://``, ``http://``, ``udp://``, ...) or
        a V4L2 device (``/dev/video0``).
    realtime : bool
        For a file: deliver frames at the stream's rate, as a live source would
        (and drop the oldest when the consumer falls behind). Live sources are
        real time anyway.
    reconnect : bool or None
        Reopen a live stream that stops (default: True for network streams and
        devices; files are never reconnected).
    buffer_size : int
        Frames held between the capture thread and the consumer.
    open_timeout, read_timeout : float
        Seconds to wait for the source to open, and for each read.
    reconnect_delay, reconnect_max_delay : float
        First and longest wait between reconnect attempts (the wait doubles).
    reconnect_deadline : float
        Give up (:class:`~kit.errors.PeerDisconnectedError`) when a dropped
        stream has not come back within this many seconds.
    format : str, optional
        FFmpeg input format to force (``v4l2``, ``mpegts``, ...).
    options : mapping, optional
        FFmpeg options for the input (override the timeouts kit sets).
    drop : bool or None
        Drop the oldest frame when the buffer is full (default: for live sources
        and ``realtime`` files) instead of waiting for the consumer. A plain file
        (not ``realtime``) has no buffer: it is decoded in the reader's thread as
        it reads, so nothing is dropped and nothing is handed between threads.

    Raises
    ------
    ValueError
        A parameter is out of range.
    """

    def __init__(self, url: str | os.PathLike[str], *, realtime: bool = False, reconnect: bool | None = None,
                 buffer_size: int = 32, open_timeout: float = 10.0, read_timeout: float = 5.0,
                 reconnect_delay: float = 0.25, reconnect_max_delay: float = 2.0,
                 reconnect_deadline: float = 30.0, format: str | None = None,
                 options: Mapping[str, str] | None = None, drop: bool | None = None) -> None:
        delays = (open_timeout, read_timeout, reconnect_delay, reconnect_max_delay)
        if min(delays) <= 0 or reconnect_deadline < 0 or buffer_size < 1:
            raise ValueError("timeouts, delays and buffer_size must be positive")
        self.url = os.fspath(url)
        self.kind, forced = describe_source(self.url)
        self.format = format or forced
        self.live = self.kind != "file"
        self.realtime = realtime
        if reconnect and self.kind == "file":
            raise ValueError("a file is not reconnected: it ends (use a stream URL to reconnect)")
        self.reconnect = self.live if reconnect is None else reconnect
        self.drop = (self.live or realtime) if drop is None else drop
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.reconnect_delay = reconnect_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.reconnect_deadline = reconnect_deadline
        self.options = _ffmpeg_options(self.kind, read_timeout, open_timeout, options or {})
        # a source that waits for its reader hands frames over in batches (fewer thread switches)
        self._buffer: DropOldestBuffer[Frame] = DropOldestBuffer(
            buffer_size, batch=1 if self.drop else max(1, buffer_size // 2))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frames: Generator[Frame, None, None] | None = None
        self._started = False
        #: a plain file (not realtime, not reconnected) is decoded in the reader's thread, as it
        #: reads: it can wait, so no capture thread, no hand-over, nothing dropped
        self.in_caller_thread = self.kind == "file" and not realtime and not self.reconnect
        self._error: KitError | None = None
        self._lock = threading.Lock()
        self._meter = RateMeter()
        self._counts = {"decoded": 0, "delivered": 0, "corrupt": 0, "reconnects": 0, "missed": 0}
        self._gap = 0.0
        self._nominal = 0.0
        self._opened_at = 0.0
        # position bookkeeping, touched by the capture thread only
        self._index = 0
        self._last_ts: float | None = None
        self._last_at = 0.0
        self._ts_offset = 0.0
        self._origin: float | None = None
        self._conn_frames = 0
        self._after_gap = False
        self._pace_start: float | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> FrameSource:
        """Open the source and start capturing; return self (called by ``with`` and iteration).

        Raises
        ------
        kit.errors.PeerUnreachableError, kit.errors.PeerTimeoutError, kit.errors.VideoSourceError
            A stream or device cannot be opened.
        kit.errors.VideoFileError
            A file is missing or not a readable video.
        """
        if self._stop.is_set():
            raise VideoSourceError("this frame source was closed; make a new one", peer=display_url(self.url))
        if self._started:
            return self
        self._opened_at = time.monotonic()
        container = self._open(self.open_timeout)
        self._started = True
        if self.in_caller_thread:
            self._frames = self._file_frames(container)
            return self
        self._thread = threading.Thread(target=self._run, args=(container,), daemon=True,
                                        name=f"kit-frames {display_url(self.url)}")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop capturing and join the capture thread (idempotent).

        Returns within about ``read_timeout`` even when the source has gone silent.
        """
        self._stop.set()
        self._buffer.close()
        if self._frames is not None:
            self._frames.close()      # closes the file
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.read_timeout + self.open_timeout + 5.0)
            if thread.is_alive():  # PyAV is stuck past its own timeout: say so, never hang the caller
                log.warning("capture thread of %s did not stop", display_url(self.url))

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- what the consumer sees --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        """Frames until the source ends; a failure is raised after the frames decoded before it.

        Iterating a source not yet started (``for f in FrameSource(url)``) starts it, and
        closes it when the loop ends or is left early.
        """
        owned = not self._started
        self.start()
        try:
            while True:
                frame = self.read()
                if frame is None:
                    return
                yield frame
        finally:
            if owned:
                self.close()

    def read(self, timeout: float | None = None) -> Frame | None:
        """The next frame; None when the source has ended (a file's end, ``close()``).

        Parameters
        ----------
        timeout : float or None
            Longest wait for a frame (None: until the source delivers or ends;
            its own timeouts bound that).

        Raises
        ------
        kit.errors.PeerTimeoutError
            No frame within ``timeout``.
        kit.errors.KitError
            What stopped the source (see the class docs), once its earlier frames were read.
        """
        if not self._started:
            self.start()
        if self._frames is not None:   # a file read in this thread: decode the next frame now
            if self._stop.is_set():
                return None
            frame = next(self._frames, None)
            if frame is not None:
                with self._lock:
                    self._counts["delivered"] += 1
            return frame
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            frame = self._buffer.get(timeout=max(0.0, wait))
            if frame is not None:
                with self._lock:
                    self._counts["delivered"] += 1
                return frame
            if self._buffer.closed:
                if self._error is not None and not self._stop.is_set():
                    raise self._error
                return None
            if deadline is not None and time.monotonic() >= deadline:
                raise PeerTimeoutError(f"no frame within {timeout:g} s", peer=display_url(self.url))

    def latest(self, timeout: float | None = None) -> Frame | None:
        """The newest frame, discarding older ones waiting in the buffer (for a model that
        should always see the present); waits like :meth:`read` when none is waiting."""
        waiting = self._buffer.drain()
        with self._lock:
            self._counts["dropped_by_latest"] = self._counts.get("dropped_by_latest", 0) + max(
                0, len(waiting) - 1)
            if waiting:
                self._counts["delivered"] += 1
        return waiting[-1] if waiting else self.read(timeout)

    @property
    def stats(self) -> SourceStats:
        """A snapshot of the counters (see :class:`SourceStats`)."""
        with self._lock:
            c = dict(self._counts)
            fps = self._meter.rate
        return SourceStats(decoded=c["decoded"], delivered=c["delivered"],
                           dropped=self._buffer.dropped + c.get("dropped_by_latest", 0),
                           corrupt=c["corrupt"], reconnects=c["reconnects"], missed=c["missed"],
                           gap_seconds=self._gap, fps=fps, nominal_fps=self._nominal,
                           elapsed=time.monotonic() - self._opened_at if self._opened_at else 0.0)

    # -- decoding (the capture thread, or the reader's for a file) ---------------------------------
    def _open(self, timeout: float) -> InputContainer:
        import av

        _resolve(self.url, self.kind)
        started = time.monotonic()
        try:
            container = av.open(self.url, format=self.format, options=dict(self.options),
                                timeout=(timeout, self.read_timeout))
        except (av.FFmpegError, OSError) as exc:
            raise _error(exc, self.url, self.kind, waited=time.monotonic() - started, timeout=timeout,
                         what="open") from exc
        if not container.streams.video:
            container.close()
            if self.kind == "file":
                raise VideoFileError("has no video stream", source=display_url(self.url))
            raise VideoSourceError("the source has no video stream", peer=display_url(self.url))
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self._nominal = float(rate) if rate else self._nominal
        return container

    def _file_frames(self, container: InputContainer) -> Generator[Frame, None, None]:
        """The frames of a file, decoded in the caller's thread as it asks for them."""
        try:
            yield from self._decode(container)
        except KitError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV/OS errors while reading: the kit's error
            raise _error(exc, self.url, self.kind, waited=0.0, timeout=self.read_timeout,
                         what="read") from exc
        finally:
            container.close()

    def _run(self, container: InputContainer | None) -> None:
        try:
            while container is not None and not self._stop.is_set():
                failure: BaseException | None = None
                try:
                    for frame in self._decode(container):
                        self._buffer.put(frame, block=not self.drop)
                        if self._buffer.closed:
                            break
                except KitError:
                    raise
                except Exception as exc:  # noqa: BLE001 - PyAV/OS errors mid-stream: reconnect or report
                    failure = exc
                finally:
                    container.close()
                    container = None
                if self._stop.is_set():
                    break
                if not self.reconnect:
                    if failure is not None:
                        raise _error(failure, self.url, self.kind, waited=0.0, timeout=self.read_timeout,
                                     what="read") from failure
                    break
                container = self._reopen(failure)
        except KitError as exc:
            self._error = exc
        except BaseException as exc:  # noqa: BLE001 - a bug must still end iteration loudly, never hang it
            err = VideoSourceError(f"the capture thread failed: {type(exc).__name__}: {exc}",
                                   peer=display_url(self.url))
            err.__cause__ = exc
            self._error = err
        finally:
            if container is not None:
                container.close()
            self._buffer.close()

    def _decode(self, container: InputContainer) -> Iterator[Frame]:
        """Every frame of one connection (or file), in order; checks a file's completeness at its end."""
        import av

        stream = container.streams.video[0]
        live = self.kind != "file"
        declared = 0 if live else stream.frames
        packets = decoded = 0
        for packet in container.demux(stream):
            if self._stop.is_set():
                return
            if packet.size:
                packets += 1
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:  # one undecodable packet: count it, keep going
                with self._lock:
                    self._counts["corrupt"] += 1
                continue
            if live:
                frames = self._whole(frames, draining=not packet.size)
            for vf in frames:
                decoded += 1
                frame = self._make_frame(vf)
                if frame is None:
                    return
                yield frame
        if self.kind == "file":
            self._check_file(declared, packets, decoded)

    def _whole(self, frames: list[Any], *, draining: bool) -> list[Any]:
        """The frames of a live stream to deliver: not those the decoder flags corrupt (a frame cut
        short by a peer gone mid-frame) and, when the decoder is drained at the end of a connection
        and one of its last frames is flagged, none of them (a frame shown before the cut one may
        lean on it, unflagged). The others are counted corrupt."""
        if not any(vf.is_corrupt for vf in frames):
            return frames
        keep = [] if draining else [vf for vf in frames if not vf.is_corrupt]
        with self._lock:
            self._counts["corrupt"] += len(frames) - len(keep)
        return keep

    def _check_file(self, declared: int, packets: int, decoded: int) -> None:
        """A file that yields nothing, fewer frames than it declares, or corrupt frames is an error."""
        shown = display_url(self.url)
        corrupt = self._counts["corrupt"]
        if decoded == 0:
            raise VideoFileError("no video frame could be decoded: corrupt or truncated", source=shown)
        if declared and packets < declared:
            raise VideoFileError(f"truncated: {packets} of the {declared} frames it declares are there",
                                 source=shown)
        if corrupt:
            raise VideoFileError(f"corrupt: {corrupt} frame(s) could not be decoded cleanly "
                                 f"({decoded} decoded)", source=shown)

    def _make_frame(self, vf: Any) -> Frame | None:
        """One decoded PyAV frame as a :class:`Frame` (paced when ``realtime``); None if closed meanwhile."""
        import numpy as np

        now = time.monotonic()
        ts = self._timestamp(None if vf.time is None else float(vf.time), now)
        if vf.is_corrupt:  # a file's (a live stream's are not delivered: _whole)
            with self._lock:
                self._counts["corrupt"] += 1
        if self.realtime:
            if self._pace_start is None:
                self._pace_start = now - ts
            due = self._pace_start + ts
            if due > now and self._stop.wait(due - now):
                return None
            now = time.monotonic()
        image = np.ascontiguousarray(vf.to_ndarray(format="rgb24"))
        frame = Frame(index=self._index, timestamp=ts, image=image, received=now)
        self._index += 1
        self._last_ts, self._last_at = ts, now
        with self._lock:
            self._counts["decoded"] += 1
            self._meter.tick(now)
        return frame

    def _timestamp(self, t: float | None, now: float) -> float:
        """Seconds from the start of the stream, continuous across reconnects and stalls.

        A live stream that was away (reconnected, or silent for over a second) is
        a gap: its wall-clock length is counted, the index skips the frames it
        would have held, and the timestamps jump by it (the stream's own clock
        restarts with a new connection). Frames without a timestamp are placed
        one nominal frame interval after the previous one.
        """
        fps = self._nominal or 30.0
        stalled = (self.live and self.drop and self._last_ts is not None
                   and now - self._last_at > max(1.0, 10.0 / fps))
        if (self._after_gap or stalled) and self._last_ts is not None:
            away = now - self._last_at
            gap = max(0.0, away - 1.0 / fps)
            missed = round(gap * fps)
            self._index += missed
            self._ts_offset = self._last_ts + away
            self._origin = None
            self._conn_frames = 0
            self._meter.reset()
            with self._lock:
                self._gap += gap
                self._counts["missed"] += missed
        elif self._after_gap:
            self._origin = None
            self._conn_frames = 0
        self._after_gap = False
        if t is not None and self._origin is None:
            self._origin = t - self._conn_frames / fps
        if t is not None and self._origin is not None:
            ts = self._ts_offset + t - self._origin
        elif self._origin is None:
            ts = self._ts_offset + self._conn_frames / fps
        else:
            ts = (self._last_ts or 0.0) + 1.0 / fps
        if self._last_ts is not None and ts <= self._last_ts - 1e-9:  # the clock jumped back: stay monotonic
            self._ts_offset += self._last_ts + 1.0 / fps - ts
            ts = self._last_ts + 1.0 / fps
        self._conn_frames += 1
        return ts

    def _reopen(self, cause: BaseException | None) -> InputContainer | None:
        """Reopen a dropped live stream with backoff; None if closed meanwhile."""
        shown = display_url(self.url)
        log.info("video source %s stopped (%s); reconnecting", shown,
                 type(cause).__name__ if cause else "end of stream")
        deadline = time.monotonic() + self.reconnect_deadline
        delay = self.reconnect_delay
        attempts = 0
        last: BaseException | None = cause
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            attempts += 1
            try:
                container = self._open(min(self.open_timeout, max(left, 0.1)))
            except KitError as exc:
                last = exc
            else:
                with self._lock:
                    self._counts["reconnects"] += 1
                self._after_gap = True
                log.info("video source %s back after %d attempt(s)", shown, attempts)
                return container
            wait = min(delay, deadline - time.monotonic())
            if wait > 0 and self._stop.wait(wait):
                return None
            delay = min(delay * 2, self.reconnect_max_delay)
        if self._stop.is_set():
            return None
        reason = f"{type(last).__name__}: {last}" if last is not None else "end of stream"
        raise PeerDisconnectedError(f"the video stream stopped and did not come back within "
                                    f"{self.reconnect_deadline:g} s ({attempts} attempt(s); last: {reason})",
                                    peer=shown) from last
