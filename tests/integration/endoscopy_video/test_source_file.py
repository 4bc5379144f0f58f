"""FrameSource on files: frames equal a bare PyAV decode; corrupt files fail loudly; lifecycle."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kit import examples
from kit.endoscopy.frame import Frame
from kit.endoscopy.source import FrameSource
from kit.errors import KitError, VideoFileError
from tests.integration.endoscopy_video.conftest import CLIP, bare_decode

CLIPS = sorted((examples.samples_dir() / "endoscopy").glob("*.mp4"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_frames_equal_a_bare_pyav_decode(clip: Path) -> None:
    expected = bare_decode(clip)
    with FrameSource(clip) as source:
        frames = list(source)
    assert len(frames) == len(expected) == 36
    for frame, image in zip(frames, expected, strict=True):
        assert frame.image.dtype == np.uint8 and frame.image.flags.c_contiguous
        assert np.array_equal(frame.image, image)
    assert [f.index for f in frames] == list(range(36))
    assert [f.timestamp for f in frames] == pytest.approx([i / 12 for i in range(36)])
    stats = source.stats
    assert (stats.decoded, stats.delivered, stats.dropped, stats.corrupt) == (36, 36, 0, 0)
    assert stats.nominal_fps == 12.0


@pytest.mark.timeout(60)
def test_a_slow_consumer_of_a_file_loses_nothing() -> None:
    """A file waits for its reader (the buffer blocks); a tiny buffer and a slow loop still get all."""
    with FrameSource(CLIP, buffer_size=2) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            time.sleep(0.01)
    assert [f.index for f in frames] == list(range(36)) and source.stats.dropped == 0


@pytest.mark.timeout(60)
def test_a_realtime_file_is_paced_and_drops_the_oldest_for_a_slow_reader() -> None:
    start = time.monotonic()
    with FrameSource(CLIP, realtime=True) as source:
        frames = list(source)
    took = time.monotonic() - start
    assert len(frames) == 36 and 2.5 < took < 10      # 3 s of video at 12 fps
    assert 10 < source.stats.fps < 14
    # a reader that takes a frame now and then: it gets the newest, the rest are dropped and counted
    with FrameSource(CLIP, realtime=True, buffer_size=2) as source:
        slow = []
        while (frame := source.read()) is not None:
            slow.append(frame)
            time.sleep(0.5)
    assert 4 <= len(slow) <= 12 and source.stats.dropped == 36 - len(slow)
    assert slow[-1].index == 35                      # the end is there: the oldest went, not the newest
    assert [f.index for f in slow] == sorted(f.index for f in slow)


def _corrupt(tmp: Path, name: str) -> Path:
    data = CLIP.read_bytes()
    mdat = data.index(b"mdat") - 4
    moov = data.index(b"moov") - 4
    rng = random.Random(7)
    path = tmp / f"{name}.mp4"
    if name == "truncated":                # moov at the end: cut off, nothing to index the frames
        path.write_bytes(data[: len(data) * 2 // 3])
    elif name == "truncated-faststart":    # moov first: the index promises frames that are not there
        import av

        whole = tmp / "faststart.mp4"
        with av.open(str(CLIP)) as src, av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
            template = src.streams.video[0]
            stream = out.add_stream_from_template(template)
            for packet in src.demux(template):
                if packet.size:
                    packet.stream = stream
                    out.mux(packet)
        full = whole.read_bytes()
        assert full.index(b"moov") < full.index(b"mdat")
        path.write_bytes(full[: len(full) * 2 // 3])
    elif name == "garbled-index":          # the sample tables (moov) overwritten with noise
        body = bytearray(data)
        for _ in range(200):
            body[rng.randrange(moov + 8, len(body))] = rng.randrange(256)
        path.write_bytes(bytes(body))
    elif name == "garbled-video":          # the coded frames (mdat) overwritten with noise
        body = bytearray(data)
        for _ in range(400):
            body[rng.randrange(mdat + 16, moov)] = rng.randrange(256)
        path.write_bytes(bytes(body))
    elif name == "zeros":
        path.write_bytes(bytes(len(data)))
    elif name == "empty":
        path.write_bytes(b"")
    elif name == "text":
        path.write_text("not a video\n" * 100, encoding="utf-8")
    elif name == "missing":
        pass
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["truncated", "truncated-faststart", "garbled-index", "garbled-video",
                                  "zeros", "empty", "text", "missing"])
def test_a_corrupt_file_raises_a_clear_error(tmp_path: Path, name: str) -> None:
    path = _corrupt(tmp_path, name)
    frames: list[Frame] = []
    with pytest.raises(VideoFileError) as info:
        with FrameSource(path) as source:
            frames.extend(source)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert info.value.source == str(path)
    if name == "garbled-video":
        # what could be decoded was delivered first; then the error says how much was wrong
        assert "corrupt:" in message and frames
    if name == "truncated-faststart":
        assert "truncated: 24 of the 36 frames" in message
        assert 12 < len(frames) < 36
        # the frames before the cut are the clip's (the one at the cut may be decoded from half a packet)
        assert all(np.array_equal(f.image, img) for f, img in zip(frames[:12], bare_decode(CLIP)[:12],
                                                                  strict=True))


@pytest.mark.timeout(30)
def test_lifecycle_close_is_idempotent_and_joins_the_thread() -> None:
    # a realtime file has a capture thread (as a live source does)
    source = FrameSource(CLIP, buffer_size=1, realtime=True)
    assert source.read() is not None
    thread = source._thread
    assert thread is not None and thread.is_alive() and not source.in_caller_thread
    source.close()
    source.close()
    assert not thread.is_alive()
    assert source.read() is None                          # closed: the end, not an error
    with pytest.raises(KitError, match="closed"):
        source.start()
    # a plain file is read in the caller's thread: no thread, and closing closes the file
    plain = FrameSource(CLIP).start()
    assert plain.in_caller_thread and plain._thread is None
    assert plain.read() is not None
    plain.close()
    plain.close()
    assert plain.read() is None


@pytest.mark.timeout(30)
def test_leaving_a_for_loop_early_stops_the_capture_thread() -> None:
    before = threading.active_count()
    for frame in FrameSource(CLIP, buffer_size=1, realtime=True):
        assert threading.active_count() == before + 1
        assert frame.index == 0
        break
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


@pytest.mark.timeout(30)
def test_read_with_a_timeout_and_latest() -> None:
    with FrameSource(CLIP, realtime=True) as source:
        first = source.read(timeout=5)
        assert first is not None and first.index == 0
        time.sleep(0.6)                                  # several frames arrive meanwhile
        newest = source.latest(timeout=5)
        assert newest is not None and newest.index >= 4
        assert source.stats.dropped >= 3
