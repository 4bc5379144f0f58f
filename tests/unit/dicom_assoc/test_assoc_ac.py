"""The A-ASSOCIATE-AC read by kit.dicom._assoc_ac gives pynetdicom's primitive, attribute by attribute.

Generated PDUs of every item kind pynetdicom reads (presentation contexts accepted and refused,
role selections, the other user information sub-items, items in any order and repeated), damaged
or cut short: the kit's primitive equals ``A_ASSOCIATE_AC().decode(pdu); .to_primitive()``, or it
raises where pynetdicom raises, or it declines (None) and pynetdicom decodes. Read again, from
the cache, the same; and each primitive is its own (changing one leaves the next untouched).
"""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_AC

from kit.dicom import _assoc_ac
from kit.dicom._assoc_ac import read_associate_ac

_UID = st.from_regex(r"\A[1-9][0-9]{0,3}(\.[1-9][0-9]{0,3}){1,6}\Z")
_SYNTAXES = st.sampled_from(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", ""])


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _uid(value: str, pad: bool) -> bytes:
    data = value.encode()
    return data + b"\x00" if pad and len(data) % 2 else data


@st.composite
def _pdus(draw: st.DrawFn) -> bytes:
    pad = draw(st.booleans())
    items = [_item(0x10, b"1.2.840.10008.3.1.1.1")]
    for _ in range(draw(st.integers(0, 6))):
        body = struct.pack(">BBBB", draw(st.integers(0, 255)), 0, draw(st.integers(0, 4)), 0)
        items.append(_item(0x21, body + _item(0x40, _uid(draw(_SYNTAXES), pad))))
    subs = [_item(0x51, struct.pack(">I", draw(st.integers(0, 2**32 - 1)))),
            _item(0x52, _uid(draw(_UID), pad))]
    if draw(st.booleans()):
        subs.append(_item(0x55, b"ORTHANC_1"))
    for _ in range(draw(st.integers(0, 5))):
        uid = _uid(draw(_UID), pad)
        subs.append(_item(0x54, struct.pack(">H", len(uid)) + uid + bytes((draw(st.integers(0, 1)),
                                                                           draw(st.integers(0, 1))))))
    if draw(st.booleans()):
        subs.append(_item(0x53, struct.pack(">HH", 1, 1)))
    if draw(st.booleans()):
        subs.append(_item(0x59, struct.pack(">H", 4) + b"ok!!"))
    subs = draw(st.permutations(subs))
    items.append(_item(0x50, b"".join(subs)))
    items = draw(st.permutations(items))
    if draw(st.booleans()) and len(items) > 1:
        items.append(items[0])  # an item twice
    body = struct.pack(">HH", 1, 0) + b"ORTHANC".ljust(16) + b"KITSCU".ljust(16) + bytes(32) + b"".join(items)
    data = bytearray(struct.pack(">BBI", 0x02, 0, len(body)) + body)
    for pos, value in draw(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=2)):
        data[pos % len(data)] = value
    cut = draw(st.one_of(st.none(), st.integers(0, 4000)))
    return bytes(data if cut is None else data[:cut % (len(data) + 1)])


def _pynetdicom(data: bytes) -> Any:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(data)
    return pdu.to_primitive()


def same(a: Any, b: Any) -> bool:
    """Of one type, with equal attributes all the way down (UIDs as UIDs, lists item by item)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "__dict__"):
        return vars(a).keys() == vars(b).keys() and all(same(vars(a)[k], vars(b)[k]) for k in vars(a))
    return bool(a == b)


def _outcome(read: Any, data: bytes) -> Any:
    try:
        return read(data)
    except Exception as exc:  # noqa: BLE001 - compared: both raise, or neither
        return exc


@settings(max_examples=400, deadline=None)
@given(data=_pdus())
@example(data=b"\x02\x00\x00\x00\x00\x04")
@example(data=b"\x02" + bytes(73) + b"\x50\x00\x00\x08\x54\x00\x00\x02\x00\x00")
def test_the_primitive_is_pynetdicoms(data: bytes) -> None:
    theirs = _outcome(_pynetdicom, data)
    for _ in range(2):  # decoded, then from the cache
        ours = _outcome(read_associate_ac, data)
        if ours is None:
            continue  # declined: pynetdicom decodes it (and raises, if it does)
        if isinstance(theirs, Exception):
            assert isinstance(ours, Exception), (theirs, data)
        else:
            assert not isinstance(ours, Exception), (ours, data)
            assert same(ours, theirs)


def test_each_primitive_is_its_own() -> None:
    cx = struct.pack(">BBBB", 1, 0, 0, 0) + _item(0x40, b"1.2.840.10008.1.2.1")
    role = _item(0x54, struct.pack(">H", 5) + b"1.2.3" + b"\x00\x01")
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.3.4") + role)
    context = _item(0x10, b"1.2.840.10008.3.1.1.1")
    body = struct.pack(">HH", 1, 0) + bytes(64) + context + _item(0x21, cx) + user
    data = struct.pack(">BBI", 2, 0, len(body)) + body
    first = read_associate_ac(data)
    first.presentation_context_definition_results_list[0].add_transfer_syntax("1.2.840.10008.1.2")
    first.user_information[2].scp_role = False
    second = read_associate_ac(data)
    assert same(second, _pynetdicom(data))
    assert not same(first, second)
    assert len(_assoc_ac._cache) >= 2

