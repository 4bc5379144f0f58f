"""MLLP sender: one kept connection, ACK matching, bounded retries (I/O).

:class:`MLLPSender` keeps one connection, sends a message, waits for the ACK
whose MSA-2 matches its MSH-10 (stale ACKs of earlier attempts are skipped),
and retries only what retrying can fix, under a :class:`RetryPolicy`:

- a connection lost mid-exchange, no ACK within the timeout, or AE/CE: reconnect
  and resend, up to ``max_attempts`` in all;
- a peer that refuses the connection (or cannot be reached): reconnect with
  short waits for at most ``unreachable_wait`` seconds in all (default 1 s, so
  a dead port fails in well under 2 s), then :class:`~kit.errors.PeerUnreachableError`;
- AR/CR and TLS failures are final.

:meth:`MLLPSender.send_many` stops at an unreachable peer: the remaining
messages get a row saying they were not sent, without a wait each.

The round trip is lean: on Linux a plain-TCP connection is a blocking socket
with kernel timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``), one system call per send
and per receive (Python's own timeouts poll first); one deadline still bounds a
whole message and a whole ACK, however the peer trickles them. An ACK of the
usual shape (MSH + MSA, plain text) is read by :func:`kit.hl7.ack_fast.fast_ack`,
equal to the full parse, which reads every other reply. :meth:`MLLPSender.send` of
ER7 text (CR segment ends, a plain MSH-10) on a kept connection does the whole round
trip in one function: one send, the AA's expected end made while the peer works
(:func:`~kit.hl7.ack_fast.aa_tail`), one receive read by
:func:`~kit.hl7.ack_fast.aa_read` -- few operations after the wait, when the caches
are cold; anything else goes through the general path with the same results (tested).
Where pip built it, ``kit/hl7/_leanc.c`` does that round trip in one C call (the
same checks, tested equal; 20-30 us less CPU per message than the Python steps, which
remain where no C compiler was found).

Written by hand (the round trip in C for speed): python-hl7's ``MLLPClient`` reads
one ``recv()`` as the ACK with no timeout, matching or retry. Framing is in
:mod:`kit.hl7.framing`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import socket
import ssl
import struct
import sys
import time
from collections import deque
from collections.abc import Iterable

import polars as pl

from kit import audit
from kit.errors import (
    HL7ParseError,
    KitError,
    MLLPFramingError,
    NakError,
    PeerDisconnectedError,
    PeerError,
    PeerTimeoutError,
    PeerUnreachableError,
    TLSError,
)
from kit.hl7._audit import audited_send
from kit.hl7.ack_fast import _LazyAck, aa_read, aa_tail, fast_ack
from kit.hl7.build import MAX_ECHO
from kit.hl7.framing import CR, FS, VT, FrameError, MLLPDecoder
from kit.hl7.message import Message, decode, parse_message
from kit.hl7.typed import Ack, AckCode

__all__ = ["MLLPSender", "RetryPolicy"]

try:  # the lean round trip in C, where it was built (pip install builds it; optional)
    from kit.hl7 import _leanc
except ImportError:  # pragma: no cover - no compiler at install time: the same in Python
    _leanc = None  # type: ignore[assignment]
else:
    _leanc.configure(_LazyAck, AckCode.AA)

log = logging.getLogger(__name__)

_READ_SIZE = 1 << 16
#: The one-piece round trip's receive: an ACK is a few hundred bytes (a longer one is read on by the
#: general path); a 64 KiB receive allocates 64 KiB and shrinks it each time (~1 us a round trip here).
_LEAN_READ = 1 << 12
#: First wait between two connection attempts to an unreachable peer (doubled each time).
_RECONNECT_WAIT = 0.05
#: Plain TCP on Linux: a blocking socket with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) does one
#: system call per send or receive; Python's own timeouts poll() before each (two, and the GIL
#: released and taken back twice: slow when the peer shares the process).
_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
_END = FS + CR
_POSITIVE = (AckCode.AA, AckCode.CA)
_STANDARD_MSH = "MSH|^~\\&|"
#: what makes _control_id parse the message (a delimiter or the escape in MSH-10, or MSH-10 the last
#: field of its line): not on the lean path
_ODD_ID = re.compile(r"[\^~\\&\r]")


def _lean_id(message: str) -> str | None:
    """MSH-10 of ``message`` if the lean round trip sends it as it is, else None: ER7 text with
    CR segment ends (the last character one), no LF or MLLP block byte (where ``_prepare`` changes
    nothing), and an MSH-10 read raw as ``_control_id`` reads it. ``_leanc.lean_text`` is the same
    test on the UTF-8 bytes (tested equal)."""
    fields = message[:message.find("\r")].split("|", 10)  # the first line, as _control_id reads it
    control_id = fields[9] if len(fields) > 9 else "\r"
    if (message.startswith(_STANDARD_MSH) and message[-1:] == "\r" and "\n" not in message
            and "\x0b" not in message and "\x1c" not in message and _ODD_ID.search(control_id) is None):
        return control_id
    return None


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
    unreachable_wait : float
        Seconds one send keeps reconnecting to a peer that refuses the
        connection or cannot be reached, before :class:`~kit.errors.PeerUnreachableError`
        (0: one try). The default keeps a dead port under 2 s; raise it to ride
        through a peer's restart.

    Examples
    --------
    The CLI's ``--retries N``: ``RetryPolicy.from_retries(N)``.
    """

    max_attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0
    retry_on_ae: bool = True
    unreachable_wait: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.unreachable_wait < 0:
            raise ValueError("backoff and unreachable_wait must not be negative")

    @classmethod
    def from_retries(cls, retries: int, *, unreachable_wait: float = 1.0) -> RetryPolicy:
        """``retries`` resends after the first attempt (``--retries N``); other fields default.

        Raises
        ------
        ValueError
            ``retries`` is negative.
        """
        if retries < 0:
            raise ValueError("retries must not be negative")
        return cls(max_attempts=retries + 1, unreachable_wait=unreachable_wait)

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
        Seconds for each ACK, and for connecting (at most ``connect_timeout``).
    retry : RetryPolicy
        Reconnect-and-resend policy on disconnect, timeout and AE, and how long
        to keep reconnecting to an unreachable peer.
    ssl_context : ssl.SSLContext, optional
        Client TLS context (``server_hostname`` is ``host``).
    connect_timeout : float
        Upper bound of one TCP connect (a host that drops packets).
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), ssl_context: ssl.SSLContext | None = None,
                 connect_timeout: float = 10.0) -> None:
        if not 0 < connect_timeout < math.inf:  # NaN fails too
            raise ValueError("connect_timeout must be positive and finite")
        self.host, self.port = host, int(port)
        self.timeout = timeout  # checked by the setter
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.ssl_context = ssl_context
        self.peer = f"mllp://{host}:{port}"
        self._sock: socket.socket | None = None
        self._decoder = MLLPDecoder()
        self._frames: deque[bytes | FrameError] = deque()
        self._answered = False
        self._kernel_timeouts = False
        self._lean = False  # the next round trip may take the lean path (see _lean_again)
        self._fd = -1  # the connection's file descriptor (the C round trip's)
        self._sock_timeout = 0.0  # the timeout the socket has now
        #: number of attempts the last :meth:`send` needed
        self.last_attempts = 0

    @property
    def timeout(self) -> float:
        """Seconds for each ACK (and for sending each message); may be changed between sends.

        Raises
        ------
        ValueError
            On setting a value that is not positive and finite.
        """
        return self._timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if not 0 < seconds < math.inf:  # NaN fails too
            raise ValueError("timeout must be positive and finite")
        self._timeout = seconds
        self._lean = False  # the socket keeps the old one: the next round trip sets it (_write)

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open the connection now (otherwise the first send does).

        Raises
        ------
        kit.errors.PeerUnreachableError, kit.errors.TLSError
        """
        if self._sock is not None:
            return
        wait = min(self.connect_timeout, self._timeout)  # a timeout lowered since bounds it too
        try:
            sock = socket.create_connection((self.host, self.port), timeout=wait)
        except TimeoutError as exc:
            raise PeerUnreachableError(f"connect timed out after {wait:g}s", peer=self.peer) from exc
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
        self._fd = sock.fileno()
        self._kernel_timeouts = _KERNEL_TIMEOUTS and self.ssl_context is None
        if self._kernel_timeouts:
            sock.settimeout(None)
        self._set_timeout(self.timeout)
        self._decoder = MLLPDecoder()
        self._frames = deque()
        self._answered = False  # has this connection ever sent us a byte? (TLS only: not on the lean path)

    def _set_timeout(self, seconds: float) -> None:
        """The timeout of each following send and receive on the socket."""
        assert self._sock is not None
        if self._kernel_timeouts:
            sec, usec = divmod(max(int(seconds * 1e6), 1), 1_000_000)  # (0, 0) would mean "forever"
            value = struct.pack("@ll", sec, usec)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        else:
            self._sock.settimeout(seconds)
        self._sock_timeout = seconds
        self._lean = False

    def _connect_within(self, wait: float) -> None:
        """Connect, retrying an unreachable peer with short doubling waits for ``wait`` seconds in all."""
        deadline = time.monotonic() + wait
        pause = _RECONNECT_WAIT
        while True:
            try:
                self.connect()
                return
            except PeerUnreachableError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, max(self.retry.max_backoff, _RECONNECT_WAIT))

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
        kit.errors.PeerUnreachableError
            The peer refused or could not be reached for ``retry.unreachable_wait`` seconds.
        kit.errors.PeerTimeoutError, kit.errors.PeerDisconnectedError
            After the last attempt (the error of that attempt).
        kit.errors.TLSError
            The TLS handshake failed (final: resending cannot fix a certificate).
        kit.errors.HL7ParseError
            ``message`` is not an HL7 message.
        """
        sock = self._sock
        if (type(message) is str and sock is not None and (self._lean or self._lean_again())
                and not audit.enabled()):
            # The usual round trip, in one piece: ER7 text with CR segment ends and a plain MSH-10
            # (where _prepare changes nothing: no LF, no block byte, a CR at the end), one send, one
            # receive holding one whole plain ACK frame of this message (kernel timeouts bound both)
            # -- few operations after the receive, when the caches are cold. Anything else takes
            # the general path below, with its checks and errors.
            if _leanc is not None:  # the same, in one C call (kit/hl7/_leanc.c)
                self.last_attempts = 1
                done = _leanc.round_trip(self._fd, message)
                if done is None:
                    return self._send(message)
                if type(done) is tuple:  # not isinstance: that would call _LazyAck's __class__
                    return self._lean_after(message, *done)
                return done  # type: ignore[return-value]  # an Ack: not None, not a tuple
            return self._lean_python(sock, message)
        return self._send(message)

    @audited_send
    def _send(self, message: str | bytes | Message) -> Ack:
        """:meth:`send` with all its checks and the retries (audited as ``hl7.send``)."""
        data, control_id = self._prepare(message)
        self.last_attempts = 1
        if self._sock is None:
            return self._resend(data, control_id, None)
        try:  # the first attempt on a kept connection: no retry machinery
            self._write(data)
            ack = self._read_ack(control_id)
        except (PeerTimeoutError, PeerDisconnectedError) as exc:
            self.close()
            return self._resend(data, control_id, exc)
        if ack.code in _POSITIVE:
            return ack
        return self._resend(data, control_id, self._nak(ack, control_id))

    def _first_failed(self, data: bytes, control_id: str, exc: KitError) -> Ack:
        """The first attempt failed with ``exc``: the retries, or ``exc`` itself if final."""
        if not isinstance(exc, PeerTimeoutError | PeerDisconnectedError):
            raise exc
        self.close()
        return self._resend(data, control_id, exc)

    def _lean_python(self, sock: socket.socket, message: str) -> Ack:
        """The lean round trip in Python, where the C one was not built (equal results)."""
        control_id = _lean_id(message)
        if control_id is None:
            return self._send(message)
        try:
            data = VT + message.encode("utf-8") + _END
        except UnicodeEncodeError:  # lone surrogates: the general path names the error
            return self._send(message)
        self.last_attempts = 1
        try:
            sent = sock.send(data)
        except OSError as exc:
            return self._first_failed(data, control_id, self._send_failed(exc))
        tail = aa_tail(control_id)  # made while the peer works
        deadline = time.monotonic() + self._timeout  # for the whole ACK, from the whole message
        if sent < len(data):
            return self._lean_rest(data, control_id, memoryview(data)[sent:])
        try:
            reply = sock.recv(_LEAN_READ)
        except OSError as exc:
            return self._first_failed(data, control_id, self._recv_failed(exc, control_id))
        return self._lean_reply(data, control_id, reply, tail, deadline)

    def _lean_reply(self, data: bytes, control_id: str, reply: bytes, tail: bytes, deadline: float) -> Ack:
        """The lean path's one receive: a positive plain ACK of this message, or read on."""
        ack = aa_read(reply, tail, control_id)
        if ack is not None and ack.code in _POSITIVE:
            return ack
        return self._lean_on(data, control_id, reply, ack, deadline)

    def _lean_after(self, message: str, status: int, value: int, sent_at: float, reply: bytes | None) -> Ack:
        """The C round trip's other outcomes (``status``: 1 the send failed with errno ``value``,
        2 it sent ``value`` bytes only, 3 the receive failed with errno ``value``, 4 ``reply`` is
        not a plain AA of the message), taken on as the pure-Python lean path takes them."""
        data = VT + message.encode("utf-8") + _END
        control_id = message[:message.find("\r")].split("|", 10)[9]
        if status == 1:
            return self._first_failed(data, control_id, self._send_failed(OSError(value, os.strerror(value))))
        if status == 2:
            return self._lean_rest(data, control_id, memoryview(data)[value:])
        if status == 3:
            exc = OSError(value, os.strerror(value))  # EAGAIN (SO_RCVTIMEO) is a BlockingIOError
            return self._first_failed(data, control_id, self._recv_failed(exc, control_id))
        assert reply is not None
        return self._lean_reply(data, control_id, reply, aa_tail(control_id), sent_at + self._timeout)

    def _lean_on(self, data: bytes, control_id: str, reply: bytes | None, ack: Ack | None,
                 deadline: float) -> Ack:
        """The lean path's reply (None: nothing received yet) was not a positive plain ACK of this
        message in one frame: read on under the same deadline, or answer the NAK, as the general
        path does."""
        try:
            if ack is None:
                ack = (self._read_ack(control_id, deadline) if reply is None
                       else self._read_on(reply, control_id, deadline))
        except (PeerTimeoutError, PeerDisconnectedError) as exc:
            return self._first_failed(data, control_id, exc)
        if ack.code in _POSITIVE:
            return ack
        return self._resend(data, control_id, self._nak(ack, control_id))

    def _lean_rest(self, data: bytes, control_id: str, rest: memoryview) -> Ack:
        """The socket took part of the message: the rest within :attr:`timeout`, then the ACK."""
        self._lean = False
        try:
            self._send_rest(rest)
        except OSError as exc:
            return self._first_failed(data, control_id, self._send_failed(exc))
        return self._lean_on(data, control_id, None, None, time.monotonic() + self.timeout)

    def _lean_again(self) -> bool:
        """Whether the next round trip can take the lean path: plain TCP with kernel timeouts set
        to :attr:`timeout`, no frame queued, the decoder between frames (remembered until the
        general path runs again)."""
        self._lean = (self._sock is not None and self._kernel_timeouts and self._sock_timeout == self.timeout
                      and not self._frames and self._decoder.between_frames)
        return self._lean

    def _read_on(self, data: bytes, control_id: str, deadline: float) -> Ack:
        """The general read of the ACK, starting with ``data`` already received."""
        if not data:
            raise self._closed(control_id)
        self._answered = True
        self._frames.extend(self._decoder.feed(data))
        return self._read_ack(control_id, deadline)

    def _resend(self, data: bytes, control_id: str, first: KitError | None) -> Ack:
        """The attempts after a failed first one (``first``: its error), or all of them (None)."""
        if isinstance(first, NakError) and not self._retryable(first):
            raise first
        last: KitError | None = first
        for attempt in range(1 if first is None else 2, self.retry.max_attempts + 1):
            self.last_attempts = attempt
            if attempt > 1:
                time.sleep(self.retry.delay(attempt))
            try:
                if self._sock is None:
                    self._connect_within(self.retry.unreachable_wait)  # unreachable, TLS: final, not caught
                self._write(data)
                ack = self._read_ack(control_id)
            except (PeerTimeoutError, PeerDisconnectedError) as exc:
                self.close()
                last = exc
                continue
            if ack.code.is_positive:
                return ack
            last = self._nak(ack, control_id)
            if not self._retryable(last):
                raise last
        assert last is not None
        raise last

    def _nak(self, ack: Ack, control_id: str) -> NakError:
        return NakError(f"message {control_id} answered {ack.code.value}: "
                        f"{ack.error_text or ack.text or 'no reason given'}", ack_code=ack.code.value,
                        control_id=control_id, text=ack.error_text or ack.text, peer=self.peer)

    def _retryable(self, nak: NakError) -> bool:
        """AE/CE with ``retry_on_ae``; AR/CR never."""
        return nak.ack_code not in (AckCode.AR.value, AckCode.CR.value) and self.retry.retry_on_ae

    def send_many(self, messages: Iterable[str | bytes | Message], progress: bool = False) -> pl.DataFrame:
        """Send messages in order; one row per message, failures recorded rather than raised.

        Once the peer is unreachable (or the TLS handshake fails) the remaining
        messages are not tried: their rows say so (``attempts`` 0).

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
        gave_up: str | None = None
        for item in items:
            try:
                control_id = self._prepare(item)[1]
            except KitError as exc:
                rows.append({"control_id": None, "ack_code": None, "attempts": 0, "error": str(exc)})
                continue
            if gave_up is not None:
                rows.append({"control_id": control_id, "ack_code": None, "attempts": 0,
                             "error": f"not sent: {gave_up}"})
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
                if isinstance(exc, PeerUnreachableError | TLSError):
                    gave_up = f"{type(exc).__name__}: {exc}"
        return pl.DataFrame(rows, schema={"control_id": pl.String, "ack_code": pl.String,
                                          "attempts": pl.Int32, "error": pl.String})

    # -- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _prepare(message: str | bytes | Message) -> tuple[bytes, str]:
        """The MLLP frame of ``message`` and its MSH-10 (read once, here)."""
        if isinstance(message, Message):
            text = message.to_er7()
            control_id = message.control_id
        else:
            text = message if isinstance(message, str) else decode(message)
            if "\n" in text:
                text = text.replace("\r\n", "\r").replace("\n", "\r")
            text = text.strip("\x0b\x1c")
            if text[-1:] != "\r":
                text += "\r"
            control_id = _control_id(text)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: no wire can carry them
            raise HL7ParseError(f"message text is not valid Unicode: {exc.reason}") from exc
        if VT in data or FS in data:
            raise MLLPFramingError("message contains an MLLP block character (0x0B or 0x1C)")
        return VT + data + _END, control_id

    def _write(self, data: bytes) -> None:
        assert self._sock is not None
        try:
            if self._sock_timeout != self.timeout:
                self._set_timeout(self.timeout)
            if not self._kernel_timeouts:
                self._sock.sendall(data)  # Python's timeout bounds the whole call
            elif (sent := self._sock.send(data)) < len(data):
                self._send_rest(memoryview(data)[sent:])
        except OSError as exc:
            raise self._send_failed(exc) from exc

    def _send_failed(self, exc: OSError) -> PeerError:
        if isinstance(exc, TimeoutError | BlockingIOError):  # BlockingIOError: the kernel's SO_SNDTIMEO
            return PeerTimeoutError(f"send timed out after {self.timeout}s", peer=self.peer)
        return PeerDisconnectedError(f"connection lost while sending: {exc}", peer=self.peer)

    def _send_rest(self, rest: memoryview) -> None:
        """The rest of a message the socket did not take at once, within :attr:`timeout` in all (a
        peer that reads a byte now and then does not hold the sender longer)."""
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout
        while rest:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self._set_timeout(remaining)
            rest = rest[self._sock.send(rest):]

    def _read_ack(self, control_id: str, deadline: float | None = None) -> Ack:
        """The next ACK for ``control_id`` by ``deadline`` (default: :attr:`timeout` from now); ACKs
        for other ids (stale, from earlier attempts) are skipped."""
        self._lean = False  # the decoder and the socket's timeout may change: check again next time
        frames = self._frames
        first = deadline is None  # the first wait: the full timeout
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        while True:
            while frames:
                ack = self._ack_of(frames.popleft(), control_id)
                if ack is not None:
                    return ack
            if first:
                first = False
                if self._sock_timeout != self.timeout:
                    self._set_timeout(self.timeout)
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeoutError(f"no ACK for {control_id} within {self.timeout}s", peer=self.peer)
                self._set_timeout(remaining)
            data = self._recv(control_id)
            self._answered = True
            frames.extend(self._decoder.feed(data))

    def _recv(self, control_id: str) -> bytes:
        """One receive within the socket's timeout; typed errors for a timeout, a loss, an end."""
        assert self._sock is not None
        try:
            data = self._sock.recv(_READ_SIZE)
        except OSError as exc:
            raise self._recv_failed(exc, control_id) from exc
        if not data:
            raise self._closed(control_id)
        return data

    def _recv_failed(self, exc: OSError, control_id: str) -> KitError:
        if isinstance(exc, TimeoutError | BlockingIOError):  # BlockingIOError: the kernel's SO_RCVTIMEO
            return PeerTimeoutError(f"no ACK for {control_id} within {self.timeout}s", peer=self.peer)
        if isinstance(exc, ssl.SSLError):  # e.g. a TLS alert after the handshake (certificate required)
            return TLSError(f"TLS error waiting for the ACK: {exc}", peer=self.peer)
        return PeerDisconnectedError(f"connection lost waiting for the ACK: {exc}", peer=self.peer)

    def _closed(self, control_id: str) -> KitError:
        """The peer ended the connection before the ACK."""
        if self.ssl_context is not None and not self._answered:
            # A TLS 1.3 server that wants a client certificate completes the handshake and then
            # drops the connection (asyncio sends no alert). Resending cannot help: final.
            return TLSError("the peer closed a new TLS connection without answering; it may "
                            "require a client certificate (mutual TLS)", peer=self.peer)
        return PeerDisconnectedError(f"peer closed the connection before the ACK of {control_id}",
                                     peer=self.peer)

    def _ack_of(self, item: bytes | FrameError, control_id: str) -> Ack | None:
        """The ACK for ``control_id`` in one received frame, or None (logged: an error, not an ACK, stale)."""
        if isinstance(item, FrameError):
            log.warning("%s: %s", self.peer, item.detail)
            return None
        ack = fast_ack(item)
        if ack is None:
            ack = _as_ack(item)
            if ack is None:
                log.warning("%s sent a frame that is not an ACK; ignored", self.peer)
                return None
        if ack.control_id and ack.control_id != control_id and not _cut_echo(ack.control_id, control_id):
            log.info("%s: skipping ACK for %s while waiting for %s", self.peer, ack.control_id, control_id)
            return None
        return ack


def _control_id(text: str) -> str:
    """MSH-10 of an outgoing message: read from its first line when the delimiters are the
    standard ones and the value holds none of them (its full parse is the raw text); otherwise by a
    full parse. Only the header is read here: the peer judges the rest of the message."""
    end = text.find("\r")
    if end > 8 and text.startswith(_STANDARD_MSH):
        fields = text[:end].split("|", 10)  # fields[k] is MSH-(k+1)
        if len(fields) > 9:
            value = fields[9]
            if "^" not in value and "~" not in value and "\\" not in value and "&" not in value:
                return value
    return parse_message(text).control_id


def _cut_echo(msa2: str, control_id: str) -> bool:
    """Whether ``msa2`` is ``control_id`` cut to :data:`~kit.hl7.build.MAX_ECHO` characters, as the
    kit listener (and a peer bounding MSA-2 to HL7 v2.7's 199) echoes a longer one."""
    return len(control_id) > MAX_ECHO and msa2 == control_id[:MAX_ECHO]


def _as_ack(data: bytes) -> Ack | None:
    try:
        typed = parse_message(data).typed()
    except KitError:
        return None
    return typed if isinstance(typed, Ack) else None
