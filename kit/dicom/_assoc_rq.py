"""The A-ASSOCIATE-RQ PDU (PS3.8 9.3.2), encoded by hand from pynetdicom's primitive.

pynetdicom builds the PDU as one object per item and sub-item and re-validates
every UID on the way (a C-GET proposes 120 storage contexts of 21 transfer
syntaxes: ~2,600 UIDs, 30-40 ms on a busy machine, on every association). The
layout is fixed and simple, so the kit writes the bytes directly here: the same
bytes as ``pynetdicom.pdu.A_ASSOCIATE_RQ(primitive).encode()`` (tested, also on
generated primitives), user information sub-items other than SCP/SCU role
selection still encoded by pynetdicom. Pure (no I/O).
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

__all__ = ["encode_associate_rq"]

_ITEM = struct.Struct(">BBH")


def _item(kind: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise ValueError(f"item 0x{kind:02X} of {len(body)} bytes does not fit its length field")
    return _ITEM.pack(kind, 0, len(body)) + body


def _ae(title: Any) -> bytes:
    data = str(title).encode("ascii")
    if len(data) > 16:
        raise ValueError("AE title longer than 16 bytes")
    return data.ljust(16, b" ")


def encode_associate_rq(primitive: Any) -> bytes:
    """The A-ASSOCIATE-RQ PDU for an A-ASSOCIATE request primitive of pynetdicom.

    Parameters
    ----------
    primitive : pynetdicom.pdu_primitives.A_ASSOCIATE
        Application context name, called and calling AE titles, the presentation
        context definition list and the user information, as pynetdicom's ACSE sets them.

    Raises
    ------
    ValueError, TypeError, AttributeError, UnicodeError
        Something the hand encoder does not cover (the caller leaves the PDU to pynetdicom).
    """
    items = [_item(0x10, str(primitive.application_context_name).encode("ascii"))]
    for cx in primitive.presentation_context_definition_list:
        if cx.context_id is None or cx.abstract_syntax is None:
            raise ValueError("presentation context without an ID or abstract syntax")
        subs = [bytes((int(cx.context_id), 0, 0, 0)),
                _item(0x30, str(cx.abstract_syntax).encode("ascii"))]
        subs += [_item(0x40, str(ts).encode("ascii")) for ts in cx.transfer_syntax]
        items.append(_item(0x20, b"".join(subs)))
    user: list[bytes] = []
    for sub in primitive.user_information:
        if type(sub) is SCP_SCU_RoleSelectionNegotiation:
            uid = str(sub.sop_class_uid).encode("ascii")
            user.append(_item(0x54, struct.pack(">H", len(uid)) + uid + bytes((
                int(sub.scu_role) if sub.scu_role is not None else 0,
                int(sub.scp_role) if sub.scp_role is not None else 0))))
        else:
            user.append(sub.from_primitive().encode())
    items.append(_item(0x50, b"".join(user)))
    body = b"".join(items)
    return struct.pack(">BBIHH16s16s32x", 0x01, 0x00, 68 + len(body), 0x0001, 0x0000,
                       _ae(primitive.called_ae_title), _ae(primitive.calling_ae_title)) + body
