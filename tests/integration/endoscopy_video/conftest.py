"""Live video peers for the frame-source tests: Debian's ffmpeg serving the sample clip.

``ffmpeg_stream(kind)`` starts (and restarts) ffmpeg sending the clip in a loop, in real time,
without re-encoding, as:

- ``http``: MPEG-TS over HTTP, ffmpeg listening (``-listen 1``; one client, then it exits);
- ``udp``: MPEG-TS over UDP to a port the source binds;
- ``rtsp``: RTSP, ffmpeg pushing (ANNOUNCE/RECORD over TCP) to the source, which listens
  (``rtsp_flags=listen``): FFmpeg's RTSP muxer cannot serve, only push, so the source takes
  the server side, as a receiver of a gateway's push does.

Processes run with peer_env(), on 127.0.0.1 and free ports, and are stopped by PID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import threading
from collections.abc import Callable, Iterator

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from kit import examples
from tests.conftest import free_port, peer_env, require_tool, stop_pid

CLIP = examples.endoscopy_clip()


def digest(image: NDArray[np.uint8]) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def bare_decode(path: object) -> list[NDArray[np.uint8]]:
    """The frames of a file as a bare PyAV loop gives them."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="session")
def clip_digests() -> set[str]:
    return {digest(img) for img in bare_decode(CLIP)}


@dataclasses.dataclass
class FfmpegStream:
    """ffmpeg looping the clip to ``url``; ``options`` are what the source needs to read it."""

    kind: str
    url: str
    options: dict[str, str]
    args: list[str]
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    _timers: list[threading.Timer] = dataclasses.field(default_factory=list)

    def start(self, delay: float = 0.0) -> None:
        """Start ffmpeg now, or after ``delay`` seconds (the RTSP pusher must find the source listening)."""
        if delay:
            timer = threading.Timer(delay, self.start)
            self._timers.append(timer)
            timer.start()
            return
        self.procs.append(subprocess.Popen(self.args, env=peer_env(), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))

    def kill(self) -> None:
        """Kill every ffmpeg started so far (SIGKILL: the stream stops dead, mid-packet)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for proc in self.procs:
            stop_pid(proc)


@pytest.fixture
def ffmpeg_stream() -> Iterator[Callable[[str], FfmpegStream]]:
    ffmpeg = require_tool("ffmpeg")
    made: list[FfmpegStream] = []

    def make(kind: str) -> FfmpegStream:
        port = free_port()
        base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
                "-i", str(CLIP), "-c", "copy"]
        if kind == "http":
            url = f"http://127.0.0.1:{port}/live.ts"
            stream = FfmpegStream(kind, url, {}, [*base, "-f", "mpegts", "-listen", "1", url])
        elif kind == "udp":
            url = f"udp://127.0.0.1:{port}"
            stream = FfmpegStream(kind, url, {}, [*base, "-f", "mpegts", f"{url}?pkt_size=1316"])
        elif kind == "rtsp":
            url = f"rtsp://127.0.0.1:{port}/live"
            stream = FfmpegStream(kind, url, {"rtsp_flags": "listen"},
                                  [*base, "-f", "rtsp", "-rtsp_transport", "tcp", url])
        else:
            raise ValueError(kind)
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.stop()
