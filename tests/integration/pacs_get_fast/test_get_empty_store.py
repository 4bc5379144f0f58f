"""A PACS sends a C-STORE sub-operation with no data set (CommandDataSetType 0x0101).

Neither receiving path may write a file holding only the file meta and answer it success: the
retrieve would list an instance that is not there. Both answer 0xC000 (cannot understand), write
nothing, list nothing, and keep the reason in ``errors`` (the retrieve then raises RetrieveError).
The slow path (:func:`kit.dicom._fastnet.c_get` with a :class:`FileReceiver`), the fast path
(:func:`kit.dicom._getphase.get_loop` with a :class:`PooledReceiver`, unnamed and named files) and
the C-MOVE storage SCP (a :class:`FileReceiver` as pynetdicom's EVT_C_STORE handler, fed by a real
pynetdicom peer) agree.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE

from kit.dicom._command import C_STORE_RQ, encode_command
from kit.dicom._fastnet import FileReceiver
from tests.integration.pacs_get_fast.test_get_answer_path import CT, _frame, _get_rsp, _run
from tests.integration.pacs_get_fast.test_get_hostile_uids import DATA, _answers

FRAGMENT = 4096


def _store_rq_without_data(msg_id: int, uid: str) -> bytes:
    return _frame(1, encode_command({0x00000002: CT, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                                     0x00000700: 0, 0x00000800: 0x0101, 0x00001000: uid}), None, FRAGMENT)


def _store_rq(msg_id: int, uid: str) -> bytes:
    return _frame(1, encode_command({0x00000002: CT, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                                     0x00000700: 0, 0x00000800: 1, 0x00001000: uid}), DATA, FRAGMENT)


@pytest.mark.parametrize("kind", ["slow", "linked", "named"])
def test_a_store_without_data_set_is_refused_and_not_written(tmp_path: Path, kind: str) -> None:
    stream = (_store_rq_without_data(1, "1.2.840.7") + _store_rq(2, "1.2.840.8")
              + _get_rsp(0xFF00, 1, FRAGMENT) + _get_rsp(0xB000, None, FRAGMENT))
    result, sent, files, rows, errors = _run(stream, tmp_path / kind, FRAGMENT, fast=kind != "slow",
                                             cancel_after=None, unnamed=kind == "linked")
    assert _answers(sent) == [(0xC000, b"1.2.840.7\x00"), (0x0000, b"1.2.840.8\x00")]
    assert [name for name, _ in files] == ["1.2.840.8.dcm"]  # the good one after it still lands
    assert [row[0] for row in rows] == ["1.2.840.8"]
    assert len(errors) == 1 and "1.2.840.7" in errors[0] and "no data set" in errors[0]
    assert result["Status"] == 0xB000


def test_the_move_storage_scp_refuses_a_store_without_data_set(tmp_path: Path) -> None:
    receiver = FileReceiver(tmp_path, "1.2.9", None)
    scp = AE(ae_title="MOVESCP")
    scp.add_supported_context(CTImageStorage)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, receiver)])
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="MOVESCP")
        assert assoc.is_established
        try:
            req = C_STORE()
            req.MessageID, req.Priority = 1, 2
            req.AffectedSOPClassUID, req.AffectedSOPInstanceUID = CTImageStorage, "1.2.840.7"
            assoc._reactor_checkpoint.clear()  # as pynetdicom's release(): its reactor takes no reply
            while not assoc._is_paused:
                time.sleep(0.001)
            assoc.dimse.send_msg(req, assoc.accepted_contexts[0].context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
            assert rsp is not None and rsp.Status == 0xC000
        finally:
            assoc._reactor_checkpoint.set()
            assoc.release()
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == [] and receiver.rows == []
    assert len(receiver.errors) == 1 and "no data set" in receiver.errors[0]
