"""A C-MOVE whose PACS cannot connect back says what the PACS must know (issue #14 item 8).

The embedded PACS knows our move destination at a port where something listens but never
answers (a stale registration, a firewall): the C-MOVE times out, and the error names our AE
title, host and store port as the PACS must have them, instead of a bare timeout or 0xC000.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.config import StackSettings
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.errors import PeerTimeoutError
from kit.stack import Stack
from tests.conftest import free_port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port that accepts connections into its backlog and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _pacs_with(tmp_path: Path, destination: str) -> Stack:
    return Stack(StackSettings(pacs_port=0, fhir_port=0, mllp_port=0, data_dir=str(tmp_path / "stack"),
                               move_destinations={"KITMOVE": destination}), services=["pacs"])


def _study(stack: Stack) -> str:
    return str(PacsClient.from_settings(stack.client_settings()).find("STUDY")["study_instance_uid"][0])


def test_move_timeout_names_what_the_pacs_must_know(tmp_path: Path, black_hole: int) -> None:
    store_port = free_port()
    with _pacs_with(tmp_path, f"127.0.0.1:{black_hole}") as stack:
        s = stack.client_settings()
        client = PacsClient(s.pacs.host, s.pacs.port, called_aet=s.pacs.called_aet, aet="KITMOVE",
                            timeout=2)
        with pytest.raises(PeerTimeoutError) as info:
            client.move(study_uid=_study(stack), dest=tmp_path / "moved", store_port=store_port)
    text = str(info.value)
    assert "never connected back" in text
    assert "KITMOVE" in text and "127.0.0.1" in text and f"port {store_port}" in text


def test_move_refused_callback_says_it_never_connected(tmp_path: Path) -> None:
    store_port, closed = free_port(), free_port()
    with _pacs_with(tmp_path, f"127.0.0.1:{closed}") as stack:
        s = stack.client_settings()
        client = PacsClient(s.pacs.host, s.pacs.port, called_aet=s.pacs.called_aet, aet="KITMOVE",
                            timeout=10)
        with pytest.raises(RetrieveError) as info:
            client.move(study_uid=_study(stack), dest=tmp_path / "moved", store_port=store_port)
    text = str(info.value)
    assert "never connected back" in text and "KITMOVE" in text and f"port {store_port}" in text
