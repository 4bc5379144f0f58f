"""Review of the replayed A-ASSOCIATE answers (kit.dicom._accept), question 1: is the cache key
complete? Everything pynetdicom's answer depends on must be in the key or re-checked per
association. Differential: the same request bytes to a fast PACS (replaying) and a ``fast=False``
one (pynetdicom only), answers compared byte for byte."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from kit.dicom._assoc_pdu import associate_rq_pdu, item
from kit.dicom.scp import EmbeddedPACS
from tests.integration.pacs_scp.test_accept_replay import APP, _recv_pdu, exchange
from tests.integration.pacs_scp.test_robustness import echo_ok

pytestmark = pytest.mark.dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
ECHO = "1.2.840.10008.1.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def request(contexts: list[tuple[int, str, list[str]]] | None = None, *, calling: bytes = b"A1",
            called: bytes = b"KIT", max_length: int = 16384) -> bytes:
    user = item(0x51, struct.pack(">I", max_length)) + item(0x52, b"1.2.826.0.1.3680043.9.7") \
        + item(0x55, b"REVIEW_1")
    contexts = contexts if contexts is not None else [(1, CT, [EXPLICIT, IMPLICIT]), (3, ECHO, [IMPLICIT])]
    return associate_rq_pdu(called.ljust(16), calling.ljust(16), APP, contexts, user)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, EmbeddedPACS]]:
    with EmbeddedPACS(tmp_path / "fast") as fast, EmbeddedPACS(tmp_path / "slow", fast=False) as slow:
        yield fast, slow


def answers(fast: EmbeddedPACS, slow: EmbeddedPACS, raw: bytes) -> tuple[bytes, bytes]:
    """(pynetdicom's answer, the fast PACS's answer) to ``raw``."""
    return exchange(slow.port, raw), exchange(fast.port, raw)


def test_pynetdicom_codecs_setting_is_part_of_the_key(pair: tuple[EmbeddedPACS, EmbeddedPACS],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``_config.CODECS`` (a documented pynetdicom setting) decides whether a UID with a
    non-ASCII byte decodes (the byte dropped) or the request is aborted: an answer recorded
    under one setting must not be replayed under the other."""
    fast, slow = pair
    raw = request([(1, CT + "Z", [EXPLICIT])]).replace((CT + "Z").encode(), CT.encode() + b"\xe9")
    monkeypatch.setattr(_config, "CODECS", ("ascii", "latin_1"))
    for _ in range(2):  # recorded, then replayed
        reference, answer = answers(fast, slow, raw)
        assert reference[:1] == b"\x02" and answer == reference
    monkeypatch.setattr(_config, "CODECS", ("ascii",))
    reference, answer = answers(fast, slow, raw)
    assert reference[:1] == b"\x07"  # pynetdicom cannot decode it now: A-ABORT
    assert answer == reference
    assert echo_ok(fast)


def test_pynetdicom_uid_validator_is_part_of_the_key(pair: tuple[EmbeddedPACS, EmbeddedPACS],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``_config.VALIDATORS['UI']`` (a documented hook, e.g. a site refusing UIDs under a root)
    decides whether pynetdicom decodes the request at all."""
    fast, slow = pair
    raw = request([(1, "1.2.3.4.5", [EXPLICIT]), (3, ECHO, [IMPLICIT])])
    for _ in range(2):
        reference, answer = answers(fast, slow, raw)
        assert reference[:1] == b"\x02" and answer == reference
    original = _config.VALIDATORS["UI"]

    def strict(value: object) -> tuple[bool, str]:
        if str(value).startswith("1.2.3."):
            return False, "refused root"
        return original(value)

    monkeypatch.setitem(_config.VALIDATORS, "UI", strict)
    reference, answer = answers(fast, slow, raw)
    assert reference[:1] == b"\x07"
    assert answer == reference


def test_the_acceptors_own_settings_read_per_association(pair: tuple[EmbeddedPACS, EmbeddedPACS]) -> None:
    """pynetdicom reads its AE's maximum PDU length and implementation class UID / version for every
    association; were they changed while serving, the replayed A-ASSOCIATE-AC would still name
    the old ones."""
    fast, slow = pair
    raw = request()
    for _ in range(2):
        reference, answer = answers(fast, slow, raw)
        assert reference[:1] == b"\x02" and answer == reference
    for pacs in pair:
        assert pacs._ae is not None
        pacs._ae.maximum_pdu_size = 32768
        pacs._ae.implementation_version_name = "REVIEW_2"
    reference, answer = answers(fast, slow, raw)
    assert b"REVIEW_2" in reference and struct.pack(">I", 32768) in reference
    assert answer == reference
    for pacs in pair:
        assert pacs._ae is not None
        pacs._ae.implementation_class_uid = "1.2.826.0.1.3680043.9.99"
    reference, answer = answers(fast, slow, raw)
    assert b"1.2.826.0.1.3680043.9.99" in reference and answer == reference


def test_titles_and_allow_list_rechecked_on_replay(tmp_path: Path) -> None:
    """Called AE title (ours or not, accept_any_called_aet), calling AE title (allow-list): the
    same proposal recorded from an allowed sender is refused to others exactly as pynetdicom
    refuses it, and the echoed titles are this request's."""
    for options in ({"allowed_aets": ("A1",)}, {"accept_any_called_aet": True}, {}):
        with EmbeddedPACS(tmp_path / f"f{len(options)}{sorted(options)}", **options) as fast, \
                EmbeddedPACS(tmp_path / f"s{len(options)}{sorted(options)}", fast=False, **options) as slow:
            first = request()
            assert answers(fast, slow, first)[0][:1] == b"\x02"
            for called, calling in ((b"KIT", b"A1"), (b"KIT", b"B2"), (b"OTHER", b"A1"), (b" KIT ", b"  A1"),
                                    (b"kit", b"A1"), (b"KIT", b"a1")):
                reference, answer = answers(fast, slow, request(called=called, calling=calling))
                assert answer == reference, (options, called, calling)
            assert fast._accept is not None and fast._accept.replayed >= 1


def idle(pacs: EmbeddedPACS) -> None:
    """Wait (bounded) until the PACS's released associations have ended."""
    deadline = time.monotonic() + 10
    while pacs._ae is not None and pacs._ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)


def test_association_limit_reached_refuses_a_replayed_request(tmp_path: Path) -> None:
    """max_associations reached: pynetdicom answers A-ASSOCIATE-RJ (transient, local limit
    exceeded); so must a request the fast PACS has recorded."""
    with EmbeddedPACS(tmp_path / "fast", max_associations=1) as fast, \
            EmbeddedPACS(tmp_path / "slow", max_associations=1, fast=False) as slow:
        raw = request()
        for _ in range(2):
            idle(fast)
            idle(slow)
            reference, answer = answers(fast, slow, raw)
            assert reference[:1] == b"\x02" and answer == reference
        assert fast._accept is not None and fast._accept.replayed >= 1
        holders = []
        try:
            for pacs in (slow, fast):
                idle(pacs)
                sock = socket.create_connection(("127.0.0.1", pacs.port), timeout=10)
                holders.append(sock)
                sock.sendall(request(calling=b"HOLDER"))
                assert _recv_pdu(sock)[:1] == b"\x02"
            reference, answer = answers(fast, slow, raw)
            assert reference[:1] == b"\x03" and reference[7:10] == b"\x02\x03\x02"
            assert answer == reference
        finally:
            for sock in holders:
                sock.close()
        idle(fast)
        assert echo_ok(fast)


def test_a_plain_pynetdicom_scp_in_the_process_negotiates_as_before(
        pair: tuple[EmbeddedPACS, EmbeddedPACS]) -> None:
    """The process-wide wrap of acse.negotiate_as_acceptor: an AE the user makes in the same
    notebook, supporting only Verification, answers a proposal the PACS has recorded (and
    replays) with its own negotiation (the CT context refused), before and after."""
    fast, slow = pair
    raw = request()
    ae = AE(ae_title="KIT")
    ae.add_supported_context(Verification, [IMPLICIT])
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        before = exchange(port, raw)
        assert before[:1] == b"\x02"
        for _ in range(3):
            reference, answer = answers(fast, slow, raw)
            assert answer == reference
        assert fast._accept is not None and fast._accept.replayed >= 2
        assert exchange(port, raw) == before
        assert before != reference  # it refuses the CT context (0x03) the PACS accepts
    finally:
        server.shutdown()
        ae.shutdown()


def test_a_negotiation_patched_in_the_process_is_not_bypassed(pair: tuple[EmbeddedPACS, EmbeddedPACS],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone replaces pynetdicom's acceptor negotiation in the process (say, to accept only
    Verification) after kit was imported: the answers recorded under the old one are not replayed
    (the replayed AC would name contexts the association does not have)."""
    import pynetdicom.acse

    fast, slow = pair
    raw = request()
    for _ in range(2):
        reference, answer = answers(fast, slow, raw)
        assert reference[:1] == b"\x02" and answer == reference
    before = pynetdicom.acse.negotiate_as_acceptor

    def only_verification(rq: Any, ac: Any, roles: Any = None) -> Any:
        return before(rq, [cx for cx in ac if str(cx.abstract_syntax) == ECHO], roles)

    monkeypatch.setattr(pynetdicom.acse, "negotiate_as_acceptor", only_verification)
    accepted = reference
    reference, answer = answers(fast, slow, raw)
    assert b"\x21\x00\x00\x1b\x01\x00\x03\x00" in reference and reference != accepted  # CT refused
    assert answer == reference
