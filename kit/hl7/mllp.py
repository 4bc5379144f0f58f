"""MLLP transport: a durable listener and a retrying sender (I/O).

:class:`MLLPListener` is the embedded stack's HL7 endpoint (``name = "mllp"``):
an asyncio server in a background thread, any number of connections, several
messages per connection. Every message is parsed (:func:`kit.hl7.message.parse_message`),
checked (MSH-9 a known HL7 table 0076 message type or a Z-type, MSH-10 present),
stored in a :class:`~kit.hl7.store.MessageStore` and only *after the commit*
answered AA (:func:`kit.hl7.build.build_ack`). Messages arriving together on
all connections share one SQLite transaction (group commit in a writer
thread). A duplicate (same MSH-3/MSH-4/MSH-10) is stored once and answered AA
again with a note. Malformed input gets AR (or AE for a bad segment after a
good MSH) with an ERR segment, and the connection stays open; an oversize frame
gets AR and the rest of it is discarded; an idle connection is closed.

:class:`MLLPSender` keeps one connection, sends a message, waits for the ACK
whose MSA-2 matches its MSH-10 (stale ACKs of earlier attempts are skipped),
and on disconnect, timeout or AE reconnects and resends under a bounded
:class:`RetryPolicy`; AR is final (:class:`~kit.errors.NakError`).

Written by hand: python-hl7's ``hl7.mllp`` server has no storage, size limit,
idle timeout or duplicate handling, and its ``MLLPClient`` reads one
``recv()`` as the ACK with no timeout, matching or retry; hl7apy's
``MLLPServer`` is a blocking ``socketserver``. Framing is in
:mod:`kit.hl7.framing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl

from kit.errors import (
    ConfigError,
    HL7ParseError,
    KitError,
    NakError,
    PeerDisconnectedError,
    PeerError,
    PeerTimeoutError,
    PeerUnreachableError,
    StoreError,
    TLSError,
)
from kit.hl7.build import AckError, build_ack
from kit.hl7.framing import DEFAULT_MAX_MESSAGE_BYTES, FrameError, MLLPDecoder, frame
from kit.hl7.message import Message, parse_message
from kit.hl7.store import MessageStore, Received, StoredResult
from kit.hl7.typed import Ack, AckCode

__all__ = ["MLLPListener", "MLLPSender", "RetryPolicy", "known_message_codes"]

log = logging.getLogger(__name__)

_READ_SIZE = 1 << 16


@functools.cache
def known_message_codes() -> frozenset[str]:
    """MSH-9.1 codes of HL7 table 0076 (hl7apy's tables for v2.5 and v2.8.2)."""
    codes: set[str] = set()
    from hl7apy.v2_5 import tables as t25
    from hl7apy.v2_8_2 import tables as t282

    for tables in (t25.TABLES, t282.TABLES):
        codes.update(tables["HL70076"][1])
    return frozenset(codes)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ==================================================================================================
# listener
# ==================================================================================================
@dataclasses.dataclass
class _Job:
    item: Received
    future: asyncio.Future[StoredResult]


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
        Seconds without data after which a connection is closed.
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context (MLLP over TLS).
    on_message : callable, optional
        Called with each newly stored :class:`~kit.hl7.message.Message` (not
        duplicates), after the commit, in the listener's thread; its errors are
        logged and do not change the ACK.
    accept_unknown_types : bool
        Store messages whose MSH-9.1 is not in HL7 table 0076 (default: AR 200).

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
                 accept_unknown_types: bool = False) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        if max_message_bytes < 1 or idle_timeout <= 0:
            raise ValueError("max_message_bytes and idle_timeout must be positive")
        self.store_path = Path(store_path)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self.on_message = on_message
        self.accept_unknown_types = accept_unknown_types
        self.store: MessageStore | None = None
        #: in-memory counts since start: received, stored, duplicates, rejected, framing_errors, connections
        self.counts: dict[str, int] = dict.fromkeys(
            ("received", "stored", "duplicates", "rejected", "framing_errors", "connections"), 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._shutdown: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        """``mllp://host:port`` (``mllps://`` with TLS)."""
        scheme = "mllps" if self.ssl_context is not None else "mllp"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None and self._thread.is_alive()

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
            raise ConfigError("hl7.port", f"cannot listen on {self.host}:{self.port}: {self._error}") \
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
        finally:
            loop.close()

    async def _main(self) -> None:
        self._shutdown = shutdown = asyncio.Event()
        try:
            self._server = await asyncio.start_server(
                self._client, self.host, self.port, ssl=self.ssl_context, reuse_address=True,
                limit=_READ_SIZE)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        await shutdown.wait()
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()

    # -- storage (group commit) ------------------------------------------------------------------
    def _writer(self) -> None:
        """Commit every job waiting in the queue in one transaction, then resolve their futures."""
        assert self.store is not None
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < 1000:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            try:
                results: list[StoredResult] | BaseException = self.store.add_many([j.item for j in batch])
            except (StoreError, ValueError) as exc:
                results = exc
            for i, job in enumerate(batch):
                fut = job.future
                loop = fut.get_loop()
                if isinstance(results, BaseException):
                    loop.call_soon_threadsafe(_settle, fut, None, results)
                else:
                    loop.call_soon_threadsafe(_settle, fut, results[i], None)
            if stop:
                return

    # -- one connection --------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self.counts["connections"] += 1
        info = writer.get_extra_info("peername")
        peer = f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
        decoder = MLLPDecoder(self.max_message_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(_READ_SIZE), self.idle_timeout)
                except TimeoutError:
                    log.info("closing idle MLLP connection from %s", peer)
                    break
                items = decoder.feed(data) if data else decoder.flush()
                replies = [self._handle(item, peer) for item in items]
                for reply in replies:
                    text = await reply
                    if data:
                        writer.write(frame(text))
                if not data:
                    break
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

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
        raw = _decode(item)
        try:
            message = parse_message(raw, source=peer)
        except HL7ParseError as exc:
            return self._reject(result, None, AckCode.AR, exc)
        code, reason = self._check(message)
        if code is not None and reason is not None:
            return self._reject(result, message, code, reason)
        stored: asyncio.Future[StoredResult] = loop.create_future()
        self._jobs.put(_Job(Received(message, raw, peer), stored))
        stored.add_done_callback(functools.partial(self._acknowledge, message, result))
        return result

    def _check(self, m: Message) -> tuple[AckCode | None, AckError | None]:
        code = m.message_code
        if not code:
            return AckCode.AR, AckError(101, "MSH-9 message type is empty", "MSH", 1, 9)
        if not self.accept_unknown_types and not code.startswith("Z") and code not in known_message_codes():
            return AckCode.AR, AckError(200, f"unsupported message type {code!r}", "MSH", 1, 9)
        if not m.control_id:
            return AckCode.AR, AckError(101, "MSH-10 message control id is empty", "MSH", 1, 10)
        return None, None

    def _reject(self, result: asyncio.Future[str], message: Message | None, code: AckCode,
                reason: AckError | HL7ParseError) -> asyncio.Future[str]:
        self.counts["rejected"] += 1
        self._count_in_store("rejected")
        if isinstance(reason, HL7ParseError) and message is None and reason.segment not in (None, "MSH"):
            code = AckCode.AE  # a good MSH, a bad segment after it: content error
        text = str(reason.text if isinstance(reason, AckError) else reason)
        result.set_result(build_ack(message, code, text[:200], reason))
        return result

    def _count_in_store(self, counter: str) -> None:
        if self.store is not None:
            try:
                self.store.increment(counter)
            except StoreError as exc:  # a counter is not worth failing the connection
                log.warning("could not count %s: %s", counter, exc)

    def _acknowledge(self, message: Message, result: asyncio.Future[str],
                     stored: asyncio.Future[StoredResult]) -> None:
        exc = stored.exception()
        if exc is not None:
            log.error("could not store message %s: %s", message.control_id, exc)
            result.set_result(build_ack(message, AckCode.AE, "message not stored; resend later",
                                        AckError(207, f"store failure: {exc}")))
            return
        outcome = stored.result()
        if outcome.duplicate:
            self.counts["duplicates"] += 1
            note = f"duplicate: already stored as #{outcome.rowid}"
            result.set_result(build_ack(message, AckCode.AA, note))
            return
        self.counts["stored"] += 1
        result.set_result(build_ack(message, AckCode.AA))
        if self.on_message is not None:
            try:
                self.on_message(message)
            except Exception:  # noqa: BLE001 - a callback must not change the ACK
                log.exception("on_message callback failed for %s", message.control_id)


def _settle(fut: asyncio.Future[StoredResult], value: StoredResult | None,
            exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert value is not None
        fut.set_result(value)


# ==================================================================================================
# sender
# ==================================================================================================
@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently :class:`MLLPSender` resends.

    Parameters
    ----------
    max_attempts : int
        Total tries per message (1 = no retry).
    backoff : float
        Seconds before the 2nd attempt; doubled each further attempt.
    max_backoff : float
        Upper bound of one wait.
    retry_on_ae : bool
        Resend after AE/CE (an application error may be transient). AR/CR is always final.
    """

    max_attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0
    retry_on_ae: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff must not be negative")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2, 3, ...)."""
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, attempt - 2)))


class MLLPSender:
    """Send HL7 messages over one kept MLLP connection and wait for each ACK.

    Parameters
    ----------
    host, port : str, int
        The MLLP peer.
    timeout : float
        Seconds for connecting and for each ACK.
    retry : RetryPolicy
        Reconnect-and-resend policy on disconnect, timeout and AE.
    ssl_context : ssl.SSLContext, optional
        Client TLS context (``server_hostname`` is ``host``).
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), ssl_context: ssl.SSLContext | None = None) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.host, self.port = host, int(port)
        self.timeout = timeout
        self.retry = retry
        self.ssl_context = ssl_context
        self.peer = f"mllp://{host}:{port}"
        self._sock: socket.socket | None = None
        self._decoder = MLLPDecoder()
        self._frames: list[bytes | FrameError] = []
        self._answered = False
        #: number of attempts the last :meth:`send` needed
        self.last_attempts = 0

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection now (otherwise the first send does).

        Raises
        ------
        kit.errors.PeerUnreachableError, kit.errors.TLSError
        """
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except TimeoutError as exc:
            raise PeerUnreachableError(f"connect timed out after {self.timeout}s", peer=self.peer) from exc
        except OSError as exc:
            raise PeerUnreachableError(f"cannot connect: {exc}", peer=self.peer) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
            except (ssl.SSLError, ssl.CertificateError) as exc:
                sock.close()
                raise TLSError(f"TLS handshake failed: {exc}", peer=self.peer) from exc
            except OSError as exc:
                sock.close()
                raise PeerDisconnectedError(f"connection lost during TLS handshake: {exc}",
                                            peer=self.peer) from exc
        self._sock = sock
        self._decoder = MLLPDecoder()
        self._frames = []
        self._answered = False  # has this connection ever sent us a byte?

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> MLLPSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending -----------------------------------------------------------------------------------
    def send(self, message: str | bytes | Message) -> Ack:
        """Send one message; return its positive ACK.

        Parameters
        ----------
        message : str, bytes or Message
            ER7 text (segments ended by CR or LF) or a parsed message.

        Returns
        -------
        kit.hl7.typed.Ack
            The AA/CA acknowledgement whose MSA-2 is the message's MSH-10.

        Raises
        ------
        kit.errors.NakError
            AR/CR, or AE/CE after the last attempt.
        kit.errors.PeerUnreachableError, kit.errors.PeerTimeoutError, kit.errors.PeerDisconnectedError
            After the last attempt (the error of that attempt).
        kit.errors.HL7ParseError
            ``message`` is not an HL7 message.
        """
        data, control_id = self._prepare(message)
        last: KitError | None = None
        for attempt in range(1, self.retry.max_attempts + 1):
            self.last_attempts = attempt
            if attempt > 1:
                time.sleep(self.retry.delay(attempt))
            try:
                self.connect()
                self._write(data)
                ack = self._read_ack(control_id)
            except (PeerUnreachableError, PeerTimeoutError, PeerDisconnectedError) as exc:
                self.close()
                last = exc
                continue
            if ack.code.is_positive:
                return ack
            nak = NakError(f"message {control_id} answered {ack.code.value}: "
                           f"{ack.error_text or ack.text or 'no reason given'}", ack_code=ack.code.value,
                           control_id=control_id, text=ack.error_text or ack.text, peer=self.peer)
            if ack.code in (AckCode.AR, AckCode.CR) or not self.retry.retry_on_ae:
                raise nak
            last = nak
        assert last is not None
        raise last

    def send_many(self, messages: Iterable[str | bytes | Message], progress: bool = False) -> pl.DataFrame:
        """Send messages in order; one row per message, failures recorded rather than raised.

        Returns
        -------
        polars.DataFrame
            ``control_id`` (String), ``ack_code`` (String; null when no ACK),
            ``attempts`` (Int32), ``error`` (String; null on success).
        """
        items: Iterable[str | bytes | Message] = messages
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(messages, desc="MLLP send", unit="msg")
        rows: list[dict[str, object]] = []
        for item in items:
            try:
                control_id = self._prepare(item)[1]
            except HL7ParseError as exc:
                rows.append({"control_id": None, "ack_code": None, "attempts": 0, "error": str(exc)})
                continue
            try:
                ack = self.send(item)
                rows.append({"control_id": control_id, "ack_code": ack.code.value,
                             "attempts": self.last_attempts, "error": None})
            except NakError as exc:
                rows.append({"control_id": control_id, "ack_code": exc.ack_code,
                             "attempts": self.last_attempts, "error": str(exc)})
            except PeerError as exc:
                rows.append({"control_id": control_id, "ack_code": None,
                             "attempts": self.last_attempts, "error": f"{type(exc).__name__}: {exc}"})
        return pl.DataFrame(rows, schema={"control_id": pl.String, "ack_code": pl.String,
                                          "attempts": pl.Int32, "error": pl.String})

    # -- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _prepare(message: str | bytes | Message) -> tuple[bytes, str]:
        if isinstance(message, Message):
            text = message.to_er7()
            control_id = message.control_id
        else:
            text = _decode(message) if isinstance(message, bytes) else message
            text = text.replace("\r\n", "\r").replace("\n", "\r").strip("\x0b\x1c")
            if not text.endswith("\r"):
                text += "\r"
            control_id = _control_id(text)
        return frame(text), control_id

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.settimeout(self.timeout)
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise PeerTimeoutError(f"send timed out after {self.timeout}s", peer=self.peer) from exc
        except OSError as exc:
            raise PeerDisconnectedError(f"connection lost while sending: {exc}", peer=self.peer) from exc

    def _read_ack(self, control_id: str) -> Ack:
        """The next ACK for ``control_id``; ACKs for other ids (stale, from earlier attempts) are skipped."""
        deadline = time.monotonic() + self.timeout
        while True:
            while self._frames:
                item = self._frames.pop(0)
                if isinstance(item, FrameError):
                    log.warning("%s: %s", self.peer, item.detail)
                    continue
                ack = _as_ack(item)
                if ack is None:
                    log.warning("%s sent a frame that is not an ACK; ignored", self.peer)
                    continue
                if ack.control_id and ack.control_id != control_id:
                    log.info("%s: skipping ACK for %s while waiting for %s", self.peer, ack.control_id,
                             control_id)
                    continue
                return ack
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerTimeoutError(f"no ACK for {control_id} within {self.timeout}s", peer=self.peer)
            assert self._sock is not None
            try:
                self._sock.settimeout(remaining)
                data = self._sock.recv(_READ_SIZE)
            except TimeoutError as exc:
                raise PeerTimeoutError(f"no ACK for {control_id} within {self.timeout}s",
                                       peer=self.peer) from exc
            except ssl.SSLError as exc:  # e.g. a TLS alert after the handshake (certificate required)
                raise TLSError(f"TLS error waiting for the ACK: {exc}", peer=self.peer) from exc
            except OSError as exc:
                raise PeerDisconnectedError(f"connection lost waiting for the ACK: {exc}",
                                            peer=self.peer) from exc
            if not data:
                if self.ssl_context is not None and not self._answered:
                    # A TLS 1.3 server that wants a client certificate completes the handshake and then
                    # drops the connection (asyncio sends no alert). Resending cannot help: final.
                    raise TLSError("the peer closed a new TLS connection without answering; it may "
                                   "require a client certificate (mutual TLS)", peer=self.peer)
                raise PeerDisconnectedError(f"peer closed the connection before the ACK of {control_id}",
                                            peer=self.peer)
            self._answered = True
            self._frames += self._decoder.feed(data)


def _control_id(text: str) -> str:
    """MSH-10 from the first line when it is plain (no escapes); otherwise by a full parse."""
    line = text[: text.find("\r")]
    if line.startswith("MSH") and len(line) > 8:
        fields = line.split(line[3])
        escape = fields[1][2:3]
        if len(fields) > 9 and escape and escape not in fields[9] and fields[1][0] not in fields[9]:
            return fields[9]
    return parse_message(text).control_id


def _as_ack(data: bytes) -> Ack | None:
    try:
        typed = parse_message(data).typed()
    except (HL7ParseError, ValueError):
        return None
    return typed if isinstance(typed, Ack) else None
