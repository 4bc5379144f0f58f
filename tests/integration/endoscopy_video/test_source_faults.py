"""Sources that do not answer, say nothing, or stop mid-procedure: a typed error or a reconnect, never a hang.

The hostile peers are raw sockets on loopback: a closed port, a port that accepts and says
nothing, an HTTP server that sends half a stream and then goes silent, and one that serves
once and is gone.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import av
import pytest

from kit.endoscopy.source import FrameSource
from kit.errors import PeerDisconnectedError, PeerTimeoutError, PeerUnreachableError
from tests.conftest import free_port
from tests.integration.endoscopy_video.conftest import CLIP, digest


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (into the backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["http", "rtsp", "tcp"])
def test_a_closed_port_is_unreachable_at_once(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/live"
    start = time.monotonic()
    with pytest.raises(PeerUnreachableError, match="connection refused"):
        FrameSource(url, open_timeout=5).start()
    assert time.monotonic() - start < 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("scheme", ["http", "rtsp", "tcp"])
def test_a_port_that_accepts_and_says_nothing_times_out(scheme: str, silent_port: int) -> None:
    url = f"{scheme}://127.0.0.1:{silent_port}/live"
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError, match="did not answer within 2 s"):
        FrameSource(url, open_timeout=2, read_timeout=2).start()
    assert time.monotonic() - start < 2 + 5


@pytest.mark.timeout(30)
def test_udp_with_nobody_sending_times_out() -> None:
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError):
        FrameSource(f"udp://127.0.0.1:{free_port()}", open_timeout=2, read_timeout=2).start()
    assert time.monotonic() - start < 2 + 5


@pytest.mark.timeout(30)
def test_an_unresolvable_host_and_a_missing_device() -> None:
    with pytest.raises(PeerUnreachableError, match="cannot resolve host 'no-such-host.invalid'"):
        FrameSource("rtsp://no-such-host.invalid/room3").start()
    with pytest.raises(PeerUnreachableError, match="no such capture device"):
        FrameSource("/dev/video99").start()


def _ts_bytes() -> bytes:
    """The clip as one MPEG-TS byte string (PyAV remux)."""
    buf = io.BytesIO()
    with av.open(str(CLIP)) as src, av.open(buf, "w", format="mpegts") as out:
        template = src.streams.video[0]
        stream = out.add_stream_from_template(template)
        for packet in src.demux(template):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    return buf.getvalue()


class HalfStreamServer:
    """An HTTP server that sends the first half of a TS stream, then holds the connection silently.

    ``serve_once``: after the first connection the listening socket closes (nothing comes back).
    ``body``: what to send instead of the first half; ``hold=False``: close the connection after it.
    """

    def __init__(self, *, serve_once: bool, body: bytes | None = None, hold: bool = True) -> None:
        if body is None:
            data = _ts_bytes()
            body = data[: len(data) // 2 // 188 * 188]
        # closing after the body: its length said, so that the end is a clean end of stream (as an
        # RTSP gateway's closed connection is), not a read error
        length = b"" if hold else b"Content-Length: %d\r\n" % len(body)
        self.payload = b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n" + length + b"\r\n" + body
        self.serve_once, self.hold = serve_once, hold
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(5)
            try:
                conn.recv(4096)
                conn.sendall(self.payload)
            except OSError:
                pass
            if self.hold:
                self._held.append(conn)   # silent from here on, connection open
            else:
                conn.close()
            if self.serve_once:
                self.sock.close()
                return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()


@pytest.mark.timeout(60)
def test_a_stream_that_goes_silent_mid_procedure_raises_after_its_frames() -> None:
    server = HalfStreamServer(serve_once=False)
    try:
        got = 0
        with FrameSource(f"http://127.0.0.1:{server.port}/live.ts", reconnect=False, open_timeout=5,
                         read_timeout=1.5) as source, \
                pytest.raises(PeerTimeoutError, match="did not answer within 1.5 s"):
            for _ in source:
                got += 1
                last = time.monotonic()
        assert time.monotonic() - last < 1.5 + 5
        assert 8 <= got < 36        # the frames that came are delivered before the error
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_a_silent_stream_is_reconnected_and_a_gone_one_raises_after_the_deadline() -> None:
    server = HalfStreamServer(serve_once=True)
    try:
        got = 0
        start = time.monotonic()
        with FrameSource(f"http://127.0.0.1:{server.port}/live.ts", open_timeout=2, read_timeout=1.0,
                         reconnect_deadline=3.0) as source, \
                pytest.raises(PeerDisconnectedError, match=r"did not come back within 3 s \(\d+ attempt"):
            for _ in source:
                got += 1
        # silent 1 s, then 3 s of refused reconnects with backoff; never a hang
        assert time.monotonic() - start < 1.0 + 3.0 + 2.0 + 8.0
        assert got >= 8 and server.connections == 1
        assert source.stats.reconnects == 0
    finally:
        server.close()


@pytest.mark.timeout(60)
def test_a_silent_stream_that_comes_back_is_reconnected_and_the_gap_counted() -> None:
    server = HalfStreamServer(serve_once=False)
    try:
        frames = []
        with FrameSource(f"http://127.0.0.1:{server.port}/live.ts", open_timeout=3, read_timeout=1.0,
                         reconnect_deadline=10.0) as source:
            for frame in source:
                frames.append(frame)
                if source.stats.reconnects >= 2 and len(frames) >= 40:
                    break
            stats = source.stats
        assert server.connections >= 3
        assert stats.reconnects >= 2 and stats.gap_seconds >= 2.0 and stats.missed >= 10
        times = [f.timestamp for f in frames]
        assert times == sorted(times)          # the clock keeps running across reconnects
    finally:
        server.close()


def _decoded(data: bytes) -> list[str]:
    """Digests of the frames a bare PyAV decode of TS bytes gives, the decoder drained at the end."""
    out = []
    with av.open(io.BytesIO(data), format="mpegts") as container:
        for packet in container.demux(container.streams.video[0]):
            out.extend(digest(frame.to_ndarray(format="rgb24")) for frame in packet.decode())
    return out


@pytest.mark.timeout(120)
def test_a_stream_cut_mid_frame_delivers_no_damaged_frame(clip_digests: set[str]) -> None:
    """A peer gone mid-frame (a killed gateway, a reset): the decoder drains frames made from the
    cut frame, or leaning on it, which look like video but are not the procedure's. Only the
    frames decoded whole are delivered; the others are counted corrupt."""
    data = _ts_bytes()
    cuts = {cut: _decoded(data[:cut]) for cut in range(188 * 40, len(data), 188 * 5)}
    damaging = {cut: bare for cut, bare in cuts.items() if any(d not in clip_digests for d in bare)}
    assert len(damaging) >= 3, "no cut of the clip gives a damaged frame: the test shows nothing"
    for cut, bare in damaging.items():
        server = HalfStreamServer(serve_once=True, body=data[:cut], hold=False)
        try:
            with FrameSource(f"http://127.0.0.1:{server.port}/live.ts", reconnect=False, open_timeout=5,
                             read_timeout=5) as source:
                delivered = [digest(frame.image) for frame in source]
                stats = source.stats
        finally:
            server.close()
        assert all(d in clip_digests for d in delivered), (cut, [d in clip_digests for d in delivered])
        rest = iter(bare)
        assert all(d in rest for d in delivered), cut            # in the decode's order
        whole = sum(d in clip_digests for d in bare)
        assert whole - 4 <= len(delivered) <= whole, (cut, len(delivered), whole)
        assert stats.corrupt >= 1, (cut, stats)
