"""The DIMSE data phase on the caller's thread: direct socket I/O on an established association.

pynetdicom negotiates and releases the association; for a bulk C-STORE or a
C-GET (the client, :func:`store_response`, :func:`c_get`) and for incoming C-STORE and
C-ECHO (the embedded PACS, via :class:`DataPhase` with ``keep_raw``) the kit
then reads and writes the P-DATA-TF PDUs itself on one thread. Stock
pynetdicom moves every PDU through two reactor threads and four queues, polls
them with 1 ms sleeps and encodes every command set with pydicom: about 2 ms
per instance on loopback, where dcmtk needs 0.3 ms.

Written by hand here (no library does it): the P-DATA-TF framing (PS3.8
9.3.5) and the hand-back of received PDUs to pynetdicom; the command-set codec
is :mod:`kit.dicom._command`. Everything that
touches pynetdicom internals is in :class:`DataPhase`, :func:`hold_dul` and
:func:`share_context_uids`, checked against pynetdicom 3.0.4
(``Association._reactor_checkpoint`` / ``_is_paused``,
``DULServiceProvider._is_transport_event`` / ``_run_loop_delay`` /
``_idle_timer`` / ``_decode_pdu`` / ``_recv_pdu`` / ``event_queue`` /
``state_machine``, ``AssociationSocket.socket``, the server's per-association
``deepcopy`` of ``contexts``).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from kit.dicom._command import (
    C_GET_RQ,
    C_GET_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATASET,
    command_int,
    command_str,
    decode_command,
    encode_command,
    status_fields,
)
from kit.dicom._filemeta import PREAMBLE, encode_file_meta
from kit.dicom._spill import SPILL_AT, Spill
from kit.dicom.received import CANNOT_UNDERSTAND
from kit.errors import AssociationAbortedError, DicomProtocolError, PeerTimeoutError, StoreError

__all__ = [
    "HOLD_PARK", "MAX_COMMAND", "MAX_RQ_PDU", "PDU_SLACK", "UNLIMITED_PDU_CAP",
    "DataPhase", "FileReceiver", "Message", "PduInterrupt", "abort_pdu", "c_get", "hold_dul",
    "check_get_rsp", "store_command", "store_request", "store_response", "instance_file_name", "pdu_limit",
    "release_dul", "share_context_uids",
]

_PDV_HEADER = 6  # item length (4), presentation context ID (1), message control header (1)
_UNLIMITED_FRAGMENT = 1 << 22  # fragment size when the peer sets no maximum PDU length

#: Largest A-ASSOCIATE-RQ/AC/RJ accepted (128 contexts x ~80 transfer syntaxes fit).
MAX_RQ_PDU = 256 * 1024
#: Bytes tolerated above the negotiated Maximum Length (peers that count PDV headers in it).
PDU_SLACK = 1024
#: The P-DATA-TF bound when we negotiated no Maximum Length (0 = "unlimited").
UNLIMITED_PDU_CAP = 64 * 1024 * 1024
#: Bytes of one command set (they have a few hundred): more is not a DIMSE peer.
MAX_COMMAND = 1 << 20


def pdu_limit(kind: int, maximum: int) -> int:
    """The largest PDU length field accepted for PDU type ``kind``, given the Maximum
    Length Received we negotiated (``maximum``; 0 = unlimited, bounded all the same)."""
    if kind in (0x01, 0x02, 0x03):
        return MAX_RQ_PDU
    if kind == 0x04:
        return (maximum if maximum > 0 else UNLIMITED_PDU_CAP) + PDU_SLACK
    return 64  # A-RELEASE-RQ/RP and A-ABORT carry 4 bytes


def abort_pdu(reason: int, source: int = 0x02) -> bytes:
    """An A-ABORT PDU (PS3.8 9.3.8); source 2 = service provider, reason e.g. 0x06
    invalid PDU parameter value, 0x02 unexpected PDU, 0x00 not specified."""
    return struct.pack(">BBIBBBB", 0x07, 0x00, 4, 0x00, 0x00, source, reason)


class PduInterrupt(AssociationAbortedError):
    """A PDU other than P-DATA-TF arrived (A-RELEASE-RQ, A-ABORT...); ``raw`` holds its bytes."""

    def __init__(self, message: str, *, peer: str | None, kind: int, raw: bytes) -> None:
        super().__init__(message, peer=peer)
        self.kind, self.raw = kind, raw


class Message:
    """One received DIMSE message: its presentation context, command set and data set bytes."""

    __slots__ = ("command", "context_id", "dataset")

    def __init__(self, context_id: int, command: dict[int, bytes],
                 dataset: bytes | memoryview | None) -> None:
        self.context_id = context_id
        self.command = command
        self.dataset = dataset

    @property
    def command_field(self) -> int:
        """(0000,0100) Command Field."""
        return command_int(self.command, 0x0100) or 0


#: Seconds the DUL reactor parks in each check while a data phase holds it (it sees an abort
#: queued by another thread, or its association leaving Sta6, at most this late; the end of the
#: data phase wakes it at once).
HOLD_PARK = 0.05


class _Hold:
    """The DUL reactor's socket check while held: parks the reactor thread until released."""

    def __init__(self, dul: Any) -> None:
        self.dul = dul
        self.original = type(dul)._is_transport_event
        self.idle = threading.Event()
        self.wake = threading.Event()
        self.park = False  # only in a data phase: before it, pynetdicom still sends the A-ASSOCIATE-AC

    def __call__(self) -> bool:  # replaces DULServiceProvider._is_transport_event
        dul = self.dul
        if dul.state_machine.current_state != "Sta6":  # aborted or releasing: pynetdicom's again
            return bool(self.original(dul))
        if not dul.event_queue.empty():
            # The reactor takes an event off this queue right after this check, in this same loop:
            # a PDU it read before the hold. Idle only once it has been handled: otherwise the fast
            # path could look (no message under way, queues empty) while pynetdicom decodes it, and
            # the two would split one message between them (under load: no C-STORE-RSP, a 10 s stall).
            return False
        self.idle.set()
        if self.park:  # parked rather than polled: no wake-ups every few ms for each association,
            self.wake.wait(HOLD_PARK)  # and the hand-back (release_dul) wakes it at once
        return False


def hold_dul(assoc: Association, *, park: bool = False) -> threading.Event:
    """Stop the DUL reactor reading the socket; the event is set once it has stopped.

    The reactor sends everything queued before it checks the socket again, so
    once set, it will neither read nor write until the hold is lifted, unless
    the association leaves the data transfer state (Sta6), e.g. aborted by
    another thread: then it reads as usual to see the connection close.
    Holding an association already held returns the same event. With ``park``
    (a data phase, nothing left for pynetdicom to send) the reactor thread waits
    in its check instead of polling, until :func:`release_dul` wakes it.
    """
    dul = assoc.dul
    hold = vars(dul).get("_is_transport_event")
    if not isinstance(hold, _Hold):
        hold = _Hold(dul)
        dul._is_transport_event = hold  # type: ignore[method-assign]
    hold.park = hold.park or park
    return hold.idle


def release_dul(assoc: Association) -> None:
    """Lift :func:`hold_dul` (idempotent): pynetdicom's reactor reads the socket again at once."""
    hold = vars(assoc.dul).pop("_is_transport_event", None)
    if isinstance(hold, _Hold):
        hold.wake.set()


class DataPhase:
    """Own an established association's socket for a run of DIMSE messages.

    On entry the association reactor is paused (as pynetdicom's own
    ``send_c_store`` does) and the DUL reactor stops reading the socket,
    confirmed by the reactor itself, so no PDU is read twice. On exit both
    resume with the idle timer restarted; if the block raised, the
    association is aborted (the stream may be mid-message).

    Parameters
    ----------
    assoc : Association
        An established association on which we are the requestor.
    timeout : float
        Seconds to wait for each read or write on the socket.
    peer : str
        The peer's address, for error messages.
    pdu_timeout : float, optional
        Seconds within which a PDU must arrive whole once its first bytes have (a
        peer trickling a PDU is aborted); None: only ``timeout`` per read.

    keep_raw : bool
        Keep the raw PDUs of each message in :attr:`raw` (to hand it to pynetdicom);
        not those of a data set past ``SPILL_AT`` (:attr:`raw` is None then).
    spill_dir : str or path-like, optional
        Where a data set past :data:`~kit.dicom._spill.SPILL_AT` bytes is kept while
        it arrives (:class:`~kit.dicom._spill.Spill`); None: the system's temporary folder.
    max_dataset : int, optional
        Bytes one data set may have; a peer sending more is answered with A-ABORT
        (None: no bound but the disk's).

    A received PDU longer than our negotiated Maximum Length (:func:`pdu_limit`) is
    answered with A-ABORT and the connection shut down before its body is read, and
    so is a command set over :data:`MAX_COMMAND` bytes. A message's data set is
    held in memory up to ``SPILL_AT`` bytes, then on disk: :attr:`Message.dataset` is
    then a read-only memoryview of a memory-mapped file.
    """

    def __init__(self, assoc: Association, timeout: float | None, peer: str, *,
                 keep_raw: bool = False, pdu_timeout: float | None = None,
                 spill_dir: str | os.PathLike[str] | None = None, max_dataset: int | None = None) -> None:
        self.assoc, self.timeout, self.peer = assoc, timeout, peer
        self.pdu_timeout = pdu_timeout
        self.keep_raw, self.spill_dir, self.max_dataset = keep_raw, spill_dir, max_dataset
        self.spill_at = SPILL_AT
        other, own = (assoc.acceptor, assoc.requestor) if assoc.is_requestor else (assoc.requestor,
                                                                                 assoc.acceptor)
        limit = int(other.maximum_length or 0)  # the peer's Maximum Length Received
        self.fragment = (limit - _PDV_HEADER) if limit > _PDV_HEADER else _UNLIMITED_FRAGMENT
        self.maximum = int(own.maximum_length or 0)  # ours: what the peer may send
        self._sock: socket.socket | None = None
        self._old_timeout: float | None = None
        self._old_delay: float | None = None  # set on entry; _restore may run before (a failed entry)
        self._header = bytearray(6)
        self._pdvs: collections.deque[tuple[int, int, bytes]] = collections.deque()
        #: The PDUs read for the current message, when ``keep_raw`` (to hand it to pynetdicom).
        self.raw: list[bytes] | None = [] if keep_raw else None
        self.whole_pdus = True
        self.restart_idle_timer = True

    # -- entering and leaving --------------------------------------------------------

    def __enter__(self) -> DataPhase:
        assoc, dul = self.assoc, self.assoc.dul
        wait = self.timeout if self.timeout is not None else 30.0
        if assoc.is_requestor:  # the association reactor runs on its own thread: pause it
            deadline = time.monotonic() + wait
            assoc._reactor_checkpoint.clear()
            while not assoc._is_paused:
                if not assoc.is_established or time.monotonic() > deadline:
                    assoc._reactor_checkpoint.set()
                    raise AssociationAbortedError("the association ended before the transfer",
                                                  peer=self.peer)
                time.sleep(0.0001)
        idle = hold_dul(assoc, park=True)
        if not idle.wait(wait) or dul.socket is None or dul.socket.socket is None:
            self._restore()
            raise AssociationAbortedError("the association's network loop stopped", peer=self.peer)
        self._old_delay = dul._run_loop_delay
        # it parks in the held check (_Hold); 1 ms only bounds its loop should the association
        # leave Sta6 (aborted) before we are done
        dul._run_loop_delay = 0.001
        self._sock = dul.socket.socket
        self._old_timeout = self._sock.gettimeout()
        self._sock.settimeout(self.timeout)
        return self

    def _restore(self) -> None:
        dul = self.assoc.dul
        if self._old_delay:
            dul._run_loop_delay = self._old_delay
        release_dul(self.assoc)
        if self._sock is not None:
            try:
                self._sock.settimeout(self._old_timeout)
            except OSError:
                pass
        if self.restart_idle_timer:
            dul._idle_timer.restart()
        self.assoc._reactor_checkpoint.set()

    def hand_over(self, raws: Sequence[bytes]) -> None:
        """Give received PDUs to pynetdicom's DUL as if it had read them (call before leaving)."""
        dul = self.assoc.dul
        for raw in raws:
            pdu, event = dul._decode_pdu(bytearray(raw))
            dul._recv_pdu.put(pdu)  # before the event: the state machine takes the PDU for it
            dul.event_queue.put(event)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._restore()
        if exc is not None and self.assoc.is_established:
            self.assoc.abort(block=self.assoc.is_requestor)

    # -- sending ---------------------------------------------------------------------

    def send(self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None) -> None:
        """Send one DIMSE message (command set, then data set if any) in P-DATA-TF PDUs."""
        self._sendall(self.frame(context_id, command, dataset))

    def frame(self, context_id: int, command: bytes,
              dataset: bytes | memoryview | None = None) -> list[bytes | memoryview]:
        """One DIMSE message as P-DATA-TF PDUs (header and fragment parts), not sent yet."""
        parts: list[bytes | memoryview] = []
        self._fragments(parts, context_id, command, 0x01)
        if dataset is not None:
            self._fragments(parts, context_id, memoryview(dataset), 0x00)
        return parts

    def _fragments(self, parts: list[bytes | memoryview], context_id: int, data: bytes | memoryview,
                   kind: int) -> None:
        size, step = len(data), self.fragment
        pos = 0
        while True:
            chunk = data[pos:pos + step]
            pos += len(chunk)
            control = kind | (0x02 if pos >= size else 0x00)
            n = len(chunk) + 2
            parts.append(struct.pack(">BBIIBB", 0x04, 0x00, n + 4, n, context_id, control))
            parts.append(chunk)
            if pos >= size:
                return

    def send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send a message :meth:`frame` built."""
        self._sendall(parts)

    def _sendall(self, parts: Sequence[bytes | memoryview]) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(b"".join(parts))
        except TimeoutError as exc:
            raise PeerTimeoutError(f"could not send within {self.timeout:g}s", peer=self.peer) from exc
        except (OSError, ssl.SSLError) as exc:
            raise AssociationAbortedError(f"connection lost while sending: {exc}",
                                          peer=self.peer) from exc

    # -- receiving -------------------------------------------------------------------

    def _recv_into(self, view: memoryview, deadline: float | None = None) -> None:
        sock = self._sock
        assert sock is not None
        got, want = 0, len(view)
        try:
            while got < want:
                if deadline is not None:  # the rest of a PDU: within its deadline
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    sock.settimeout(min(left, self.timeout) if self.timeout is not None else left)
                n = sock.recv_into(view[got:], want - got)
                if n == 0:
                    raise AssociationAbortedError("the peer closed the connection", peer=self.peer)
                got += n
        except TimeoutError as exc:
            if deadline is not None and time.monotonic() >= deadline:
                self._abort_transport(0x00)
                raise PeerTimeoutError(f"a PDU did not arrive whole within {self.pdu_timeout:g}s",
                                       peer=self.peer) from exc
            raise PeerTimeoutError(f"no response within {self.timeout:g}s", peer=self.peer) from exc
        except (OSError, ssl.SSLError) as exc:
            raise AssociationAbortedError(f"connection lost: {exc}", peer=self.peer) from exc
        finally:
            if deadline is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(self.timeout)

    def _abort_transport(self, reason: int) -> None:
        """Send A-ABORT on the socket we own and shut it down (its stream is unusable)."""
        sock = self._sock
        assert sock is not None
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.settimeout(1.0)
            sock.sendall(abort_pdu(reason))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _recv_pdu(self) -> tuple[int, bytearray]:
        self._recv_into(memoryview(self._header))
        kind, _reserved, length = struct.unpack(">BBI", self._header)
        limit = pdu_limit(kind, self.maximum)
        if length > limit:
            self._abort_transport(0x06)
            raise DicomProtocolError(f"the peer sent a PDU of {length} bytes, more than the "
                                     f"{limit} negotiated: aborted", peer=self.peer)
        body = bytearray(length)
        if length:
            deadline = None if self.pdu_timeout is None else time.monotonic() + self.pdu_timeout
            self._recv_into(memoryview(body), deadline)
        return kind, body

    def _next_pdv(self) -> tuple[int, int, bytes]:
        """The next PDV (context ID, message control header, fragment), reading PDUs as needed."""
        while not self._pdvs:
            kind, body = self._recv_pdu()
            if self.raw is not None or kind != 0x04:
                raw = bytes(self._header) + bytes(body)
                if self.raw is not None:
                    self.raw.append(raw)
            if kind == 0x07:
                raise PduInterrupt("the peer aborted the association (A-ABORT)", peer=self.peer,
                                   kind=kind, raw=raw)
            if kind != 0x04:
                raise PduInterrupt(f"unexpected PDU type 0x{kind:02X} during a transfer",
                                   peer=self.peer, kind=kind, raw=raw)
            pos, end = 0, len(body)
            view = memoryview(body)
            while pos < end:
                if pos + _PDV_HEADER > end:
                    self._malformed("malformed P-DATA-TF PDU")
                length, cx, control = struct.unpack_from(">IBB", body, pos)
                stop = pos + 4 + length
                if length < 2 or stop > end:
                    self._malformed("malformed P-DATA-TF PDU")
                self._pdvs.append((cx, control, bytes(view[pos + _PDV_HEADER:stop])))
                pos = stop
        return self._pdvs.popleft()

    def recv(self) -> Message:
        """The next complete DIMSE message from the peer.

        Raises
        ------
        AssociationAbortedError
            A-ABORT, A-RELEASE-RQ, a closed connection, a malformed PDU, or a command set
            or data set over its bound (the peer is sent A-ABORT).
        PeerTimeoutError
            Nothing arrived within ``timeout``.
        kit.errors.StoreError
            A data set past ``SPILL_AT`` bytes could not be kept on disk (aborted too).
        """
        self.whole_pdus = not self._pdvs  # the message starts a PDU (see raw)
        if self.keep_raw:
            self.raw = []
        command: list[bytes] = []
        data: list[bytes] = []
        size = 0  # of the command set, then of the data set
        spill: Spill | None = None
        context: int | None = None
        decoded: dict[int, bytes] | None = None
        try:
            while True:
                cx, control, fragment = self._next_pdv()
                if context is not None and cx != context:
                    self._malformed("presentation context changed within a message")
                context = cx
                size += len(fragment)
                if control & 0x01:
                    if decoded is not None:
                        self._malformed("command fragment after the command set")
                    if size > MAX_COMMAND:
                        self._too_large("command set", MAX_COMMAND)
                    command.append(fragment)
                    if control & 0x02:
                        try:
                            decoded = decode_command(b"".join(command))
                        except ValueError as exc:
                            self._malformed(str(exc), exc)
                        if command_int(decoded, 0x0800) == NO_DATASET:
                            return Message(cx, decoded, None)
                        size = 0
                else:
                    if decoded is None:
                        self._malformed("data fragment before the command set")
                    if self.max_dataset is not None and size > self.max_dataset:
                        self._too_large("data set", self.max_dataset)
                    if spill is not None:
                        spill.write(fragment)
                    elif size > self.spill_at:  # on to disk, and no raw copy of it kept
                        data.append(fragment)
                        self.raw = None
                        spill, data = Spill(self.spill_dir, data), []
                    else:
                        data.append(fragment)
                    if control & 0x02:
                        if spill is not None:
                            return Message(cx, decoded, spill.finish())
                        return Message(cx, decoded, data[0] if len(data) == 1 else b"".join(data))
        except BaseException as exc:
            if spill is not None:
                spill.close()
            if isinstance(exc, StoreError):  # the rest of the data set has nowhere to go
                self._abort_transport(0x00)
            raise

    def _too_large(self, what: str, limit: int) -> NoReturn:
        self._malformed(f"the peer sent a {what} of more than {limit:,} bytes: aborted")

    def _malformed(self, reason: str, cause: Exception | None = None) -> NoReturn:
        """A-ABORT to the peer (the stream cannot be read on), then the error."""
        self._abort_transport(0x00)
        raise DicomProtocolError(reason, peer=self.peer) from cause


def instance_file_name(sop_uid: str) -> str:
    """``<sop_uid>.dcm``, the name a received instance is stored under in its folder.

    Raises ValueError for a UID that cannot name a file there (empty, a path, hidden, a NUL,
    too long for a file name) or that lost bytes outside ASCII when decoded (U+FFFD: two
    instances would share a file).
    """
    if not sop_uid or "/" in sop_uid or sop_uid.startswith(".") or "\ufffd" in sop_uid or "\x00" in sop_uid \
            or len(sop_uid.encode()) > 251:  # 255 bytes with ".dcm"
        raise ValueError(f"unusable SOP Instance UID {sop_uid[:80]!r}{'...' if len(sop_uid) > 80 else ''}")
    return f"{sop_uid}.dcm"


class FileReceiver:
    """Writes received C-STORE data sets to ``dest/<SOPInstanceUID>.dcm`` without decoding them
    (temporary name, then rename); also an EVT_C_STORE handler for pynetdicom.

    ``rows`` holds (sop_instance_uid, sop_class_uid, transfer_syntax_uid, study_uid, path,
    size) per file written; ``errors`` the local write failures (answered 0xA700). ``expect``
    (:class:`kit.dicom._getphase.Expected`; None: all kept) may refuse an instance before it is written.
    """

    def __init__(self, dest: Path, study_uid: str | None, on_file: Callable[[], None] | None) -> None:
        self.dest = dest
        self.study_uid = study_uid
        self.rows: list[tuple[str, str, str, str | None, str, int]] = []
        self.errors: list[str] = []
        self.expect: Callable[[str, str, bytes | memoryview], tuple[int, str]] | None = None
        self.on_file = on_file
        self.lock = threading.Lock()
        self._names = itertools.count()
        self._tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._spare: tuple[str, int] | None = None

    def _temp(self) -> tuple[str, int]:
        """A new temporary file in ``dest``: a unique name without tempfile's random retries
        (O_EXCL still guards), and its descriptor."""
        tmp = os.path.join(self.dest, f".recv-{self._tag}-{next(self._names)}.part")
        return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def prepare(self) -> None:
        """Create the next temporary file now (C-GET, one thread: while the PACS sends the next
        instance), so creating it, slow on a busy disk, is not between receiving an instance
        and answering for it. A failure here is left to :meth:`write` to meet and report."""
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = self._temp()

    def discard(self) -> None:
        """Remove the temporary file :meth:`prepare` made if nothing used it (idempotent)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(OSError):
                os.close(spare[1])
            with contextlib.suppress(OSError):
                os.unlink(spare[0])

    def __call__(self, event: evt.Event) -> int:
        """EVT_C_STORE handler (C-MOVE's storage SCP)."""
        request: Any = event.request
        data = request.DataSet
        if data is None or not data.getbuffer().nbytes:
            return self._refuse(str(request.AffectedSOPInstanceUID))
        if self.expect is not None and (refused := self.expect(
                str(request.AffectedSOPInstanceUID), str(event.context.transfer_syntax), data.getvalue())[0]):
            return refused
        try:
            blob = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # a handler must answer with a status, never raise
            return self._failed(exc)
        return self._write(str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID),
                           str(event.context.transfer_syntax), [blob])

    def store(self, sop_class: str, sop_uid: str, transfer_syntax: str, dataset: bytes | memoryview,
              calling: str) -> tuple[int, str]:
        """:meth:`write` as a :data:`kit.dicom._storeserve.StoreFn` (C-MOVE's storage SCP)."""
        refused, why = self.expect(sop_uid, transfer_syntax, dataset) if self.expect and dataset \
            else (0, "")
        return (refused, why[:64]) if refused else (self.write(sop_uid, sop_class, transfer_syntax, dataset),
                                                    "")

    def write(self, sop_uid: str, sop_class: str, transfer_syntax: str, dataset: bytes | memoryview) -> int:
        """Write one received data set (encoded, without file meta) as a Part 10 file; its status
        (0xC000 for an empty one, which is not written)."""
        if not dataset:
            return self._refuse(sop_uid)
        meta = encode_file_meta({
            "MediaStorageSOPClassUID": sop_class, "MediaStorageSOPInstanceUID": sop_uid,
            "TransferSyntaxUID": transfer_syntax, "ImplementationClassUID": PYNETDICOM_IMPLEMENTATION_UID,
            "ImplementationVersionName": PYNETDICOM_IMPLEMENTATION_VERSION})
        return self._write(sop_uid, sop_class, transfer_syntax, [PREAMBLE, meta, dataset])

    def _refuse(self, sop_uid: str) -> int:
        """A C-STORE with no data set: kept in ``errors``, answered 0xC000 (cannot understand);
        not written (a file of the file meta alone is no instance)."""
        with self.lock:
            self.errors.append(f"the PACS sent {sop_uid!r} with no data set (answered 0xC000, not written)")
        return CANNOT_UNDERSTAND

    def _failed(self, exc: Exception) -> int:
        """A local failure to write an instance: kept in ``errors``, answered 0xA700."""
        with self.lock:
            self.errors.append(f"local write failed: {type(exc).__name__}: {exc}")
        return 0xA700

    def _write(self, sop_uid: str, sop_class: str, transfer_syntax: str,
               parts: list[bytes | memoryview]) -> int:
        try:
            final = os.path.join(self.dest, instance_file_name(sop_uid))
            spare, self._spare = self._spare, None  # made by prepare() (C-GET), else made now
            tmp, fd = spare if spare is not None else self._temp()
            try:
                try:
                    if sum(len(p) for p in parts) < (1 << 20):
                        parts = [b"".join(parts)]  # one write for a small file
                    for part in parts:
                        view = memoryview(part)
                        while view:
                            view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            with self.lock:
                self.rows.append((sop_uid, sop_class, transfer_syntax, self.study_uid,
                                  str(final), sum(len(p) for p in parts)))
            if self.on_file is not None:
                self.on_file()
            return 0x0000
        except Exception as exc:  # a handler must answer with a status, never raise
            return self._failed(exc)


class _SharedUIDContext(PresentationContext):
    """A presentation context whose deep copy shares its UIDs (immutable str) instead of
    re-creating them: pynetdicom's server deep-copies its supported contexts for every
    association, and re-validating some 5,000 UIDs takes ~90 ms per association."""

    def __deepcopy__(self, memo: dict[int, Any]) -> PresentationContext:
        new = PresentationContext.__new__(PresentationContext)
        new.__dict__.update(self.__dict__)
        new._transfer_syntax = list(self._transfer_syntax)
        return new


def share_context_uids(contexts: Sequence[PresentationContext]) -> None:
    """Make a server's supported contexts cheap to copy per association (see _SharedUIDContext)."""
    for cx in contexts:
        if type(cx) is PresentationContext:
            cx.__class__ = _SharedUIDContext


# -- the client's requests (PacsClient.store / PacsClient.get) ----------------------------


def store_request(phase: DataPhase, context_id: int, msg_id: int, sop_class: str, sop_uid: str,
                  dataset: bytes | memoryview) -> list[bytes | memoryview]:
    """A C-STORE-RQ framed for ``phase``, to send with :meth:`DataPhase.send_parts` (built while the
    peer still works on the previous one: :meth:`PacsClient.store` prepares each request
    before it waits for the previous response, and sends it after)."""
    return phase.frame(context_id, store_command(msg_id, sop_class, sop_uid), dataset)


def store_command(msg_id: int, sop_class: str, sop_uid: str) -> bytes:
    """The command set of a C-STORE-RQ (a data set follows)."""
    return encode_command({0x00000002: sop_class, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                           0x00000700: 0x0002, 0x00000800: 0x0001, 0x00001000: sop_uid})


def store_response(phase: DataPhase, msg_id: int, sop_uid: str) -> int:
    """The status of the C-STORE-RSP the peer sends next on ``phase``, which must answer our
    C-STORE-RQ ``msg_id`` of ``sop_uid``.

    Anything else raises :class:`~kit.errors.AssociationAbortedError` (the phase aborts on
    leaving), as :func:`check_get_rsp` does for a C-GET: another command, a response without a
    status, one to another message (Message ID Being Responded To: a stale or made-up answer,
    the instance is not counted as stored) or for another instance (Affected SOP Instance UID,
    when present).
    """
    rsp = phase.recv()
    code = command_int(rsp.command, 0x0900)
    if rsp.command_field != C_STORE_RSP or code is None:
        raise DicomProtocolError(f"C-STORE of {sop_uid}: the peer answered with command "
                                 f"0x{rsp.command_field:04X}", peer=phase.peer)
    if (answers := command_int(rsp.command, 0x0120)) != msg_id:
        raise DicomProtocolError(f"C-STORE of {sop_uid}: a C-STORE-RSP to message {answers}, "
                                 f"not to our C-STORE-RQ (message {msg_id})", peer=phase.peer)
    if command_str(rsp.command, 0x1000) not in ("", sop_uid):  # an answer for another instance
        raise DicomProtocolError(f"C-STORE of {sop_uid}: the peer answered for "
                                 f"{command_str(rsp.command, 0x1000)}", peer=phase.peer)
    return code


def check_get_rsp(command: Any, peer: str) -> None:
    """A C-GET-RSP must answer our C-GET-RQ, message 1 (else it is another exchange's)."""
    if (answers := command_int(command, 0x0120)) != 1:
        raise DicomProtocolError(f"a C-GET-RSP to message {answers}, not to our C-GET (message 1)",
                                 peer=peer)


def c_get(phase: DataPhase, context_id: int, sop_class: str, identifier: bytes,
          syntaxes: Mapping[int, str], write: Callable[[str, str, str, bytes | memoryview], int],
          answered: Callable[[], None] | None = None,
          cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """A C-GET on ``phase``: send the request, answer every C-STORE sub-operation with the
    status ``write(sop_instance_uid, sop_class_uid, transfer_syntax, dataset)`` returns,
    until the final (non-pending) C-GET-RSP; its :func:`status_fields`. ``answered`` is
    called after each answer is sent (e.g. :meth:`FileReceiver.prepare`).

    ``syntaxes`` maps accepted presentation context IDs to their transfer syntax; a
    sub-operation on any other context is answered 0x0122 (SOP class not supported).
    ``cancelled`` is asked after each message: once True, the C-GET is cancelled
    (:func:`kit.dicom._cancel.drain_get`) and that final response's fields returned.
    """
    phase.send(context_id, encode_command({
        0x00000002: sop_class, 0x00000100: C_GET_RQ, 0x00000110: 1, 0x00000700: 0x0002,
        0x00000800: 0x0001}), identifier)
    while True:
        msg = phase.recv()
        if msg.command_field == C_STORE_RQ:
            sop_uid, sop_cls = command_str(msg.command, 0x1000), command_str(msg.command, 0x0002)
            syntax = syntaxes.get(msg.context_id)
            status = 0x0122 if syntax is None else write(sop_uid, sop_cls, syntax, msg.dataset or b"")
            phase.send(msg.context_id, encode_command({
                0x00000002: sop_cls, 0x00000100: C_STORE_RSP,
                0x00000120: command_int(msg.command, 0x0110) or 0, 0x00000800: NO_DATASET,
                0x00000900: status, 0x00001000: sop_uid}))
            if answered is not None:
                answered()
        elif msg.command_field == C_GET_RSP:
            check_get_rsp(msg.command, phase.peer)
            if command_int(msg.command, 0x0900) not in (0xFF00, 0xFF01):  # not pending: the last
                return status_fields(msg.command)
        else:
            raise DicomProtocolError(f"unexpected DIMSE command 0x{msg.command_field:04X} "
                                     "during C-GET", peer=phase.peer)
        if cancelled is not None and cancelled():  # asked to stop: C-CANCEL (kit.dicom._cancel)
            from kit.dicom._cancel import drain_get

            return drain_get(phase, context_id)
