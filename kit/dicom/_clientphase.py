"""The client's data phase (:meth:`PacsClient.store`, :meth:`PacsClient.get`): half the system calls.

:class:`ClientPhase` is :class:`kit.dicom._fastnet.DataPhase` with two changes
for the kit's own requests on a plain TCP socket:

- the socket runs in blocking mode with the timeout set in the kernel
  (``SO_RCVTIMEO``/``SO_SNDTIMEO``): a Python socket with a timeout polls
  before every ``recv`` and ``send``, a second system call each time;
- PDUs are cut out of reads of up to :data:`CHUNK` bytes, so a PDU header and
  its body, or a response and the next request, come in one ``recv``;
- a message whose PDUs all fit in that buffer (a C-GET's instances of up to a few
  hundred KB, every response) is read from it in one C call where ``kit/dicom/_getc.c``
  is built (:meth:`ClientPhase.recv`); anything that call does not take (another PDU,
  a malformed one, a set over its bound) is read again by DataPhase's own path, which
  raises as before.

A PDU must arrive whole within ``pdu_timeout`` seconds (by default the timeout)
of its first bytes, or the peer is sent A-ABORT and :class:`PeerTimeoutError`
raised: the timeout alone bounds each read, and a peer trickling a PDU a byte at
a time (within the timeout each) would hold a C-GET or C-STORE for ever. The
clock is read only when a PDU did not come whole with its first read; a read
that can outlast the deadline by at most :data:`OVERSHOOT` of the timeout (all
but a trickling peer's) is the plain blocking ``recv``, so the deadline costs no
system call; closer to the deadline a read waits in ``poll`` for what is left.

Bytes read past the last response (the peer sent something unasked, e.g. an
A-ABORT) are completed to whole PDUs and handed to pynetdicom on leaving, as if
it had read them itself. A TLS socket keeps DataPhase's own reads. Written by
hand (no library does it); the framing and limits are DataPhase's.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn

from pynetdicom.association import Association

from kit.dicom._fastnet import (
    MAX_COMMAND,
    DataPhase,
    Message,
    pdu_limit,
    store_command,
    store_request,
    store_response,
)
from kit.dicom._native import getc
from kit.dicom._outgoing import Outgoing
from kit.errors import AssociationAbortedError, DicomProtocolError, PeerTimeoutError

#: ``kit/dicom/_getc.c``'s message reader, or None: the Python path alone (:mod:`kit.dicom._native`)
_c_message = getc("message")

__all__ = ["CHUNK", "OVERSHOOT", "ClientPhase", "store_all"]

#: Bytes asked of the socket per read (a larger PDU is read into its own buffer).
CHUNK = 256 * 1024
#: What :meth:`ClientPhase.send_pieces` gathers before one send.
_SEND_BATCH = 4 * 1024 * 1024
#: The fraction of the timeout by which a read may outlast a PDU's deadline (:meth:`ClientPhase._recv_by`).
OVERSHOOT = 0.1
_HEAD = struct.Struct(">BBI")
_NO_TIMEOUT = struct.pack("@ll", 0, 0)


class ClientPhase(DataPhase):
    """:class:`~kit.dicom._fastnet.DataPhase` for the requestor's C-STORE/C-GET, reading in chunks.

    Parameters
    ----------
    assoc : Association
        An established association on which we are the requestor.
    timeout : float
        Seconds to wait for each read or write on the socket.
    peer : str
        The peer's address, for error messages.
    keep_raw, spill_dir, max_dataset
        As for :class:`~kit.dicom._fastnet.DataPhase`.
    pdu_timeout : float, optional
        Seconds within which a PDU must arrive whole once its first bytes have (a peer
        trickling it is sent A-ABORT, :class:`~kit.errors.PeerTimeoutError`); None: ``timeout``.
    """

    def __init__(self, assoc: Association, timeout: float | None, peer: str, *, keep_raw: bool = False,
                 spill_dir: str | os.PathLike[str] | None = None, max_dataset: int | None = None,
                 pdu_timeout: float | None = None) -> None:
        super().__init__(assoc, timeout, peer, keep_raw=keep_raw, spill_dir=spill_dir,
                         max_dataset=max_dataset, pdu_timeout=timeout if pdu_timeout is None else pdu_timeout)
        self._kernel = False
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0
        self._readable: select.poll | None = None  # made on the first read a deadline bounds

    def __enter__(self) -> ClientPhase:
        super().__enter__()
        sock = self._sock
        if type(sock) is socket.socket and self.timeout is not None:
            whole = int(self.timeout)
            micro = int((self.timeout - whole) * 1_000_000)
            if whole == 0 and micro == 0:
                micro = 1  # a zero timeval would mean no limit at all
            limit = struct.pack("@ll", whole, micro)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
                sock.settimeout(None)  # blocking: no poll before each call
                self._kernel = True
            except OSError:
                self._kernel_off(sock)
                sock.settimeout(self.timeout)
        return self

    @staticmethod
    def _kernel_off(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _NO_TIMEOUT)

    def _restore(self) -> None:
        if self._kernel and self._sock is not None:
            self._kernel_off(self._sock)
        self._kernel = False
        super()._restore()  # pynetdicom's own socket timeout back

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None and self._lo < self._hi:  # the peer sent more than was asked for
            try:
                raws: list[bytes] = []
                while self._lo < self._hi:
                    kind, body = self._recv_pdu()
                    raws.append(bytes(self._header) + bytes(body))
                self.hand_over(raws)
            except BaseException as err:
                super().__exit__(type(err), err, err.__traceback__)
                raise
        super().__exit__(exc_type, exc, tb)

    # -- receiving -------------------------------------------------------------------

    def recv(self) -> Message:
        """The next complete DIMSE message (:meth:`DataPhase.recv <kit.dicom._fastnet.DataPhase.recv>`).

        Where ``kit/dicom/_getc.c`` is built, a message that starts a PDU and whose PDUs all fit
        in the read buffer is cut out of it by one C call (``_getc.message``: the same command
        and data set as the Python path, tests/unit/dicom_store/test_getc.py); each PDU must still
        arrive whole within :attr:`pdu_timeout` of its first bytes, and the wait for a PDU's
        first bytes is bounded by the timeout alone, as on the Python path. Whatever the call
        does not take is left in the buffer, unread, for that path.
        """
        if _c_message is not None and not self._pdvs and not self.keep_raw:
            message = self._recv_c(_c_message)
            if message is not None:
                return message
        return super().recv()

    def _recv_c(self, cut: Callable[..., Any]) -> Message | None:
        """The next message by ``cut`` (``_getc.message``), reading as it asks; None: for the Python path."""
        limit = pdu_limit(0x04, self.maximum)
        max_data = -1 if self.max_dataset is None else self.max_dataset
        deadline, reading = None, -1  # the deadline of the PDU at offset `reading` from the message's start
        while True:
            got = cut(self._buf, self._lo, self._hi, limit, MAX_COMMAND, max_data, self.spill_at)
            if got is None:
                return None
            if len(got) == 4:
                self._lo = got[0]
                self.whole_pdus = True
                return Message(got[1], got[2], got[3])
            need, start = got
            if need > CHUNK:  # larger than the buffer: the Python path reads it into its own
                return None
            if start < 0:  # the next PDU's first bytes: an idle wait, bounded by the timeout
                deadline, reading = None, -1
                self._fill(self._hi - self._lo + 1)  # then its header is a PDU being read
            else:
                if start != reading:
                    deadline, reading = self._pdu_deadline(), start
                self._fill(need, deadline)

    def _recv_some(self, view: memoryview) -> int:
        """One read into ``view`` (at least one byte), errors mapped as DataPhase maps them."""
        sock = self._sock
        assert sock is not None
        try:
            n = sock.recv_into(view)
        except (BlockingIOError, TimeoutError) as exc:  # SO_RCVTIMEO (EAGAIN) or the socket timeout
            raise PeerTimeoutError(f"no response within {self.timeout:g}s", peer=self.peer) from exc
        except OSError as exc:
            raise AssociationAbortedError(f"connection lost: {exc}", peer=self.peer) from exc
        if n == 0:
            raise AssociationAbortedError("the peer closed the connection", peer=self.peer)
        return n

    def _recv_by(self, view: memoryview, deadline: float) -> int:
        """One read into ``view`` (at least one byte) before ``deadline`` (a :func:`time.monotonic`
        time; past it: A-ABORT, :class:`PeerTimeoutError`), and within the timeout as ever.

        While nearly the whole timeout is left (all but :data:`OVERSHOOT` of it) this is the
        plain blocking read, bounded by the timeout alone: it may end that much past the deadline.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            self._pdu_late()
        timeout = self.timeout
        if timeout is not None and left >= timeout * (1 - OVERSHOOT):  # a plain read: ends in time enough
            return self._recv_some(view)
        if not self._kernel:  # a Python timeout (TLS): set to what is left of the deadline
            return self._recv_timed(view, deadline)
        return self._recv_polled(view, deadline)

    def _recv_polled(self, view: memoryview, deadline: float) -> int:
        """One read on a blocking socket with its timeout in the kernel, waiting in ``poll`` at most
        until ``deadline`` (past it: A-ABORT, :class:`PeerTimeoutError`) and the timeout."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                n = sock.recv_into(view, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self._wait_readable(deadline)
                continue
            except OSError as exc:
                raise AssociationAbortedError(f"connection lost: {exc}", peer=self.peer) from exc
            if n == 0:
                raise AssociationAbortedError("the peer closed the connection", peer=self.peer)
            return n

    def _wait_readable(self, deadline: float) -> None:
        """Wait until the socket is readable, at most min(the deadline's remainder, timeout)."""
        left = deadline - time.monotonic()
        if left <= 0:
            self._pdu_late()
        wait = left if self.timeout is None else min(left, self.timeout)
        if self._readable is None:
            assert self._sock is not None
            self._readable = select.poll()
            self._readable.register(self._sock.fileno(), select.POLLIN)
        if self._readable.poll(max(1, math.ceil(wait * 1000))):
            return  # readable, closed or failed: the next read says which
        if time.monotonic() >= deadline:
            self._pdu_late()
        raise PeerTimeoutError(f"no response within {self.timeout:g}s", peer=self.peer)

    def _recv_timed(self, view: memoryview, deadline: float) -> int:
        """One read on a socket with a Python timeout (TLS), bounded by the deadline too."""
        sock = self._sock
        assert sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            self._pdu_late()
        sock.settimeout(left if self.timeout is None else min(left, self.timeout))
        try:
            return ClientPhase._recv_some(self, view)  # not a subclass's (it may call this one)
        except PeerTimeoutError:
            if time.monotonic() >= deadline:
                self._pdu_late()
            raise
        finally:
            with contextlib.suppress(OSError):
                sock.settimeout(self.timeout)

    def _pdu_late(self) -> NoReturn:
        """A PDU's deadline passed: A-ABORT, shut the connection down, raise."""
        self._abort_transport(0x00)
        raise PeerTimeoutError(f"a PDU did not arrive whole within {self.pdu_timeout:g}s", peer=self.peer)

    def _recv_into(self, view: memoryview, deadline: float | None = None) -> None:
        """Fill ``view``, each read within the timeout and, given a ``deadline``, all before it."""
        got, want = 0, len(view)
        while got < want:
            got += self._recv_some(view[got:]) if deadline is None else self._recv_by(view[got:], deadline)

    def _fill(self, need: int, deadline: float | None = None) -> None:
        """At least ``need`` (<= CHUNK) bytes buffered (given a ``deadline``, before it)."""
        if self._hi - self._lo >= need:
            return
        if self._lo:
            rest = self._buf[self._lo:self._hi]
            self._buf[:len(rest)] = rest
            self._lo, self._hi = 0, len(rest)
        while self._hi - self._lo < need:
            view = self._view[self._hi:]
            self._hi += self._recv_some(view) if deadline is None else self._recv_by(view, deadline)

    def _recv_pdu(self) -> tuple[int, bytearray]:
        """The next PDU, whole within :attr:`pdu_timeout` of its first bytes.

        The deadline is set only when the PDU did not come whole with the read that
        brought its first bytes (or with what was buffered): otherwise it costs a comparison.
        """
        deadline = None
        have = self._hi - self._lo
        if have < 6:
            self._fill(have + 1)  # the idle wait: up to the timeout for the next bytes
            if self._hi - self._lo < 6:  # a header in pieces: the rest within the deadline
                deadline = self._pdu_deadline()
                self._fill(6, deadline)
        kind, length = self._recv_header()
        lo = self._lo
        if self._hi - lo >= length:  # the body came with the header
            self._lo = lo + length
            return kind, bytearray(self._view[lo:lo + length])
        if deadline is None:
            deadline = self._pdu_deadline()
        return kind, self._recv_body(length, deadline)

    def _pdu_deadline(self) -> float | None:
        return None if self.pdu_timeout is None else time.monotonic() + self.pdu_timeout

    def _recv_header(self) -> tuple[int, int]:
        """The next PDU's type and length (checked against the limit), its body not read yet."""
        self._fill(6)
        lo = self._lo
        self._header[:] = self._view[lo:lo + 6]
        kind, _reserved, length = _HEAD.unpack_from(self._buf, lo)
        limit = pdu_limit(kind, self.maximum)
        if length > limit:
            self._abort_transport(0x06)
            raise DicomProtocolError(f"the peer sent a PDU of {length} bytes, more than the "
                                     f"{limit} negotiated: aborted", peer=self.peer)
        self._lo = lo + 6
        return kind, length

    def _recv_body(self, length: int, deadline: float | None = None) -> bytearray:
        """The body of the PDU whose header :meth:`_recv_header` read (given a ``deadline``, before it)."""
        if length <= CHUNK:
            self._fill(length, deadline)
            lo = self._lo
            body = bytearray(self._view[lo:lo + length])
            self._lo = lo + length
            return body
        lo = self._lo
        body = bytearray(length)  # larger than the buffer: the rest straight into its own
        have = self._hi - lo
        body[:have] = self._view[lo:self._hi]
        self._lo = self._hi = 0
        self._recv_into(memoryview(body)[have:], deadline)
        return body

    # -- sending ---------------------------------------------------------------------

    def send_pieces(self, context_id: int, command: bytes, pieces: Iterable[bytes], size: int) -> None:
        """Send one DIMSE message whose data set of ``size`` bytes comes in ``pieces`` (each at most
        :attr:`fragment` bytes, read as they go), a few MiB at a time: memory does not grow with
        the data set. A piece source that fails mid-message leaves the stream cut: the caller's
        phase aborts (its ``__exit__``)."""
        batch = self.frame(context_id, command)
        held, sent = 0, 0
        for piece in pieces:
            sent += len(piece)
            n = len(piece) + 2
            control = 0x02 if sent >= size else 0x00  # the last fragment of the data set
            batch.append(struct.pack(">BBIIBB", 0x04, 0x00, n + 4, n, context_id, control))
            batch.append(piece)
            held += n + 4
            if held >= _SEND_BATCH:
                self._sendall(batch)
                batch, held = [], 0
        if sent != size:
            raise AssociationAbortedError(f"a data set of {sent} bytes, not the {size} announced",
                                          peer=self.peer)
        self._sendall(batch)

    def _sendall(self, parts: Sequence[bytes | memoryview]) -> None:
        if not self._kernel:
            super()._sendall(parts)
            return
        sock = self._sock
        assert sock is not None
        try:
            sock.sendall(b"".join(parts))
        except (BlockingIOError, TimeoutError) as exc:  # SO_SNDTIMEO
            raise PeerTimeoutError(f"could not send within {self.timeout:g}s", peer=self.peer) from exc
        except OSError as exc:
            raise AssociationAbortedError(f"connection lost while sending: {exc}",
                                          peer=self.peer) from exc


def store_all(phase: ClientPhase, outgoing: Sequence[Outgoing], accepted: Mapping[tuple[str, str], int],
              answered: Callable[[Outgoing, int], None]) -> None:
    """C-STORE every instance on ``phase`` (:meth:`~kit.dicom.dimse.PacsClient.store`), calling
    ``answered(item, status)`` for each as its response is in; ``accepted`` maps (SOP class,
    transfer syntax) to the context ID.

    Lockstep as ever (one request outstanding), but each request is built (in one buffer) while
    the peer still stores the previous one, and sent as soon as its answer is in; the bookkeeping
    of that answer follows. A large file (:attr:`Outgoing.in_pieces`) is sent from the file as it
    is read instead, after the previous answer.
    """
    sent: Outgoing | None = None
    sent_id = 0  # the Message ID of ``sent``'s request

    def status() -> int:
        assert sent is not None
        return store_response(phase, sent_id, sent.sop_instance)

    for msg_id, one in enumerate(outgoing, start=1):
        context = accepted[(one.sop_class, one.transfer_syntax)]
        msg_id = msg_id & 0xFFFF or 1
        if one.in_pieces:
            if sent is not None:
                answered(sent, status())
            phase.send_pieces(context, store_command(msg_id, one.sop_class, one.sop_instance),
                              one.pieces(phase.fragment), one.file_size - one.offset)
            sent, sent_id = one, msg_id
            continue
        try:
            request = b"".join(store_request(phase, context, msg_id, one.sop_class, one.sop_instance,
                                             one.payload()))
        except BaseException:  # the previous answer first, even if this file went bad
            if sent is not None:
                answered(sent, status())
            raise
        if sent is not None:
            code = status()
            phase.send_parts((request,))
            answered(sent, code)
        else:
            phase.send_parts((request,))
        sent, sent_id = one, msg_id
    if sent is not None:
        answered(sent, status())
