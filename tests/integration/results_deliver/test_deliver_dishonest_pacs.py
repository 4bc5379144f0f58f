"""deliver() to a PACS that answers C-STORE Success but holds something else than what was sent.

The PACS here is a pynetdicom SCP (C-STORE, C-FIND at IMAGE level, C-GET) that alters each
instance as it stores it -- no real PACS can be made to do that, and it is what verification is
for. The SEG under another patient, an SR measurement's displayed value changed, an SR content
item added: each was reported ``verified``, since only what ``read_sr`` / ``read_seg`` model was
compared. What a PACS may add (a Retrieve AE Title, its private tags) still verifies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SegmentationStorage
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

from kit.dicom.dimse import PacsClient
from kit.examples.cohort import studies
from kit.examples.dicom import ct_datasets
from kit.results.analysis import analyse_ct
from kit.results.deliver import deliver

pytestmark = pytest.mark.timeout(120)
STUDY = next(s for s in studies(modality="CT") if s.lesion is not None)
Alter = Callable[[Dataset], None]


class DishonestPacs:
    """Stores each instance after ``alter`` (SR and SEG told apart by ``is_seg``), answers Success."""

    def __init__(self, alter_sr: Alter, alter_seg: Alter) -> None:
        self.alter_sr, self.alter_seg = alter_sr, alter_seg
        self.held: dict[str, Dataset] = {}
        ae = AE(ae_title="KIT")
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                                     scu_role=True, scp_role=True)
        ae.add_supported_context(FIND)
        ae.add_supported_context(GET)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        (self.alter_seg if ds.SOPClassUID == SegmentationStorage else self.alter_sr)(ds)
        self.held[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def _matching(self, query: Dataset) -> list[Dataset]:
        return [ds for uid, ds in self.held.items() if uid == str(query.get("SOPInstanceUID", ""))]

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset]]:
        for ds in self._matching(event.identifier):
            answer = Dataset()
            answer.QueryRetrieveLevel = "IMAGE"
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(answer, keyword, ds.get(keyword))
            yield 0xFF00, answer

    def _get(self, event: Any) -> Iterator[Any]:
        found = self._matching(event.identifier)
        yield len(found)
        for ds in found:
            yield 0xFF00, ds


def _unchanged(ds: Dataset) -> None:
    return None


def _content(ds: Dataset) -> Iterator[Dataset]:
    todo = list(ds.ContentSequence)
    while todo:
        item = todo.pop()
        yield item
        todo += list(item.get("ContentSequence") or [])


def seg_other_patient(ds: Dataset) -> None:
    ds.PatientID, ds.PatientName = "OTHER-999", "Wrong^Person"


def sr_displayed_value(ds: Dataset) -> None:  # the DS value viewers show; the FD value kept
    num = next(item for item in _content(ds) if item.get("ValueType") == "NUM")
    num.MeasuredValueSequence[0].NumericValue = "99"


def sr_extra_item(ds: Dataset) -> None:  # a measurement outside the TID 1500 measurement groups
    num = copy.deepcopy(next(item for item in _content(ds) if item.get("ValueType") == "NUM"))
    num.MeasuredValueSequence[0].NumericValue = "99"
    num.MeasuredValueSequence[0].FloatingPointValue = 99.0
    ds.ContentSequence.append(num)


def sr_flags(ds: Dataset) -> None:
    ds.CompletionFlag = "PARTIAL"


def what_a_pacs_adds(ds: Dataset) -> None:
    ds.RetrieveAETitle = "KIT"
    ds.add_new(0x00091010, "LO", "PACS private")


@pytest.fixture(scope="module")
def sources() -> list[Dataset]:
    return ct_datasets(STUDY)


@pytest.mark.parametrize(("alter_sr", "alter_seg", "want"), [
    (_unchanged, seg_other_patient, {"sr": None, "seg": "PatientID: sent 'MRN"}),
    (sr_displayed_value, _unchanged, {"sr": "NumericValue: sent '", "seg": None}),
    (sr_extra_item, _unchanged, {"sr": "ContentSequence: ", "seg": None}),
    (sr_flags, _unchanged, {"sr": "CompletionFlag: sent 'COMPLETE', stored 'PARTIAL'", "seg": None}),
    (what_a_pacs_adds, what_a_pacs_adds, {"sr": None, "seg": None}),
], ids=["seg-other-patient", "sr-displayed-value", "sr-extra-item", "sr-flag", "pacs-additions"])
def test_what_the_pacs_holds_must_be_what_was_sent(sources: list[Dataset], alter_sr: Alter, alter_seg: Alter,
                                                   want: dict[str, str | None]) -> None:
    pacs = DishonestPacs(alter_sr, alter_seg)
    try:
        client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
        report = deliver(analyse_ct(sources), sources=sources, pacs=client, targets=["sr", "seg"])
    finally:
        pacs.server.shutdown()
    for target, says in want.items():
        row = report[target]
        if says is None:
            assert row.status == "verified", (target, row.reason)
        else:
            assert row.status == "failed" and says in (row.reason or ""), (target, row.reason)
