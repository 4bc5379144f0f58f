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
C-FIND raises :class:`~kit.errors.DicomProtocolError`; no further PDU is read while
:data:`READ_AHEAD` whole messages wait for the caller. :func:`collect_find` adds up the data set
bytes of the matches it keeps: past ``max_find_bytes`` (default :data:`MAX_FIND_BYTES`) it sends
C-CANCEL, drops them and raises :class:`~kit.errors.DicomError` (a user who asked for every match
gets an error, not some of them). C-GET associations have no such bound: their C-STORE
sub-operations carry whole images (and are read by :mod:`kit.dicom._clientphase`, to disk).
"""

from __future__ import annotations

import collections
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from kit._truncate import warn_truncated
from kit.dicom._guard import MessageBound
from kit.errors import DicomError, DicomProtocolError, DimseStatusError, KitError

__all__ = ["MAX_AFTER_CANCEL", "MAX_COMMAND_BYTES", "MAX_FIND_BYTES", "MAX_IDENTIFIER_BYTES", "READ_AHEAD",
           "DataSetWalk", "IdentifierBound", "collect_find", "final_status", "is_pending",
           "is_success", "status_int", "timed", "unreadable"]

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


#: Explicit VRs whose header has a 4-byte length after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_UNDEFINED = 0xFFFFFFFF
#: A header's group, element and next 4 bytes (Implicit VR: the length; Explicit: VR and length)
_HEAD = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}
_LENGTH = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"


class DataSetWalk:
    """The element structure of one data set, walked as its fragments arrive (headers only, values
    skipped by their lengths): :meth:`end` says whether the data set ends where its last element
    does. pydicom does not say: a value running past the end is kept cut, a header cut short or
    bytes it cannot walk are dropped (a match of nulls, or none).

    The data set is taken as Explicit VR when its first header has a VR where one would be (two
    capitals), else Implicit, and so is each item of undefined length in Explicit VR (in Implicit
    VR its items are too): pydicom's own guess, so a PACS that encodes against its transfer syntax
    is walked as pydicom reads it. An element or item of undefined length opens a level its
    delimiter closes; one of defined length is skipped whole.

    Parameters
    ----------
    little : bool
        Little endian (every transfer syntax but the retired Explicit VR Big Endian).
    """

    __slots__ = ("carry", "explicit", "fault", "little", "pos", "skip", "tag", "unpack")

    def __init__(self, little: bool = True) -> None:
        self.little = little
        self.unpack = _HEAD[little].unpack_from
        self.pos = 0  # data set bytes walked
        self.skip = 0  # value bytes still to pass
        self.tag = 0  # the last header's tag
        self.carry = bytearray()  # a header split between fragments
        self.explicit: list[bool | None] = [None]  # per open level: its VR encoding (None: not seen yet)
        self.fault: str | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Walk the next fragment of the data set."""
        if self.fault is not None:
            return
        i, n = 0, len(data)
        self.pos += n
        while i < n:
            if self.skip:
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            head = self.carry
            if head or n - i < 12:  # a header that may run into the next fragment
                want = 8 if len(head) < 8 else 12
                take = min(want - len(head), n - i)
                head += data[i:i + take]
                i += take
                if len(head) < want or self._header(head) > len(head):
                    continue
                head.clear()
            else:
                i += self._header(data[i:i + 12])
            if self.fault is not None:
                return

    def _header(self, buf: bytes | bytearray | memoryview) -> int:
        """Take the header at the start of ``buf`` (8 bytes at least): its size (8 or 12; more
        than ``len(buf)``: nothing taken, more bytes needed)."""
        group, elem, long = self.unpack(buf)
        self.tag = group << 16 | elem
        if group == 0xFFFE:  # item, item delimiter, sequence delimiter: no VR in any syntax
            if elem in (0xE00D, 0xE0DD):
                if len(self.explicit) == 1:
                    self.fault = f"a delimiter ({group:04X},{elem:04X}) outside any sequence"
                else:
                    self.explicit.pop()
            elif long == _UNDEFINED:
                self._open()  # an item: a data set of its own
            else:
                self.skip = long
            return 8
        explicit = self.explicit[-1]
        vr = bytes(buf[4:6])
        if explicit is None:  # pydicom's test: a VR of two capitals
            explicit = self.explicit[-1] = 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B
        if not explicit:
            length, size = long, 8
        elif vr in _LONG_VRS:
            if len(buf) < 12:
                return 12
            length, size = _LENGTH[self.little].unpack_from(buf, 8)[0], 12
        else:  # a 2-byte length after the VR
            length, size = (long >> 16 if self.little else long & 0xFFFF), 8
        if length == _UNDEFINED:
            self._open()  # a sequence (or encapsulated value): items to the delimiter
        else:
            self.skip = length
        return size

    def _open(self) -> None:
        """A level of undefined length begins: Implicit VR within Implicit VR, else seen at its
        first header (as pydicom reads a sequence's items)."""
        self.explicit.append(False if self.explicit[-1] is False else None)

    def end(self) -> str | None:
        """The data set is whole: None, or why its last element does not end with it."""
        tag = f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        if self.fault is not None:
            return self.fault
        if self.skip:
            return f"element {tag} runs {self.skip} bytes past the end of the data set ({self.pos} bytes)"
        if self.carry:
            return f"{len(self.carry)} bytes at its end that are no element"
        if len(self.explicit) > 1:
            return "a sequence or item of undefined length without its delimiter"
        return None


class IdentifierBound(MessageBound):
    """The data set and command set bytes of the DIMSE message a C-FIND association is receiving,
    counted by :func:`kit.dicom._guard.read_bounded_pdu` on the network thread as each P-DATA-TF
    arrives (PDV message control header: bit 0 command/data set, bit 1 last fragment).

    A data set past ``limit`` bytes, or a command set past :data:`MAX_COMMAND_BYTES`, ends the
    association there (A-ABORT; :attr:`tripped` says why). The size of each whole data set is
    queued for :func:`collect_find` (:meth:`next_data_set`) with what its walk found
    (:class:`DataSetWalk`, in the transfer syntax of its presentation context; a deflated one is
    not walked), and no further PDU is read while :data:`READ_AHEAD` whole messages wait for the
    caller.
    """

    __slots__ = ("command", "dul", "faults", "syntaxes", "tripped", "walk")

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.command = 0
        self.tripped: str | None = None
        self.faults: collections.deque[str | None] = collections.deque()  # one per entry of sizes
        self.walk: DataSetWalk | None = None  # of the data set being received
        self.dul: Any = None  # the association's DUL (seen by waiting), for the transfer syntaxes
        self.syntaxes: dict[int, str] = {}

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
                walk = self.walk
                if walk is None and self.pending == size:  # a data set's first fragment
                    walk = self.walk = self._walk_for(body[pos + 4])
                if walk is not None:
                    walk.feed(memoryview(body)[pos + 6:pos + 6 + size])
                if control & 0x02:
                    self.sizes.append(self.pending)
                    self.faults.append(None if walk is None else walk.end())
                    self.pending, self.walk = 0, None
            pos = stop
        return None

    def _walk_for(self, context_id: int) -> DataSetWalk | None:
        """A walk in the transfer syntax of ``context_id`` (None for a deflated one)."""
        if not self.syntaxes and self.dul is not None:
            self.syntaxes = {int(cx.context_id): str(cx.transfer_syntax[0])
                             for cx in self.dul.assoc.accepted_contexts if cx.context_id is not None}
        syntax = self.syntaxes.get(context_id, "")
        return None if syntax == _DEFLATED else DataSetWalk(little=syntax != _BIG_ENDIAN)

    def waiting(self, dul: Any) -> bool:
        """Whether :data:`READ_AHEAD` whole messages wait for the caller (then nothing is read:
        the peer's bytes wait in TCP's buffers, not in memory)."""
        self.dul = dul
        return dul.state_machine.current_state == "Sta6" and dul.assoc.dimse.msg_queue.qsize() >= READ_AHEAD

    def next_data_set(self) -> tuple[int, str | None]:
        """The bytes of the next whole data set received and why it is not whole (:meth:`DataSetWalk.end`;
        (0, None) if none is left to account for)."""
        if not self.sizes:
            return 0, None
        return self.sizes.popleft(), self.faults.popleft() if self.faults else None


def unreadable(ident: Dataset | None, walked: str | None = None) -> str | None:
    """Why the identifier of a Pending C-FIND-RSP cannot be read as the match it must be, or None.

    A Pending response is a match and carries it as its Identifier (PS3.7 9.1.2.1.5: sent only with,
    and so with every, Pending status; PS3.4 C.4.1.2.3: Pending responses convey the attributes of a
    match) with the keys asked for, so ``ident`` None (pynetdicom yields None for a data set it
    could not decode) or empty (its decoding of a Pending without a data set, Command Data Set
    Type 0101H, or of one with no element in it) is a match lost, not a response to skip.
    ``walked`` is what :class:`DataSetWalk` found in the data set's bytes, which pydicom decodes
    leniently (into a cut value, or nothing).
    """
    if ident is None:
        return "a data set that does not decode"
    if not len(ident):  # pynetdicom's decoding of no data set, or of bytes with no element in them
        return "no attributes: no data set, or none that decodes"
    return walked


def collect_find(assoc: Association, identifier: Dataset, sop_class: str, what: str, *,
                 limit: int | None, peer: str, lost: Callable[[Association, str, float], KitError],
                 bound: IdentifierBound | None = None, max_bytes: int | None = None) -> list[Dataset]:
    """The matches of one C-FIND on ``assoc``, at most ``limit`` (warning when that cut them).

    ``bound`` is the association's :class:`IdentifierBound` (its PDU reader's); with it, the
    matches' data sets may add up to ``max_bytes``: past that, C-CANCEL and
    :class:`~kit.errors.DicomError`. A data set past the bound's own limit aborted the
    association: :class:`~kit.errors.DicomProtocolError`. A Pending response whose match
    cannot be read (:func:`unreadable`) is C-CANCEL and :class:`~kit.errors.DicomError` too, the
    final response read first, as for ``max_bytes``: a match is not dropped or turned into nulls.
    """
    matches: list[Dataset] = []
    cancelled = False
    fault: str | None = None  # why the matches are dropped for an error once the C-FIND has ended
    after_cancel = held = 0
    for waited, (status, ident) in timed(assoc.send_c_find(identifier, sop_class)):
        code = status_int(status)
        if code is None:
            if cancelled:  # the PACS dropped the association after our C-CANCEL: we have our matches
                break
            if bound is not None and bound.tripped is not None:
                raise DicomProtocolError(f"{what}: the PACS sent {bound.tripped}: aborted", peer=peer)
            raise lost(assoc, what, waited)
        if is_pending(code):
            # data sets queue in message order; a Pending without one (ident empty) or one pynetdicom
            # could not decode (None) ends the collecting (C-CANCEL below) before any is mismatched
            size, walked = bound.next_data_set() if bound is not None and ident else (0, None)
            if cancelled:
                after_cancel += 1
                if after_cancel > MAX_AFTER_CANCEL:
                    assoc.abort()
                    break
            elif limit is not None and len(matches) >= limit:  # this one only proves there are more
                assoc.send_c_cancel(1, query_model=sop_class)
                cancelled = True
                warn_truncated(what, limit)
            elif (why := unreadable(ident, walked)) is not None:
                assoc.send_c_cancel(1, query_model=sop_class)
                cancelled = True
                fault = (f"the PACS sent a match that cannot be read ({why}) after {len(matches)} "
                         "match(es): C-CANCEL sent")
                matches.clear()  # the caller gets an error, not some of the matches
            elif max_bytes is not None and held + size > max_bytes:
                assoc.send_c_cancel(1, query_model=sop_class)
                cancelled = True
                fault = (f"the matches' identifiers passed {max_bytes} bytes (max_find_bytes) after "
                         f"{len(matches)} match(es): C-CANCEL sent; narrow the query or raise max_find_bytes")
                matches.clear()  # the caller gets an error, not these
            else:
                assert ident is not None  # unreadable otherwise
                held += size
                matches.append(ident)
            continue
        if fault is None and not (is_success(code) or (cancelled and code == CANCELLED)):
            raise DimseStatusError(what, status=code, peer=peer)
        break
    if fault is not None:
        raise DicomError(f"{what}: {fault}", peer=peer)
    return matches
