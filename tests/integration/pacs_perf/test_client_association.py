"""The client's association shortcuts (kit.dicom._association, kit.dicom._fastnet hold/release)
keep pynetdicom's protocol: the hand-encoded A-ASSOCIATE-RQ is the one pynetdicom would send,
a held network loop resumes on release, the release ends the association's threads."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path

import pytest
from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.presentation import build_context

from kit.dicom._fastnet import hold_dul, release_dul
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import AssociationRejectedError


def _read_pdu(conn: socket.socket) -> bytes:
    data = b""
    while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _capture_request(client: PacsClient, listener: socket.socket, contexts: list[object],
                     **kwargs: object) -> tuple[bytes, bytes]:
    """The A-ASSOCIATE-RQ the client sends to a raw listener (answered A-ASSOCIATE-RJ), and
    pynetdicom's own encoding of the request primitive the association holds."""
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            got.append(_read_pdu(conn))
            conn.sendall(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, 7))  # rejected: called AE
            conn.recv(10)

    thread = threading.Thread(target=serve)
    thread.start()
    primitives: list[object] = []
    original = client._ae

    def ae() -> object:
        entity = original()
        real = entity.associate

        def associate(*args: object, **kw: object) -> object:
            assoc = real(*args, **kw)
            primitives.append(assoc.requestor.primitive)
            return assoc

        entity.associate = associate  # type: ignore[method-assign]
        return entity

    client._ae = ae  # type: ignore[method-assign]
    with pytest.raises(AssociationRejectedError), client._associate(contexts, **kwargs):  # type: ignore[arg-type]
        pass
    thread.join(10)
    return got[0], A_ASSOCIATE_RQ(primitives[0]).encode()


def test_the_request_on_the_wire_is_pynetdicoms(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = PacsClient("127.0.0.1", listener.getsockname()[1], called_aet="NOBODY", timeout=10)
        from kit.dicom.dimse import _default_roles, _default_storage_contexts

        contexts = [build_context("1.2.840.10008.5.1.4.1.2.2.3"), *_default_storage_contexts()][:128]
        sent, library = _capture_request(client, listener, contexts, roles=_default_roles())
    assert sent == library
    assert len(sent) > 60_000  # the whole C-GET proposal, roles included


def test_a_pdu_listener_gets_pynetdicoms_own_request(tmp_path: Path) -> None:
    """With EVT_PDU_SENT bound (someone watching the PDUs), pynetdicom sends the request itself."""
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = PacsClient("127.0.0.1", listener.getsockname()[1], called_aet="NOBODY", timeout=10)
        sent, library = _capture_request(
            client, listener, [build_context("1.2.840.10008.1.1")],
            handlers=[(evt.EVT_PDU_SENT, lambda e: seen.append(type(e.pdu).__name__))])
    assert sent == library
    assert seen[0] == "A_ASSOCIATE_RQ"


def test_debug_logging_keeps_pynetdicoms_log_handlers(pacs: EmbeddedPACS,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        client.echo()
    assert "A-ASSOCIATE-RQ" in caplog.text  # pynetdicom's standard handler formatted the request
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pynetdicom"):
        client.echo()
    assert "A-ASSOCIATE-RQ" not in caplog.text


def test_held_loop_resumes_on_release_and_release_ends_the_threads(pacs: EmbeddedPACS) -> None:
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=10)
    with client._associate([build_context("1.2.840.10008.1.1")]) as assoc:
        idle = hold_dul(assoc, park=True)
        assert idle.wait(10)
        hold = vars(assoc.dul)["_is_transport_event"]
        assert hold_dul(assoc) is idle  # held once: the same hold, still parked
        release_dul(assoc)
        assert hold.wake.is_set()  # a reactor parked in the check looks again at once
        assert "_is_transport_event" not in vars(assoc.dul)
        release_dul(assoc)  # idempotent
        status = assoc.send_c_echo()  # pynetdicom's own path works again
        assert status.Status == 0
        dul = assoc.dul
    assert assoc.is_released and not dul.is_alive()

