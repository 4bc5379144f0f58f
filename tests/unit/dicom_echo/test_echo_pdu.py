"""The hand-written C-ECHO PDUs (kit.dicom._echo_pdu) against pynetdicom's encoders and decoders.

fast == library: what the fast path sends is byte for byte what pynetdicom builds
from the same primitives (and what pynetdicom's decoder reads back), and what it
accepts from a peer pynetdicom reads the same way (same context, same maximum
length, same status), on generated and mutated PDUs. Every malformed input is an
EchoDeclined (a KitError), never another exception.
"""

from __future__ import annotations

import inspect
import os
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RQ as C_ECHO_RQ_MESSAGE
from pynetdicom.dimse_messages import C_ECHO_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ABORT,
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from kit.dicom import _echo_pdu as pdu
from kit.dicom._echo_pdu import EchoDeclined, EchoResponse
from kit.errors import KitError

AE_CHARS = st.sampled_from([chr(c) for c in range(0x20, 0x7F) if chr(c) != "\\"])
AE_TITLES = st.text(AE_CHARS, min_size=1, max_size=16).map(str.strip).filter(bool)
STATUSES = st.sampled_from([0x0000, 0x0001, 0x0107, 0x0122, 0x0210, 0x0211, 0x0212, 0xA700, 0xC000,
                            0xFE00, 0xFF00, 0xFFFF])


def _user_information(max_pdu: int) -> list[object]:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    return [length, uid, version]


def library_rq(called: str, calling: str, max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom encodes for PacsClient.echo (acse.send_request's primitive)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(pdu.VERIFICATION)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    primitive.user_information = _user_information(max_pdu)
    out = A_ASSOCIATE_RQ()
    out.from_primitive(primitive)
    return bytes(out.encode())


def library_ac(max_pdu: int, syntax: str = "1.2.840.10008.1.2", result: int = 0,
               context_id: int = 1) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = "KITSCU"
    primitive.called_ae_title = "KIT"
    primitive.result = 0
    context = build_context(pdu.VERIFICATION, syntax)
    context.context_id = context_id
    context.result = result
    primitive.presentation_context_definition_results_list = [context]
    primitive.user_information = _user_information(max_pdu)
    out = A_ASSOCIATE_AC()
    out.from_primitive(primitive)
    return bytes(out.encode())


def library_rsp(status: int, message_id: int = 1, max_pdu: int = 16384) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-ECHO-RSP as pynetdicom encodes it (fragmented by ``max_pdu``)."""
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = pdu.VERIFICATION
    primitive.Status = status
    message = C_ECHO_RSP()
    message.primitive_to_message(primitive)
    out = []
    for p_data in message.encode_msg(1, max_pdu):
        tf = P_DATA_TF()
        tf.from_primitive(p_data)
        out.append(bytes(tf.encode()))
    return out


def library_reads_rsp(pdus: list[bytes]) -> tuple[int, int] | None:
    """(Status, MessageIDBeingRespondedTo) of a C-ECHO-RSP as pynetdicom decodes it; None if it
    does not read one valid C-ECHO-RSP."""
    message = DIMSEMessage()
    try:
        for raw in pdus:
            tf = P_DATA_TF()
            tf.decode(raw)
            if message.decode_msg(tf.to_primitive()):
                break
        else:
            return None
        if type(message).__name__ != "C_ECHO_RSP":
            return None
        primitive = message.message_to_primitive()
    except Exception:  # noqa: BLE001 - the library refusing is an answer here
        return None
    if not primitive.is_valid_response:
        return None
    return int(primitive.Status), int(primitive.MessageIDBeingRespondedTo)


# -- what we send ----------------------------------------------------------------------------------

def test_the_constants_are_pynetdicoms_and_kits() -> None:
    from pynetdicom._globals import APPLICATION_CONTEXT_NAME

    from kit.dicom._echo_fast import MAX_PDU
    from kit.dicom.dimse import VERIFICATION, PacsClient

    assert pdu.IMPLEMENTATION_CLASS_UID == PYNETDICOM_IMPLEMENTATION_UID
    assert pdu.IMPLEMENTATION_VERSION_NAME == PYNETDICOM_IMPLEMENTATION_VERSION
    assert pdu.APPLICATION_CONTEXT == APPLICATION_CONTEXT_NAME
    assert pdu.VERIFICATION == VERIFICATION
    assert pdu.TRANSFER_SYNTAXES == tuple(str(ts) for ts in build_context(VERIFICATION).transfer_syntax)
    assert MAX_PDU == inspect.signature(PacsClient).parameters["max_pdu"].default


@settings(max_examples=60, deadline=None)
@given(called=AE_TITLES, calling=AE_TITLES, max_pdu=st.integers(0, 0xFFFFFFFF))
def test_associate_rq_is_pynetdicoms_byte_for_byte(called: str, calling: str, max_pdu: int) -> None:
    ours = pdu.associate_rq(called, calling, max_pdu)
    assert ours == library_rq(called, calling, max_pdu)
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(ours)
    primitive = decoded.to_primitive()
    assert (primitive.called_ae_title, primitive.calling_ae_title) == (called, calling)
    assert primitive.application_context_name == pdu.APPLICATION_CONTEXT
    [context] = primitive.presentation_context_definition_list
    assert (context.context_id, context.abstract_syntax) == (1, pdu.VERIFICATION)
    assert tuple(context.transfer_syntax) == pdu.TRANSFER_SYNTAXES
    assert primitive.maximum_length_received == max_pdu
    assert primitive.implementation_class_uid == PYNETDICOM_IMPLEMENTATION_UID
    [version] = [item.implementation_version_name for item in primitive.user_information
                 if isinstance(item, ImplementationVersionNameNotification)]
    assert version == PYNETDICOM_IMPLEMENTATION_VERSION


@settings(max_examples=30, deadline=None)
@given(message_id=st.integers(0, 0xFFFF))
def test_echo_rq_is_pynetdicoms_byte_for_byte_and_fastnets(message_id: int) -> None:
    from kit.dicom._command import C_ECHO_RQ, NO_DATASET, encode_command

    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = pdu.VERIFICATION
    message = C_ECHO_RQ_MESSAGE()
    message.primitive_to_message(primitive)
    [p_data] = list(message.encode_msg(1, 16384))
    tf = P_DATA_TF()
    tf.from_primitive(p_data)
    ours = pdu.echo_rq(message_id)
    assert ours == tf.encode()
    command = encode_command({0x00000002: pdu.VERIFICATION, 0x00000100: C_ECHO_RQ,
                              0x00000110: message_id, 0x00000800: NO_DATASET})
    assert ours[12:] == command


def test_release_and_abort_are_pynetdicoms() -> None:
    assert pdu.RELEASE_RQ == A_RELEASE_RQ().encode()
    abort = A_ABORT()
    abort.abort_source = 0x00
    rq = A_ABORT_RQ()
    rq.from_primitive(abort)
    assert pdu.ABORT == rq.encode()


@pytest.mark.parametrize("title", ["", " KIT", "KIT ", "A" * 17, "KIT\\SCU", "KIT\tSCU", "KITÉ", "   "])
def test_titles_outside_the_plain_form_are_declined(title: str) -> None:
    with pytest.raises(EchoDeclined):
        pdu.associate_rq(title, "KITSCU", 0)
    with pytest.raises(EchoDeclined):
        pdu.associate_rq("KIT", title, 0)


def test_out_of_range_numbers_are_declined() -> None:
    for bad in (-1, 1 << 32):
        with pytest.raises(EchoDeclined):
            pdu.associate_rq("KIT", "KITSCU", bad)
    for bad in (-1, 1 << 16):
        with pytest.raises(EchoDeclined):
            pdu.echo_rq(bad)


# -- what we accept --------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(max_pdu=st.integers(0, 0xFFFFFFFF), syntax=st.sampled_from(pdu.TRANSFER_SYNTAXES))
def test_an_accepting_ac_gives_the_peers_maximum(max_pdu: int, syntax: str) -> None:
    raw = library_ac(max_pdu, syntax)
    assert pdu.pdu_header(raw[:6]) == (0x02, len(raw) - 6)
    assert pdu.accepted_max_pdu(raw[6:]) == max_pdu


@pytest.mark.parametrize("result", [1, 2, 3, 4])
def test_a_rejected_context_is_declined(result: int) -> None:
    with pytest.raises(EchoDeclined, match="result"):
        pdu.accepted_max_pdu(library_ac(16384, result=result)[6:])


def test_another_context_or_syntax_is_declined() -> None:
    with pytest.raises(EchoDeclined):
        pdu.accepted_max_pdu(library_ac(16384, context_id=3)[6:])
    with pytest.raises(EchoDeclined, match="transfer syntax"):
        pdu.accepted_max_pdu(library_ac(16384, syntax="1.2.840.10008.1.2.4.50")[6:])


@settings(max_examples=40, deadline=None)
@given(status=STATUSES, max_pdu=st.sampled_from([0, 20, 30, 64, 16384]))
def test_a_response_reads_as_pynetdicom_reads_it_whole_or_in_fragments(status: int, max_pdu: int) -> None:
    pdus = library_rsp(status, max_pdu=max_pdu)
    response = EchoResponse()
    answers = [response.add(raw[6:]) for raw in pdus]
    assert answers[:-1] == [None] * (len(pdus) - 1)
    assert answers[-1] == status
    assert library_reads_rsp(pdus) == (status, 1)


def test_a_response_to_another_message_or_with_a_data_set_is_declined() -> None:
    with pytest.raises(EchoDeclined, match="C-ECHO-RSP"):
        EchoResponse().add(library_rsp(0, message_id=2)[0][6:])
    raw = bytearray(library_rsp(0)[0])
    at = raw.find(struct.pack("<HHIH", 0, 0x0800, 2, 0x0101))
    raw[at + 8:at + 10] = struct.pack("<H", 0x0000)  # a data set follows
    with pytest.raises(EchoDeclined, match="C-ECHO-RSP"):
        EchoResponse().add(bytes(raw[6:]))


def test_oversized_and_unknown_pdus_are_declined_from_the_header() -> None:
    with pytest.raises(EchoDeclined, match="more than"):
        pdu.pdu_header(struct.pack(">BBI", 0x04, 0, pdu.MAX_ANSWER_PDU + 1))
    with pytest.raises(EchoDeclined, match="more than"):
        pdu.pdu_header(struct.pack(">BBI", 0x02, 0, 0xFFFFFFFF))
    with pytest.raises(EchoDeclined, match="unknown"):
        pdu.pdu_header(b"HTTP/1")
    assert pdu.pdu_header(struct.pack(">BBI", 0x04, 0, pdu.MAX_ANSWER_PDU)) == (0x04, pdu.MAX_ANSWER_PDU)


def test_a_command_longer_than_the_cap_is_declined() -> None:
    response = EchoResponse()
    chunk = b"\x00" * 60000
    body = struct.pack(">IBB", len(chunk) + 2, 1, 0x01) + chunk
    assert response.add(body) is None
    with pytest.raises(EchoDeclined, match="more than"):
        response.add(body)


# -- fuzz: only KitError, and what we accept the library reads the same way ----------------------------

def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


EDITS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)
CUTS = st.none() | st.integers(0, 400)


@settings(max_examples=int(os.environ.get('ECHO_FUZZ', 150)), deadline=None)
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes_raise_only_echo_declined(data: bytes) -> None:
    for decode in (pdu.accepted_max_pdu, pdu.pdvs, pdu.echo_status, EchoResponse().add,
                   lambda b: pdu.pdu_header(b[:6])):
        try:
            decode(data)
        except KitError as exc:
            assert isinstance(exc, EchoDeclined)


@settings(max_examples=int(os.environ.get('ECHO_FUZZ', 150)), deadline=None)
@given(edits=EDITS, cut=CUTS, max_pdu=st.integers(0, 0xFFFFFFFF))
def test_fuzz_a_mutated_ac_is_declined_or_read_as_pynetdicom_reads_it(
        edits: list[tuple[int, int]], cut: int | None, max_pdu: int) -> None:
    raw = _mutate(library_ac(max_pdu), edits, cut)
    try:
        kind, length = pdu.pdu_header(raw[:6])
        if kind != 0x02 or length != len(raw) - 6:
            return  # the I/O path reads exactly `length` bytes, then declines anything but an AC
        maximum = pdu.accepted_max_pdu(raw[6:])
    except KitError as exc:
        assert isinstance(exc, EchoDeclined)
        return
    decoded = A_ASSOCIATE_AC()
    decoded.decode(raw)
    primitive = decoded.to_primitive()
    [context] = [cx for cx in primitive.presentation_context_definition_results_list if cx.context_id == 1]
    assert context.result == 0 and str(context.transfer_syntax[0]) in pdu.TRANSFER_SYNTAXES
    assert primitive.maximum_length_received == maximum


@settings(max_examples=int(os.environ.get('ECHO_FUZZ', 150)), deadline=None)
@given(edits=EDITS, cut=CUTS, status=STATUSES)
@example(edits=[(26, 1)], cut=None, status=0)  # (0000,0002) made (0000,0001), a UL of 18 bytes
def test_fuzz_a_mutated_response_is_declined_or_read_as_pynetdicom_reads_it(
        edits: list[tuple[int, int]], cut: int | None, status: int) -> None:
    raw = _mutate(library_rsp(status)[0], edits, cut)
    try:
        kind, length = pdu.pdu_header(raw[:6])
        if kind != 0x04 or length != len(raw) - 6:
            return
        got = EchoResponse().add(raw[6:])
    except KitError as exc:
        assert isinstance(exc, EchoDeclined)
        return
    if got is not None:
        assert library_reads_rsp([raw]) == (got, 1)
