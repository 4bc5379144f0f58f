"""C-FIND response collection for :mod:`kit.dicom.dimse`: statuses, timing and ``limit`` with C-CANCEL.

With a ``limit``, the matches are collected until one more than ``limit``
arrives (which proves the PACS has more); then a C-CANCEL is sent
(pynetdicom's :meth:`~pynetdicom.association.Association.send_c_cancel`) and the
remaining responses are read up to the final one (Cancel, 0xFE00, or Success),
so the association is released cleanly; a PACS that ignores the C-CANCEL and
keeps sending gets the association aborted after :data:`MAX_AFTER_CANCEL`
further responses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from pydicom.dataset import Dataset
from pynetdicom.association import Association

from kit._truncate import warn_truncated
from kit.errors import DimseStatusError, KitError

__all__ = ["MAX_AFTER_CANCEL", "collect_find", "is_pending", "is_success", "status_int", "timed"]

T = TypeVar("T")

#: Pending responses read after a C-CANCEL before giving up on the PACS stopping (then A-ABORT).
MAX_AFTER_CANCEL = 1000
#: C-FIND status: matching terminated due to Cancel
CANCELLED = 0xFE00


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


def collect_find(assoc: Association, identifier: Dataset, sop_class: str, what: str, *,
                 limit: int | None, peer: str,
                 lost: Callable[[Association, str, float], KitError]) -> list[Dataset]:
    """The matches of one C-FIND on ``assoc``, at most ``limit`` (warning when that cut them)."""
    matches: list[Dataset] = []
    cancelled = False
    after_cancel = 0
    for waited, (status, ident) in timed(assoc.send_c_find(identifier, sop_class)):
        code = status_int(status)
        if code is None:
            if cancelled:  # the PACS dropped the association after our C-CANCEL: we have our matches
                break
            raise lost(assoc, what, waited)
        if is_pending(code):
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
                else:
                    matches.append(ident)
            continue
        if not (is_success(code) or (cancelled and code == CANCELLED)):
            raise DimseStatusError(what, status=code, peer=peer)
        break
    return matches
