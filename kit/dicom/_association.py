"""Association set-up and error mapping for :class:`kit.dicom.dimse.PacsClient` (split from it).

pynetdicom negotiates and releases the association; this module opens it with
``TCP_NODELAY`` and a short network-loop poll, unbinds pynetdicom's per-PDU
logging handlers once it is up, and turns every way an association can fail
(no listener, TLS handshake, A-ASSOCIATE-RJ, A-ABORT, silence) into the kit's
error tree. Written by hand here: the error mapping; the protocol is pynetdicom's.

What a hostile peer cannot do to a client association: pynetdicom's network thread
reads PDUs through :func:`kit.dicom._guard.read_bounded_pdu` (the server's reader), so
a PDU longer than the Maximum Length we negotiated is answered with A-ABORT once its
header is in, and one trickled is aborted once it has taken the timeout; :func:`kill`
ends within :data:`KILL_GRACE_SECONDS` + :data:`KILL_JOIN_SECONDS` (it shuts the socket
down under a network thread stuck in a read); and an A-ASSOCIATE-AC whose Maximum Length
is below :data:`MIN_PEER_MAX_PDU` is aborted (pynetdicom raised ``ZeroDivisionError`` or
``ValueError`` framing for 1 to 6 bytes, and C-STORE of a few MiB in 1-byte PDUs took GBs).
On a C-FIND association the reader also bounds the message being assembled and how many wait
(``bound``: :class:`kit.dicom._cfind.IdentifierBound`); a C-GET's association has no such bound.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pynetdicom import AE, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE

from kit.dicom._assoc_rq import encode_associate_rq
from kit.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomProtocolError,
    InvalidInputError,
    PeerError,
    PeerTimeoutError,
    PeerUnreachableError,
    TLSError,
)

if TYPE_CHECKING:
    from kit.dicom._guard import MessageBound

__all__ = ["DUL_POLL_SECONDS", "KILL_GRACE_SECONDS", "KILL_JOIN_SECONDS", "KILL_POLL_SECONDS",
           "MIN_PEER_MAX_PDU", "AssociationClient", "drop_sends_after_abort", "fast_request",
           "keep_responses_for_the_sender", "kill", "nodelay", "unbind_log_handlers"]

LOGGER = logging.getLogger(__name__)

#: Idle sleep of pynetdicom's network loop (its default is 1 ms).
DUL_POLL_SECONDS = 0.0002

_LOG_HANDLERS = (
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler), (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
)


def nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on the socket, poll the network loop more often.

    pynetdicom's network loop sleeps ``_run_loop_delay`` (1 ms) whenever it
    finds nothing to do, which adds up to 1 ms to every request/response.
    """
    event.assoc.dul._run_loop_delay = DUL_POLL_SECONDS
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)



def unbind_log_handlers(assoc: Association) -> None:
    """Unbind pynetdicom's standard logging handlers (they format every PDU and DIMSE
    message, ~10 ms for an A-ASSOCIATE-RQ of 120 contexts), unless its logger is on DEBUG."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event, handler in _LOG_HANDLERS:
        with contextlib.suppress(Exception):
            assoc.unbind(event, handler)


#: The sleep between checks in :func:`kill` (pynetdicom's own: 10 ms).
KILL_POLL_SECONDS = 0.0005
#: Seconds :func:`kill` lets the network thread end the association (send an A-ABORT, see the
#: connection close: a few ms, more on a busy machine) before it shuts the socket down under it.
KILL_GRACE_SECONDS = 1.0
#: Seconds :func:`kill` then waits for the network thread to see the closed socket and end.
KILL_JOIN_SECONDS = 2.0


def kill(assoc: Association) -> None:
    """``Association.kill`` of pynetdicom 3.0.4 with a 0.5 ms instead of a 10 ms poll, and an end.

    pynetdicom's release hands the A-RELEASE-RP to the waiting thread before its
    state machine reaches Sta1, so its ``kill`` nearly always sleeps once: 10 ms
    on every association. And its ``kill`` waits, with no limit, for the network
    thread to reach Sta1, which that thread never does while it is stuck in a read
    (pynetdicom's reader waited for the whole of a PDU trickled 1 byte/s: for ever).
    Here, once :data:`KILL_GRACE_SECONDS` have passed, the socket is shut down (the
    read returns, the thread sees the connection closed) and the thread is told to
    stop; it is waited for :data:`KILL_JOIN_SECONDS` more, then left to end on its own
    (a daemon thread with nothing left to do but exit).
    """
    assoc._reactor_checkpoint.set()
    assoc._kill = True
    assoc.is_established = False
    assoc._is_paused = True
    dul = assoc.dul
    if dul is threading.current_thread():  # an event handler on the network thread: it ends after
        dul.kill_dul()
        return
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while dul.is_alive() and not dul.stop_dul():
        if time.monotonic() >= deadline:
            break
        time.sleep(KILL_POLL_SECONDS)
    else:
        return
    LOGGER.warning("the association's network thread did not stop within %gs: connection shut down",
                   KILL_GRACE_SECONDS)
    _shut_down(dul)
    dul.kill_dul()
    dul.join(KILL_JOIN_SECONDS)


def _shut_down(dul: Any) -> None:
    """Shut the association's TCP connection down (both ways) under the thread reading it.

    ``shutdown`` of the plain socket (for TLS too: the TLS object is left alone, the
    reading thread sees its connection end): a read blocked on it returns at once.
    Not ``close``, whose descriptor could be reused while that thread still holds it.
    """
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


def fast_request(assoc: Association) -> None:
    """Send this association's A-ASSOCIATE-RQ as bytes encoded by hand
    (:func:`kit.dicom._assoc_rq.encode_associate_rq`, equal to pynetdicom's).

    Call from EVT_CONN_OPEN (on the DUL thread, before the request is sent). It
    takes over the one state machine action AE-2 (Sta4 + Evt2: send the
    A-ASSOCIATE-RQ, go to Sta5) of pynetdicom 3.0.4, and only where nothing
    listens to EVT_PDU_SENT or EVT_FSM_TRANSITION (which it does not fire); a
    request the hand encoder does not cover is left to pynetdicom.
    """
    if assoc.get_handlers(evt.EVT_PDU_SENT) or assoc.get_handlers(evt.EVT_FSM_TRANSITION):
        return
    dul = assoc.dul
    machine = dul.state_machine
    original = machine.do_action

    def do_action(event: str) -> None:
        if event != "Evt2" or machine.current_state != "Sta4":
            original(event)
            return
        machine.do_action = original  # type: ignore[method-assign]  # once: what it wrapped from here on
        try:
            data = encode_associate_rq(dul.to_provider_queue.queue[0].request)
        except Exception:  # noqa: BLE001 - not covered by hand: pynetdicom encodes it
            data = None
        if data is None or dul.socket is None:
            original(event)
            return
        dul.to_provider_queue.get(False)  # AE-2: the T-CONNECT confirmation, then send
        dul.socket.send(data)
        machine.transition("Sta5")

    machine.do_action = do_action  # type: ignore[method-assign]


#: PS3.8 states in which the association is over: Sta13 (A-ABORT sent, awaiting the close), Sta1.
_ENDED = frozenset(("Sta1", "Sta13"))
#: Events of a primitive the local user queues (an A-ASSOCIATE answer, P-DATA, A-RELEASE, A-ABORT):
#: pynetdicom 3.0.4 has no transition for any of them in Sta13 or Sta1.
_USER_EVENTS = frozenset(("Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"))


def keep_responses_for_the_sender(assoc: Any) -> None:
    """Give a response the association's reactor took to the ``send_*`` call waiting for it.

    pynetdicom's ``send_c_store`` (C-GET, and C-MOVE's sub-associations) pauses the reactor by
    clearing its checkpoint and waiting for ``_is_paused``; the reactor sets that flag just
    before it checks the checkpoint, so a sender can read it while the reactor is already past
    the check. Under load the reactor then took the C-STORE-RSP off the queue itself, logged
    "Received unexpected C-STORE service message" and dropped it, and the sender waited out the
    DIMSE timeout (a C-MOVE stalled 10 s and failed, 4 runs in 14 with three CPU burners). A
    response taken while a sender has the reactor paused goes back on the queue for it; any
    other message is served as before.
    """
    serve = assoc._serve_request

    def serve_or_give_back(msg: Any, context_id: int) -> None:
        if (msg is not None and not assoc._reactor_checkpoint.is_set() and not msg.is_valid_request
                and msg.is_valid_response):
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_give_back


def drop_sends_after_abort(dul: Any) -> None:
    """Drop what the association's own thread queues to send after the association ended.

    pynetdicom's state machine has no transition for a local user's primitive (a P-DATA, Evt9; an
    A-ABORT, Evt15; a release or an association answer) in Sta13 or Sta1: it raises
    ``InvalidEventError`` in the DUL reactor thread, which dies with a traceback. That is what
    :meth:`~kit.dicom.scp.EmbeddedPACS.stop` met when it aborted an association whose thread was
    sending a C-GET's next sub-operation or a C-FIND's next match, or aborting it too, and what a
    client met when its peer did not answer the release (pynetdicom aborts twice). Nothing can
    reach the peer then; the primitive is taken off the queue (as the action would) and dropped.
    Used on the embedded PACS's associations and on every client association.
    """
    fsm = dul.state_machine
    act = fsm.do_action

    def do_action(event: str) -> None:
        if event in _USER_EVENTS and fsm.current_state in _ENDED:
            with contextlib.suppress(queue.Empty):
                dul.to_provider_queue.get(False)
            LOGGER.debug("a message to send after the association ended (%s, %s): dropped", event,
                         fsm.current_state)
            return
        act(event)

    fsm.do_action = do_action


def _unread_rejection(assoc: Association) -> Any:
    """The A-ASSOCIATE-RJ the peer sent that pynetdicom never read (None if there is none).

    pynetdicom 3.0.4 race: its requestor thread waits for the socket to be ready and
    then checks that it is still connected; on a busy machine its network thread may by
    then have sent the request, received a rejection and closed the socket (the peer
    closes right after its A-ASSOCIATE-RJ, as dcmtk and Orthanc do). The requestor then
    aborts as if the connection had failed, and the rejection stays unread in the DUL's
    ``to_user_queue``. Seen for about a third of rejections under heavy load.
    """
    queue = getattr(getattr(assoc, "dul", None), "to_user_queue", None)
    for item in list(getattr(queue, "queue", ())):
        if isinstance(item, A_ASSOCIATE) and getattr(item, "result", None) in (0x01, 0x02):
            return item
    return None


#: The smallest Maximum Length Received of a peer's A-ASSOCIATE-AC the kit works with (0 is
#: "unlimited", always fine). PS3.8 lets the peer choose any value, but every PDU carries 6 bytes
#: of PDU header and 6 of PDV header: below 7 pynetdicom cannot frame a message at all (it raised
#: ``ZeroDivisionError`` or ``ValueError``), and just above, a C-STORE of 2 MiB went out in 1-byte
#: PDUs, built whole first (+540 MB). dcmtk never proposes less than 4096 (``ASC_MINIMUMPDUSIZE``)
#: and no real PACS a few KB; at 1024 the framing adds at most 1.2 % to the bytes sent and one PDU
#: per KiB to what is built, so a peer asking for less is aborted as hostile or broken.
MIN_PEER_MAX_PDU = 1024


class AssociationClient:
    """Opens associations to one peer and maps their failures (base of ``PacsClient``).

    Subclasses set ``host``, ``port``, ``called_aet``, ``aet``, ``timeout``,
    ``tls`` and ``max_pdu`` in ``__init__``.
    """

    host: str
    port: int
    called_aet: str
    aet: str
    timeout: float
    tls: ssl.SSLContext | None
    max_pdu: int

    @property
    def address(self) -> str:
        """``dicom://CALLED@host:port``."""
        return f"dicom://{self.called_aet}@{self.host}:{self.port}"

    def _ae(self) -> AE:
        ae = AE(ae_title=self.aet)
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.maximum_pdu_size = self.max_pdu
        return ae

    @contextlib.contextmanager
    def _associate(self, contexts: Sequence[Any], *, roles: Sequence[Any] = (),
                   handlers: Sequence[tuple[Any, Any]] = (),
                   bound: MessageBound | None = None) -> Iterator[Association]:
        """An association with the peer, released (or aborted) on leaving; ``bound`` (one per
        association), if given, bounds the command and data sets its PDU reader assembles
        (:func:`kit.dicom._guard.read_bounded_pdu`): a C-FIND's, never a C-GET's."""
        ae = self._ae()
        opened = threading.Event()
        aborted = threading.Event()

        def on_open(event: evt.Event) -> None:  # on the DUL thread, before the A-ASSOCIATE-RQ
            from kit.dicom._guard import read_bounded_pdu  # here: _guard imports this module

            opened.set()
            dul = event.assoc.dul
            # PDUs bounded by our Maximum Length once their header is in, and whole within the timeout
            dul._read_pdu_data = functools.partial(  # type: ignore[method-assign]
                read_bounded_pdu, dul, self.max_pdu, self.timeout, bound)
            nodelay(event)
            unbind_log_handlers(event.assoc)
            drop_sends_after_abort(event.assoc.dul)  # first: innermost (fast_request's wrapper goes)
            fast_request(event.assoc)
            keep_responses_for_the_sender(event.assoc)
            event.assoc.kill = functools.partial(kill, event.assoc)  # type: ignore[method-assign]

        def on_abort(event: evt.Event) -> None:
            aborted.set()

        all_handlers: list[Any] = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ABORTED, on_abort), *handlers]
        tls_args = (self.tls, self.host) if self.tls is not None else None
        start = time.monotonic()
        try:
            assoc = ae.associate(self.host, self.port, contexts=list(contexts),
                                 ae_title=self.called_aet, max_pdu=self.max_pdu,
                                 ext_neg=list(roles) or None, evt_handlers=all_handlers,
                                 tls_args=tls_args)
        except socket.gaierror as exc:
            raise PeerUnreachableError(f"cannot resolve host {self.host!r}: {exc.strerror or exc}",
                                       peer=self.address) from exc
        except OSError as exc:
            raise PeerUnreachableError(f"cannot connect: {exc.strerror or exc}", peer=self.address) from exc
        except (ValueError, RuntimeError) as exc:
            raise InvalidInputError(f"cannot request an association: {exc}") from exc
        elapsed = time.monotonic() - start
        if not assoc.is_established:
            self._raise_unestablished(assoc, opened.is_set(), aborted.is_set(), elapsed)
        peer_max = int(assoc.acceptor.maximum_length or 0)
        if 0 < peer_max < MIN_PEER_MAX_PDU:
            assoc.abort()
            ae.shutdown()
            raise DicomProtocolError(
                f"the peer accepted the association with a Maximum Length of {peer_max} bytes, below the "
                f"{MIN_PEER_MAX_PDU} the kit works with: aborted", peer=self.address)
        unbind_log_handlers(assoc)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
            ae.shutdown()

    def _tls_failure(self) -> PeerError:
        """Why a TLS association did not open: pynetdicom logs the SSL error and drops it,
        so repeat the connect and handshake once to name the cause."""
        assert self.tls is not None
        try:
            with socket.create_connection((self.host, self.port), timeout=min(self.timeout, 10.0)) as raw, \
                    self.tls.wrap_socket(raw, server_hostname=self.host):
                pass
        except ssl.SSLError as exc:  # includes certificate verification failures
            return TLSError(f"TLS handshake failed: {exc}", peer=self.address)
        except TimeoutError:
            return PeerTimeoutError(f"no TLS connection within {self.timeout:g}s", peer=self.address)
        except OSError as exc:
            return PeerUnreachableError(f"cannot connect: {exc.strerror or exc}", peer=self.address)
        return PeerUnreachableError("the TLS connection failed (a retry of the handshake succeeded)",
                                    peer=self.address)

    def _raise_unestablished(self, assoc: Association, opened: bool, aborted: bool,
                             elapsed: float) -> None:
        peer = self.address
        rj = assoc.acceptor.primitive if assoc.is_rejected else _unread_rejection(assoc)
        if rj is not None:
            result = getattr(rj, "result", None)
            source = getattr(rj, "result_source", None)
            reason = getattr(rj, "diagnostic", None)
            why = {(1, 3): "calling AE title not recognised", (1, 7): "called AE title not recognised",
                   (1, 2): "application context not supported"}.get((source or 0, reason or 0),
                                                                    "association rejected")
            raise AssociationRejectedError(
                f"association rejected: {why} (result {result}, source {source}, reason {reason})",
                peer=peer, result=result, source_=source, reason=reason)
        if not opened:
            if self.tls is not None and elapsed < self.timeout:
                raise self._tls_failure()
            if elapsed >= self.timeout * 0.95:
                raise PeerTimeoutError(f"no connection within {self.timeout:g}s", peer=peer)
            raise PeerUnreachableError("cannot connect (connection refused)", peer=peer)
        if aborted and elapsed < self.timeout * 0.95:
            if not assoc.accepted_contexts and assoc.rejected_contexts:
                raise AssociationRejectedError(
                    "the peer accepted none of the proposed presentation contexts", peer=peer)
            raise AssociationAbortedError("the peer aborted the association request", peer=peer)
        raise PeerTimeoutError(f"no answer to the association request within {self.timeout:g}s",
                               peer=peer)

    def _lost(self, assoc: Association, what: str,
              waited: float) -> AssociationAbortedError | PeerTimeoutError:
        """The error for a DIMSE request that got no response after ``waited`` seconds.

        A wait that ran its course is a timeout, whatever the association's state now:
        pynetdicom aborts the association itself on its DIMSE timeout, before we look.
        """
        if waited >= self.timeout * 0.9:
            return PeerTimeoutError(f"{what}: no response within {self.timeout:g}s", peer=self.address)
        return AssociationAbortedError(f"{what}: the association was aborted", peer=self.address)

    def _broke_off(self, err: AssociationAbortedError | PeerTimeoutError, what: str,
                   done: int) -> AssociationAbortedError | PeerTimeoutError:
        """The error for a transfer that broke off, saying how far it got."""
        reason = str(err).removesuffix(f" ({self.address})")
        kind = PeerTimeoutError if isinstance(err, PeerTimeoutError) else \
            DicomProtocolError if isinstance(err, DicomProtocolError) else AssociationAbortedError
        return kind(f"{what}: {reason} after {done} instance(s)", peer=self.address)

    # -- services ------------------------------------------------------------------------------
