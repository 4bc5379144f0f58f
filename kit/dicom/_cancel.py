"""Stopping a C-GET or C-MOVE part-way: the per-instance check and C-CANCEL (PS3.7 9.3.2.3, 9.3.3.3).

A retrieve stops when the caller's ``cancel`` (a :class:`threading.Event` or a
callable returning True) is set, or when its per-instance hook raises (the
cohort pull's limiter raises :class:`~kit.cohort.limiter.Stopped` there). The
check runs after each instance is written: the hook's exception is kept, not
turned into a failure status for that C-STORE (which let the retrieve go on to
the end of the study), and the retrieve is cancelled:

- C-GET (our thread owns the socket, :mod:`kit.dicom._fastnet`): C-CANCEL-RQ,
  then the sub-operations still in flight are refused (0xA700, nothing written)
  up to the final C-GET-RSP, within :data:`GRACE` seconds, and the association
  is released; a peer that goes on past the grace is aborted.
- C-MOVE (instances arrive on the storage SCP's thread):
  :func:`cancel_move` sends C-CANCEL-RQ on the C-MOVE association from that
  thread and aborts it after :data:`GRACE` seconds if the PACS has not ended
  the C-MOVE by then.

The retrieve then raises the hook's own exception, or the caller's
cancelled error (:class:`kit.dicom.dimse.RetrieveCancelledError`).

Written by hand: the command set is :func:`kit.dicom._command.encode_command`'s,
pynetdicom's ``send_c_cancel`` for C-MOVE.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["C_CANCEL_RQ", "GRACE", "REFUSED", "RetrieveCancel", "cancel_move", "drain_get"]

#: (0000,0100) Command Field of a C-CANCEL-RQ
C_CANCEL_RQ = 0x0FFF
#: C-STORE status for a sub-operation that arrives after our C-CANCEL (Refused: out of resources)
REFUSED = 0xA700
#: Seconds a peer gets to end a retrieve after our C-CANCEL before we abort the association.
GRACE = 3.0


class RetrieveCancel:
    """One retrieve's stop state: the caller's ``cancel`` and its per-instance hook ``on_file``.

    Parameters
    ----------
    cancel : threading.Event or callable, optional
        Set (or returning True) to stop the retrieve; checked after each instance.
    on_file : callable, optional
        Called after each instance is written (progress, rate limit); if it
        (or ``cancel``) raises, the retrieve is cancelled and that exception is
        raised again.
    """

    def __init__(self, cancel: threading.Event | Callable[[], bool] | None,
                 on_file: Callable[[], None] | None) -> None:
        self._cancel: Callable[[], bool] | None = \
            cancel.is_set if isinstance(cancel, threading.Event) else cancel
        self._on_file = on_file
        self._lock = threading.Lock()
        self._fired = False
        self._on_cancel: Callable[[], None] | None = None
        #: the exception the per-instance hook raised (the first one)
        self.hook_error: BaseException | None = None

    @property
    def fired(self) -> bool:
        """Whether the retrieve was asked to stop."""
        return self._fired

    def requested(self) -> bool:
        """Whether the retrieve must stop (asked by ``cancel`` or by the hook); fires once."""
        if self._fired:
            return True
        asked = self.hook_error is not None
        if not asked and self._cancel is not None:
            try:
                asked = bool(self._cancel())
            except Exception as exc:  # noqa: BLE001 - a failing check stops the retrieve: raised again
                self._keep(exc)
                asked = True
        if not asked:
            return False
        with self._lock:
            if self._fired:
                return True
            self._fired = True
            action = self._on_cancel
        if action is not None:
            action()
        return True

    def arm(self, action: Callable[[], None]) -> None:
        """Run ``action`` (e.g. send C-CANCEL) when the retrieve is asked to stop (now, if it was)."""
        with self._lock:
            self._on_cancel = action
            fired = self._fired
        if fired:
            action()

    def tick(self) -> None:
        """The per-instance hook for :class:`~kit.dicom._fastnet.FileReceiver` (never raises)."""
        if self._fired:
            return  # a sub-operation still in flight after the cancel: no more waits or counts
        if self._on_file is not None:
            try:
                self._on_file()
            except Exception as exc:  # noqa: BLE001 - kept and raised again by the retrieve
                self._keep(exc)
        self.requested()

    def _keep(self, exc: Exception) -> None:
        with self._lock:
            if self.hook_error is None:
                self.hook_error = exc

    @contextlib.contextmanager
    def raising(self, error: Callable[[], Exception]) -> Iterator[None]:
        """Around the retrieve: once it was asked to stop, raise the hook's exception or ``error()``
        (also in place of the error the cancelled retrieve itself ended with)."""
        try:
            yield
        except Exception as exc:
            if self._fired:
                raise self._error(error) from exc
            raise
        if self._fired:
            raise self._error(error)

    def _error(self, error: Callable[[], Exception]) -> BaseException:
        return self.hook_error if self.hook_error is not None else error()


def cancel_move(assoc: Any, query_model: str, grace: float = GRACE) -> threading.Timer:
    """Send C-CANCEL-RQ for the C-MOVE (message ID 1) on ``assoc`` and abort it after ``grace``
    seconds unless it ended; the timer (cancel it once the C-MOVE is over).

    Safe from another thread (pynetdicom queues the PDUs for its network thread).
    """
    with contextlib.suppress(Exception):  # the association may have ended meanwhile
        assoc.send_c_cancel(1, query_model=query_model)

    def abort() -> None:
        with contextlib.suppress(Exception):
            if assoc.is_established:
                assoc.abort()
            # wake send_c_move's wait for the next response (it would sit out its DIMSE timeout)
            assoc.dimse.msg_queue.put((None, None))

    timer = threading.Timer(grace, abort)
    timer.daemon = True
    timer.start()
    return timer


def drain_get(phase: Any, context_id: int) -> dict[str, Any]:
    """C-CANCEL a C-GET on ``phase`` (a :class:`~kit.dicom._fastnet.DataPhase`; the C-GET is message 1)
    and read up to its final C-GET-RSP within :data:`GRACE` seconds; its status fields.

    Sub-operations still in flight are answered 0xA700 and not written.

    Raises
    ------
    PeerTimeoutError
        The peer did not end the C-GET within the grace (the data phase then aborts).
    AssociationAbortedError
        The connection broke; :class:`~kit.errors.DicomProtocolError` if the peer answered
        with something else.
    """
    import time

    from kit.dicom._command import (
        C_GET_RSP,
        C_STORE_RQ,
        C_STORE_RSP,
        NO_DATASET,
        command_int,
        command_str,
        encode_command,
        status_fields,
    )
    from kit.errors import DicomProtocolError, PeerTimeoutError

    phase.send(context_id, encode_command({0x00000100: C_CANCEL_RQ, 0x00000120: 1,
                                           0x00000800: NO_DATASET}))
    deadline = time.monotonic() + GRACE
    sock = phase._sock
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeoutError(f"the peer did not end the C-GET within {GRACE:g}s of "
                                       f"C-CANCEL", peer=phase.peer)
            sock.settimeout(min(left, phase.timeout) if phase.timeout else left)
            msg = phase.recv()
            if msg.command_field == C_STORE_RQ:
                sop_uid, sop_cls = command_str(msg.command, 0x1000), command_str(msg.command, 0x0002)
                phase.send(msg.context_id, encode_command({
                    0x00000002: sop_cls, 0x00000100: C_STORE_RSP,
                    0x00000120: command_int(msg.command, 0x0110) or 0, 0x00000800: NO_DATASET,
                    0x00000900: REFUSED, 0x00001000: sop_uid}))
            elif msg.command_field == C_GET_RSP:
                fields = status_fields(msg.command)
                if fields["Status"] not in (0xFF00, 0xFF01):
                    return fields
            else:
                raise DicomProtocolError(f"unexpected DIMSE command 0x{msg.command_field:04X} "
                                         "after C-CANCEL", peer=phase.peer)
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(phase.timeout)
