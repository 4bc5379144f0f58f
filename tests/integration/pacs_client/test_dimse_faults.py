"""PacsClient failures: each one a typed error, never an empty frame."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from kit.dicom.dimse import PacsClient, RetrieveError
from kit.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomFileError,
    DimseStatusError,
    PeerTimeoutError,
    PeerUnreachableError,
)
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.pacs_client.conftest import make_ct


@pytest.fixture
def scp() -> Iterator[Callable[..., int]]:
    """Start tiny pynetdicom SCPs with given handlers; all shut down after the test."""
    servers: list[Any] = []

    def start(handlers: list[Any], contexts: list[tuple[str, bool]]) -> int:
        ae = AE(ae_title="FAKEPACS")
        for uid, scp_role in contexts:
            if scp_role:
                ae.add_supported_context(uid, scu_role=True, scp_role=True)
            else:
                ae.add_supported_context(uid)
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        return port

    yield start
    for server in servers:
        server.shutdown()


def test_closed_port_is_unreachable() -> None:
    client = PacsClient("127.0.0.1", free_port(), called_aet="ANY", timeout=5)
    with pytest.raises(PeerUnreachableError):
        client.echo()


@pytest.mark.orthanc
def test_wrong_called_aet_is_rejected(orthanc_factory: Callable[..., OrthancServer]) -> None:
    orthanc = orthanc_factory(DicomCheckCalledAet=True)
    good = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, timeout=10)
    assert good.echo() >= 0
    bad = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet="NOTORTHANC", timeout=10)
    with pytest.raises(AssociationRejectedError) as info:
        bad.echo()
    assert info.value.result in (1, 2)
    assert info.value.source_ is not None and info.value.reason is not None


def test_silent_peer_times_out_within_the_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            accepted.append(conn)  # keep it open, never answer
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        client = PacsClient("127.0.0.1", port, called_aet="SILENT", timeout=1.0)
        start = time.monotonic()
        with pytest.raises(PeerTimeoutError):
            client.echo()
        assert time.monotonic() - start < 4.0
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
        thread.join(2)


@pytest.mark.parametrize("service", ["echo", "find"])
def test_a_peer_silent_after_accepting_is_a_timeout_not_an_abort(scp: Callable[..., int],
                                                                 service: str) -> None:
    """pynetdicom aborts the association on its own DIMSE timeout; the user is told it timed out."""
    release = threading.Event()

    def slow(event: evt.Event) -> Any:
        release.wait(5)
        return 0x0000

    def slow_find(event: evt.Event) -> Iterator[Any]:
        release.wait(5)
        yield 0x0000, None

    port = scp([(evt.EVT_C_ECHO, slow), (evt.EVT_C_FIND, slow_find)],
               [("1.2.840.10008.1.1", False), (StudyRootQueryRetrieveInformationModelFind, False)])
    client = PacsClient("127.0.0.1", port, called_aet="FAKEPACS", timeout=1.0)
    start = time.monotonic()
    try:
        with pytest.raises(PeerTimeoutError, match="no response within 1s"):
            if service == "echo":
                client.echo()
            else:
                client.find(level="STUDY", patient_id="X")
    finally:
        release.set()
    assert time.monotonic() - start < 4.0


def test_peer_abort_mid_get(scp: Callable[..., int], tmp_path: Path) -> None:
    files = make_ct(tmp_path / "src", 3)
    datasets = [pydicom.dcmread(p) for p in files]

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(datasets)
        yield 0xFF00, datasets[0]
        event.assoc.abort()

    port = scp([(evt.EVT_C_GET, on_get)],
               [(StudyRootQueryRetrieveInformationModelGet, False), (CTImageStorage, True)])
    client = PacsClient("127.0.0.1", port, called_aet="FAKEPACS", timeout=10)
    with pytest.raises(AssociationAbortedError) as info:
        client.get(study_uid=str(datasets[0].StudyInstanceUID), dest=tmp_path / "out",
                   sop_classes=[CTImageStorage])
    assert "after 1 instance" in str(info.value)


def test_truncated_file_is_refused_before_sending(scp: Callable[..., int], tmp_path: Path) -> None:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    port = scp([(evt.EVT_C_STORE, on_store)], [(CTImageStorage, False)])
    files = make_ct(tmp_path, 2)
    files[1].write_bytes(files[1].read_bytes()[:-100])
    client = PacsClient("127.0.0.1", port, called_aet="FAKEPACS", timeout=10)
    with pytest.raises(DicomFileError) as info:
        client.store(files)
    assert str(files[1]) in str(info.value)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all" * 10)
    with pytest.raises(DicomFileError):
        client.store([tmp_path / "junk.dcm"])
    assert received == []


def test_store_failure_status(scp: Callable[..., int], tmp_path: Path) -> None:
    def on_store(event: evt.Event) -> int:
        return 0xA700  # out of resources

    port = scp([(evt.EVT_C_STORE, on_store)], [(CTImageStorage, False)])
    files = make_ct(tmp_path, 2)
    client = PacsClient("127.0.0.1", port, called_aet="FAKEPACS", timeout=10)
    with pytest.raises(DimseStatusError) as info:
        client.store(files)
    assert info.value.status == 0xA700
    assert isinstance(info.value, RetrieveError)
    assert info.value.received["status"].to_list() == [0xA700, 0xA700]


def test_find_failure_status(scp: Callable[..., int]) -> None:
    def on_find(event: evt.Event) -> Iterator[Any]:
        yield 0xC000, None  # unable to process

    port = scp([(evt.EVT_C_FIND, on_find)], [(StudyRootQueryRetrieveInformationModelFind, False)])
    client = PacsClient("127.0.0.1", port, called_aet="FAKEPACS", timeout=10)
    with pytest.raises(DimseStatusError) as info:
        client.find("STUDY", patient_id="X")
    assert info.value.status == 0xC000
