"""PacsClient C-FIND against a PACS whose Pending response carries a match that cannot be read
(hostile-peer audit).

A Pending C-FIND-RSP is a match, its Identifier the match's attributes (PS3.7 9.1.2.1.5, PS3.4
C.4.1.2.3). pynetdicom yields None for an identifier it cannot decode (or for a Pending without
one), which the client skipped: a match lost without a word; and pydicom decodes garbage
leniently (a value running past the end kept cut, a header cut short dropped), which became a
row of nulls or a cut value. Now each is C-CANCEL, the responses read to the final one, a
release, and :class:`~kit.errors.DicomError` naming the PACS and "a match that cannot be read";
the data set's element structure is walked as it arrives (:class:`kit.dicom._cfind.DataSetWalk`).

The hostile peer is the raw DICOM Upper Layer acceptor of the client bounds tests (Implicit VR
Little Endian); the walk itself is also checked on pydicom's encodings in the other syntaxes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from kit.dicom._cfind import DataSetWalk
from kit.dicom._command import command_int
from kit.dicom.dimse import PacsClient
from kit.errors import DicomError
from tests.integration.hostile.test_cfind_memory import (
    C_CANCEL_RQ,
    identifier,
    query,
    release,
    response,
    send,
)
from tests.integration.pacs_client.test_client_bounds import (
    RawPeer,
    bounded,
    peer,  # noqa: F401 - the fixture
    recv_message,
)

#: Bad identifiers (None: a Pending without a data set, Command Data Set Type 0101H)
BAD: dict[str, bytes | None] = {
    "value past the end": identifier(2) + struct.pack("<HHI", 0x0008, 0x0090, 1000) + b"DR^WHO" * 2,
    "header cut": identifier(2) + b"\x10\x00\x10",
    "only garbage": b"\xff" * 7,
    "undefined length unclosed": identifier(2) + struct.pack("<HHI", 0x0040, 0x0275, 0xFFFFFFFF)
    + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF),
    "no data set": None,
}
TIMEOUT = 3.0


def pending_then(bad: bytes | None, seen: dict[str, Any]) -> Callable[..., None]:
    """A script: one good match, then ``bad`` in a Pending, then (the C-CANCEL read) Cancel, release;
    without a C-CANCEL within the timeout it sends Success (what the old client waited for)."""

    def script(raw: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        send(conn, response(context_id, fields, 0xFF00, identifier(1)))
        send(conn, response(context_id, fields, 0xFF00, bad))
        conn.settimeout(TIMEOUT)
        try:
            _, request = recv_message(conn)
        except TimeoutError:
            send(conn, response(context_id, fields, 0x0000))
            release(conn)
            return
        seen["request"] = (command_int(request, 0x0100), command_int(request, 0x0120))
        send(conn, response(context_id, fields, 0xFE00))
        release(conn)
        seen["released"] = True

    return script


@pytest.mark.parametrize("name", ["find", "worklist"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_a_pending_that_cannot_be_read_is_cancelled_and_an_error(peer: Callable[..., RawPeer],  # noqa: F811
                                                                 bad: str, name: str) -> None:
    """A good match, then a Pending whose match cannot be read: C-CANCEL of message 1, the final
    Cancel read, the association released, and DicomError (not a lost match, nor a row of nulls)."""
    seen: dict[str, Any] = {}
    raw = peer(pending_then(BAD[bad], seen))
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=2 * TIMEOUT)
    exc, _took = bounded(query(client, name))
    assert type(exc) is DicomError, repr(exc)
    assert "the PACS sent a match that cannot be read" in str(exc)
    assert "after 1 match(es): C-CANCEL sent" in str(exc)
    assert client.address in str(exc)
    raw.close()
    assert seen.get("request") == (C_CANCEL_RQ, 1)
    assert seen.get("released") is True


def test_readable_matches_are_rows(peer: Callable[..., RawPeer]) -> None:  # noqa: F811
    """The same PACS sending well-formed matches (one with an undefined-length sequence, one sent in
    fragments of 7 bytes): each a row, Success, nothing cancelled."""
    item = struct.pack("<HHI", 0x0008, 0x0100, 2) + b"A1"
    undefined = 0xFFFFFFFF
    sequence = (struct.pack("<HHIHHI", 0x0008, 0x1032, undefined, 0xFFFE, 0xE000, undefined)
                + item + struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0))
    with_sequence = sequence + identifier(2)
    seen: dict[str, Any] = {}

    def script(raw: RawPeer, conn: socket.socket, context_id: int, fields: dict[int, bytes]) -> None:
        send(conn, response(context_id, fields, 0xFF00, identifier(1)))
        send(conn, response(context_id, fields, 0xFF00, with_sequence))
        pieces = response(context_id, fields, 0xFF00, identifier(3, 30))
        command, data = pieces[0] + pieces[1], bytes(pieces[3])
        fragments = [data[i:i + 7] for i in range(0, len(data), 7)]
        send(conn, [command] + [struct.pack(">BBIIBB", 0x04, 0, len(f) + 6, len(f) + 2, context_id,
                                            0x02 if i == len(fragments) - 1 else 0x00) + f
                                for i, f in enumerate(fragments)])
        send(conn, response(context_id, fields, 0x0000))
        release(conn)
        seen["released"] = True

    raw = peer(script)
    client = PacsClient("127.0.0.1", raw.port, called_aet="HOSTILE", timeout=5.0)
    box: dict[str, Any] = {}

    def run() -> None:
        box["frame"] = client.find("STUDY", patient_id="MRN1")

    exc, _took = bounded(run)
    assert exc is None, repr(exc)
    frame = box["frame"]
    assert frame["study_instance_uid"].to_list() == [f"1.2.826.0.1.3680043.8.498.{n}" for n in (1, 2, 3)]
    raw.close()
    assert seen.get("released") is True


def _encoded(implicit: bool, little: bool) -> bytes:
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.StudyInstanceUID = "DOE^JOHN", "MRN1", "1.2.3.4"
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "A1", "x" * 60
    closed = Dataset()
    closed.CodeValue = "B2"
    closed.is_undefined_length_sequence_item = True  # an item to its delimiter
    ds.ProcedureCodeSequence = Sequence([item, closed])
    ds["ProcedureCodeSequence"].is_undefined_length = True  # to its delimiter
    ds.ReferencedStudySequence = Sequence([item])
    ds.Manufacturer = "ACME"
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return fp.getvalue()


def _walk(data: bytes, little: bool, step: int) -> str | None:
    walk = DataSetWalk(little)
    for start in range(0, max(len(data), 1), step):
        walk.feed(data[start:start + step])
    return walk.end()


@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)],
                         ids=["implicit", "explicit", "big-endian"])
def test_the_walk_takes_whole_data_sets_and_finds_cut_ones(implicit: bool, little: bool) -> None:
    """pydicom's encoding of a data set with sequences, in any fragments: whole; cut anywhere but
    between its top-level elements, or with bytes after it: a reason."""
    data = _encoded(implicit, little)
    for step in (1, 2, 3, 7, 11, 12, 13, len(data)):
        assert _walk(data, little, step) is None, step
    assert _walk(data + b"\x01\x02", little, 5) == "2 bytes at its end that are no element"
    assert "runs 3 bytes past the end" in (_walk(data[:-3], little, 5) or "")
    whole = 0
    for cut in range(len(data)):
        whole += _walk(data[:cut], little, 7) is None
    assert whole == 6  # the empty data set and the ends of the first 5 of its 6 top-level elements


def _cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos:pos + size])
        pos += size
    return [*out, data[pos:]]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=12), st.booleans())
def test_the_walk_of_any_bytes_in_any_fragments_gives_one_answer_and_never_raises(
        data: bytes, sizes: list[int], little: bool) -> None:
    """The walk runs on the network thread on whatever a PACS sends: it must not raise, and how
    the bytes were cut into fragments must not change what it says."""
    walk = DataSetWalk(little)
    for piece in _cuts(data, sizes):
        walk.feed(piece)
    whole = DataSetWalk(little)
    whole.feed(data)
    assert walk.end() == whole.end()
    assert walk.end() is None or isinstance(walk.end(), str)


_TEXT = st.text(st.sampled_from("ABCabc 0189^"), max_size=20)


@st.composite
def _datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    ds = Dataset()
    if draw(st.booleans()):
        ds.PatientName = draw(_TEXT)
    if draw(st.booleans()):
        ds.PatientID = draw(_TEXT)
    if draw(st.booleans()):
        ds.InstanceNumber = draw(st.integers(-99, 9999))
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ds.add_new(0x00091010, "LO", draw(_TEXT))  # a private element
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(_datasets(depth + 1), max_size=3))
        for item in items:
            item.is_undefined_length_sequence_item = draw(st.booleans())
        ds.ProcedureCodeSequence = Sequence(items)
        ds["ProcedureCodeSequence"].is_undefined_length = draw(st.booleans())
    return ds


@settings(max_examples=300, deadline=None)
@given(_datasets(), st.sampled_from([(True, True), (False, True), (False, False)]),
       st.lists(st.integers(1, 30), max_size=10))
def test_any_data_set_pydicom_writes_is_whole_to_the_walk(ds: Dataset, encoding: tuple[bool, bool],
                                                          sizes: list[int]) -> None:
    """No false alarm: whatever pydicom encodes (nested sequences and items of defined and
    undefined length, any of the three encodings), cut into any fragments, walks as whole."""
    implicit, little = encoding
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    walk = DataSetWalk(little)
    for piece in _cuts(fp.getvalue(), sizes):
        walk.feed(piece)
    assert walk.end() is None
