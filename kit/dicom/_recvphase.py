"""The embedded PACS's data phase (incoming C-STORE and C-ECHO): fewer system calls per instance.

:class:`ReceiverPhase` is :class:`kit.dicom._clientphase.ClientPhase` (blocking
socket, timeouts in the kernel, PDUs cut out of reads of up to 256 KiB, bytes read
past the last message handed to pynetdicom whole) with what a server owes hostile
peers on top: the raw PDUs of each message kept (``keep_raw``, to hand a request
the fast path does not serve to pynetdicom) and a PDU that must arrive whole within
``pdu_timeout`` once its header has, as :class:`kit.dicom._fastnet.DataPhase`
enforces it.

Measured with 4 storescu senders (small CT): DataPhase's reads cost per instance
4 ``poll`` + 4 ``recvfrom`` + 4 ``ioctl`` (a Python socket with a timeout polls
before each call, and the PDU deadline set and reset the timeout around each body)
plus a ``poll`` before the response's ``sendto``; here a PDU's body mostly comes
with its header, the data set's PDU with the command's, and a body that has not
arrived yet is waited for with one ``poll`` bounded by the PDU deadline (a read
with ``MSG_DONTWAIT`` first, so nothing is set and reset on the socket). Each
system call saved is also a release and re-acquisition of the GIL, which on a
busy machine with one thread per association is a context switch.

A TLS socket keeps a Python timeout (ClientPhase leaves it so); its body reads
set the timeout to the deadline's remainder, as DataPhase does. Written by hand
(no library does it); the framing and limits are DataPhase's.
"""

from __future__ import annotations

import os
import time

from pynetdicom.association import Association

from kit.dicom._clientphase import ClientPhase

__all__ = ["ReceiverPhase"]


class ReceiverPhase(ClientPhase):
    """The acceptor's data phase: ClientPhase's reads, raw PDUs kept, a PDU deadline.

    Parameters
    ----------
    assoc : Association
        An established association on which we are the acceptor.
    timeout : float or None
        Seconds to wait for each read or write on the socket (the idle timeout).
    peer : str
        The peer's address, for error messages.
    pdu_timeout : float
        Seconds within which a PDU must arrive whole once its header has (a peer
        trickling a PDU is sent A-ABORT and the connection shut down).
    spill_dir, max_dataset
        As for :class:`~kit.dicom._fastnet.DataPhase`: where a large data set is kept
        while it arrives, and the most bytes one may have.
    """

    def __init__(self, assoc: Association, timeout: float | None, peer: str, *,
                 pdu_timeout: float, spill_dir: str | os.PathLike[str] | None = None,
                 max_dataset: int | None = None) -> None:
        super().__init__(assoc, timeout, peer, keep_raw=True, spill_dir=spill_dir, max_dataset=max_dataset)
        self.pdu_timeout = pdu_timeout
        self._pdu_seconds = pdu_timeout  # a float: pdu_timeout as the base class types it may be None
        self._deadline: float | None = None  # set while a PDU's body is read

    def _recv_pdu(self) -> tuple[int, bytearray]:
        self._deadline = None
        kind, length = self._recv_header()  # the idle wait
        self._deadline = time.monotonic() + self._pdu_seconds  # the body: whole within the deadline
        try:
            return kind, self._recv_body(length)
        finally:
            self._deadline = None

    def _recv_some(self, view: memoryview) -> int:
        deadline = self._deadline
        if deadline is None:
            return super()._recv_some(view)
        if not self._kernel:
            return self._recv_timed(view, deadline)
        return self._recv_polled(view, deadline)
