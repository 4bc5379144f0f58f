"""Is an A-ASSOCIATE-RQ of the common shape the embedded PACS may answer from its cache? (pure)

:mod:`kit.dicom._accept` replays pynetdicom's own answer to a request it has
already negotiated, keyed on the request's exact bytes after the AE titles;
this module decides which requests qualify and returns that key. It walks the
PDU strictly (PS3.8 9.3.2): the fixed header (PDU type 1, length equal to the
bytes received, protocol version 1), one Application Context item, one or more
Presentation Context items (an odd ID used once, one Abstract Syntax, one or
more Transfer Syntaxes), then one User Information item holding only the
Maximum Length (0x51), the Implementation Class UID (0x52) and optionally the
Implementation Version Name (0x55), each once. Anything else -- asynchronous
operations, role selection, extended negotiation, user identity, unknown items,
lengths that do not add up, reserved bytes set, a request larger than
:data:`MAX_KEY` -- returns None, and pynetdicom handles the request exactly as
before (so its rejections and aborts are unchanged).

Written by hand: pynetdicom decodes a request into objects (validating every
UID, ~2.5 ms for storescu's 128 contexts); this walk only reads lengths.
"""

from __future__ import annotations

__all__ = ["MAX_KEY", "request_key"]

#: Largest request body (after the 74-byte header) answered from the cache.
MAX_KEY = 64 * 1024
_HEADER = 74
_USER_SUBITEMS = frozenset({0x51, 0x52, 0x55})


def _items(buf: bytes, pos: int, end: int) -> list[tuple[int, int, int]] | None:
    """(type, body start, body end) of the items in [pos, end), or None if they do not
    tile it exactly or a reserved byte is set."""
    out: list[tuple[int, int, int]] = []
    while pos < end:
        if pos + 4 > end or buf[pos + 1] != 0:
            return None
        stop = pos + 4 + int.from_bytes(buf[pos + 2:pos + 4], "big")
        if stop > end:
            return None
        out.append((buf[pos], pos + 4, stop))
        pos = stop
    return out


def _context_ok(buf: bytes, start: int, end: int, seen: set[int]) -> bool:
    if end - start < 4:  # ID, then three reserved bytes (DCMTK sends 0xFF in the second; not tested)
        return False
    context_id = buf[start]
    if context_id % 2 == 0 or context_id in seen:
        return False
    seen.add(context_id)
    subs = _items(buf, start + 4, end)
    if not subs or len(subs) < 2 or subs[0][0] != 0x30:
        return False
    return all(kind == 0x40 and stop > begin for kind, begin, stop in subs[1:]) and subs[0][2] > subs[0][1]


def _user_ok(buf: bytes, start: int, end: int) -> bool:
    subs = _items(buf, start, end)
    if subs is None:
        return False
    kinds = [kind for kind, _, _ in subs]
    if len(set(kinds)) != len(kinds) or not set(kinds) <= _USER_SUBITEMS or not {0x51, 0x52} <= set(kinds):
        return False
    return all((stop - begin == 4) if kind == 0x51 else (stop > begin) for kind, begin, stop in subs)


def request_key(raw: bytes) -> bytes | None:
    """The cache key of a common-shape A-ASSOCIATE-RQ (its bytes after the AE titles
    and reserved field), or None if the request is not of that shape.

    Parameters
    ----------
    raw : bytes
        The whole PDU as received (header included).
    """
    if len(raw) < _HEADER or raw[0] != 0x01 or raw[1] != 0 or raw[6:10] != b"\x00\x01\x00\x00":
        return None
    if int.from_bytes(raw[2:6], "big") != len(raw) - 6 or len(raw) - _HEADER > MAX_KEY:
        return None
    if any(raw[42:_HEADER]):
        return None
    items = _items(raw, _HEADER, len(raw))
    if not items or len(items) < 3 or items[0][0] != 0x10 or items[0][2] == items[0][1]:
        return None
    if items[-1][0] != 0x50 or not _user_ok(raw, items[-1][1], items[-1][2]):
        return None
    seen: set[int] = set()
    for kind, start, stop in items[1:-1]:
        if kind != 0x20 or not _context_ok(raw, start, stop, seen):
            return None
    return bytes(raw[_HEADER:])
