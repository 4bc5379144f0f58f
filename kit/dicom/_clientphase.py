"""The client's data phase (:meth:`PacsClient.store`, :meth:`PacsClient.get`): half the system calls.

:class:`ClientPhase` is :class:`kit.dicom._fastnet.DataPhase` with two changes
for the kit's own requests on a plain TCP socket:

- the socket runs in blocking mode with the timeout set in the kernel
  (``SO_RCVTIMEO``/``SO_SNDTIMEO``): a Python socket with a timeout polls
  before every ``recv`` and ``send``, a second system call each time;
- PDUs are cut out of reads of up to :data:`CHUNK` bytes, so a PDU header and
  its body, or a response and the next request, come in one ``recv``.

Bytes read past the last response (the peer sent something unasked, e.g. an
A-ABORT) are completed to whole PDUs and handed to pynetdicom on leaving, as if
it had read them itself. A TLS socket keeps DataPhase's own reads. Written by
hand (no library does it); the framing and limits are DataPhase's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from pynetdicom.association import Association

from kit.dicom._fastnet import DataPhase, pdu_limit, store_command, store_request, store_response
from kit.dicom._outgoing import Outgoing
from kit.errors import AssociationAbortedError, PeerTimeoutError

__all__ = ["CHUNK", "ClientPhase", "store_all"]

#: Bytes asked of the socket per read (a larger PDU is read into its own buffer).
CHUNK = 256 * 1024
#: What :meth:`ClientPhase.send_pieces` gathers before one send.
_SEND_BATCH = 4 * 1024 * 1024
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
    """

    def __init__(self, assoc: Association, timeout: float | None, peer: str, *, keep_raw: bool = False,
                 spill_dir: str | os.PathLike[str] | None = None, max_dataset: int | None = None) -> None:
        super().__init__(assoc, timeout, peer, keep_raw=keep_raw, spill_dir=spill_dir,
                         max_dataset=max_dataset)
        self._kernel = False
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._lo = self._hi = 0

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

    def _recv_into(self, view: memoryview, deadline: float | None = None) -> None:
        got, want = 0, len(view)
        while got < want:
            got += self._recv_some(view[got:])

    def _fill(self, need: int) -> None:
        """At least ``need`` (<= CHUNK) bytes buffered."""
        if self._hi - self._lo >= need:
            return
        if self._lo:
            rest = self._buf[self._lo:self._hi]
            self._buf[:len(rest)] = rest
            self._lo, self._hi = 0, len(rest)
        while self._hi - self._lo < need:
            self._hi += self._recv_some(self._view[self._hi:])

    def _recv_pdu(self) -> tuple[int, bytearray]:
        kind, length = self._recv_header()
        return kind, self._recv_body(length)

    def _recv_header(self) -> tuple[int, int]:
        """The next PDU's type and length (checked against the limit), its body not read yet."""
        self._fill(6)
        lo = self._lo
        self._header[:] = self._view[lo:lo + 6]
        kind, _reserved, length = _HEAD.unpack_from(self._buf, lo)
        limit = pdu_limit(kind, self.maximum)
        if length > limit:
            self._abort_transport(0x06)
            raise AssociationAbortedError(f"the peer sent a PDU of {length} bytes, more than the "
                                          f"{limit} negotiated: aborted", peer=self.peer)
        self._lo = lo + 6
        return kind, length

    def _recv_body(self, length: int) -> bytearray:
        """The body of the PDU whose header :meth:`_recv_header` read."""
        if length <= CHUNK:
            self._fill(length)
            lo = self._lo
            body = bytearray(self._view[lo:lo + length])
            self._lo = lo + length
            return body
        lo = self._lo
        body = bytearray(length)  # larger than the buffer: the rest straight into its own
        have = self._hi - lo
        body[:have] = self._view[lo:self._hi]
        self._lo = self._hi = 0
        self._recv_into(memoryview(body)[have:])
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
    for msg_id, one in enumerate(outgoing, start=1):
        context = accepted[(one.sop_class, one.transfer_syntax)]
        msg_id = msg_id & 0xFFFF or 1
        if one.in_pieces:
            if sent is not None:
                answered(sent, store_response(phase, sent.sop_instance))
            phase.send_pieces(context, store_command(msg_id, one.sop_class, one.sop_instance),
                              one.pieces(phase.fragment), one.file_size - one.offset)
            sent = one
            continue
        try:
            request = b"".join(store_request(phase, context, msg_id, one.sop_class, one.sop_instance,
                                             one.payload()))
        except BaseException:  # the previous answer first, even if this file went bad
            if sent is not None:
                answered(sent, store_response(phase, sent.sop_instance))
            raise
        if sent is not None:
            code = store_response(phase, sent.sop_instance)
            phase.send_parts((request,))
            answered(sent, code)
        else:
            phase.send_parts((request,))
        sent = one
    if sent is not None:
        answered(sent, store_response(phase, sent.sop_instance))
