"""What the embedded PACS puts around pynetdicom's server so that no peer can take it down.

pynetdicom starts two threads per TCP connection at once and waits up to the
ACSE timeout for the A-ASSOCIATE-RQ, counting the idle sockets against the
association limit (64 idle connections locked everyone out for 22-30 s); its
PDU reader trusts the declared length and the per-``recv`` timeout, so a peer
trickling a PDU holds a thread for ever. Written by hand here, checked against
pynetdicom 3.0.4 (``AssociationServer.process_request`` / ``service_actions``,
``AssociationSocket`` queueing Evt5 for an acceptor, ``DULServiceProvider.
_read_pdu_data`` / ``_decode_pdu`` / ``_recv_pdu`` / ``event_queue``):

- :class:`GuardedServer`: a gate thread holds new connections (non-blocking, no
  thread each) until their whole A-ASSOCIATE-RQ has arrived, within
  ``request_timeout`` seconds of the connect and ``MAX_RQ_PDU`` bytes; at most
  ``max_pending`` wait (a new one evicts the oldest), so idle sockets and
  slowloris peers never reach pynetdicom nor count as associations. A complete
  request is handed to pynetdicom with its bytes (:func:`deliver_request`).
- :func:`read_bounded_pdu`: pynetdicom's PDU reader with the negotiated maximum
  enforced (a larger PDU is answered with A-ABORT before any of its body is
  read), a deadline for the whole PDU, and a bound on the command or data set
  the PDUs add up to (:class:`MessageBound`: pynetdicom holds it in memory whole).
  It reads no further PDU while a whole message waits for the association's
  reactor (pynetdicom would queue every message a peer sends without waiting for
  the answers), and a server-wide :class:`MemoryBudget` bounds the bytes all
  associations hold at once.
- :func:`serve_fitting_requests`: a request its SOP class's service does not serve (an
  N-EVENT-REPORT naming CT Image Storage) is answered with A-ABORT, not handed to that service.
- :func:`drop_sends_after_abort`: a message (or a second abort) pynetdicom queues
  to send after the association was aborted (the PACS stopping mid C-GET) is
  dropped, not an ``InvalidEventError`` that kills the association's network thread.
- Worker threads (accept, gate) that die take the server down loudly: the
  listening socket is closed, ``failure`` is set, ``on_failure`` is called.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import queue
import selectors
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.service_class import (
    BasicWorklistManagementServiceClass,
    QueryRetrieveServiceClass,
    StorageServiceClass,
    VerificationServiceClass,
)
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from kit.dicom._accept import deliver_checked
from kit.dicom._assoc_ac import read_associate_ac
from kit.dicom._association import drop_sends_after_abort, keep_responses_for_the_sender
from kit.dicom._fastnet import MAX_RQ_PDU, abort_pdu, pdu_limit

__all__ = ["IN_MEMORY_MESSAGE", "GuardedServer", "MemoryBudget", "MessageBound", "deliver_request",
           "guard_dul", "guard_storage_scp", "read_bounded_pdu", "serve_fitting_requests"]

LOGGER = logging.getLogger(__name__)

#: Bytes of one command or data set read for pynetdicom, which holds it in memory whole
#: (the fast data phase keeps a large one on disk instead: kit.dicom._spill).
IN_MEMORY_MESSAGE = 256 * 1024 * 1024


class _ServerStopped(Exception):
    """Raised in serve_forever's loop to end it after a worker failed."""


@dataclasses.dataclass
class _Pending:
    address: Any
    deadline: float
    buf: bytearray = dataclasses.field(default_factory=bytearray)


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server behind an A-ASSOCIATE-RQ gate (see the module docstring).

    Extra keyword arguments (through ``AE.make_server``): ``request_timeout``,
    ``max_pending`` and ``on_failure`` (called with the exception that stopped a worker).
    """

    def __init__(self, *args: Any, request_timeout: float, max_pending: int,
                 on_failure: Callable[[BaseException], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_timeout, self.max_pending, self.on_failure = request_timeout, max_pending, on_failure
        self.failure: BaseException | None = None
        #: complete A-ASSOCIATE-RQ bytes by socket, taken by :func:`deliver_request`
        self.requests: dict[socket.socket, bytes] = {}
        self._incoming: queue.SimpleQueue[tuple[socket.socket, Any]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    # -- running ---------------------------------------------------------------------

    def start_workers(self, name: str) -> None:
        """Start the accept and gate threads (daemon; each watched for failure)."""
        for role, target in (("accept", self.serve_forever), ("gate", self._gate)):
            thread = threading.Thread(target=self._watch, args=(role, target), daemon=True,
                                      name=f"{name}-{role}")
            self.threads.append(thread)
            thread.start()

    def _watch(self, role: str, target: Callable[[], None]) -> None:
        try:
            target()
        except _ServerStopped:
            return
        except BaseException as exc:  # noqa: BLE001 - any death of a worker stops the service
            self.fail(role, exc)
            return
        if not self._stopping.is_set():
            self.fail(role, RuntimeError(f"the {role} thread returned"))

    def fail(self, role: str, exc: BaseException) -> None:
        """Stop accepting for good and report: a worker died (never a listener into a void)."""
        if self.failure is not None:
            return
        self.failure = exc
        LOGGER.critical("embedded PACS %s thread died; the service stops accepting: %r", role, exc)
        self._stopping.set()
        self.server_close()
        self._wake()
        try:
            self.on_failure(exc)
        except Exception:  # noqa: BLE001 - reporting must not hide the failure itself
            LOGGER.exception("on_failure callback failed")

    def service_actions(self) -> None:
        """Called by serve_forever each loop: end it once a worker failed."""
        if self.failure is not None:
            raise _ServerStopped
        super().service_actions()

    def shutdown(self) -> None:
        """Stop both workers and close the listening socket (idempotent)."""
        self._stopping.set()
        self._wake()
        if self.failure is None:
            socketserver.BaseServer.shutdown(self)
        self.server_close()
        with contextlib.suppress(ValueError):
            self.ae._servers.remove(self)
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(5)
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    # -- the gate ----------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Accept thread: queue the new connection for the gate (no thread of its own yet)."""
        if self._stopping.is_set():
            self.shutdown_request(request)
            return
        self._incoming.put((request, client_address))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken) or closed
            self._wake_w.send(b"\0")

    def _gate(self) -> None:
        pending: collections.OrderedDict[socket.socket, _Pending] = collections.OrderedDict()
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    wait = min((p.deadline for p in pending.values()), default=now + 0.5) - now
                    for key, _ in sel.select(max(0.0, min(wait, 0.5))):
                        if key.fileobj is self._wake_r:
                            self._admit(sel, pending)
                        else:
                            sock = key.fileobj
                            assert isinstance(sock, socket.socket)
                            self._read(sel, pending, sock)
                    now = time.monotonic()
                    while pending:
                        sock, first = next(iter(pending.items()))
                        if first.deadline > now:
                            break
                        LOGGER.info("no A-ASSOCIATE-RQ from %s within %gs: closed", first.address,
                                    self.request_timeout)
                        self._drop(sel, pending, sock)
            finally:
                for sock in list(pending):
                    self._drop(sel, pending, sock)

    def _admit(self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending]) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096, socket.MSG_DONTWAIT):
                pass
        while True:
            try:
                sock, address = self._incoming.get_nowait()
            except queue.Empty:
                return
            if self._stopping.is_set():
                self.shutdown_request(sock)
                continue
            while len(pending) >= self.max_pending:  # the oldest waiter makes room
                oldest = next(iter(pending))
                LOGGER.info("%d connections wait for their A-ASSOCIATE-RQ: closing the oldest (%s)",
                            len(pending), pending[oldest].address)
                self._drop(sel, pending, oldest)
            try:
                sock.setblocking(False)
                sel.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                self.shutdown_request(sock)
                continue
            pending[sock] = _Pending(address, time.monotonic() + self.request_timeout)

    def _drop(self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending],
              sock: socket.socket, reply: bytes = b"") -> None:
        pending.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            sel.unregister(sock)
        if reply:
            with contextlib.suppress(OSError):
                sock.send(reply)
        self.shutdown_request(sock)

    def _read(self, sel: selectors.BaseSelector, pending: dict[socket.socket, _Pending],
              sock: socket.socket) -> None:
        wait = pending[sock]
        buf = wait.buf
        want = 6 - len(buf) if len(buf) < 6 else 6 + int.from_bytes(buf[2:6], "big") - len(buf)
        try:
            data = sock.recv(min(want, 65536))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sel, pending, sock)
            return
        if not data:
            self._drop(sel, pending, sock)
            return
        buf += data
        if len(buf) < 6:
            return
        kind, length = buf[0], int.from_bytes(buf[2:6], "big")
        if kind != 0x01:
            LOGGER.info("%s sent PDU type 0x%02X instead of an A-ASSOCIATE-RQ: aborted", wait.address, kind)
            self._drop(sel, pending, sock, abort_pdu(0x01 if kind > 0x07 else 0x02))
            return
        if length > pdu_limit(0x01, 0):
            LOGGER.info("%s declared an A-ASSOCIATE-RQ of %d bytes (limit %d): aborted", wait.address,
                        length, MAX_RQ_PDU)
            self._drop(sel, pending, sock, abort_pdu(0x06))
            return
        if len(buf) < 6 + length:
            return
        pending.pop(sock)
        sel.unregister(sock)
        if len(self.requests) > self.max_pending:  # handed over but never opened (a failed thread)
            for stale in [s for s in self.requests if s.fileno() == -1]:
                del self.requests[stale]
        try:
            sock.setblocking(True)
            self.requests[sock] = bytes(buf)
            socketserver.ThreadingMixIn.process_request(self, sock, wait.address)
        except Exception as exc:  # noqa: BLE001 - e.g. no thread available: refuse this one only
            LOGGER.error("cannot serve the association from %s: %s", wait.address, exc)
            self.requests.pop(sock, None)
            self.shutdown_request(sock)


def deliver_request(server: GuardedServer, dul: DULServiceProvider,
                    replay: Callable[[DULServiceProvider, bytes], bool] | None = None) -> bool:
    """EVT_CONN_OPEN: give the association the A-ASSOCIATE-RQ the gate read (after Evt5).

    ``replay`` (e.g. :meth:`kit.dicom._accept.AcceptCache.deliver`) may deliver it instead
    (returning True); otherwise :func:`kit.dicom._accept.deliver_checked` decodes it as
    pynetdicom's reader would, aborting at once a request pynetdicom's threads would die on.
    """
    sock = getattr(dul.socket, "socket", None)
    raw = server.requests.pop(sock, None) if sock is not None else None
    if raw is None:
        return False
    if replay is not None:
        try:
            if replay(dul, raw):
                return True
        except Exception:  # noqa: BLE001 - an optimisation failing: pynetdicom decodes it as always
            LOGGER.exception("A-ASSOCIATE-RQ replay failed; decoded as usual")
    return deliver_checked(dul, raw)


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise _Closed
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def guard_dul(dul: DULServiceProvider, maximum: int, pdu_timeout: float | None,
              max_dataset: int | None, budget: MemoryBudget | None = None) -> None:
    """Put the guards on a new connection's DUL (before its threads start): PDUs read by
    :func:`read_bounded_pdu`, a command or data set bounded to ``max_dataset`` bytes and
    :data:`IN_MEMORY_MESSAGE` (None: not bounded, no budget), the messages held in memory
    counted against ``budget``, :func:`drop_sends_after_abort` and :func:`serve_fitting_requests`."""
    bound = None
    if max_dataset is not None:
        limit = min(max_dataset, IN_MEMORY_MESSAGE, budget.limit if budget is not None else IN_MEMORY_MESSAGE)
        bound = MessageBound(limit, budget)
        if budget is not None:
            _count_served(dul.assoc, bound, budget)
    dul._read_pdu_data = functools.partial(  # type: ignore[method-assign]
        read_bounded_pdu, dul, maximum, pdu_timeout, bound)
    drop_sends_after_abort(dul)
    serve_fitting_requests(dul.assoc)
    keep_responses_for_the_sender(dul.assoc)


#: The requests each service class of the PACS serves (pynetdicom hands any request to the service
#: its SOP Class UID names: an N-EVENT-REPORT or a C-FIND naming CT Image Storage reached the
#: C-STORE handler, or pynetdicom's storage service, which logged a traceback and aborted).
_SERVES = ((StorageServiceClass, (C_STORE,)), (VerificationServiceClass, (C_ECHO,)),
           (BasicWorklistManagementServiceClass, (C_FIND,)),  # before its base class
           (QueryRetrieveServiceClass, (C_FIND, C_GET, C_MOVE)))


def serve_fitting_requests(assoc: Any) -> None:
    """Answer a request its service class does not serve (by its SOP Class UID, as pynetdicom
    dispatches it) with A-ABORT and one warning line (the requests that arrive while the
    association ends are dropped unlogged); leave every other message to pynetdicom."""
    serve = assoc._serve_request

    def serve_if_it_fits(msg: Any, context_id: int) -> None:
        if msg is not None and msg.is_valid_request:
            uid = getattr(msg, "AffectedSOPClassUID", None) or getattr(msg, "RequestedSOPClassUID", None)
            service = uid_to_service_class(str(uid or ""))
            for kind, requests in _SERVES:
                if issubclass(service, kind):
                    if not isinstance(msg, requests):
                        if not assoc._sent_abort:  # one line an association, not one a request after it
                            LOGGER.warning("a %s request naming SOP class %s from %s: association aborted",
                                           msg.msg_type, uid, assoc.requestor.ae_title)
                            _abort_from_any_thread(assoc)
                        return
                    break
        serve(msg, context_id)

    assoc._serve_request = serve_if_it_fits


def _abort_from_any_thread(assoc: Any, wait: float = 5.0) -> None:
    """Abort ``assoc`` with an A-ABORT that reaches the peer, from its own thread or another.

    pynetdicom serves an N-EVENT-REPORT on a thread of its own. Its blocking ``abort()`` there
    stops the association's thread at once, and that thread closes the socket as it ends, often
    before the DUL thread has sent the queued A-ABORT: the peer saw the connection closed. Here
    the A-ABORT is queued, the DUL given up to ``wait`` seconds to send it (it leaves the state it
    was in), and only then is the association stopped.
    """
    own_thread = threading.current_thread() is assoc
    if own_thread:
        assoc.abort()
        return
    dul = assoc.dul
    state = dul.state_machine.current_state
    assoc._abort_nonblocking()
    deadline = time.monotonic() + wait
    while dul.state_machine.current_state == state and dul.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    assoc.kill()


def _count_served(assoc: Any, bound: MessageBound, budget: MemoryBudget) -> None:
    """Give ``bound``'s bytes back to ``budget`` as the association is done with them: a message's
    when the reactor comes for the next one (it has served it), those never served when the
    connection closes, the last one served when the reactor ends."""
    assoc.dimse.msg_queue = _ServedQueue(bound, budget)
    reactor = assoc._run_reactor

    def run_then_give_back() -> None:
        try:
            reactor()
        finally:
            budget.close(bound)

    assoc._run_reactor = run_then_give_back
    assoc.bind(evt.EVT_CONN_CLOSE, lambda event: budget.drop_waiting(bound))


def guard_storage_scp(event: Any, maximum: int, pdu_timeout: float | None) -> None:
    """EVT_CONN_OPEN handler of a client's own storage SCP (:meth:`~kit.dicom.dimse.PacsClient.move`):
    :func:`guard_dul` without the message bound, for what it leaves to pynetdicom (its C-STOREs are
    served from the socket, kit.dicom._storeserve; a bound would refuse the large instances the
    retrieve is for)."""
    guard_dul(event.assoc.dul, maximum, pdu_timeout, None)


class MemoryBudget:
    """Bytes of DIMSE messages pynetdicom holds in memory at once, across a server's associations.

    A connection's P-DATA bytes are taken as they arrive (:meth:`MessageBound.add`) and given back
    when its association is done with the message they made (:func:`guard_dul`); a PDU that would
    take more than ``limit`` aborts its association. A message being served is given back when the
    reactor comes for the next one, so a served message may still be referenced briefly after.

    Parameters
    ----------
    limit : int
        Bytes all associations may hold at once.
    """

    __slots__ = ("_lock", "limit", "peak", "used")

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.peak = limit, 0, 0
        self._lock = threading.Lock()

    def take(self, bound: MessageBound, size: int) -> bool:
        """Count ``size`` more bytes for ``bound``'s connection; False if the budget has no room."""
        with self._lock:
            if bound.closed:  # its association has ended: nothing it still reads is served
                return True
            if self.used + size > self.limit:
                return False
            self.used += size
            self.peak = max(self.peak, self.used)
            bound.reserved += size
            return True

    def give(self, bound: MessageBound, size: int) -> None:
        """Give back ``size`` of the bytes ``bound``'s connection holds."""
        with self._lock:
            size = min(size, bound.reserved)
            self.used -= size
            bound.reserved -= size

    def drop_waiting(self, bound: MessageBound) -> None:
        """The connection closed: give back what it holds but the message being served (if any);
        take nothing more for it."""
        with self._lock:
            size = max(bound.reserved - bound.serving, 0)
            self.used -= size
            bound.reserved -= size
            bound.sizes.clear()
            bound.unqueued = 0
            bound.closed = True

    def close(self, bound: MessageBound) -> None:
        """The association's reactor has ended: give back everything the connection holds."""
        with self._lock:
            self.used -= bound.reserved
            bound.reserved = 0
            bound.closed = True


class MessageBound:
    """How many bytes of one command set or data set a connection has sent so far, and how
    many it may (for :func:`read_bounded_pdu`; one per connection), and, with a
    :class:`MemoryBudget`, the bytes it holds against it."""

    __slots__ = ("budget", "closed", "limit", "pending", "reserved", "serving", "sizes", "unqueued")

    def __init__(self, limit: int, budget: MemoryBudget | None = None) -> None:
        self.limit, self.budget = limit, budget
        self.pending = 0
        self.reserved = 0  # bytes taken from the budget and not given back (under the budget's lock)
        self.unqueued = 0  # bytes taken since the last message was queued (the DUL's thread)
        self.sizes: collections.deque[int] = collections.deque()  # of the queued messages, in order
        self.serving = 0  # bytes of the message the reactor serves (the association's thread)
        self.closed = False

    def add(self, body: bytes, counted: bool = True) -> str | None:
        """Count the PDVs of a P-DATA-TF body (against the budget too if ``counted``); None, or
        why the association must end: a command or data set past the limit (a PDV with its
        last-fragment bit ends one) or no room in the budget. A malformed body is left to pynetdicom."""
        pos, end = 0, len(body)
        while pos + 6 <= end:
            stop = pos + 4 + int.from_bytes(body[pos:pos + 4], "big")
            size = max(min(stop, end) - pos - 6, 0)
            self.pending += size
            if self.pending > self.limit:
                return f"a command or data set of more than {self.limit} bytes"
            if counted and self.budget is not None:
                if not self.budget.take(self, size):
                    return (f"the messages held in memory would pass the PACS's {self.budget.limit} bytes"
                            " (max_in_memory)")
                self.unqueued += size
            if body[pos + 5] & 0x02:
                self.pending = 0
            pos = stop
        return None

    def waiting(self, dul: DULServiceProvider) -> bool:
        """Whether a whole message of this established association waits for its reactor: then no
        further PDU is read (the peer's bytes wait in TCP's buffers, not in memory)."""
        return (self.budget is not None and dul.state_machine.current_state == "Sta6"
                and dul.assoc.dimse.msg_queue.qsize() > 0)


class _ServedQueue(queue.Queue):
    """pynetdicom's queue of an association's received DIMSE messages, which knows the bytes each
    took from the budget and gives back a served message's when the reactor comes for the next."""

    def __init__(self, bound: MessageBound, budget: MemoryBudget) -> None:
        super().__init__()
        self.bound, self.budget = bound, budget

    def _put(self, item: Any) -> None:  # the DUL's thread, under the queue's lock
        super()._put(item)
        self.bound.sizes.append(self.bound.unqueued)
        self.bound.unqueued = 0

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        bound = self.bound
        if bound.serving:  # the reactor (or a service waiting for an answer) is done with it
            self.budget.give(bound, bound.serving)
            bound.serving = 0
        return super().get(block, timeout)

    def _get(self) -> Any:
        bound = self.bound
        bound.serving = bound.sizes.popleft() if bound.sizes else 0
        return super()._get()


def read_bounded_pdu(dul: DULServiceProvider, maximum: int, pdu_timeout: float | None,
                     bound: MessageBound | None = None) -> None:
    """Replacement for ``DULServiceProvider._read_pdu_data`` (bind with functools.partial).

    Reads one PDU like pynetdicom's own reader (same events: Evt17 closed, Evt19
    unrecognised, else the PDU's event), except that a PDU longer than
    :func:`~kit.dicom._fastnet.pdu_limit` allows for ``maximum`` (the Maximum Length we
    negotiated) or not complete within ``pdu_timeout`` seconds is answered with
    A-ABORT and the connection is shut down, its body never read; and so is a P-DATA-TF
    that takes a command or data set past ``bound`` (which pynetdicom would hold whole) or
    the bound's :class:`MemoryBudget` past its limit. While a whole message waits for the
    association's reactor, nothing is read (pynetdicom's loop calls again).
    """
    assoc_sock = dul.socket
    sock = getattr(assoc_sock, "socket", None)
    if sock is None:
        dul.event_queue.put("Evt17")
        return
    if bound is not None and bound.waiting(dul):
        return  # read on once the reactor has taken the message: pynetdicom's loop polls again
    deadline = None if pdu_timeout is None else time.monotonic() + pdu_timeout
    old = sock.gettimeout()
    try:
        header = _recv_exact(sock, 6, deadline)
        kind, _, length = struct.unpack(">BBL", header)
        if not 0x01 <= kind <= 0x07:
            dul.event_queue.put("Evt19")
            return
        if length > pdu_limit(kind, maximum):
            LOGGER.warning("PDU of %d bytes declared (limit %d): association aborted", length,
                           pdu_limit(kind, maximum))
            _abort_transport(sock, 0x06)
            dul.event_queue.put("Evt17")
            return
        body = _recv_exact(sock, length, deadline)
        if kind == 0x04 and bound is not None and (
                why := bound.add(body, dul.state_machine.current_state == "Sta6")) is not None:
            LOGGER.warning("%s: association aborted", why)
            _abort_transport(sock, 0x00)
            dul.event_queue.put("Evt17")
            return
    except TimeoutError:
        LOGGER.warning("PDU not complete within %ss: association aborted", pdu_timeout)
        _abort_transport(sock, 0x00)
        dul.event_queue.put("Evt17")
        return
    except (_Closed, OSError):
        dul.event_queue.put("Evt17")
        return
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(old)
    try:
        pdu: Any = None
        if kind == 0x02 and not _watched(dul):  # its repeated items decoded once (kit.dicom._assoc_ac)
            primitive = read_associate_ac(header + body)
            if primitive is not None:
                pdu, event = _DecodedAC(primitive), "Evt3"
        if pdu is None:
            pdu, event = dul._decode_pdu(bytearray(header + body))
        dul.event_queue.put(event)
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: an undecodable PDU is Evt19
        LOGGER.error("unable to decode a received PDU: %s", exc)
        dul.event_queue.put("Evt19")
        return
    dul._recv_pdu.put(pdu)


def _watched(dul: DULServiceProvider) -> bool:
    """Does anything listen for received PDUs (pynetdicom's debug log, a user's handler)? Then it
    gets pynetdicom's own PDU object, decoded by pynetdicom (``_decode_pdu`` fires both events)."""
    assoc = dul.assoc
    return bool(assoc.get_handlers(evt.EVT_DATA_RECV) or assoc.get_handlers(evt.EVT_PDU_RECV))


class _DecodedAC:
    """An A-ASSOCIATE-AC read by :func:`~kit.dicom._assoc_ac.read_associate_ac`, as the state
    machine takes it (AE-3 asks the PDU for its primitive, and nothing else)."""

    __slots__ = ("primitive",)

    def __init__(self, primitive: Any) -> None:
        self.primitive = primitive

    def to_primitive(self) -> Any:
        return self.primitive


def _abort_transport(sock: socket.socket, reason: int) -> None:
    """Send A-ABORT (best effort, not waiting on the peer) and shut the connection down."""
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(abort_pdu(reason))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
