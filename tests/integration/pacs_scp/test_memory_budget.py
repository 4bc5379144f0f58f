"""Memory on pynetdicom's path in the PACS, against peers that do not play fair.

pynetdicom holds each received message in memory whole and queues every message a
peer sends, answered or not. The PACS reads no further message from a peer while
one waits to be served, and counts what all associations hold against
``max_in_memory``:

- a peer that sends 24 data sets without waiting for the answers gets them all
  stored, while the PACS holds at most two of them at a time;
- a peer whose data set would take the PACS past ``max_in_memory`` (another
  association holding the rest) is answered with A-ABORT; the other goes on;
- whatever way an association ends (released, aborted or cut mid data set, aborted
  with messages queued), what it held is given back.

``fast=False`` gives every message to pynetdicom, as a peer that queried first has
the rest of its association served.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.association import Association

from kit.dicom._command import C_STORE_RQ, command_int, encode_command
from kit.dicom._fastnet import DataPhase
from kit.dicom.scp import EmbeddedPACS
from kit.errors import AssociationAbortedError
from tests.conftest import wait_until
from tests.integration.pacs_scp.conftest import assert_echoes, encode, make_instance, owned_association

MIB = 1 << 20
Blobs = list[tuple[str, bytes]]


def _blobs(count: int, size: int) -> Blobs:
    """``count`` CT data sets of ``size`` x ``size`` pixels (2 bytes each), each its own UID."""
    ds = make_instance("MRN1001", 0, 1, 1, size=size)
    out = []
    for _ in range(count):
        ds.SOPInstanceUID = generate_uid()
        out.append((str(ds.SOPInstanceUID), encode(ds)))
    return out


def _command(uid: str, message_id: int) -> bytes:
    return encode_command({0x00000002: str(CTImageStorage), 0x00000100: C_STORE_RQ,
                           0x00000110: message_id, 0x00000700: 2, 0x00000800: 1, 0x00001000: uid})


def _stored(pacs: EmbeddedPACS) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in (pacs.store.root / "files").rglob("*.dcm")}


@pytest.fixture
def slow_pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    server = EmbeddedPACS(tmp_path / "pacs", port=0, fast=False, max_in_memory=6 * MIB)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_peer_that_does_not_wait_for_answers_is_held_to_two_messages(slow_pacs: EmbeddedPACS) -> None:
    pacs = slow_pacs
    blobs = _blobs(24, 1024)  # 2 MiB each: 48 MiB in all, 8 times max_in_memory
    with owned_association(pacs, "PIPELINE") as (_, phase, cx):
        for i, (uid, blob) in enumerate(blobs, 1):
            phase.send(cx, _command(uid, i), blob)  # no answer read yet
        statuses = [command_int(phase.recv().command, 0x0900) for _ in blobs]
    assert statuses == [0x0000] * len(blobs)
    assert _stored(pacs) == {uid for uid, _ in blobs}
    # one message served, one waiting for the reactor; the rest waits in TCP's buffers
    assert pacs.in_memory.peak <= 2 * (len(blobs[0][1]) + 256), pacs.in_memory.peak
    wait_until(lambda: pacs.in_memory.used == 0, "the PACS still counts bytes of ended associations")


def test_a_data_set_past_max_in_memory_is_aborted_and_the_other_association_goes_on(
        slow_pacs: EmbeddedPACS, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kit.dicom._guard")
    pacs = slow_pacs
    (first, first_blob), (second, second_blob) = _blobs(2, 1448)  # 4 MiB each, 6 MiB allowed
    with owned_association(pacs, "HOLDER") as (holder, hold_phase, hold_cx):
        parts = hold_phase.frame(hold_cx, _command(first, 1), first_blob)
        cut = len(parts) - 2  # all but the last fragment of the data set
        holder.dul.socket.socket.sendall(b"".join(parts[:cut]))
        wait_until(lambda: pacs.in_memory.used >= 3 * MIB, "the PACS did not read the first data set")
        with pytest.raises(AssociationAbortedError), owned_association(pacs, "LATE") as (_, phase, cx):
            phase.send(cx, _command(second, 1), second_blob)
            phase.recv()
        holder.dul.socket.socket.sendall(b"".join(parts[cut:]))
        assert command_int(hold_phase.recv().command, 0x0900) == 0x0000
    assert "max_in_memory" in caplog.text
    assert _stored(pacs) == {first}
    wait_until(lambda: pacs.in_memory.used == 0, "the PACS still counts bytes of ended associations")
    assert_echoes(pacs)


def _part_of_one(assoc: Association, phase: DataPhase, cx: int, blobs: Blobs) -> socket.socket:
    """Send the first message but its last fragments; the socket."""
    parts = phase.frame(cx, _command(blobs[0][0], 1), blobs[0][1])
    sock = assoc.dul.socket.socket
    sock.sendall(b"".join(parts[:-4]))
    time.sleep(0.2)
    return sock


def _abort_mid_data_set(assoc: Association, phase: DataPhase, cx: int, blobs: Blobs) -> None:
    _part_of_one(assoc, phase, cx, blobs)
    raise RuntimeError("leave the phase: it aborts the association")


def _cut_mid_data_set(assoc: Association, phase: DataPhase, cx: int, blobs: Blobs) -> None:
    _part_of_one(assoc, phase, cx, blobs).close()
    raise RuntimeError("leave the phase")


def _abort_with_messages_queued(assoc: Association, phase: DataPhase, cx: int, blobs: Blobs) -> None:
    for i, (uid, blob) in enumerate(blobs, 1):
        phase.send(cx, _command(uid, i), blob)
    raise RuntimeError("leave the phase: it aborts the association")


def _answered(assoc: Association, phase: DataPhase, cx: int, blobs: Blobs) -> None:
    for i, (uid, blob) in enumerate(blobs, 1):
        phase.send(cx, _command(uid, i), blob)
        assert command_int(phase.recv().command, 0x0900) == 0x0000


ENDINGS = {"aborted mid data set": _abort_mid_data_set, "cut mid data set": _cut_mid_data_set,
           "aborted with messages queued": _abort_with_messages_queued, "released": _answered}


@pytest.mark.parametrize("ending", ENDINGS)
def test_what_an_association_held_is_given_back_however_it_ends(slow_pacs: EmbeddedPACS, ending: str) -> None:
    pacs = slow_pacs
    blobs = _blobs(3, 1024)
    with contextlib.suppress(RuntimeError, AssociationAbortedError), \
            owned_association(pacs, "ENDING") as (assoc, phase, cx):
        ENDINGS[ending](assoc, phase, cx, blobs)
    assert pacs.in_memory.peak > 0  # it did hold something
    wait_until(lambda: pacs.in_memory.used == 0, f"{ending}: {pacs.in_memory.used} bytes still counted")
    assert_echoes(pacs)
    (uid, blob), = _blobs(1, 64)
    with owned_association(pacs, "NEXT") as (_, phase, cx):
        phase.send(cx, _command(uid, 1), blob)
        assert command_int(phase.recv().command, 0x0900) == 0x0000


def test_the_pacs_takes_max_in_memory_from_its_parameters(tmp_path: Path) -> None:
    from kit.errors import ConfigError

    with pytest.raises(ConfigError):
        EmbeddedPACS(tmp_path / "p", max_in_memory=0)
    assert EmbeddedPACS(tmp_path / "q").in_memory.limit == 1 << 30
