"""The embedded PACS answers a repeated A-ASSOCIATE-RQ with pynetdicom's own earlier answer.

Accepting an association costs pynetdicom ~10 ms of CPU for storescu's 128
proposed contexts (decoding the request and validating every UID, the
negotiation, building and encoding the A-ASSOCIATE-AC), paid again for every
association although senders propose the same contexts each time. For a
request of the common shape (:func:`kit.dicom._rq_shape.request_key`: no role
selection, extended negotiation, user identity or asynchronous operations),
:class:`AcceptCache` lets the first association with given proposal bytes run
through pynetdicom unchanged and records its outcome (the request primitive,
the negotiated contexts, the A-ASSOCIATE-AC bytes); a later association with
the same bytes (and the same pynetdicom settings and AE values the answer depends
on, :func:`_key`) then skips only the costly steps:

- the request is not decoded again: the DUL gets a copy of the recorded primitive
  with this request's AE titles (set through pynetdicom's own setters);
- pynetdicom's ACSE runs as always (AE title checks, association limit,
  EVT_REQUESTED/ACCEPTED/ESTABLISHED, rejections), except that the presentation
  context negotiation returns copies of the recorded result;
- the A-ASSOCIATE-AC sent is the recorded one with this request's AE titles.

Everything else (other shapes, a logger on DEBUG, a request pynetdicom rejected or
aborted) goes through pynetdicom as before, delivered by :func:`deliver_checked` (also
the PACS's delivery with ``fast=False``): a request pynetdicom's threads would die on is
aborted at once instead of holding its connection and association place. Tested
byte-equal to pynetdicom on real, generated and hostile requests. Checked against
pynetdicom 3.0.4 (``DULServiceProvider._recv_pdu`` / ``_decode_pdu`` / ``event_queue`` /
``to_provider_queue`` / ``_send`` / ``state_machine``,
``fsm.AE_6``/``AE_7``, ``acse.negotiate_as_acceptor``, ``ACSE.negotiate_association``,
``Association.acse_timeout``, ``A_ASSOCIATE`` primitive attributes).
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pynetdicom.acse
from pynetdicom import _config, evt
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from kit.dicom._rq_shape import request_key

__all__ = ["ABORT_WAIT", "AcceptCache", "deliver_checked", "fingerprint"]

LOGGER = logging.getLogger(__name__)


def _copy_context(cx: PresentationContext) -> PresentationContext:
    new = PresentationContext.__new__(PresentationContext)
    new.__dict__.update(cx.__dict__)
    new._transfer_syntax = list(cx._transfer_syntax)
    return new


class _Proposed(list[PresentationContext]):
    """The proposed contexts of a replayed request, carrying the recorded negotiation result."""

    def __init__(self, contexts: Sequence[PresentationContext],
                 result: Sequence[PresentationContext]) -> None:
        super().__init__(contexts)
        self.result = tuple(result)


_ORIGINAL_NEGOTIATE = pynetdicom.acse.negotiate_as_acceptor


def _negotiate(rq_contexts: Any, ac_contexts: Any, roles: Any = None) -> Any:
    """``acse.negotiate_as_acceptor``: the recorded result for a replayed request, else pynetdicom's."""
    if type(rq_contexts) is _Proposed and not roles:
        return [_copy_context(cx) for cx in rq_contexts.result], []
    return _ORIGINAL_NEGOTIATE(rq_contexts, ac_contexts, roles)


if getattr(pynetdicom.acse.negotiate_as_acceptor, "__module__", "") != __name__:
    pynetdicom.acse.negotiate_as_acceptor = _negotiate


class _Replayed:
    """Stands in for the decoded A_ASSOCIATE_RQ PDU that ``fsm.AE_6`` takes from the DUL,
    with its primitive built already."""

    def __init__(self, primitive: A_ASSOCIATE, protocol_version: int = 0x0001) -> None:
        self._primitive = primitive
        self.protocol_version = protocol_version

    def to_primitive(self) -> A_ASSOCIATE:
        return self._primitive


#: Seconds an association given up on (a request pynetdicom cannot decode or negotiate) waits
#: for its peer to read the A-ABORT and close, instead of the ACSE timeout.
ABORT_WAIT = 0.5


def deliver_checked(dul: Any, raw: bytes) -> bool:
    """Give the DUL this request as pynetdicom's reader would (for :func:`kit.dicom._guard.
    deliver_request`; True: delivered), without the three ways a hostile request left pynetdicom's
    threads dead or waiting (each holding the connection, and an association place, for the ACSE
    timeout or for ever):

    - its primitive is built here, not in ``fsm.AE_6`` on the DUL thread (an even or zero
      presentation context ID raises there and kills that thread, the request unanswered);
    - a request that cannot be decoded or built is answered with an A-ABORT (Evt19, as the DUL
      answers an unrecognised PDU) and its association gives up after :data:`ABORT_WAIT`;
    - an exception in the negotiation (e.g. IndexError on a context whose transfer syntaxes are
      all empty) aborts the association instead of ending its thread with the DUL left open.
    """
    assoc = dul.assoc
    _guard_negotiation(assoc)
    try:
        pdu, event = dul._decode_pdu(bytearray(raw))
        if isinstance(pdu, A_ASSOCIATE_RQ):
            pdu = _Replayed(pdu.to_primitive(), pdu.protocol_version)
    except Exception as exc:  # noqa: BLE001 - whatever pynetdicom raises on hostile bytes
        LOGGER.info("A-ASSOCIATE-RQ not decodable, aborted: %s", exc)
        assoc.acse_timeout = ABORT_WAIT
        dul.event_queue.put("Evt19")
        return True
    dul._recv_pdu.put(pdu)
    dul.event_queue.put(event)
    return True


def _guard_negotiation(assoc: Any) -> None:
    negotiate: Callable[[], None] = assoc.acse.negotiate_association

    def guarded() -> None:
        try:
            negotiate()
        except Exception:  # noqa: BLE001 - a hostile request must not leave the DUL and socket open
            LOGGER.warning("A-ASSOCIATE-RQ from %s could not be negotiated: aborted",
                           assoc.requestor.ae_title, exc_info=True)
            assoc.acse_timeout = ABORT_WAIT
            assoc.abort()

    assoc.acse.negotiate_association = guarded


class _Entry:
    """What pynetdicom made of one request: its primitive, negotiated contexts and AC bytes."""

    __slots__ = ("ac", "primitive", "result")

    def __init__(self, primitive: A_ASSOCIATE, result: Sequence[PresentationContext], ac: bytes) -> None:
        self.primitive = copy.copy(primitive)
        self.primitive._presentation_context_definition_list = [
            _copy_context(cx) for cx in primitive.presentation_context_definition_list]
        self.primitive._user_information = list(primitive.user_information)
        self.result = tuple(_copy_context(cx) for cx in result)
        self.ac = ac

    def replay(self, raw: bytes) -> tuple[A_ASSOCIATE, bytes]:
        """This request's primitive and A-ASSOCIATE-AC (ValueError, TypeError or
        UnicodeError where pynetdicom's own decoding or encoding of the AE titles fails)."""
        titles = A_ASSOCIATE_RQ()
        titles.called_ae_title = raw[10:26]  # pynetdicom's own conversion (strip, validate)
        titles.calling_ae_title = raw[26:42]
        primitive = copy.copy(self.primitive)
        primitive._presentation_context_definition_list = _Proposed(
            self.primitive.presentation_context_definition_list, self.result)
        primitive._user_information = list(self.primitive.user_information)
        primitive.called_ae_title = titles.called_ae_title
        primitive.calling_ae_title = titles.calling_ae_title
        called = primitive.called_ae_title.ljust(16).encode("ascii")
        calling = primitive.calling_ae_title.ljust(16).encode("ascii")
        if len(called) != 16 or len(calling) != 16:
            raise ValueError("AE title longer than 16 bytes")
        return primitive, self.ac[:10] + called + calling + self.ac[42:]


def fingerprint(ae: Any, contexts: Sequence[PresentationContext]) -> str:
    """What an AE's answer depends on besides the request: its supported contexts (with
    roles), maximum PDU length and implementation UID/version (the AE title checks are
    pynetdicom's, made for every association)."""
    digest = hashlib.sha256()
    for cx in contexts:
        digest.update(repr((str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax],
                            cx.scu_role, cx.scp_role)).encode())
    digest.update(repr((ae.maximum_pdu_size, str(ae.implementation_class_uid),
                        ae.implementation_version_name)).encode())
    return digest.hexdigest()


_Key = tuple[Any, ...]


def _key(body: bytes, acceptor: Any) -> _Key:
    """The request's bytes after the AE titles, with everything else pynetdicom's answer to
    them depends on that may change while serving: its process-wide settings that decode
    (CODECS, the UID validator, UID conformance) and negotiate (unrestricted storage), and
    what it reads from the AE for each association (maximum PDU length, implementation class
    UID and version name). The supported contexts are the cache's (:func:`fingerprint`)."""
    return (body, bool(_config.UNRESTRICTED_STORAGE_SERVICE), bool(_config.ENFORCE_UID_CONFORMANCE),
            tuple(_config.CODECS), _config.VALIDATORS.get("UI"), acceptor.maximum_length,
            str(acceptor.implementation_class_uid), acceptor.implementation_version_name)


_SHARED: collections.OrderedDict[str, AcceptCache] = collections.OrderedDict()
_SHARED_LOCK = threading.Lock()


class AcceptCache:
    """Recorded answers to common-shape requests (see the module docstring), shared by the
    servers of one process whose AEs answer alike (:meth:`shared`).

    Parameters
    ----------
    max_entries : int
        Distinct proposals remembered (the oldest is forgotten first); each key is at
        most :data:`kit.dicom._rq_shape.MAX_KEY` bytes, so the cache stays small.
    """

    @classmethod
    def shared(cls, key: str, *, max_caches: int = 8) -> AcceptCache:
        """The cache of the servers whose AEs have the :func:`fingerprint` ``key`` (a PACS
        started again, e.g. in the next cell of a notebook, answers from the start)."""
        with _SHARED_LOCK:
            cache = _SHARED.get(key)
            if cache is None:
                cache = _SHARED[key] = cls()
                while len(_SHARED) > max_caches:
                    _SHARED.popitem(last=False)
            _SHARED.move_to_end(key)
            return cache

    def __init__(self, max_entries: int = 16) -> None:
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[_Key, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        #: Associations answered from the cache, and recorded (for tests and tuning).
        self.replayed = 0
        self.recorded = 0

    def deliver(self, dul: Any, raw: bytes) -> bool:
        """Give the DUL this request as pynetdicom would, replayed if recorded before.

        Returns True (delivered): replayed, or else decoded by :func:`deliver_checked` (a
        first request of a common shape is then recorded once pynetdicom answers it).
        """
        if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG) \
                or pynetdicom.acse.negotiate_as_acceptor is not _negotiate:
            # pynetdicom's handlers log the decoded PDUs; or someone replaced the negotiation
            return deliver_checked(dul, raw)
        body = request_key(raw)
        if body is None:
            return deliver_checked(dul, raw)
        key = _key(body, dul.assoc.acceptor)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            self._record_when_sent(dul, key)
            return deliver_checked(dul, raw)
        try:
            primitive, ac = entry.replay(raw)
        except (ValueError, TypeError, UnicodeError):
            return deliver_checked(dul, raw)  # pynetdicom meets the same AE title and answers as it does
        _guard_negotiation(dul.assoc)
        machine = dul.state_machine
        machine.do_action = functools.partial(_do_action, machine, machine.do_action, ac)
        dul._recv_pdu.put(_Replayed(primitive))
        dul.event_queue.put("Evt6")
        with self._lock:
            self.replayed += 1
        return True

    def _record_when_sent(self, dul: Any, key: _Key) -> None:
        original: Callable[[Any], None] = dul._send

        def send(pdu: Any) -> None:
            if isinstance(pdu, A_ASSOCIATE_AC):
                dul._send = original  # once
                try:
                    self._record(key, dul.assoc, pdu.encode())
                except Exception:  # noqa: BLE001 - recording is an optimisation only
                    LOGGER.debug("A-ASSOCIATE-AC not recorded", exc_info=True)
            original(pdu)

        dul._send = send

    def _record(self, key: _Key, assoc: Any, ac: bytes) -> None:
        if assoc.acceptor.extended_negotiation or assoc.acceptor._common_ext:
            return  # negotiation items in the answer (none for this shape): not replayed
        result = sorted([*assoc._accepted_cx.values(), *assoc._rejected_cx], key=lambda cx: cx.context_id)
        entry = _Entry(assoc.requestor.primitive, result, ac)
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            self.recorded += 1


def _do_action(machine: Any, original: Callable[[str], None], ac: bytes, event: str) -> None:
    """The DUL state machine of a replayed association: AE-7 (Sta3 + Evt7, the accept)
    sends the recorded A-ASSOCIATE-AC; every other transition is pynetdicom's."""
    if event != "Evt7" or machine.current_state != "Sta3":
        original(event)
        return
    dul = machine.dul
    machine.do_action = original  # once: what it wrapped from here on (pynetdicom's, or a guard)
    dul.to_provider_queue.get(False)  # the A-ASSOCIATE (accept) primitive, as AE_7 takes it
    dul.socket.send(ac)
    evt.trigger(dul.assoc, evt.EVT_FSM_TRANSITION, {
        "action": "AE-7", "current_state": "Sta3", "fsm_event": "Evt7", "next_state": "Sta6"})
    machine.transition("Sta6")
