"""Which A-ASSOCIATE-RQs the embedded PACS may answer from its cache (kit.dicom._rq_shape, pure)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_RQ

from kit.dicom._assoc_pdu import associate_rq_pdu, item
from kit.dicom._rq_shape import MAX_KEY, request_key

APP = "1.2.840.10008.3.1.1.1"
CT, MR, ECHO = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def user(*extra: bytes, version: bool = True, max_length: int = 16384) -> bytes:
    subs = [item(0x51, struct.pack(">I", max_length)), item(0x52, b"1.2.826.0.1.3680043.9.1")]
    if version:
        subs.append(item(0x55, b"KIT_TEST"))
    return b"".join([*subs, *extra])


def rq(contexts: list[tuple[int, str, list[str]]] | None = None, user_items: bytes | None = None,
       called: bytes = b"KIT".ljust(16), calling: bytes = b"STORESCU".ljust(16)) -> bytes:
    contexts = contexts if contexts is not None else [(1, CT, [EXPLICIT, IMPLICIT]), (3, ECHO, [IMPLICIT])]
    return associate_rq_pdu(called, calling, APP, contexts, user() if user_items is None else user_items)


def test_common_shape_keyed_on_the_bytes_after_the_header() -> None:
    raw = rq()
    assert request_key(raw) == raw[74:]
    # the AE titles are not part of the key: another sender with the same proposal shares it
    assert request_key(rq(calling=b"OTHER".ljust(16))) == raw[74:]
    assert request_key(rq(user_items=user(version=False))) is not None


def test_dcmtk_reserved_byte_in_a_presentation_context_is_accepted() -> None:
    raw = bytearray(rq())
    first_context = 74 + 4 + len(APP)  # the 0x20 item after the application context
    assert raw[first_context] == 0x20
    raw[first_context + 5] = 0xFF  # DCMTK's storescu sends 0xFF here (PS3.8: "not tested")
    assert request_key(bytes(raw)) == bytes(raw[74:])


@pytest.mark.parametrize("extra", [
    item(0x53, b"\x00\x01\x00\x01"),                              # asynchronous operations window
    item(0x54, struct.pack(">H", len(CT)) + CT.encode() + b"\x01\x01"),  # SCP/SCU role selection
    item(0x56, struct.pack(">H", len(CT)) + CT.encode() + b"\x01"),      # SOP class extended negotiation
    item(0x58, b"\x01\x00\x00\x04user\x00\x00"),                 # user identity
    item(0x52, b"1.2.3"),                                         # a second implementation class UID
    item(0x60, b"x"),                                             # unknown
], ids=["async", "role", "extneg", "identity", "duplicate", "unknown"])
def test_negotiation_items_go_to_pynetdicom(extra: bytes) -> None:
    assert request_key(rq(user_items=user(extra))) is None


@pytest.mark.parametrize("contexts", [
    [],                                                   # no presentation context
    [(2, CT, [EXPLICIT])],                                # even ID
    [(1, CT, [EXPLICIT]), (1, MR, [EXPLICIT])],           # ID used twice
    [(1, CT, [])],                                        # no transfer syntax
], ids=["none", "even", "twice", "no-syntax"])
def test_irregular_contexts_go_to_pynetdicom(contexts: list[tuple[int, str, list[str]]]) -> None:
    assert request_key(rq(contexts)) is None


def test_missing_required_user_items_go_to_pynetdicom() -> None:
    assert request_key(rq(user_items=item(0x52, b"1.2.3"))) is None      # no maximum length
    assert request_key(rq(user_items=item(0x51, b"\x00\x00\x40\x00"))) is None  # no class UID
    assert request_key(rq(user_items=item(0x51, b"\x00\x40\x00") + item(0x52, b"1.2"))) is None


def test_header_and_lengths_must_add_up() -> None:
    raw = rq()
    assert request_key(raw[:-1]) is None                                 # truncated
    assert request_key(raw + b"\x00") is None                            # trailing byte
    longer = raw[:2] + struct.pack(">I", len(raw) - 6 + 10) + raw[6:]
    assert request_key(longer) is None                                   # length field lies
    assert request_key(raw[:6] + b"\x00\x02" + raw[8:]) is None          # protocol version 2
    assert request_key(b"\x02" + raw[1:]) is None                        # not an A-ASSOCIATE-RQ
    assert request_key(raw[:50] + b"\x01" + raw[51:]) is None            # reserved header bytes set
    # an item whose length runs past the PDU
    lying = bytearray(raw)
    lying[76:78] = struct.pack(">H", 0xFFFF)
    assert request_key(bytes(lying)) is None


def test_requests_larger_than_the_key_bound_go_to_pynetdicom() -> None:
    many = [(2 * i + 1, CT, [EXPLICIT] * 60) for i in range(127)]
    raw = rq(many)
    assert len(raw) - 74 > MAX_KEY
    assert request_key(raw) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_any_bytes_give_a_key_or_none(data: bytes) -> None:
    assert request_key(data) in (None, data[74:])


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=74, max_value=200), st.integers(min_value=0, max_value=255))
def test_a_mutated_request_keyed_has_the_layout_pynetdicom_decodes(pos: int, value: int) -> None:
    raw = bytearray(rq())
    if pos >= len(raw):
        return
    raw[pos] = value
    if request_key(bytes(raw)) is None:
        return
    # the walk accepted the layout; where pynetdicom decodes the values (a request it cannot decode
    # is aborted and never answered, so never recorded), it reads the same items
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(bytes(raw))
    except ValueError:
        return
    assert len(pdu.presentation_context) == 2
    assert pdu.user_information is not None
