"""ProcedurePicker and FrameViewer build and update without a browser (a file FrameSource on the samples)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from kit.dicom.matching import worklist_items_from_cohort
from kit.dicom.query import worklist_to_frame
from kit.endoscopy.demo_detector import demo_detector
from kit.endoscopy.detections import Detection
from kit.endoscopy.frame import Frame
from kit.endoscopy.source import FrameSource
from kit.errors import InvalidInputError, VideoFileError
from kit.widgets import FrameViewer, ProcedurePicker
from kit.widgets.endoscopy import draw_detections
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[3]
CLIPS = sorted((ROOT / "data" / "samples" / "endoscopy").glob("*.mp4"))
YELLOW = (255, 235, 0)


@pytest.fixture(scope="module")
def worklist() -> pl.DataFrame:
    return worklist_to_frame(worklist_items_from_cohort()).filter(pl.col("modality") == "ES")


@pytest.fixture
def viewer() -> Iterator[FrameViewer]:
    v = FrameViewer(FrameSource(CLIPS[0]), detector=demo_detector)
    yield v
    v.close()


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return img.size


def test_picker_dropdown_and_table_follow_each_other(worklist: pl.DataFrame) -> None:
    picker = ProcedurePicker(worklist)
    accessions = worklist["accession_number"].to_list()
    assert picker.accession == accessions[0] and picker._table.selected_rows == [0]
    picked: list[str] = []
    picker.on_select(lambda p: picked.append(str(p.accession_number)))
    picker.accession = accessions[2]
    assert picker._table.selected_rows == [2] and picked == [accessions[2]]
    picker._table.selected_rows = [1]                      # a click on the table's second row
    assert picker.accession == accessions[1] and picked[-1] == accessions[1]
    proc = picker.procedure
    row = worklist.row(1, named=True)
    assert (proc.patient_id, proc.study_instance_uid, proc.accession_number) == (
        row["patient_id"], row["study_instance_uid"], row["accession_number"])
    assert repr(picker).startswith(
        f"ProcedurePicker(3 procedures, picked {accessions[1]}: {row['patient_id']}")
    with pytest.raises(InvalidInputError, match="no worklist item with accession number 'NOPE'"):
        picker.accession = "NOPE"
    with pytest.raises(InvalidInputError, match="needs worklist columns"):
        ProcedurePicker(worklist.drop("study_instance_uid"))
    with pytest.raises(InvalidInputError, match="at least one"):
        ProcedurePicker(worklist.clear())


def test_picker_link_sets_the_viewers_procedure(worklist: pl.DataFrame, viewer: FrameViewer) -> None:
    picker = ProcedurePicker(worklist)
    picker.link(viewer)
    assert viewer.procedure == picker.procedure
    picker.accession = worklist["accession_number"][2]
    assert viewer.procedure is not None
    assert viewer.procedure.accession_number == worklist["accession_number"][2]


def test_step_shows_the_frame_with_the_detection_drawn(viewer: FrameViewer) -> None:
    assert viewer.image == b"" and viewer.frame is None
    frame = viewer.step()
    assert frame.index == 0 and viewer.frame is frame and viewer.shown == 1
    assert jpeg_size(viewer.image) == (frame.width, frame.height)
    (det,) = viewer.detections
    assert det.frame_index == 0 and det.box is not None
    assert viewer.status.startswith("frame 0 · 0.00 s · ") and "dropped" in viewer.status
    assert "reconnects" in viewer.status and viewer.status.endswith("1 detection(s)")
    # the box is drawn: its top edge is yellow in the shown JPEG, not in the frame
    with Image.open(io.BytesIO(viewer.image)) as img:
        shown = np.asarray(img.convert("RGB")).astype(int)
    x0, y0, x1, _ = (int(v) for v in det.box)
    edge = shown[y0, x0 + 2:x1 - 2]
    assert np.abs(edge - YELLOW).max(axis=1).mean() < 60
    assert np.abs(frame.image[y0, x0 + 2:x1 - 2].astype(int) - YELLOW).max(axis=1).mean() > 60
    assert viewer.step().index == 1 and viewer.shown == 2


def test_draw_detections_leaves_the_frame_alone() -> None:
    image = np.zeros((40, 50, 3), np.uint8)
    frame = Frame(3, 0.1, image)
    drawn = draw_detections(frame, [Detection(3, "polyp", 0.9, box=(10, 10, 30, 20))])
    assert tuple(drawn[10, 15]) == tuple(drawn[19, 15]) == tuple(drawn[15, 10]) == YELLOW
    assert tuple(drawn[15, 20]) == (0, 0, 0) and image.max() == 0   # inside the box, and the source untouched
    mask = np.zeros((40, 50), bool)
    mask[1:3, 1:3] = True
    assert draw_detections(frame, [Detection(3, "polyp", mask=mask)]).max() == 0   # no box: nothing drawn


def test_stills_and_a_clip_recorded_by_hand(viewer: FrameViewer) -> None:
    with pytest.raises(InvalidInputError, match="no frame shown yet"):
        viewer.capture_still()
    viewer.step()
    still = viewer.capture_still()
    viewer.capture_still()                                  # the same frame twice is kept once
    assert [f.index for f in viewer.stills] == [still.index] == [0]
    clip = viewer.record(1.0)                               # paused: read here, every frame of 1 s at 12 fps
    assert [f.index for f in clip] == list(range(1, 13)) and not viewer.recording
    assert viewer.frame is not None and viewer.frame.index == 13   # the frame that ended the recording
    again = viewer.record(0.5)
    assert [f.index for f in again] == list(range(14, 20)) and viewer.clip == again
    assert repr(viewer) == "FrameViewer(file source, paused, stills=1, clip=6 frames, stored=0)"
    assert viewer._captured.value == "1 still(s), clip 6 frame(s), 0 instance(s) stored"
    with pytest.raises(InvalidInputError, match="seconds"):
        viewer.record(0)


def test_store_needs_a_pacs_and_a_procedure_and_the_buttons_show_errors(viewer: FrameViewer) -> None:
    viewer._still.click()                              # nothing shown yet: said in the widget, not raised
    assert viewer.error is not None and "no frame shown yet" in viewer._status.value
    viewer.step()
    viewer._still.click()
    assert len(viewer.stills) == 1 and viewer._status.value == ""
    with pytest.raises(InvalidInputError, match="needs pacs= and a procedure"):
        viewer.store()
    viewer._store.click()
    assert "needs pacs= and a procedure" in viewer._status.value and viewer.stored.height == 0


def test_play_shows_frames_in_the_background_until_paused(viewer: FrameViewer) -> None:
    viewer.max_fps = 50.0
    viewer.play()
    assert viewer._play.value and viewer._play.description == "pause"
    wait_until(lambda: viewer.shown >= 3, "frames shown while playing", seconds=30.0)
    first = viewer.image
    wait_until(lambda: viewer.image != first, "the image changes while playing", seconds=30.0)
    with pytest.raises(InvalidInputError, match="pause the viewer"):
        viewer.step()
    viewer.pause()
    assert not viewer.playing and viewer._play.description == "play"
    shown = viewer.shown
    time.sleep(0.2)
    assert viewer.shown == shown                            # paused: nothing more is shown
    viewer.play()                                           # plays on to the file's end, then stops by itself
    wait_until(lambda: not viewer.playing, "playing stops at the end of the file", seconds=30.0)
    wait_until(lambda: not viewer._play.value, "the button shows it stopped", seconds=30.0)
    assert viewer.error is None and viewer.frame is not None and viewer.frame.index == 35


def test_record_button_while_playing_collects_every_frame(viewer: FrameViewer) -> None:
    viewer.max_fps = 2.0                                    # few frames drawn; every frame recorded
    viewer._seconds.value = 1.0
    viewer._record.click()                                  # starts playing and recording
    assert viewer.playing or viewer.clip
    wait_until(lambda: not viewer.recording, "the recording ends after 1 s of stream time", seconds=30.0)
    indices = [f.index for f in viewer.clip]
    assert len(indices) == 12 and indices == list(range(indices[0], indices[0] + 12))
    viewer.pause()


def test_a_failing_detector_stops_playing_and_says_why() -> None:
    def broken(frame: Frame) -> list[Detection]:
        raise ValueError("model exploded")

    v = FrameViewer(FrameSource(CLIPS[1]), detector=broken)
    try:
        v.play()
        wait_until(lambda: not v.playing and not v._play.value, "the thread stops", seconds=30.0)
        assert v.error == "the detector or display failed: ValueError: model exploded"
        assert v._status.value == v.error
    finally:
        v.stop()
        v.stop()                                            # idempotent
        assert v.source._stop.is_set()


def test_a_source_that_fails_is_said_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video" * 100)
    v = FrameViewer(FrameSource(bad))
    try:
        v.play()
        wait_until(lambda: not v.playing and v.error is not None, "the failure is shown", seconds=30.0)
        assert v.error is not None and v.error.startswith("VideoFileError")
        with pytest.raises(VideoFileError):                 # stepping by hand raises it
            v.step()
    finally:
        v.close()


def test_parameters_are_checked() -> None:
    with pytest.raises(InvalidInputError):
        FrameViewer(FrameSource(CLIPS[0]), max_fps=0)
