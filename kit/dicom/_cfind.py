"""C-FIND response collection for :mod:`kit.dicom.dimse`: statuses, timing, ``limit`` with C-CANCEL
and the memory bounds on what a PACS sends.

With a ``limit``, the matches are collected until one more than ``limit``
arrives (which proves the PACS has more); then a C-CANCEL is sent
(pynetdicom's :meth:`~pynetdicom.association.Association.send_c_cancel`) and the
remaining responses are read up to the final one (Cancel, 0xFE00, or Success),
so the association is released cleanly; a PACS that ignores the C-CANCEL and
keeps sending gets the association aborted after :data:`MAX_AFTER_CANCEL`
further responses.

Memory. pynetdicom assembles a DIMSE message from any number of P-DATA-TF PDUs, in memory,
and queues every message a peer sends without waiting for the caller. On a C-FIND association
:class:`IdentifierBound` (installed in the client's PDU reader,
:func:`kit.dicom._guard.read_bounded_pdu`, on the network thread) counts the data set bytes of
the message being assembled as its fragments arrive: one past ``max_identifier_bytes`` (default
:data:`MAX_IDENTIFIER_BYTES`) is answered with A-ABORT there, before the rest is read, and the
C-FIND raises :class:`~kit.errors.AssociationAbortedError`; no further PDU is read while
:data:`READ_AHEAD` whole messages wait for the caller. :func:`collect_find` adds up the data set
bytes of the matches it keeps: past ``max_find_bytes`` (default :data:`MAX_FIND_BYTES`) it sends
C-CANCEL, drops them and raises :class:`~kit.errors.DicomError` (a user who asked for every match
gets an error, not some of them). C-GET associations have no such bound: their C-STORE
sub-operations carry whole images (and are read by :mod:`kit.dicom._clientphase`, to disk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from kit._truncate import warn_truncated
from kit.dicom._guard import MessageBound
from kit.errors import AssociationAbortedError, DicomError, DimseStatusError, InvalidInputError, KitError

__all__ = ["MAX_AFTER_CANCEL", "MAX_COMMAND_BYTES", "MAX_FIND_BYTES", "MAX_IDENTIFIER_BYTES", "READ_AHEAD",
           "IdentifierBound", "check_bytes", "collect_find", "final_status", "is_pending", "is_success",
           "status_int", "timed"]

T = TypeVar("T")

#: Pending responses read after a C-CANCEL before giving up on the PACS stopping (then A-ABORT).
MAX_AFTER_CANCEL = 1000
#: C-FIND status: matching terminated due to Cancel
CANCELLED = 0xFE00
#: Default bound on the data set (identifier) of one C-FIND response, in bytes (a real one is a few KB).
MAX_IDENTIFIER_BYTES = 16 * 1024 * 1024
#: Default bound on the identifiers one C-FIND collects, in bytes (a million matches of 500 bytes).
MAX_FIND_BYTES = 512 * 1024 * 1024
#: Bound on the command set of one message on a C-FIND association (a real one is ~100 bytes).
MAX_COMMAND_BYTES = 64 * 1024
#: Whole messages the network thread reads ahead of the caller on a C-FIND association.
READ_AHEAD = 2


def timed(responses: Iterable[T]) -> Iterator[tuple[float, T]]:
    """Each response with the seconds waited for it."""
    start = time.monotonic()
    for item in responses:
        yield time.monotonic() - start, item
        start = time.monotonic()


def status_int(status: Dataset | None) -> int | None:
    """The Status of a response dataset (None when no response arrived)."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def is_success(code: int) -> bool:
    """Whether ``code`` is DIMSE Success."""
    return code == 0x0000


def is_pending(code: int) -> bool:
    """Whether ``code`` is Pending (more responses follow)."""
    return code in (0xFF00, 0xFF01)


def final_status(responses: Iterable[tuple[Dataset, Any]]) -> tuple[Dataset | None, float]:
    """The last (non-pending) status of a C-GET/C-MOVE and the seconds waited for it."""
    last: Dataset | None = None
    waited = 0.0
    for waited, (status, _ident) in timed(responses):  # noqa: B007 - waited is used after the loop
        last = status
        code = status_int(status)
        if code is None or not is_pending(code):
            break
    return last, waited


def check_bytes(name: str, value: int) -> int:
    """``value`` checked as a bound in bytes: an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be an integer > 0 (bytes), got {value!r}")
    return value


class IdentifierBound(MessageBound):
    """The data set and command set bytes of the DIMSE message a C-FIND association is receiving,
    counted by :func:`kit.dicom._guard.read_bounded_pdu` on the network thread as each P-DATA-TF
    arrives (PDV message control header: bit 0 command/data set, bit 1 last fragment).

    A data set past ``limit`` bytes, or a command set past :data:`MAX_COMMAND_BYTES`, ends the
    association there (A-ABORT; :attr:`tripped` says why). The size of each whole data set is
    queued for :func:`collect_find` (:meth:`next_size`), and no further PDU is read while
    :data:`READ_AHEAD` whole messages wait for the caller.
    """

    __slots__ = ("command", "tripped")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.command = 0
        self.tripped: str | None = None

    def add(self, body: bytes, counted: bool = True) -> str | None:
        """Count the PDVs of a P-DATA-TF body; None, or why the association must end. A malformed
        body is left to pynetdicom."""
        pos, end = 0, len(body)
        while pos + 6 <= end:
            stop = pos + 4 + int.from_bytes(body[pos:pos + 4], "big")
            size = max(min(stop, end) - pos - 6, 0)
            control = body[pos + 5]
            if control & 0x01:
                self.command += size
                if self.command > MAX_COMMAND_BYTES:
                    self.tripped = f"a response whose command set passed {MAX_COMMAND_BYTES} bytes"
                    return self.tripped
                if control & 0x02:
                    self.command = 0
            else:
                self.pending += size
                if self.pending > self.limit:
                    self.tripped = (f"a response whose data set passed {self.limit} bytes "
                                    "(max_identifier_bytes)")
                    return self.tripped
                if control & 0x02:
                    self.sizes.append(self.pending)
                    self.pending = 0
            pos = stop
        return None

    def waiting(self, dul: Any) -> bool:
        """Whether :data:`READ_AHEAD` whole messages wait for the caller (then nothing is read:
        the peer's bytes wait in TCP's buffers, not in memory)."""
        return dul.state_machine.current_state == "Sta6" and dul.assoc.dimse.msg_queue.qsize() >= READ_AHEAD

    def next_size(self) -> int:
        """The bytes of the next whole data set received (0 if none is left to account for)."""
        return self.sizes.popleft() if self.sizes else 0


def collect_find(assoc: Association, identifier: Dataset, sop_class: str, what: str, *,
                 limit: int | None, peer: str, lost: Callable[[Association, str, float], KitError],
                 bound: IdentifierBound | None = None, max_bytes: int | None = None) -> list[Dataset]:
    """The matches of one C-FIND on ``assoc``, at most ``limit`` (warning when that cut them).

    ``bound`` is the association's :class:`IdentifierBound` (its PDU reader's); with it, the
    matches' data sets may add up to ``max_bytes``: past that, C-CANCEL and
    :class:`~kit.errors.DicomError`. A data set past the bound's own limit aborted the
    association: :class:`~kit.errors.AssociationAbortedError`.
    """
    matches: list[Dataset] = []
    cancelled = over = False
    after_cancel = held = over_after = 0
    for waited, (status, ident) in timed(assoc.send_c_find(identifier, sop_class)):
        code = status_int(status)
        if code is None:
            if cancelled:  # the PACS dropped the association after our C-CANCEL: we have our matches
                break
            if bound is not None and bound.tripped is not None:
                raise AssociationAbortedError(f"{what}: the PACS sent {bound.tripped}: aborted", peer=peer)
            raise lost(assoc, what, waited)
        if is_pending(code):
            # sizes queue in message order; one pynetdicom could not decode (ident None) shifts them by one
            size = bound.next_size() if bound is not None and ident is not None else 0
            if cancelled:
                after_cancel += 1
                if after_cancel > MAX_AFTER_CANCEL:
                    assoc.abort()
                    break
            elif ident is not None:
                if limit is not None and len(matches) >= limit:
                    assoc.send_c_cancel(1, query_model=sop_class)
                    cancelled = True
                    warn_truncated(what, limit)
                elif max_bytes is not None and held + size > max_bytes:
                    assoc.send_c_cancel(1, query_model=sop_class)
                    cancelled = over = True
                    over_after = len(matches)
                    matches.clear()  # the caller gets an error, not these
                else:
                    held += size
                    matches.append(ident)
            continue
        if not over and not (is_success(code) or (cancelled and code == CANCELLED)):
            raise DimseStatusError(what, status=code, peer=peer)
        break
    if over:
        raise DicomError(f"{what}: the matches' identifiers passed {max_bytes} bytes (max_find_bytes) "
                         f"after {over_after} match(es): C-CANCEL sent; narrow the query or raise "
                         "max_find_bytes", peer=peer)
    return matches
