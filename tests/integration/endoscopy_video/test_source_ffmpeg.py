"""FrameSource against a stream server no one here wrote: Debian's ffmpeg, as RTSP, MPEG-TS over UDP and HTTP.

Each protocol: the frames are the clip's own (equal, pixel for pixel, to a bare PyAV decode of the
file, since ffmpeg sends the clip's packets unchanged), and the source survives ffmpeg being killed
and restarted: it reconnects (or, for UDP, waits), counts the gap, and keeps index and timestamps
running across it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kit.endoscopy.source import FrameSource
from kit.errors import PeerDisconnectedError
from tests.integration.endoscopy_video.conftest import FfmpegStream, digest

KINDS = ["http", "udp", "rtsp"]


def _source(stream: FfmpegStream, **kw: object) -> FrameSource:
    args: dict[str, object] = {"options": stream.options, "open_timeout": 15.0, "read_timeout": 3.0,
                               "reconnect_deadline": 20.0}
    args.update(kw)
    return FrameSource(stream.url, **args)  # type: ignore[arg-type]


def _listening(port: int) -> bool:
    """Whether something listens on TCP ``port``, read from /proc (connecting would use up
    ffmpeg's one ``-listen 1`` client)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def _started(stream: FfmpegStream) -> None:
    # the RTSP pusher needs the source listening first; the others need ffmpeg up first
    if stream.kind == "rtsp":
        stream.start(delay=0.5)
        return
    stream.start()
    if stream.kind == "http":  # wait until ffmpeg listens (a loaded machine starts it slowly)
        port = int(stream.url.rsplit(":", 1)[1].split("/")[0])
        deadline = time.monotonic() + 20
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        time.sleep(0.3)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", KINDS)
def test_reads_the_stream_and_its_frames_are_the_clips(
        kind: str, ffmpeg_stream: Callable[[str], FfmpegStream], clip_digests: set[str]) -> None:
    stream = ffmpeg_stream(kind)
    _started(stream)
    with _source(stream) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == 40:   # more than one loop of the 36-frame clip
                break
        stats = source.stats
    assert all(f.image.shape == (240, 320, 3) for f in frames)
    unknown = [f.index for f in frames if digest(f.image) not in clip_digests]
    assert not unknown, f"frames not in a bare PyAV decode of the file: {unknown}"
    assert len({digest(f.image) for f in frames}) >= 30          # the whole clip, not one frame repeated
    times = [f.timestamp for f in frames]
    assert times == sorted(times) and times[0] == 0.0
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert stats.decoded >= 40 and stats.delivered == 40 and stats.nominal_fps == 12.0
    assert stats.reconnects == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", KINDS)
def test_survives_the_server_being_killed_and_restarted(
        kind: str, ffmpeg_stream: Callable[[str], FfmpegStream], clip_digests: set[str]) -> None:
    stream = ffmpeg_stream(kind)
    _started(stream)
    frames = []
    killed = 0.0
    with _source(stream) as source:
        for frame in source:
            frames.append(frame)
            if not killed and len(frames) == 24:
                stream.kill()
                killed = time.monotonic()
                stream.start(delay=1.5)     # down for 1.5 s, then back
            if killed and sum(f.received > killed + 1.0 for f in frames) == 24:
                break
        stats = source.stats
    before = [f for f in frames if f.received <= killed + 1.0]
    after = [f for f in frames if f.received > killed + 1.0]
    assert len(before) >= 24 and len(after) == 24
    assert all(digest(f.image) in clip_digests for f in before + after)
    # the gap: counted, and visible in index and timestamps
    assert stats.gap_seconds >= 1.0, stats
    assert stats.missed >= 10, stats
    assert stats.reconnects == (0 if kind == "udp" else 1), stats   # UDP has no connection to lose
    first_after, last_before = after[0], before[-1]
    assert first_after.index - last_before.index > 10
    assert first_after.timestamp - last_before.timestamp >= 1.0
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["http", "rtsp"])
def test_a_stream_that_stops_for_good_raises_after_the_deadline(
        kind: str, ffmpeg_stream: Callable[[str], FfmpegStream]) -> None:
    """The capture loop never hangs: frames already decoded are delivered, then a typed error."""
    stream = ffmpeg_stream(kind)
    _started(stream)
    source = _source(stream, read_timeout=2.0, open_timeout=2.0, reconnect_deadline=4.0)
    got = 0
    with source, pytest.raises(PeerDisconnectedError, match="did not come back within 4 s"):
        for _ in source:
            got += 1
            if got == 12:
                stream.kill()
                stopped = time.monotonic()
    assert got >= 12
    assert time.monotonic() - stopped < 4.0 + 2.0 + 8.0   # deadline + one open/read timeout + slack
    assert source.stats.reconnects == 0


@pytest.mark.timeout(60)
def test_without_reconnect_a_dropped_http_stream_just_ends(
        ffmpeg_stream: Callable[[str], FfmpegStream]) -> None:
    stream = ffmpeg_stream("http")
    _started(stream)
    got = 0
    with _source(stream, reconnect=False) as source:
        for _ in source:
            got += 1
            if got == 12:
                stream.kill()
    assert got >= 12 and source.stats.reconnects == 0


@pytest.mark.timeout(60)
def test_a_silent_udp_stream_raises_a_timeout_without_reconnect(
        ffmpeg_stream: Callable[[str], FfmpegStream]) -> None:
    from kit.errors import PeerTimeoutError

    stream = ffmpeg_stream("udp")
    _started(stream)
    got = 0
    with _source(stream, reconnect=False, read_timeout=1.5) as source, \
            pytest.raises(PeerTimeoutError, match="did not answer within 1.5 s"):
        for _ in source:
            got += 1
            if got == 12:
                stream.kill()
    assert got >= 12
