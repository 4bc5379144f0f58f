"""A looping live video stream of a clip, as MPEG-TS over HTTP: the embedded stack's video gateway (I/O).

An endoscopy tower's video reaches the network through a gateway that sends a
live stream; the embedded stack serves the sample clip the same way, so the
notebooks and tests have a live source offline::

    from kit.endoscopy.stream_server import VideoStreamServer
    from kit.endoscopy.source import FrameSource

    with VideoStreamServer(port=0) as server:            # http://127.0.0.1:PORT/live.ts
        with FrameSource(server.address) as source:
            frame = source.read()

The clip's compressed packets are remuxed, not re-encoded (PyAV's MPEG-TS
muxer: H.264 is converted to Annex B, PAT/PMT repeat at every frame), paced in
real time and looped forever with continuous timestamps. One producer thread
muxes each packet once; the bytes go to every client as one HTTP/1.1 chunk per
video frame (``Transfer-Encoding: chunked``). A new client first gets the
frames since the last keyframe (so it decodes at once), then the live frames.

Every client is treated as hostile: the request head must arrive within
``header_timeout`` and fit ``max_header_bytes``; at most ``max_clients``
stream at once (more get 503) and the oldest unfinished request is closed
when ``max_pending`` are waiting; a client whose queue of unsent frames
reaches ``client_queue`` (one that reads slowly or not at all) or whose
socket does not drain within ``write_timeout`` is dropped, never waited for,
so one client cannot hold up another. A producer that dies stops the server
loudly (:attr:`VideoStreamServer.failure`, :meth:`VideoStreamServer.check`).
Written by hand: the HTTP/1.1 server part (a GET, one response, no keep-alive)
on asyncio; FastAPI/uvicorn would add nothing but weight here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import threading
import time
import urllib.parse
from fractions import Fraction
from pathlib import Path
from typing import Any

from kit.errors import ConfigError, ServiceFailedError, VideoFileError

__all__ = ["VideoStreamServer"]

log = logging.getLogger(__name__)

_TS_OPTIONS = {"flush_packets": "1", "mpegts_flags": "pat_pmt_at_frames"}
#: bytes a client may have unsent in the kernel, and again in the transport (seconds of video)
_SEND_BUFFER = 64 * 1024


@dataclasses.dataclass(frozen=True)
class _Packet:
    data: bytes
    pts: int
    dts: int
    duration: int
    keyframe: bool


class _Sink:
    """Where the muxer writes: collects the bytes of one packet at a time."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


class _Client:
    def __init__(self, queue: asyncio.Queue[bytes], task: asyncio.Task[Any] | None,
                 writer: asyncio.StreamWriter, waiting_key: bool) -> None:
        self.queue = queue
        self.task = task
        self.writer = writer
        self.waiting_key = waiting_key


def _load(clip: Path) -> tuple[list[_Packet], tuple[Any, Any, _Sink], Fraction, int]:
    """The clip's video packets in memory, and the TS muxer (output container, stream) for them."""
    import av

    try:
        source = av.open(str(clip))
    except (av.FFmpegError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise VideoFileError(f"cannot open the clip to stream: {reason}", source=str(clip)) from exc
    try:
        if not source.streams.video:
            raise VideoFileError("the clip has no video stream", source=str(clip))
        stream = source.streams.video[0]
        tb = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        step = max(1, round(1 / (rate * tb)))
        packets: list[_Packet] = []
        try:
            for p in source.demux(stream):
                if not p.size:
                    continue
                pts = p.pts if p.pts is not None else p.dts
                dts = p.dts if p.dts is not None else pts
                if pts is None or dts is None:
                    raise VideoFileError("a packet of the clip has no timestamp", source=str(clip))
                packets.append(_Packet(bytes(p), pts, dts, p.duration or step, bool(p.is_keyframe)))
        except av.FFmpegError as exc:
            raise VideoFileError(f"cannot read the clip: {exc.strerror}", source=str(clip)) from exc
        if not packets or not packets[0].keyframe:
            raise VideoFileError("the clip has no frames or does not start with a keyframe", source=str(clip))
        sink = _Sink()
        out = av.open(sink, "w", format="mpegts", container_options=dict(_TS_OPTIONS))
        out_stream = out.add_stream_from_template(stream)
    finally:
        source.close()
    period = max(p.pts + p.duration for p in packets) - min(p.pts for p in packets)
    return packets, (out, out_stream, sink), Fraction(tb), period


class VideoStreamServer:
    """The sample clip as a looping live MPEG-TS stream over HTTP (``GET /live.ts``).

    Parameters
    ----------
    clip : str or Path, optional
        The video file to loop (default: the sample cohort's first endoscopy clip).
    host : str
        Interface to listen on.
    port : int
        TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    path : str
        The stream's URL path.
    max_clients : int
        Clients streaming at once; more are answered 503.
    max_pending : int
        Connections still sending their request at once; past it, the oldest is closed.
    client_queue : int
        Frames queued for one client; a client that falls this far behind is dropped.
    header_timeout, write_timeout : float
        Seconds for a client's whole request head to arrive, and for its socket to take a frame.
    max_header_bytes : int
        Largest request head accepted (else 431 and close).
    """

    name = "video"

    def __init__(self, clip: str | Path | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 path: str = "/live.ts", max_clients: int = 16, max_pending: int = 16,
                 client_queue: int = 240, header_timeout: float = 5.0, write_timeout: float = 10.0,
                 max_header_bytes: int = 8192) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        if min(max_clients, max_pending, client_queue, max_header_bytes) < 1 or \
                min(header_timeout, write_timeout) <= 0:
            raise ValueError("limits and timeouts must be positive")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self.clip = Path(clip) if clip is not None else None
        self.host = host
        self.port = port
        self.path = path
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.client_queue = client_queue
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.max_header_bytes = max_header_bytes
        #: since start: connections, served (clients that got the stream), slow (dropped for falling
        #: behind), rejected (503), bad_requests (4xx or no request in time), frames, loops
        self.counts: dict[str, int] = dict.fromkeys(
            ("connections", "served", "slow", "rejected", "bad_requests", "frames", "loops"), 0)
        self._clients: set[_Client] = set()
        self._pending: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._gop: list[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._producer: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._failure: BaseException | None = None
        self._mux: tuple[Any, Any, _Sink] | None = None
        self._packets: list[_Packet] = []
        self._tb = Fraction(1, 90000)
        self._period = 0

    # -- what the stack needs ----------------------------------------------------------------------
    @property
    def address(self) -> str:
        """``http://host:port/live.ts``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`, while both threads live."""
        return (self._thread is not None and self._thread.is_alive() and self._producer is not None
                and self._producer.is_alive())

    @property
    def failure(self) -> BaseException | None:
        """What killed a worker thread, or None."""
        return self._failure

    @property
    def healthy(self) -> bool:
        """True while it streams: running and no worker died."""
        return self._failure is None and self.running

    @property
    def clients(self) -> int:
        """Clients receiving the stream now."""
        return len(self._clients)

    def check(self) -> None:
        """Raise :class:`~kit.errors.ServiceFailedError` if started and no longer healthy."""
        if self._thread is None or self.healthy:
            return
        exc = self._failure
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "a worker thread stopped"
        raise ServiceFailedError(f"the video stream on {self.address} failed and stopped: {reason}",
                                 service=self.name) from exc

    def start(self) -> None:
        """Load the clip, bind, and return once the stream is served.

        Raises
        ------
        kit.errors.VideoFileError
            The clip cannot be read.
        kit.errors.ConfigError
            The address cannot be bound (port in use, bad host).
        """
        if self._thread is not None:
            return
        clip = self.clip
        if clip is None:
            from kit import examples

            clip = examples.endoscopy_clip()
        self._packets, mux, self._tb, self._period = _load(clip)
        self._mux = mux
        self._stop.clear()
        self._ready.clear()
        self._bind_error = self._failure = None
        self._thread = threading.Thread(target=self._run_loop, name="kit-video-http", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._bind_error is not None:
            self._thread.join()
            self._thread = None
            err = self._bind_error
            key = "stack.host" if isinstance(err, socket.gaierror) else "stack.video_port"
            raise ConfigError(key, f"cannot listen on {self.host}:{self.port}: {err}") from err
        self._producer = threading.Thread(target=self._produce, name="kit-video-mux", daemon=True)
        self._producer.start()

    def stop(self) -> None:
        """Stop streaming, close every client, join the threads (idempotent)."""
        self._stop.set()
        loop, shutdown = self._loop, self._shutdown
        if loop is not None and shutdown is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(shutdown.set)
        for thread in (self._producer, self._thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(10.0)
        self._producer = self._thread = None
        if self._mux is not None:
            with contextlib.suppress(Exception):
                self._mux[0].close()
            self._mux = None

    def __enter__(self) -> VideoStreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the producer: mux, pace, loop -------------------------------------------------------------
    def _produce(self) -> None:
        import av

        try:
            assert self._mux is not None
            out, stream, sink = self._mux
            first = self._packets[0].dts
            start = time.monotonic()
            loop_no = 0
            while not self._stop.is_set():
                offset = loop_no * self._period
                for p in self._packets:
                    due = start + float((p.dts + offset - first) * self._tb)
                    lag = time.monotonic() - due
                    if lag > 1.0:   # stalled (a paused process): resume in real time, no burst
                        start += lag
                    elif lag < 0 and self._stop.wait(-lag):
                        return
                    packet = av.Packet(p.data)
                    packet.pts, packet.dts, packet.duration = p.pts + offset, p.dts + offset, p.duration
                    packet.time_base = self._tb
                    packet.is_keyframe = p.keyframe
                    packet.stream = stream
                    out.mux(packet)
                    chunk = sink.take()
                    if chunk:
                        self._post(chunk, p.keyframe)
                loop_no += 1
                self.counts["loops"] = loop_no
        except BaseException as exc:  # noqa: BLE001 - a dead producer takes the service down loudly
            if not self._stop.is_set():
                self._die("producer", exc)

    def _post(self, chunk: bytes, keyframe: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise ServiceFailedError("the HTTP loop of the video stream is gone", service=self.name)
        loop.call_soon_threadsafe(self._broadcast, chunk, keyframe)

    def _die(self, worker: str, exc: BaseException) -> None:
        log.error("video stream %s died: %s: %s; the stream stops", worker, type(exc).__name__, exc)
        if self._failure is None:
            self._failure = exc
        self._stop.set()
        loop, shutdown = self._loop, self._shutdown
        if loop is not None and shutdown is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(shutdown.set)

    # -- the HTTP side (event loop thread) ---------------------------------------------------------
    def _run_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001
            if not self._ready.is_set():
                self._bind_error = exc
            elif not self._stop.is_set():
                self._die("http", exc)
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._shutdown = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=self.max_header_bytes, reuse_address=True)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        self._ready.set()
        try:
            await self._shutdown.wait()
        finally:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for client in list(self._clients):
                client.writer.transport.abort()
            for _, writer in list(self._pending.items()):
                writer.transport.abort()
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    def _broadcast(self, chunk: bytes, keyframe: bool) -> None:
        self.counts["frames"] += 1
        if keyframe:
            self._gop = [chunk]
        elif self._gop is not None:
            self._gop.append(chunk)
            if len(self._gop) > self.client_queue:  # a GOP longer than a queue: no cache, wait for a key
                self._gop = None
        for client in list(self._clients):
            if client.waiting_key:
                if not keyframe:
                    continue
                client.waiting_key = False
            try:
                client.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                self.counts["slow"] += 1
                log.info("video stream: dropping a client %d frames behind", self.client_queue)
                self._drop(client)

    def _drop(self, client: _Client) -> None:
        self._clients.discard(client)
        client.writer.transport.abort()
        if client.task is not None:
            client.task.cancel()

    async def _respond(self, writer: asyncio.StreamWriter, status: str, extra: str = "") -> None:
        body = status.encode("ascii")
        head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n{extra}\r\n")
        writer.write(head.encode("ascii") + body)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        task = asyncio.current_task()
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:   # small kernel and transport buffers: a client that stops reading shows
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            writer.transport.set_write_buffer_limits(high=_SEND_BUFFER)
            if self._stop.is_set() or len(self._clients) >= self.max_clients:
                self.counts["rejected"] += 1
                await self._respond(writer, "503 Service Unavailable", "Retry-After: 5\r\n")
                return
            if task is not None:
                if len(self._pending) >= self.max_pending:  # make room: the longest-waiting goes
                    old_task, old_writer = next(iter(self._pending.items()))
                    self._pending.pop(old_task)
                    old_writer.transport.abort()
                    old_task.cancel()
                self._pending[task] = writer
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
            except asyncio.LimitOverrunError:
                self.counts["bad_requests"] += 1
                await self._respond(writer, "431 Request Header Fields Too Large")
                return
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                self.counts["bad_requests"] += 1
                return
            finally:
                if task is not None:
                    self._pending.pop(task, None)
            status, http10, head_only = self._check_request(head)
            if status:
                self.counts["bad_requests"] += 1
                allow = "Allow: GET, HEAD\r\n" if status.startswith("405") else ""
                await self._respond(writer, status, allow)
                return
            if len(self._clients) >= self.max_clients:
                self.counts["rejected"] += 1
                await self._respond(writer, "503 Service Unavailable", "Retry-After: 5\r\n")
                return
            await self._stream(writer, task, http10=http10, head_only=head_only)
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - one client's failure is never the service's
            log.exception("video stream: a client failed")
        finally:
            writer.transport.abort()

    def _check_request(self, head: bytes) -> tuple[str, bool, bool]:
        """``(error status or "", HTTP/1.0?, HEAD?)`` of a request head."""
        try:
            line = head.split(b"\r\n", 1)[0].decode("ascii")
            method, target, version = line.split(" ")
            path = urllib.parse.urlsplit(target).path  # ValueError: "http://[/live.ts" (a bad IPv6 host)
        except (UnicodeDecodeError, ValueError):
            return "400 Bad Request", False, False
        if not version.startswith("HTTP/1."):
            return "505 HTTP Version Not Supported", False, False
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", False, False
        if path != self.path:
            return "404 Not Found", False, False
        return "", version == "HTTP/1.0", method == "HEAD"

    async def _stream(self, writer: asyncio.StreamWriter, task: asyncio.Task[Any] | None, *,
                      http10: bool, head_only: bool) -> None:
        chunked = not http10
        head = ("HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache, no-store\r\n"
                + ("Transfer-Encoding: chunked\r\n" if chunked else "") + "Connection: close\r\n\r\n")
        writer.write(head.encode("ascii"))
        if head_only:
            await asyncio.wait_for(writer.drain(), self.write_timeout)
            return
        queue: asyncio.Queue[bytes] = asyncio.Queue(self.client_queue)
        gop = self._gop
        for chunk in gop or ():
            queue.put_nowait(chunk)   # the GOP cache is never longer than a queue
        client = _Client(queue, task, writer, waiting_key=gop is None)
        self._clients.add(client)
        self.counts["served"] += 1
        try:
            while True:
                chunk = await queue.get()
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                await asyncio.wait_for(writer.drain(), self.write_timeout)
        except TimeoutError:
            self.counts["slow"] += 1
        finally:
            self._clients.discard(client)
