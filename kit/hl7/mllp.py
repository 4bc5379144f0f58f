"""MLLP transport: a durable listener (I/O); the sender is in :mod:`kit.hl7.sender`.

:class:`MLLPListener` is the embedded stack's HL7 endpoint (``name = "mllp"``):
an asyncio server in a background thread, any number of connections, several
messages per connection. Every message is parsed (:func:`kit.hl7.message.parse_message`),
checked (MSH-9 a known HL7 table 0076 message type or a Z-type, MSH-10 present),
stored in a :class:`~kit.hl7.store.MessageStore` and only *after the commit*
answered AA (:func:`kit.hl7.build.build_ack`). Messages arriving together on
all connections share one SQLite transaction and one fsync (group commit in a
writer thread); each connection's AA is written only after the commit holding
its message. A commit that fails (I/O error, disk full) answers every message of
its batch AE and nothing of it is retried here (the senders resend); a message
that makes storing fail in another way is found by halving the batch, so it
fails alone at the cost of a few commits. A duplicate (same MSH-3/MSH-4/MSH-10 and the same content) is stored
once and answered AA again with a note; the same id with other content is stored
and flagged (:mod:`kit.hl7.store`). Malformed input gets AR (or AE for a bad
segment after a good MSH) with an ERR segment, and the connection stays open; an
oversize frame gets AR and the rest of it is discarded; an idle connection is closed.

Every peer is hostile: an exception while handling one message (a bug, a value
no code expected) answers that message AE with the reason and the service goes
on. If an internal worker dies anyway (the store thread, the event loop), the
listener fails loudly: it stops accepting, :attr:`MLLPListener.healthy` turns
false and :meth:`MLLPListener.check` raises -- it never accepts into a void.
With TLS, a server context that trusts a CA requires and verifies client
certificates (mutual TLS); :func:`server_tls_context` builds one.

Written by hand: python-hl7's ``hl7.mllp`` server has no storage, size limit,
idle timeout or duplicate handling; hl7apy's ``MLLPServer`` is a blocking
``socketserver``. Framing is in :mod:`kit.hl7.framing`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import functools
import inspect
import logging
import math
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kit.errors import ConfigError, HL7ParseError, StoreError
from kit.hl7._audit import record_received
from kit.hl7._limits import FrameBudget, Watch
from kit.hl7.build import MAX_ECHO, AckError, build_ack
from kit.hl7.framing import DEFAULT_MAX_MESSAGE_BYTES, FrameError, MLLPDecoder, frame
from kit.hl7.listen_fast import MshValues, msh_values, positive_ack
from kit.hl7.message import Message, decode, parse_message
from kit.hl7.sender import MLLPSender, RetryPolicy
from kit.hl7.store import MessageStore, Received, StoredResult
from kit.hl7.tls import require_client_certs, server_tls_context
from kit.hl7.typed import AckCode, format_dtm

__all__ = ["MLLPListener", "MLLPSender", "RetryPolicy", "known_message_codes", "server_tls_context"]

log = logging.getLogger(__name__)

_READ_SIZE = 1 << 16
#: Seconds a TLS peer has to finish its handshake (at most the idle timeout); until then its
#: connection is not counted against max_connections.
_HANDSHAKE_TIMEOUT = 10.0
#: A connection whose frames are refused this many times in a row (framing errors, AR: nothing a
#: working sender sends) is closed: 64 KiB of empty frames made 21,800 NAKs, seconds of the event
#: loop that every other connection waited for.
_MAX_REFUSED_IN_A_ROW = 100
#: Default of ``max_buffered_bytes``: partial frames held by all connections together (at least
#: twice ``max_message_bytes``). Without it 256 connections could each hold a 16 MiB frame: 4 GiB.
DEFAULT_MAX_BUFFERED_BYTES = 256 * 1024 * 1024
#: Most messages committed in one transaction.
_MAX_BATCH = 1000
#: Longest wait for the other connections' messages before a commit (group commit).
_GATHER_MAX = 0.002


@functools.cache
def known_message_codes() -> frozenset[str]:
    """MSH-9.1 codes of HL7 table 0076 (hl7apy's tables for v2.5 and v2.8.2)."""
    codes: set[str] = set()
    from hl7apy.v2_5 import tables as t25
    from hl7apy.v2_8_2 import tables as t282

    for tables in (t25.TABLES, t282.TABLES):
        codes.update(tables["HL70076"][1])
    return frozenset(codes)


#: Longest MSH-3.1 / MSH-4.1 (HD namespace id plus room) accepted as a sender's key.
MAX_SENDER = 227


# ==================================================================================================
# listener
# ==================================================================================================
@dataclasses.dataclass(slots=True)
class _Job:
    """One message on its way to the store: what to store, and the future its ACK text goes to."""

    item: Received
    reply: asyncio.Future[str]


class MLLPListener:
    """An MLLP server that stores every message durably before acknowledging it.

    Parameters
    ----------
    store_path : str or Path
        SQLite database of received messages (see :class:`~kit.hl7.store.MessageStore`).
    host : str
        Interface to listen on.
    port : int
        TCP port; 0 picks a free one (read :attr:`port` after :meth:`start`).
    max_message_bytes : int
        Largest accepted message; bigger frames are answered AR and discarded.
    idle_timeout : float
        Seconds without data after which a connection is closed (also the
        longest wait for a peer to read its ACKs, and, at most 10 s, for a TLS
        peer to finish its handshake).
    frame_timeout : float
        Seconds one frame may take from its first byte to its end; a peer
        trickling bytes slower than that (slowloris) gets AR and is disconnected.
    max_connections : int
        Open connections at most; when a new one arrives at the limit, the
        connection idle the longest is closed to make room (an idle flood cannot
        lock out a sender that is talking).
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context (MLLP over TLS), e.g. from :func:`server_tls_context`.
        If it has CA certificates loaded and ``verify_mode`` is ``CERT_NONE``,
        it is set to ``CERT_REQUIRED``: a configured CA means client
        certificates are required and verified.
    on_message : callable, optional
        Called with each newly stored :class:`~kit.hl7.message.Message` (not
        duplicates), after the commit, in the listener's thread; its errors are
        logged and do not change the ACK.
    accept_unknown_types : bool
        Store messages whose MSH-9.1 is not in HL7 table 0076 (default: AR 200).
    max_segments : int
        Most segments a message may have (and twenty times as many fields); a message with more
        is answered AR before it is parsed (:func:`~kit.hl7.message.parse_message`'s
        ``max_segments``): a frame of 16 MiB of tiny segments held 915 MB and the event loop
        for 10 s.
    max_buffered_bytes : int, optional
        Bytes of unfinished frames all connections together may hold (default 256 MiB, at least
        twice ``max_message_bytes``). A read that takes them past it closes the connections whose
        frames were started the longest ago until they fit again (a slow peer holds its frame the
        longest; the frames are unacknowledged, so their senders resend them); ``counts["over_budget"]``.

    Examples
    --------
    >>> with MLLPListener(tmp / "mllp.db") as listener:        # doctest: +SKIP
    ...     MLLPSender("127.0.0.1", listener.port).send(text)
    """

    name = "mllp"

    def __init__(self, store_path: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, idle_timeout: float = 300.0,
                 ssl_context: ssl.SSLContext | None = None,
                 on_message: Callable[[Message], None] | None = None,
                 accept_unknown_types: bool = False, frame_timeout: float = 120.0,
                 max_connections: int = 256, max_segments: int = 50_000,
                 max_buffered_bytes: int | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        if max_buffered_bytes is None:
            max_buffered_bytes = max(DEFAULT_MAX_BUFFERED_BYTES, 2 * max_message_bytes)
        elif max_buffered_bytes < max_message_bytes:
            raise ValueError("max_buffered_bytes must be at least max_message_bytes (one whole message)")
        self.max_buffered_bytes = max_buffered_bytes
        if (max_message_bytes < 1 or idle_timeout <= 0 or frame_timeout <= 0 or max_connections < 1
                or max_segments < 1):
            raise ValueError("max_message_bytes, idle_timeout, frame_timeout, max_connections and "
                             "max_segments must be positive")
        self.max_segments = max_segments
        self.frame_timeout = frame_timeout
        self.max_connections = max_connections
        self.store_path = Path(store_path)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        if ssl_context is not None:
            require_client_certs(ssl_context)
        self.ssl_context = ssl_context
        self.on_message = on_message
        self.accept_unknown_types = accept_unknown_types
        self.store: MessageStore | None = None
        #: in-memory counts since start: received, stored, duplicates, rejected, framing_errors,
        #: connections, evicted (idle connections closed to make room), slow (frame_timeout exceeded),
        #: commits (store transactions, each several messages when they arrive together: group
        #: commit), failed_commits (batches answered AE because the store failed), cut_off
        #: (connections closed after _MAX_REFUSED_IN_A_ROW refused frames), over_budget (connections
        #: closed to keep unfinished frames within max_buffered_bytes)
        self.counts: dict[str, int] = dict.fromkeys(
            ("received", "stored", "duplicates", "rejected", "framing_errors", "connections", "evicted",
             "slow", "commits", "failed_commits", "cut_off", "over_budget"), 0)
        self._budget = FrameBudget(max_buffered_bytes)
        self._activity: dict[asyncio.Task[None], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        #: the event loop hands the store thread lists of jobs (all those of one loop iteration), so
        #: eight connections' messages wake it once, not eight times; None stops it
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []  # the loop's jobs not handed over yet (loop thread only)
        #: rejections and framing errors counted by the loop, not yet written by the store thread (a
        #: write each, fsync'ed on the loop, let a flood of empty frames stall every connection)
        self._uncounted: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()
        self._counts_queued = False  # the store thread has been woken to write them
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()  # connections counted against max_connections
        self._shutdown: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._failure: BaseException | None = None

    @property
    def address(self) -> str:
        """``mllp://host:port`` (``mllps://`` with TLS)."""
        scheme = "mllps" if self.ssl_context is not None else "mllp"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (and until a worker dies)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def failure(self) -> BaseException | None:
        """What killed an internal worker, or None."""
        return self._failure

    @property
    def buffered(self) -> int:
        """Bytes of unfinished frames the connections hold now (at most ``max_buffered_bytes``)."""
        return self._budget.held

    @property
    def healthy(self) -> bool:
        """True while it accepts, stores and acknowledges: running, with both workers alive."""
        writer = self._writer_thread
        return (self._failure is None and self.running and writer is not None and writer.is_alive())

    def check(self) -> None:
        """Raise if the listener was started and is no longer healthy (for a serving loop's health check).

        Raises
        ------
        kit.errors.StoreError
            An internal worker died (the cause is on ``__cause__``); the
            listener has stopped accepting connections.
        """
        if self._thread is None or self.healthy:
            return
        exc = self._failure
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "a worker thread stopped"
        raise StoreError(f"the MLLP listener on {self.address} failed and stopped accepting: {reason}") \
            from exc

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, bind, and return once connections are accepted.

        Raises
        ------
        kit.errors.StoreError
            The store cannot be opened.
        kit.errors.ConfigError
            The address cannot be bound (port in use, bad host).
        """
        if self.running:
            return
        self.store = MessageStore(self.store_path)
        self._ready.clear()
        self._error = None
        self._failure = None
        self._writer_thread = threading.Thread(target=self._writer, name="mllp-store", daemon=True)
        self._writer_thread.start()
        self._thread = threading.Thread(target=self._run, name="mllp-listener", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._jobs.put(None)
            self._writer_thread.join()
            self.store.close()
            self._thread = None
            key = "hl7.host" if isinstance(self._error, socket.gaierror) else "hl7.port"
            raise ConfigError(key, f"cannot listen on {self.host}:{self.port}: {self._error}") \
                from self._error

    def stop(self) -> None:
        """Stop accepting, close connections, finish pending commits, close the store (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive():
            shutdown = self._shutdown
            if shutdown is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(shutdown.set)
            thread.join(10.0)
        self._thread = None
        self._jobs.put(None)
        if self._writer_thread is not None:
            self._writer_thread.join(10.0)
            self._writer_thread = None
        if self.store is not None:
            self.store.close()

    def __enter__(self) -> MLLPListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - recorded: the listener reports itself failed
            self._die("event loop", exc)
            self._ready.set()
        finally:
            loop.close()

    def _die(self, worker: str, exc: BaseException) -> None:
        """A worker died: record it, stop accepting, close the connections (nothing more is acknowledged)."""
        if self._failure is None:
            self._failure = exc
        log.critical("MLLP listener %s: the %s died (%s: %s); no longer accepting", self.address, worker,
                     type(exc).__name__, exc, exc_info=exc)
        loop, shutdown = self._loop, self._shutdown
        if loop is not None and shutdown is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(shutdown.set)

    async def _main(self) -> None:
        self._shutdown = shutdown = asyncio.Event()
        try:
            tls = {} if self.ssl_context is None else {  # a peer that never finishes its handshake
                "ssl_handshake_timeout": min(_HANDSHAKE_TIMEOUT, self.idle_timeout)}  # (60 s otherwise)
            self._server = await asyncio.start_server(
                self._client, self.host, self.port, ssl=self.ssl_context, reuse_address=True,
                limit=_READ_SIZE, **tls)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        await shutdown.wait()
        await self._close_all(self._server)

    async def _close_all(self, server: asyncio.Server) -> None:
        """Stop accepting and wait until every connection has closed (its task ended)."""
        loop = asyncio.get_running_loop()
        # No accept from now on, but the connections accepted already take their transport first:
        # one whose transport is made after server.close() fails to attach and its socket is
        # left open (CPython 3.11 _accept_connection2).
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
        await asyncio.sleep(0)
        server.close()
        # Every other task of this loop works for a connection: cancel each (evicted ones too, still
        # closing: they drop what is unsent) until none is left. One not started yet is let start
        # first (cancelled before its first step, it would never close its socket).
        current, cancelled = asyncio.current_task(), set[asyncio.Task[object]]()
        while others := asyncio.all_tasks() - {current}:
            for task in others - cancelled:
                coro = task.get_coro()
                if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                    continue
                task.cancel()
                cancelled.add(task)
            await asyncio.wait(others, timeout=0.05)
        await server.wait_closed()

    # -- storage (group commit) ------------------------------------------------------------------
    def _writer(self) -> None:
        try:
            self._write_batches()
        except BaseException as exc:  # noqa: BLE001 - recorded: the listener reports itself failed
            self._die("store thread", exc)
            self._fail_pending(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        """Answer every queued job 'not stored' (AE), so no connection waits on a dead thread."""
        failed: list[_Job] = []
        while True:
            try:
                jobs = self._jobs.get_nowait()
            except queue.Empty:
                break
            if jobs is not None:
                failed += jobs
        loop = self._loop
        if failed and loop is not None:
            outcomes: list[StoredResult | BaseException] = [exc] * len(failed)
            with contextlib.suppress(RuntimeError):  # the loop closed: the connections are gone
                loop.call_soon_threadsafe(self._settle, failed, outcomes)

    def _store(self, batch: list[_Job]) -> list[StoredResult | BaseException]:
        """Store a batch in one transaction (one fsync); what a failure means decides what follows.

        - :class:`~kit.errors.StoreError`, the database failed (I/O error, disk full, locked):
          nothing of the batch is durable, every message in it is answered AE, nothing is retried
          here (the senders resend).
        - any other exception, a value in one message that no code expected: the batch is split in
          halves, each its own transaction, so that one poison message fails only itself at a cost
          of a few commits (not one commit per message of the batch).
        """
        assert self.store is not None
        try:
            results: list[StoredResult | BaseException] = list(self.store.add_many([j.item for j in batch]))
        except StoreError as exc:
            self.counts["failed_commits"] += 1
            return [exc] * len(batch)
        except Exception as exc:  # noqa: BLE001 - answered AE below, never a dead thread
            if len(batch) == 1:
                return [exc]
            half = len(batch) // 2
            return self._store(batch[:half]) + self._store(batch[half:])
        self.counts["commits"] += 1
        return results

    def _write_batches(self) -> None:
        """Commit every job waiting in the queue in one transaction, then answer them in the loop.

        Senders wait for their ACK, so the connections of one batch send their next messages
        together, just after its commit: the next batch waits a little (at most the last commit's
        duration, and :data:`_GATHER_MAX`) until it holds as many messages as the last batch had
        connections -- or, when that batch had several, as the last *two* had: eight senders that
        fell into two groups of four (each group's commit satisfied by the other group, already
        waiting) join again into one. A batch of one connection never makes the next one wait:
        one sender alone, or senders taking turns (each waiting for another's ACK), never wait.
        """
        assert self.store is not None
        jobs = self._jobs
        gather, last_commit = 1, 0.0
        before: set[str] = set()
        while True:
            first = jobs.get()
            if first is None:
                self._write_counts()
                return
            batch = list(first)
            stop = self._take_waiting(batch, gather, min(last_commit, _GATHER_MAX))
            self._write_counts()  # before the batch: a count the loop made before a message's
            # arrival is in the store before that message's ACK
            loop = self._loop  # set before the loop made the first job
            assert loop is not None
            peers: set[str] = set()
            for at in range(0, len(batch), _MAX_BATCH):  # one read of a pipelining peer may hold more
                part = batch[at:at + _MAX_BATCH]
                started = time.monotonic()
                results = self._store(part)
                last_commit = time.monotonic() - started
                peers.update(job.item.peer for job in part)
                record_received(self.address, [job.item for job in part], results)  # kit.audit
                with contextlib.suppress(RuntimeError):  # the loop closed: the connections are gone
                    loop.call_soon_threadsafe(self._settle, part, results)  # one wake-up per batch
            gather, before = len(peers | before) if len(peers) > 1 else 1, peers
            if stop:
                return

    def _write_counts(self) -> None:
        """In the store thread: write the counts the loop gathered since the last time, in one
        transaction (a flood of bad frames costs a commit per store-thread round, not one per frame
        on the loop)."""
        with self._counts_lock:
            counts, self._uncounted = self._uncounted, collections.Counter()
            self._counts_queued = False
        if counts and self.store is not None:
            try:
                self.store.add_counts(counts)
            except StoreError as exc:  # a counter is not worth failing the listener
                log.warning("could not count %s: %s", ", ".join(sorted(counts)), exc)

    def _take_waiting(self, batch: list[_Job], gather: int, wait: float) -> bool:
        """Add every queued job to ``batch`` (stopping once it holds :data:`_MAX_BATCH`), waiting up
        to ``wait`` seconds while it holds fewer than ``gather``; True if the stop sentinel was met."""
        jobs = self._jobs
        deadline = 0.0
        while len(batch) < _MAX_BATCH:
            try:
                if len(batch) >= gather or wait <= 0:
                    more = jobs.get_nowait()
                else:
                    if not deadline:
                        deadline = time.monotonic() + wait
                    remaining = deadline - time.monotonic()
                    more = jobs.get(timeout=remaining) if remaining > 0 else jobs.get_nowait()
            except queue.Empty:
                return False
            if more is None:
                return True
            batch += more
        return False

    def _hand_over(self) -> None:
        """In the loop, after the connections that had data this iteration were read: queue their
        jobs for the store thread in one piece."""
        jobs, self._pending = self._pending, []
        if not jobs:
            return
        self._jobs.put(jobs)
        if self._failure is not None:  # the store thread died meanwhile: no one would answer them
            self._fail_pending(self._failure)

    def _settle(self, batch: list[_Job], results: list[StoredResult | BaseException]) -> None:
        """In the loop: answer each message of a committed (or failed) batch. The ACKs of one batch
        share their MSH-7 (written within microseconds) and their random MSH-10s are drawn at once."""
        when = dt.datetime.now().astimezone()
        stamp = format_dtm(when)
        ids = os.urandom(10 * len(batch)).hex()  # 20 hex digits each, as build_ack's
        for n, (job, outcome) in enumerate(zip(batch, results, strict=True)):
            if not job.reply.done():  # done: its connection was closed meanwhile
                self._acknowledge(job.item, job.reply, outcome, when, stamp, ids[20 * n:20 * n + 20])

    # -- one connection --------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self._make_room()
        self._clients.add(task)
        self._activity[task] = loop.time()
        self.counts["connections"] += 1
        info = writer.get_extra_info("peername")
        peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        decoder = MLLPDecoder(self.max_message_bytes)
        frame_started: float | None = None
        watch = Watch(loop, task)
        stalled = False  # the peer stopped reading its ACKs
        refused = 0  # frames refused in a row
        try:
            while True:
                deadline, slow = loop.time() + self.idle_timeout, False
                if frame_started is not None and frame_started + self.frame_timeout < deadline:
                    deadline, slow = frame_started + self.frame_timeout, True  # a frame under way
                watch.expect(deadline)
                try:
                    data = await reader.read(_READ_SIZE)
                except asyncio.CancelledError:
                    if not watch.expired():
                        raise
                    if slow:  # the frame's time ran out before the idle time
                        self.counts["slow"] += 1
                        log.warning("MLLP peer %s did not finish a frame within %ss; disconnecting", peer,
                                    self.frame_timeout)
                        writer.write(frame(self._slow_nak()))
                        await asyncio.wait_for(writer.drain(), 2.0)
                    else:
                        log.info("closing idle MLLP connection from %s", peer)
                    break
                watch.expect(math.inf)
                self._activity[task] = loop.time()
                items = decoder.feed(data) if data else decoder.flush()
                if not decoder.in_frame:
                    frame_started = None
                elif frame_started is None or items:
                    frame_started = loop.time()
                over = self._hold(task, frame_started, decoder.buffered)  # this connection is cut off
                replies = []
                for item in items:
                    reply = self._handle(item, peer)
                    replies.append(reply)
                    # answered at once: refused (a message that is stored is answered after its commit)
                    refused = refused + 1 if reply.done() else 0
                    if refused >= _MAX_REFUSED_IN_A_ROW:
                        break
                for reply in replies:
                    text = await reply
                    if data and not writer.transport.is_closing():  # gone: asyncio would log each write
                        writer.write(frame(text))  # at end of stream: only errors, of a cut frame
                if refused >= _MAX_REFUSED_IN_A_ROW or over:
                    if over:
                        log.warning("MLLP peer %s: unfinished frames over %d bytes in all, this one the "
                                    "oldest; disconnecting", peer, self.max_buffered_bytes)
                    else:
                        self.counts["cut_off"] += 1
                        log.warning("MLLP peer %s: %d frames refused in a row; disconnecting", peer, refused)
                    await asyncio.wait_for(writer.drain(), 2.0)
                    break
                if not data:
                    break
                if writer.transport.get_write_buffer_size():  # a peer that does not read: bounded
                    watch.expect(loop.time() + self.idle_timeout)
                    try:
                        await writer.drain()
                    except asyncio.CancelledError:
                        if not watch.expired():
                            raise
                        stalled = True
                        raise TimeoutError(f"the peer read no ACK for {self.idle_timeout}s") from None
                    watch.expect(math.inf)
                else:
                    await writer.drain()  # nothing waits; raises if the connection was lost
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, exc or type(exc).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            watch.stop()
            self._hold(task, None, 0)
            self._clients.discard(task)
            self._activity.pop(task, None)
            if stalled:  # close() would wait for the peer to read what is buffered: forever
                writer.transport.abort()
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except Exception:  # noqa: BLE001 - the peer does not take the last bytes: drop them
                writer.transport.abort()
            except asyncio.CancelledError:  # the listener stops: drop them now
                writer.transport.abort()

    def _hold(self, task: asyncio.Task[None], started: float | None, held: int) -> bool:
        """:meth:`FrameBudget.hold`, counting and cancelling the connections it cuts off; True if
        ``task``'s own is one of them (the caller answers its finished frames, then closes)."""
        cut = self._budget.hold(task, started, held)
        if not cut:
            return False
        self.counts["over_budget"] += len(cut)
        for other in cut:
            if other is not task:
                log.warning("MLLP: unfinished frames over %d bytes in all; closed the connection whose "
                            "frame started the longest ago", self.max_buffered_bytes)
                other.cancel()
        return task in cut

    def _make_room(self) -> None:
        """At ``max_connections``: close the connection idle the longest."""
        while len(self._clients) >= self.max_connections and self._activity:
            victim = min(self._activity, key=self._activity.__getitem__)
            self._activity.pop(victim)
            self._clients.discard(victim)
            victim.cancel()
            self.counts["evicted"] += 1
            log.warning("MLLP: %d connections open; closed the one idle the longest", self.max_connections)

    def _slow_nak(self) -> str:
        return build_ack(None, AckCode.AR, f"frame not completed within {self.frame_timeout}s",
                         AckError(100, f"MLLP frame not completed within {self.frame_timeout}s"))

    def _handle(self, item: bytes | FrameError, peer: str) -> asyncio.Future[str]:
        """Start handling one frame or framing error; the future gives the ACK text.

        Validation happens now (in arrival order); storage is queued so the frames
        of one read share a commit, and ACKs are written in order.
        """
        loop = asyncio.get_running_loop()
        result: asyncio.Future[str] = loop.create_future()
        if isinstance(item, FrameError):
            self.counts["framing_errors"] += 1
            self._count_in_store("framing_errors")
            result.set_result(build_ack(None, AckCode.AR, f"MLLP framing error: {item.detail}",
                                        AckError(100, f"MLLP framing error: {item.kind}: {item.detail}")))
            return result
        self.counts["received"] += 1
        message: Message | None = None
        try:
            raw = decode(item)
            try:
                message = parse_message(raw, source=peer, max_segments=self.max_segments)
            except HL7ParseError as exc:
                return self._reject(result, None, AckCode.AR, exc)
            values = msh_values(message)
            code, reason = self._check(values)
            if code is not None and reason is not None:
                return self._reject(result, message, code, reason)
            if self._failure is not None:
                raise StoreError("the listener's store thread has died; the message is not stored")
            pending = self._pending
            pending.append(_Job(Received(message, raw, peer, values), result))
            if len(pending) == 1:  # handed over after this iteration's other connections were read
                loop.call_soon(self._hand_over)
        except Exception as exc:  # noqa: BLE001 - one message's failure is its NAK, never the service's
            log.exception("MLLP message from %s could not be handled", peer)
            if not result.done():
                self._reject(result, message, AckCode.AE, AckError(207, f"{type(exc).__name__}: {exc}"))
        return result

    def _check(self, m: MshValues) -> tuple[AckCode | None, AckError | None]:
        code = m.message_code
        if not code:
            return AckCode.AR, AckError(101, "MSH-9 message type is empty", "MSH", 1, 9)
        if not self.accept_unknown_types and not code.startswith("Z") and code not in known_message_codes():
            return AckCode.AR, AckError(200, f"unsupported message type {code[:20]!r}", "MSH", 1, 9)
        if not m.control_id:
            return AckCode.AR, AckError(101, "MSH-10 message control id is empty", "MSH", 1, 10)
        if len(m.control_id) > MAX_ECHO:
            return AckCode.AR, AckError(102, f"MSH-10 message control id is longer than {MAX_ECHO} "
                                        "characters", "MSH", 1, 10)
        for number, value in ((3, m.sending_application), (4, m.sending_facility)):
            if len(value) > MAX_SENDER:
                return AckCode.AR, AckError(102, f"MSH-{number}.1 is longer than {MAX_SENDER} characters",
                                            "MSH", 1, number)
        return None, None

    def _reject(self, result: asyncio.Future[str], message: Message | None, code: AckCode,
                reason: AckError | HL7ParseError) -> asyncio.Future[str]:
        self.counts["rejected"] += 1
        self._count_in_store("rejected")
        if isinstance(reason, HL7ParseError) and message is None and reason.segment not in (None, "MSH"):
            code = AckCode.AE  # a good MSH, a bad segment after it: content error
        text = str(reason.text if isinstance(reason, AckError) else reason)
        result.set_result(_safe_ack(message, code, text[:200], reason))
        return result

    def _count_in_store(self, counter: str) -> None:
        """Count a rejection or framing error in the store: written by the store thread, which an
        empty batch wakes if it is not already due to write counts."""
        with self._counts_lock:
            self._uncounted[counter] += 1
            wake, self._counts_queued = not self._counts_queued, True
        if wake:
            self._jobs.put([])

    def _acknowledge(self, item: Received, result: asyncio.Future[str], outcome: StoredResult | BaseException,
                     when: dt.datetime, stamp: str, ack_id: str) -> None:
        message = item.message
        try:
            if isinstance(outcome, BaseException):
                log.error("could not store message %s: %s", item.key[2][:MAX_ECHO], outcome)
                failure = AckError(207, f"store failure: {type(outcome).__name__}: {outcome}")
                result.set_result(_safe_ack(message, AckCode.AE, "message not stored; resend later", failure))
                return
            assert item.values is not None  # Received reads them
            if outcome.duplicate:
                self.counts["duplicates"] += 1
                note: str | None = f"duplicate: already stored as #{outcome.rowid}"
            else:
                self.counts["stored"] += 1
                note = (f"stored as #{outcome.rowid}, flagged: control id reused with other content"
                        if outcome.reused_control_id else None)
            result.set_result(positive_ack(message, item.values, note, control_id=ack_id, timestamp=when,
                                           stamp=stamp))
        except Exception as exc:  # noqa: BLE001 - never leave a connection waiting for its ACK
            log.exception("could not acknowledge message %s", item.key[2][:MAX_ECHO])
            if not result.done():
                result.set_result(_safe_ack(message, AckCode.AE, "message not acknowledged; resend later",
                                            AckError(207, f"{type(exc).__name__}: {exc}")))
            return
        if self.on_message is not None and not outcome.duplicate:
            try:
                self.on_message(message)
            except Exception:  # noqa: BLE001 - a callback must not change the ACK
                log.exception("on_message callback failed for %s", item.key[2])


def _safe_ack(message: Message | None, code: AckCode, text: str,
              error: AckError | BaseException) -> str:
    """A negative ACK; if the message's own values cannot be echoed, one that echoes nothing of it."""
    try:
        return build_ack(message, code, text, error)
    except Exception:  # noqa: BLE001 - the fallback below echoes nothing of the message
        log.exception("could not build a NAK echoing the message; answering without its header")
        return build_ack(None, code, text, AckError(207, text))
