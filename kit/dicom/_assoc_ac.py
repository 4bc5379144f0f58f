"""The A-ASSOCIATE-AC PDU (PS3.8 9.3.3) read into pynetdicom's primitive, its repeated items once.

A C-GET proposes ~120 storage contexts with SCP role selection, so the PACS's answer holds
~120 presentation context items and ~120 role selection sub-items. pynetdicom decodes each
into an object, then into a primitive, validating every UID twice on the way: 14 ms of the
association's thread per association (measured here on Orthanc's answer), every retrieve.

The same PACS answers the same proposal with the same items, byte for byte. So each such item
is decoded by pynetdicom once (:data:`CACHE_LIMIT` distinct items kept) and copied from then
on; the rest of the PDU (its header, application context and the other user information
sub-items) is decoded by pynetdicom every time, from the same bytes without those items. The
primitive is the one ``A_ASSOCIATE_AC().decode(pdu); .to_primitive()`` makes (tested equal,
attribute by attribute, on generated and damaged PDUs, tests/unit/dicom_assoc/test_assoc_ac.py);
anything not laid out as PS3.8 says (an item cut short, more than one user information item)
gives None, and the caller leaves the PDU to pynetdicom, which raises as before.
Written by hand: pynetdicom has no faster path. Pure (no I/O).
"""

from __future__ import annotations

import struct
import threading
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_items import PresentationContextItemAC, SCP_SCU_RoleSelectionSubItem

__all__ = ["CACHE_LIMIT", "read_associate_ac"]

#: Distinct items kept decoded (each a few hundred bytes); past it the cache starts again.
CACHE_LIMIT = 4096
_ITEM = struct.Struct(">BBH")
_HEAD = 74  # PDU header (6) and the fixed fields up to the variable items
_CONTEXT, _USER, _ROLE = 0x21, 0x50, 0x54

_cache: dict[bytes, Any] = {}
_lock = threading.Lock()  # associations open on several threads (a cohort pull)


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(type, start, end) of each item in ``data[start:end]``, as pynetdicom walks them;
    None if one is cut short."""
    out = []
    pos = start
    while pos < end:
        if pos + 4 > end:
            return None
        kind, _reserved, length = _ITEM.unpack_from(data, pos)
        stop = pos + 4 + length
        if stop > end:
            return None
        out.append((kind, pos, stop))
        pos = stop
    return out


def _decoded(kind: int, raw: bytes) -> Any:
    """The primitive pynetdicom makes of one presentation context (AC) item or role
    selection sub-item, decoded once per distinct bytes."""
    with _lock:
        proto = _cache.get(raw)
    if proto is None:
        item: Any = PresentationContextItemAC() if kind == _CONTEXT else SCP_SCU_RoleSelectionSubItem()
        item.decode(raw)
        proto = item.to_primitive()
        with _lock:
            if len(_cache) >= CACHE_LIMIT:
                _cache.clear()
            _cache[raw] = proto
    copy = object.__new__(type(proto))
    copy.__dict__.update(proto.__dict__)
    if kind == _CONTEXT:
        copy._transfer_syntax = list(proto._transfer_syntax)  # its own list: negotiation may add to it
    return copy


def read_associate_ac(data: bytes) -> Any | None:
    """The A-ASSOCIATE (accept) primitive of an A-ASSOCIATE-AC PDU (header included), as
    pynetdicom's ``A_ASSOCIATE_AC`` decodes and converts it; None: leave it to pynetdicom.

    Raises
    ------
    Exception
        Whatever pynetdicom raises for an item it cannot decode (the caller treats it as
        pynetdicom's own reader does: an undecodable PDU).
    """
    if len(data) < _HEAD or data[0] != 0x02:
        return None
    items = _items(data, _HEAD, len(data))
    if items is None or sum(kind == _USER for kind, _, _ in items) > 1:
        return None
    kept: list[bytes] = []
    contexts: list[Any] = []
    user: list[Any] = []  # the role selection primitives in place, None where pynetdicom's go
    for kind, start, stop in items:
        if kind == _CONTEXT:
            contexts.append(_decoded(kind, data[start:stop]))
        elif kind == _USER:
            subs = _items(data, start + 4, stop)
            if subs is None:
                return None
            others: list[bytes] = []
            for sub, s_start, s_stop in subs:
                if sub == _ROLE:
                    user.append(_decoded(sub, data[s_start:s_stop]))
                else:
                    others.append(data[s_start:s_stop])
                    user.append(None)
            body = b"".join(others)
            kept.append(_ITEM.pack(_USER, data[start + 1], len(body)) + body)
        else:
            kept.append(data[start:stop])
    rest = b"".join(kept)
    pdu = A_ASSOCIATE_AC()
    pdu.decode(data[:2] + struct.pack(">I", _HEAD - 6 + len(rest)) + data[6:_HEAD] + rest)
    primitive = pdu.to_primitive()
    primitive.presentation_context_definition_results_list.extend(contexts)
    if any(kind == _USER for kind, _, _ in items):
        theirs = iter(primitive.user_information)
        primitive.user_information = [next(theirs) if each is None else each for each in user]
    return primitive
