"""Serve incoming C-STORE and C-ECHO straight from an accepted association's socket (I/O).

Shared by the embedded PACS (:class:`kit.dicom.scp.EmbeddedPACS`) and C-MOVE's storage
SCP (:meth:`kit.dicom.dimse.PacsClient.move`): on EVT_ESTABLISHED, with pynetdicom's
reader held from the A-ASSOCIATE-AC on (:func:`~kit.dicom._fastnet.hold_dul` in
EVT_ACCEPTED), a :class:`~kit.dicom._recvphase.ReceiverPhase` reads each message, a
data set past :data:`~kit.dicom._spill.SPILL_AT` kept on disk while it arrives, and
the caller's ``store`` answers it. A release or abort, and any other request with its
PDUs, go to pynetdicom; a message the fast path cannot hand over ends the association
with A-ABORT. Written by hand: pynetdicom holds each data set in memory whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from kit.dicom._command import (
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    NO_DATASET,
    command_int,
    command_str,
    encode_command,
)
from kit.dicom._fastnet import PduInterrupt, release_dul
from kit.dicom._recvphase import ReceiverPhase
from kit.errors import AssociationAbortedError, PeerError, PeerTimeoutError, StoreError

__all__ = ["StoreFn", "serve_established", "serve_stores"]

LOGGER = logging.getLogger(__name__)

#: ``store(sop_class, sop_uid, transfer_syntax, dataset, calling_aet) -> (status, error comment)``;
#: ``dataset`` is the encoded data set without file meta (a read-only memoryview when on disk).
StoreFn = Callable[[str, str, str, "bytes | memoryview", str], tuple[int, str]]

_SUCCESS = 0x0000


def serve_established(assoc: Any, make_phase: Callable[[], ReceiverPhase], store: StoreFn, *,
                      after: Callable[[], None] | None = None,
                      cleanup: Callable[[], None] | None = None) -> None:
    """EVT_ESTABLISHED: :func:`serve_stores` on the phase ``make_phase`` gives, unless pynetdicom
    has already taken a message (then the association stays its own). An error is logged, never
    raised (the phase has aborted the association); ``cleanup`` runs after serving."""
    try:
        phase = make_phase()
    except Exception:  # noqa: BLE001 - never leave pynetdicom's reader on hold
        release_dul(assoc)
        LOGGER.exception("fast path unavailable: association left to pynetdicom")
        return
    calling = str(assoc.requestor.ae_title or "")
    try:
        with phase:
            if assoc.dimse.message is not None or not assoc.dimse.msg_queue.empty() \
                    or not assoc.dul.event_queue.empty():
                return  # pynetdicom already took a message: leave the association to it
            try:
                serve_stores(assoc, phase, store, after)
            finally:
                if cleanup is not None:
                    cleanup()
    except PeerTimeoutError:
        LOGGER.error("network timeout: association from %s aborted", calling)
    except (PeerError, StoreError) as exc:
        LOGGER.warning("association from %s aborted: %s", calling, exc)
    except Exception as exc:  # noqa: BLE001 - a handler must not raise; the phase aborted
        LOGGER.exception("association from %s aborted: %s", calling, exc)


def serve_stores(assoc: Any, phase: ReceiverPhase, store: StoreFn,
                 after: Callable[[], None] | None = None) -> None:
    """Answer C-STORE (by ``store``, then ``after``) and C-ECHO on ``phase`` until the peer
    releases or aborts, or sends another request: those are handed to pynetdicom.

    Raises
    ------
    kit.errors.AssociationAbortedError
        A message on a context not accepted, or one the fast path can neither serve nor
        hand over (past SPILL_AT, or sharing a PDU with another).
    """
    contexts = {int(cx.context_id): cx for cx in assoc.accepted_contexts if cx.context_id is not None}
    calling = str(assoc.requestor.ae_title or "")
    while True:
        try:
            msg = phase.recv()
        except PduInterrupt as exc:  # A-RELEASE-RQ or A-ABORT: pynetdicom's job
            phase.hand_over([exc.raw])
            return
        cx = contexts.get(msg.context_id)
        if cx is None:
            raise AssociationAbortedError(f"DIMSE message on unknown presentation context {msg.context_id}")
        field, sop_class = msg.command_field, command_str(msg.command, 0x0002)
        message_id = command_int(msg.command, 0x0110) or 0
        if field == C_STORE_RQ and sop_class == str(cx.abstract_syntax) and msg.dataset is not None:
            sop_uid = command_str(msg.command, 0x1000)
            status, comment = store(sop_class, sop_uid, str(cx.transfer_syntax[0]), msg.dataset, calling)
            fields: dict[int, int | str] = {
                0x00000002: sop_class, 0x00000100: C_STORE_RSP, 0x00000120: message_id,
                0x00000800: NO_DATASET, 0x00000900: status, 0x00001000: sop_uid}
            if comment:
                fields[0x00000902] = comment[:64]
            phase.send(msg.context_id, encode_command(fields))
            if after is not None:
                after()
        elif field == C_ECHO_RQ and sop_class == str(Verification) == str(cx.abstract_syntax):
            phase.send(msg.context_id, encode_command({
                0x00000002: sop_class, 0x00000100: C_ECHO_RSP, 0x00000120: message_id,
                0x00000800: NO_DATASET, 0x00000900: _SUCCESS}))
        elif phase.whole_pdus and phase.raw:  # C-FIND, C-GET, C-MOVE...: pynetdicom serves
            phase.hand_over(phase.raw)
            return
        elif phase.raw is None:  # past SPILL_AT: not kept raw (C-STOREs are served above)
            raise AssociationAbortedError(f"a {msg.dataset and len(msg.dataset):,}-byte data set the "
                                          "fast path does not serve (not a C-STORE on its context)")
        else:
            raise AssociationAbortedError("cannot hand a message that shares a PDU to pynetdicom")
