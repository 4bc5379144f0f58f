"""Review of the replayed A-ASSOCIATE answers (kit.dicom._accept), questions 2, 4 and 5: malformed or
lying requests get pynetdicom's answer and are never replayed; the cache stays bounded under a flood
of distinct proposals and answers alike when many associations record or replay one proposal at
once; other pynetdicom users in the process (a PACS with other contexts, the kit client's own
storage SCP) negotiate as before. Differential against a ``fast=False`` PACS."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from kit.dicom._assoc_pdu import item
from kit.dicom._rq_shape import request_key
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from tests.integration.pacs_scp.conftest import make_instance
from tests.integration.pacs_scp.test_accept_replay import APP, exchange, same_answers
from tests.integration.pacs_scp.test_robustness import echo_ok

pytestmark = pytest.mark.dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
ECHO = "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
USER = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7") + item(0x55, b"HOSTILE")


def context(cid: int, abstract: bytes, *syntaxes: bytes) -> bytes:
    subs = item(0x30, abstract) + b"".join(item(0x40, t) for t in syntaxes)
    return item(0x20, bytes((cid, 0, 0, 0)) + subs)


def pdu(items: bytes, *, called: bytes = b"KIT", calling: bytes = b"A1", version: int = 1,
        length: int | None = None) -> bytes:
    """An A-ASSOCIATE-RQ around ``items`` (``length``: the header's length field, else the true one)."""
    declared = 68 + len(items) if length is None else length
    return struct.pack(">BBIHH16s16s32x", 1, 0, declared, version, 0, called.ljust(16),
                       calling.ljust(16)) + items


APPLICATION = item(0x10, APP.encode())
GOOD = context(1, CT.encode(), EXPLICIT.encode(), IMPLICIT.encode()) \
    + context(3, ECHO.encode(), IMPLICIT.encode())

HOSTILE = {
    "duplicate ID, same syntax": APPLICATION + context(1, CT.encode(), EXPLICIT.encode()) * 2
    + item(0x50, USER),
    "duplicate ID": APPLICATION + context(1, CT.encode(), EXPLICIT.encode())
    + context(1, ECHO.encode(), IMPLICIT.encode()) + item(0x50, USER),
    "even ID": APPLICATION + context(2, CT.encode(), EXPLICIT.encode()) + item(0x50, USER),
    "ID 0": APPLICATION + context(0, CT.encode(), EXPLICIT.encode()) + item(0x50, USER),
    "no context": APPLICATION + item(0x50, USER),
    "128 contexts (all odd IDs)": APPLICATION + b"".join(
        context(i, CT.encode(), EXPLICIT.encode()) for i in range(1, 256, 2)) + item(0x50, USER),
    "abstract syntax not a UID": APPLICATION + context(1, b"hello world", EXPLICIT.encode())
    + item(0x50, USER),
    "abstract syntax of 64 characters": APPLICATION + context(1, b"1." + b"2" * 62, EXPLICIT.encode())
    + item(0x50, USER),
    "abstract syntax of 65 characters": APPLICATION + context(1, b"1." + b"2" * 63, EXPLICIT.encode())
    + item(0x50, USER),
    "abstract syntax of 30000 characters": APPLICATION + context(1, b"1." + b"2" * 30000, EXPLICIT.encode())
    + item(0x50, USER),
    "transfer syntax of 65 characters": APPLICATION + context(1, CT.encode(), b"1." + b"2" * 63)
    + item(0x50, USER),
    "empty abstract syntax": APPLICATION + context(1, b"", EXPLICIT.encode()) + item(0x50, USER),
    "empty transfer syntax": APPLICATION + context(1, CT.encode(), b"") + item(0x50, USER),
    "NUL-padded UIDs": APPLICATION + context(1, CT.encode() + b"\x00", EXPLICIT.encode() + b"\x00")
    + item(0x50, USER),
    "item length past the PDU": APPLICATION + b"\x20\x00\xff\xff\x01\x00\x00\x00" + item(0x30, CT.encode())
    + item(0x50, USER),
    "sub-item length past its item": APPLICATION
    + context(1, CT.encode(), EXPLICIT.encode())[:-len(EXPLICIT) - 2]
    + b"\x7f\xff" + EXPLICIT.encode() + item(0x50, USER),
    "no user information": APPLICATION + GOOD,
    "two user informations": APPLICATION + GOOD + item(0x50, USER) * 2,
    "user information first": item(0x50, USER) + APPLICATION + GOOD,
    "no application context": GOOD + item(0x50, USER),
    "two application contexts": APPLICATION * 2 + GOOD + item(0x50, USER),
    "unknown top-level item": APPLICATION + GOOD + item(0x60, b"x") + item(0x50, USER),
    "maximum length 0": APPLICATION + GOOD + item(0x50, item(0x51, b"\x00" * 4) + USER[8:]),
    "maximum length of 3 bytes": APPLICATION + GOOD + item(0x50, item(0x51, b"\x00" * 3) + USER[8:]),
    "empty implementation class UID": APPLICATION + GOOD + item(0x50, USER[:8] + item(0x52, b"")),
    "implementation version of 17 characters": APPLICATION + GOOD
    + item(0x50, USER[:8] + item(0x52, b"1.2.3") + item(0x55, b"V" * 17)),
    "non-ASCII implementation version": APPLICATION + GOOD
    + item(0x50, USER[:8] + item(0x52, b"1.2.3") + item(0x55, b"V\xe9")),
}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, EmbeddedPACS]]:
    with EmbeddedPACS(tmp_path / "fast", acse_timeout=5) as fast, \
            EmbeddedPACS(tmp_path / "slow", fast=False, acse_timeout=5) as slow:
        yield fast, slow


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the broken UIDs
def test_hostile_requests_answered_as_pynetdicom_answers(pair: tuple[EmbeddedPACS, EmbeddedPACS]) -> None:
    """Each twice (a recorded answer would be replayed the second time): the same AC, RJ, A-ABORT
    or closed connection as pynetdicom; only well-formed proposals are keyed; the PACS serves on."""
    fast, slow = pair
    for name, items in HOSTILE.items():
        raw = pdu(items)
        keyed = request_key(raw) is not None
        assert keyed == name.startswith(("128 contexts", "abstract syntax", "transfer syntax", "NUL-padded",
                                         "maximum length 0", "implementation version",
                                         "non-ASCII")), name
        same_answers(fast, slow, raw)
    # headers that lie: a length field short of the items, AE titles of spaces / non-ASCII / a
    # backslash, protocol version 2
    raw = pdu(APPLICATION + GOOD + item(0x50, USER))
    for lying in (pdu(APPLICATION + GOOD + item(0x50, USER), length=68 + len(APPLICATION) + 10)[
                      :6 + 68 + len(APPLICATION) + 10],
                  pdu(APPLICATION + GOOD + item(0x50, USER), called=b" " * 16),
                  pdu(APPLICATION + GOOD + item(0x50, USER), calling=b" " * 16),
                  pdu(APPLICATION + GOOD + item(0x50, USER), calling=b"A\xe91"),
                  pdu(APPLICATION + GOOD + item(0x50, USER), calling=b"A\\1"),
                  pdu(APPLICATION + GOOD + item(0x50, USER), version=2)):
        same_answers(fast, slow, raw)  # recorded (or replayed), then the lying one
        same_answers(fast, slow, lying)
    assert echo_ok(fast)


def test_a_flood_of_distinct_proposals_keeps_the_cache_bounded(
        pair: tuple[EmbeddedPACS, EmbeddedPACS]) -> None:
    fast, slow = pair
    cache = fast._accept
    assert cache is not None
    for n in range(3 * cache.max_entries):
        raw = pdu(APPLICATION + context(1, f"1.2.3.{n}".encode(), EXPLICIT.encode()) + GOOD[
            len(context(1, CT.encode(), EXPLICIT.encode(), IMPLICIT.encode())):] + item(0x50, USER))
        assert exchange(fast.port, raw)[:1] == b"\x02"
        assert len(cache._entries) <= cache.max_entries
    replayed = cache.replayed
    same_answers(fast, slow, raw)  # the latest is still answered from the cache
    assert cache.replayed == replayed + 2
    assert echo_ok(fast)


def test_many_associations_record_and_replay_one_proposal_at_once(
        pair: tuple[EmbeddedPACS, EmbeddedPACS]) -> None:
    """16 senders at once with a proposal new to the cache (all record it), then 16 at once again
    (all replay it): every answer is pynetdicom's, with each sender's own AE title."""
    fast, slow = pair
    items = APPLICATION + GOOD + context(5, b"1.2.826.0.1.3680043.9.7.77", EXPLICIT.encode()) \
        + item(0x50, USER)
    assert request_key(pdu(items)) is not None
    callers = [f"S{n}".encode() for n in range(16)]
    expected = {c: exchange(slow.port, pdu(items, calling=c)) for c in callers}
    assert all(a[:1] == b"\x02" for a in expected.values())
    def send(calling: bytes, start: threading.Barrier, got: dict[bytes, bytes]) -> None:
        start.wait(10)
        got[calling] = exchange(fast.port, pdu(items, calling=calling))

    for _ in range(2):
        got: dict[bytes, bytes] = {}
        start = threading.Barrier(len(callers))
        threads = [threading.Thread(target=send, args=(c, start, got)) for c in callers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == expected
    assert fast._accept is not None and fast._accept.replayed >= len(callers)
    assert fast._accept.recorded >= 1


class _NoCT(EmbeddedPACS):
    """A PACS configured otherwise (no CT storage; Verification in Implicit VR only)."""

    def _make_ae(self) -> AE:
        ae = super()._make_ae()
        ae.remove_supported_context(CTImageStorage)
        ae.remove_supported_context(Verification, [t for t in ALL_TRANSFER_SYNTAXES if t != IMPLICIT])
        return ae


def test_a_second_pacs_with_other_contexts_answers_with_its_own(tmp_path: Path) -> None:
    raw = pdu(APPLICATION + GOOD + item(0x50, USER))
    with EmbeddedPACS(tmp_path / "first") as first:
        accepted = exchange(first.port, raw)
        assert exchange(first.port, raw) == accepted
        with _NoCT(tmp_path / "fast") as fast, _NoCT(tmp_path / "slow", fast=False) as slow:
            reference = same_answers(fast, slow, raw)
            assert reference != accepted and reference[:1] == b"\x02"
            assert fast._accept is not first._accept
        assert exchange(first.port, raw) == accepted


def test_the_kit_clients_storage_scp_in_the_process_as_before(tmp_path: Path) -> None:
    """PacsClient.move runs a pynetdicom storage SCP (an acceptor, through the wrapped negotiation)
    in this process: fed by a fast and a fast=False PACS, twice, it receives the same."""
    path = tmp_path / "ct.dcm"
    make_instance("MRN1001", 0, 1, 1).save_as(path, enforce_file_format=True)
    from tests.conftest import free_port

    port = free_port()
    results = []
    for fast in (False, True, True):
        with EmbeddedPACS(tmp_path / f"pacs{len(results)}", fast=fast,
                          move_destinations={"MOVESCU": ("127.0.0.1", port)}) as pacs:
            pacs.import_files([path])
            client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", aet="MOVESCU", timeout=30)
            frame = client.move(study_uid=str(make_instance("MRN1001", 0, 1, 1).StudyInstanceUID),
                                dest=tmp_path / f"moved{len(results)}", store_port=port)
            results.append(sorted(p.name for p in (tmp_path / f"moved{len(results)}").iterdir()))
            assert frame.height >= 1
            assert echo_ok(pacs)
    assert results[0] == results[1] == results[2] and results[0]


def _threads_back_and_serving(pacs: EmbeddedPACS, baseline: int) -> None:
    """The PACS's threads are back to ``baseline`` within 5 s and it accepts a good association."""
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= baseline
    assert echo_ok(pacs)


def _answer_then_close(sock: socket.socket) -> bytes:
    """What the PACS sent before closing (b'' if it sent nothing; TimeoutError if it kept the
    connection open for 5 s)."""
    sock.settimeout(5)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "pynetdicom"])
@pytest.mark.parametrize("case", ["even ID", "ID 0", "empty transfer syntax", "NUL transfer syntax",
                                  "abstract syntax of 65 characters"])
def test_requests_pynetdicom_fails_on_are_aborted_and_free_their_place(tmp_path: Path, fast: bool,
                                                                         case: str) -> None:
    """pynetdicom's threads die on some requests (an even or zero context ID: its DUL thread, in
    AE-6; a context whose transfer syntaxes are all empty: its association thread, in the
    negotiation), leaving the connection unanswered and open (for the ACSE timeout, or for ever
    with its DUL thread), and an undecodable one waits out the ACSE timeout as an association:
    a few such requests locked out every sender. Each is now answered with an A-ABORT and closed
    at once, its threads end, and a good association is accepted straight away."""
    items = HOSTILE.get(case) or (APPLICATION + context(1, CT.encode(), b"\x00") + item(0x50, USER))
    with EmbeddedPACS(tmp_path / "pacs", fast=fast, max_associations=2) as pacs:
        baseline = threading.active_count()
        socks = [socket.create_connection(("127.0.0.1", pacs.port), timeout=5) for _ in range(2)]
        try:
            for sock in socks:
                sock.sendall(pdu(items))
            for sock in socks:
                assert _answer_then_close(sock)[:1] == b"\x07"
        finally:
            for sock in socks:
                sock.close()
        _threads_back_and_serving(pacs, baseline)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failing_replay_falls_back_to_the_checked_delivery(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay is an optimisation: when it raises, the request is delivered as with fast=False
    (checked: a request pynetdicom's DUL thread would die on is aborted at once)."""
    from kit.dicom._accept import AcceptCache

    def broken(self: AcceptCache, dul: object, raw: bytes) -> bool:
        raise RuntimeError("replay broken")

    monkeypatch.setattr(AcceptCache, "deliver", broken)
    with EmbeddedPACS(tmp_path / "pacs", max_associations=2) as pacs:
        baseline = threading.active_count()
        with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as sock:
            sock.sendall(pdu(HOSTILE["even ID"]))
            assert _answer_then_close(sock)[:1] == b"\x07"
        _threads_back_and_serving(pacs, baseline)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_answers_equal_a_plain_pynetdicom_server_with_the_same_ae(tmp_path: Path) -> None:
    """The PACS's checked delivery and replay against pynetdicom itself (its own server and reader,
    the PACS's AE settings): the same bytes for every request pynetdicom answers (all but those
    its threads die on, which it leaves unanswered)."""
    crashers = {"even ID", "ID 0", "empty transfer syntax"}
    with EmbeddedPACS(tmp_path / "fast") as fast, EmbeddedPACS(tmp_path / "slow", fast=False) as slow:
        ae = fast._make_ae()
        server = ae.start_server(("127.0.0.1", 0), block=False)
        try:
            plain = server.server_address[1]
            requests = [pdu(items) for name, items in HOSTILE.items() if name not in crashers]
            requests += [pdu(APPLICATION + GOOD + item(0x50, USER), called=b"OTHER"),
                         pdu(APPLICATION + GOOD + item(0x50, USER), version=2),
                         pdu(APPLICATION + GOOD + item(0x50, USER), calling=b"A\\1")]
            for raw in requests:
                reference = exchange(plain, raw)
                assert reference, raw  # pynetdicom answers it
                for _ in range(2):  # recorded, then replayed where keyed
                    assert exchange(slow.port, raw) == reference
                    assert exchange(fast.port, raw) == reference
        finally:
            server.shutdown()
            ae.shutdown()
