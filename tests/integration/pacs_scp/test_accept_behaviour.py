"""Review of the replayed A-ASSOCIATE answers (kit.dicom._accept), question 3: after a replayed
A-ASSOCIATE-AC the association is the one pynetdicom's own AC makes: the same negotiated
contexts (transfer syntax, roles) and peer values on the PACS's side, the peer's maximum PDU
length kept for P-DATA, and every service the PACS binds working for dcmtk and pynetdicom SCUs.
Differential: a fast PACS (answers replayed) beside a ``fast=False`` one (pynetdicom only)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityWorklistInformationFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from kit.dicom.matching import worklist_items_from_cohort
from kit.dicom.scp import EmbeddedPACS
from tests.integration.pacs_scp.conftest import N_INSTANCES, extracted, make_instance, run

pytestmark = [pytest.mark.dcmtk, pytest.mark.filterwarnings("ignore:The value length:UserWarning")]

LONG = "x" * 9000  # a worklist value larger than the peer's maximum PDU length below


@pytest.fixture
def pacs_pair(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, EmbeddedPACS, EmbeddedPACS]]:
    """(fast, slow, destination): fast and slow alike (worklist, C-MOVE destination)."""
    items = worklist_items_from_cohort()
    items[0].RequestedProcedureDescription = LONG
    with EmbeddedPACS(tmp_path / "dest", aet="DEST", fast=False) as dest:
        moves = {"DEST": ("127.0.0.1", dest.port)}
        with EmbeddedPACS(tmp_path / "fast", worklist=items, move_destinations=moves) as fast, \
                EmbeddedPACS(tmp_path / "slow", worklist=items, move_destinations=moves, fast=False) as slow:
            yield fast, slow, dest


def _tool_results(pacs: EmbeddedPACS, cohort_dir: Path, out: Path, study_uid: str) -> list[Any]:
    """Run every dcmtk SCU twice against ``pacs``; what each reported."""
    addr = ["127.0.0.1", str(pacs.port)]
    seen: list[Any] = []
    for round_ in (1, 2):
        store = run("storescu", "-aec", "KIT", "+sd", *addr, str(cohort_dir))
        echo = run("echoscu", "-aec", "KIT", *addr)
        found = out / f"find{round_}"
        found.mkdir(parents=True)
        find = run("findscu", "-S", "-aec", "KIT", "-X", "-od", str(found), "-k", "QueryRetrieveLevel=STUDY",
                   "-k", "StudyInstanceUID", "-k", "PatientID", *addr)
        worklist = out / f"wl{round_}"
        worklist.mkdir()
        wl = run("findscu", "-W", "-aec", "KIT", "-X", "-od", str(worklist), "-k", "AccessionNumber",
                 "-k", "ScheduledProcedureStepSequence[0].Modality", *addr)
        move = run("movescu", "-S", "-aec", "KIT", "-aem", "DEST", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study_uid}", *addr)
        got = out / f"get{round_}"
        got.mkdir()
        get = run("getscu", "-S", "-aec", "KIT", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY",
                  "-k", f"StudyInstanceUID={study_uid}", *addr)
        for done in (store, echo, find, wl, move, get):
            assert done.returncode == 0, done.stderr
        seen.append((sorted(str(d.StudyInstanceUID) for d in extracted(found)),
                     sorted(str(d.AccessionNumber) for d in extracted(worklist)),
                     sorted(str(dcmread(p).SOPInstanceUID) for p in got.iterdir())))
    return seen


def test_dcmtk_scus_through_replayed_associations(pacs_pair: tuple[EmbeddedPACS, EmbeddedPACS, EmbeddedPACS],
                                                  cohort_dir: Path, tmp_path: Path) -> None:
    fast, slow, dest = pacs_pair
    study_uid = str(dcmread(sorted(cohort_dir.iterdir())[0]).StudyInstanceUID)
    assert fast._accept is not None
    replayed = fast._accept.replayed
    reference = _tool_results(slow, cohort_dir, tmp_path / "slow", study_uid)
    assert _tool_results(fast, cohort_dir, tmp_path / "fast", study_uid) == reference
    # storescu, echoscu, findscu (QR and worklist), movescu: the second round's answers replayed
    # (getscu proposes role selection: pynetdicom's path)
    assert fast._accept.replayed >= replayed + 5
    assert len(fast.store) == len(slow.store) == N_INSTANCES
    assert reference[0][0] and reference[0][1] and reference[0][2]
    assert len(dest.store) > 0  # both moves arrived


def _pacs_side(pacs: EmbeddedPACS) -> tuple[Any, ...]:
    """The PACS's view of its one association: contexts as negotiated, the peer's values."""
    assert pacs._server is not None
    deadline = time.monotonic() + 10
    while not pacs._server.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assoc = pacs._server.active_associations[0]
    contexts = [(cx.context_id, str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax], cx.result,
                 cx.as_scu, cx.as_scp) for cx in assoc.accepted_contexts + assoc.rejected_contexts]
    peer = assoc.requestor
    return (contexts, peer.maximum_length, str(peer.implementation_class_uid),
            peer.implementation_version_name, peer.ae_title, assoc.acceptor.maximum_length,
            len(assoc.requestor.requested_contexts))


def _scu_session(pacs: EmbeddedPACS, calling: str) -> tuple[Any, ...]:
    """A pynetdicom SCU (maximum PDU 4096): the PACS's view of the association, then C-ECHO, C-STORE,
    C-FIND (QR, worklist with a 9000-byte answer); the P-DATA PDU sizes it received."""
    received: list[int] = []

    def on_data(event: evt.Event) -> None:
        if event.data[:1] == b"\x04":
            received.append(len(event.data))

    ae = AE(ae_title=calling)
    for sop in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                ModalityWorklistInformationFind, "1.2.3.4.5.6"):
        ae.add_requested_context(sop)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title="KIT", max_pdu=4096,
                         evt_handlers=[(evt.EVT_DATA_RECV, on_data)])
    assert assoc.is_established
    try:
        side = _pacs_side(pacs)
        echo = assoc.send_c_echo().Status
        ds = make_instance("MRN1003", 0, 1, 7)
        store = assoc.send_c_store(ds).Status
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ds.StudyInstanceUID
        query.PatientID = ""
        qr = [(s.Status, i.PatientID if i else None)
              for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        query = Dataset()
        query.AccessionNumber = ""
        query.RequestedProcedureDescription = ""
        wl = [(s.Status, len(i.RequestedProcedureDescription) if i else None)
              for s, i in assoc.send_c_find(query, ModalityWorklistInformationFind)]
    finally:
        assoc.release()
        ae.shutdown()
    assert received and max(received) <= 4096 + 6  # every P-DATA within the peer's maximum
    assert any(n == len(LONG) for _, n in wl)
    return side, echo, store, qr, wl


def test_pynetdicom_scu_sees_the_same_association(
        pacs_pair: tuple[EmbeddedPACS, EmbeddedPACS, EmbeddedPACS]) -> None:
    fast, slow, _ = pacs_pair
    assert fast._accept is not None
    reference = _scu_session(slow, "SCU1")
    assert _scu_session(fast, "SCU1") == reference  # recorded
    replayed = fast._accept.replayed
    for calling in ("SCU1", "OTHERSCU"):  # replayed, also to another sender (its own AE title)
        time.sleep(0.2)  # the previous association ended (the view reads the one active)
        again = _scu_session(fast, calling)
        assert again[0][4] == calling
        assert again[1:] == reference[1:] and again[0][:4] == reference[0][:4]
        assert again[0][5:] == reference[0][5:]
    assert fast._accept.replayed == replayed + 2
