"""FrameViewer stores what it captured into the picked procedure: the embedded PACS and its worklist."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.endoscopy import procedures
from kit.endoscopy.demo_detector import demo_detector
from kit.endoscopy.source import FrameSource
from kit.endoscopy.stream_server import VideoStreamServer
from kit.errors import InvalidInputError
from kit.widgets import FrameViewer, ProcedurePicker
from tests.integration.endoscopy_dicom.peers import CLIP, items

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[PacsClient]:
    with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as server:
        yield PacsClient("127.0.0.1", server.port, called_aet="KIT", timeout=10)


def test_store_button_stores_stills_and_clip_into_the_picked_procedure(pacs: PacsClient) -> None:
    picker = ProcedurePicker(procedures.worklist(pacs))
    viewer = picker.link(FrameViewer(FrameSource(CLIP), detector=demo_detector, pacs=pacs))
    picker.accession = "ACC100302"                       # another procedure: the viewer follows
    assert viewer.procedure is not None and viewer.procedure.accession_number == "ACC100302"
    try:
        viewer.step()
        viewer.capture_still()                           # frame 0: before the clip, stored on its own
        viewer.record(0.5)                               # frames 1-6
        viewer.step()
        assert viewer.frame is not None and viewer.frame.index == 8
        viewer._still.click()                            # frame 8, after the clip
        viewer.record(0.5)                               # a new clip replaces the first: frames 9-14
        viewer.step()
        assert [f.index for f in viewer.clip] == list(range(9, 15))
        viewer.stills.append(viewer.clip[2])             # a still inside the clip goes in with it
        viewer._store.click()
        assert viewer.error is None, viewer.error
    finally:
        viewer.stop()
    assert len(viewer.captures) == 2 and not viewer.progress.visible
    with_clip, apart = viewer.captures
    assert [i.kind for i in with_clip.instances] == ["still", "clip"]
    assert with_clip.clip is not None and with_clip.clip.frame_indices == tuple(range(9, 15))
    assert with_clip.stills[0].frame_indices == (11,) and with_clip.clip.found
    assert [s.frame_indices for s in apart.stills] == [(0,), (8,)] and apart.clip is None
    table = viewer.stored
    assert table.height == 4 and table["found"].all()
    assert set(table["accession_number"]) == {"ACC100302"} and set(table["patient_id"]) == {"MRN1003"}
    assert viewer._table.df is not None and len(viewer._table.df) == 4     # shown in the itables table
    assert viewer.stills == [] and viewer.clip == []
    assert viewer._captured.value == "0 still(s), clip 0 frame(s), 4 instance(s) stored"
    # found again in the PACS, in the procedure's study
    done = procedures.performed(pacs, accession="ACC100302")
    assert done["number_of_study_related_instances"].to_list() == [4]
    with pytest.raises(InvalidInputError, match="nothing to store"):
        viewer.store()


def test_the_viewer_plays_the_live_stream_and_records_from_it(pacs: PacsClient) -> None:
    with VideoStreamServer(CLIP, port=0) as server:
        viewer = FrameViewer(FrameSource(server.address, open_timeout=10, read_timeout=5),
                             detector=demo_detector, pacs=pacs,
                             procedure=procedures.find_procedure(pacs, "ACC100102"))
        try:
            viewer.step()
            assert viewer.detections and viewer.image
            viewer.play()
            viewer.record(1.0)                           # the playing thread records
            deadline = time.monotonic() + 60
            while viewer.recording:
                assert viewer.playing and time.monotonic() < deadline
                viewer._stop.wait(0.05)
            viewer.pause()
            indices = [f.index for f in viewer.clip]
            assert len(indices) >= 10 and indices == sorted(indices)
            assert "reconnects" in viewer.status and "fps measured" in viewer.status
            (cap,) = viewer.store()
        finally:
            viewer.stop()
    assert cap.clip is not None and cap.clip.found and cap.procedure.accession_number == "ACC100102"
