"""How a FrameSource reads a URL: kind, forced format, FFmpeg timeouts, credentials kept out of messages.

No source is opened here (no sockets, no files): these are the decisions made before PyAV is called.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.endoscopy.source import FrameSource, _ffmpeg_options, describe_source, display_url


@pytest.mark.parametrize(("url", "kind", "fmt", "live"), [
    ("data/samples/endoscopy/MRN1001-ES2.mp4", "file", None, False),
    ("/abs/clip.mkv", "file", None, False),
    ("file:///abs/clip.mp4", "file", None, False),
    ("/dev/video0", "device", "v4l2", True),
    ("/dev/video12", "device", "v4l2", True),
    ("rtsp://gw.example.org:554/room3", "rtsp", None, True),
    ("RTSPS://gw.example.org/room3", "rtsps", None, True),
    ("http://127.0.0.1:8090/live.ts", "http", None, True),
    ("udp://127.0.0.1:5000", "udp", None, True),
    ("srt://gw:9000", "srt", None, True),
])
def test_kind_format_and_live(url: str, kind: str, fmt: str | None, live: bool) -> None:
    assert describe_source(url) == (kind, fmt)
    source = FrameSource(url)
    assert (source.kind, source.format, source.live) == (kind, fmt, live)
    # live sources reconnect and drop the oldest frame by default; files do neither
    assert source.reconnect is live and source.drop is live
    assert FrameSource(url, realtime=True).drop is True


def test_timeouts_reach_every_protocol_in_microseconds() -> None:
    assert _ffmpeg_options("http", 2.5, 10, {})["rw_timeout"] == "2500000"
    rtsp = _ffmpeg_options("rtsp", 3, 10, {})
    assert rtsp["timeout"] == "3000000" and rtsp["rtsp_transport"] == "tcp"
    listen = _ffmpeg_options("rtsp", 3, 7.2, {"rtsp_flags": "listen"})
    assert listen["listen_timeout"] == "8" and "rtsp_transport" not in listen
    assert _ffmpeg_options("udp", 1, 10, {})["timeout"] == "1000000"
    assert _ffmpeg_options("file", 1, 10, {}) == {}
    # the caller's options win
    assert _ffmpeg_options("rtsp", 3, 10, {"rtsp_transport": "udp"})["rtsp_transport"] == "udp"


def test_parameters_are_checked() -> None:
    for bad in ({"open_timeout": 0}, {"read_timeout": -1}, {"buffer_size": 0}, {"reconnect_delay": 0},
                {"reconnect": True}):
        with pytest.raises(ValueError):
            FrameSource("x.mp4", **bad)  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="/?#"), min_size=1, max_size=20),
       st.sampled_from(["rtsp", "http", "https", "rtmp"]))
def test_credentials_in_a_url_never_show(secret: str, scheme: str) -> None:
    url = f"{scheme}://admin:{secret}@gw.example.org:554/room3"
    shown = display_url(url)
    assert shown == f"{scheme}://***@gw.example.org:554/room3"
    assert display_url(shown) == shown


def test_a_url_without_credentials_is_unchanged() -> None:
    for url in ("rtsp://gw/room", "/dev/video0", "clip.mp4", "http://h:1/a@b"):
        assert display_url(url) == url
