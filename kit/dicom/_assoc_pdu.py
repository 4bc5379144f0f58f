"""The A-ASSOCIATE-RQ PDU's layout (PS3.8 9.3.2), shared by the hand-written encoders.

Pure (no I/O) and free of pynetdicom, so the C-ECHO fast path
(:mod:`kit.dicom._echo_pdu`) can use it without the import it exists to avoid;
:mod:`kit.dicom._assoc_rq` fills it from a pynetdicom primitive. Both are
tested byte-equal to ``pynetdicom.pdu.A_ASSOCIATE_RQ(...).encode()``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

__all__ = ["associate_rq_pdu", "item"]

_ITEM = struct.Struct(">BBH")


def item(kind: int, body: bytes) -> bytes:
    """One item or sub-item: type, reserved byte, 2-byte length, ``body`` (ValueError if too long)."""
    if len(body) > 0xFFFF:
        raise ValueError(f"item 0x{kind:02X} of {len(body)} bytes does not fit its length field")
    return _ITEM.pack(kind, 0, len(body)) + body


def associate_rq_pdu(called: bytes, calling: bytes, application_context: str,
                     contexts: Iterable[tuple[int, str, Sequence[str]]], user: bytes) -> bytes:
    """The A-ASSOCIATE-RQ PDU.

    Parameters
    ----------
    called, calling : bytes
        The 16-byte, space-padded AE titles.
    application_context : str
        The application context name UID.
    contexts : iterable of (int, str, sequence of str)
        Presentation contexts: ID, abstract syntax, transfer syntaxes.
    user : bytes
        The user information item's sub-items, encoded.
    """
    items = [item(0x10, application_context.encode("ascii"))]
    for context_id, abstract, syntaxes in contexts:
        subs = [bytes((context_id, 0, 0, 0)), item(0x30, abstract.encode("ascii"))]
        subs += [item(0x40, ts.encode("ascii")) for ts in syntaxes]
        items.append(item(0x20, b"".join(subs)))
    items.append(item(0x50, user))
    body = b"".join(items)
    return struct.pack(">BBIHH16s16s32x", 0x01, 0x00, 68 + len(body), 0x0001, 0x0000,
                       called, calling) + body
