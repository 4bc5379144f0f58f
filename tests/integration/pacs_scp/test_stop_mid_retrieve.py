"""The embedded PACS stopped while pynetdicom still sends on an association (a C-GET's
sub-operations, a C-FIND's matches) or aborts it too: the P-DATA, the release or the second
A-ABORT queued after the A-ABORT is dropped, not an ``InvalidEventError`` (Evt9, Evt11, Evt15 in
Sta13; CI met Evt15) killing the association's network thread with a traceback.

The race itself (stop() aborting while the association's thread queues its next message) hit
about one run in ten by hand; here the two primitives are queued in that order on purpose, on an
association whose A-ASSOCIATE-AC pynetdicom made and on one the accept cache replayed (its one-off
wrapper of the state machine once took the guard away with it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.pdu_primitives import A_ABORT, A_RELEASE, P_DATA
from pynetdicom.sop_class import Verification

from kit.dicom.scp import EmbeddedPACS


def _after(kind: str) -> Any:
    """The primitive the association's thread queues after the abort."""
    if kind == "Evt9":
        data = P_DATA()
        data.presentation_data_value_list = [[1, b"\x03" + b"\x00" * 8]]
        return data
    if kind == "Evt11":
        return A_RELEASE()
    again = A_ABORT()
    again.abort_source = 0x00
    return again


@pytest.mark.parametrize("after", ["Evt9", "Evt11", "Evt15"])  # P-DATA, A-RELEASE, a second A-ABORT
@pytest.mark.parametrize("answer", ["made", "replayed"])
def test_data_queued_after_the_abort_is_dropped_quietly(pacs: EmbeddedPACS, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture,
                                                        answer: str, after: str) -> None:
    caplog.set_level(logging.DEBUG, logger="kit.dicom._association")
    died: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    ae = AE(ae_title="RACER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**30}")  # a new proposal
    assert pacs._accept is not None
    if answer == "replayed":  # the same proposal once before (the cache is the process's): it answers
        ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet).release()
    replayed = pacs._accept.replayed
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert pacs._accept.replayed == replayed + (answer == "replayed")
    assert assoc.is_established
    try:
        assert pacs._server is not None
        deadline = time.monotonic() + 5
        while not (ours := [a for a in pacs._server.active_associations if a.is_established]):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        dul = ours[0].dul
        abort = A_ABORT()
        abort.abort_source = 0x00
        with dul.to_provider_queue.mutex:  # both at once: the reactor sees the abort, then the other
            dul.to_provider_queue.queue.extend([abort, _after(after)])
            dul.to_provider_queue.not_empty.notify()
        deadline = time.monotonic() + 5
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert assoc.is_aborted
        time.sleep(0.3)  # the PACS side's reactor meets the other primitive in Sta13
    finally:
        ae.shutdown()
    assert [str(d.exc_value) for d in died] == []
    assert f"after the association ended ({after}, Sta13): dropped" in caplog.text  # the race, met
