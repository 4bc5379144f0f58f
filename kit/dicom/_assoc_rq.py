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

from kit.dicom._assoc_pdu import associate_rq_pdu, item

__all__ = ["encode_associate_rq"]


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
    contexts: list[tuple[int, str, list[str]]] = []
    for cx in primitive.presentation_context_definition_list:
        if cx.context_id is None or cx.abstract_syntax is None:
            raise ValueError("presentation context without an ID or abstract syntax")
        contexts.append((int(cx.context_id), str(cx.abstract_syntax),
                         [str(ts) for ts in cx.transfer_syntax]))
    user: list[bytes] = []
    for sub in primitive.user_information:
        if type(sub) is SCP_SCU_RoleSelectionNegotiation:
            uid = str(sub.sop_class_uid).encode("ascii")
            user.append(item(0x54, struct.pack(">H", len(uid)) + uid + bytes((
                int(sub.scu_role) if sub.scu_role is not None else 0,
                int(sub.scp_role) if sub.scp_role is not None else 0))))
        else:
            user.append(sub.from_primitive().encode())
    return associate_rq_pdu(_ae(primitive.called_ae_title), _ae(primitive.calling_ae_title),
                            str(primitive.application_context_name), contexts, b"".join(user))
