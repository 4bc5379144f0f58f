"""The demonstration detector finds the sample clips' synthetic polyp, and nothing on plain mucosa."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kit.endoscopy.demo_detector import ALGORITHM, DemoDetector, demo_detector
from kit.endoscopy.detections import Detection
from kit.endoscopy.frame import Frame
from kit.endoscopy.source import FrameSource
from kit.errors import InvalidInputError
from kit.examples import endoscopy as sample
from kit.examples.cohort import studies

ROOT = Path(__file__).resolve().parents[3]
STUDIES = studies(modality="ES", scheduled=False)


def truth(t: float) -> tuple[float, float, float]:
    """Centre and radius of the polyp at ``t`` s, as kit.examples.endoscopy.frame draws it."""
    cx = sample.WIDTH / 2 + 24 * np.sin(0.7 * t)
    cy = sample.HEIGHT / 2 + 14 * np.cos(0.5 * t)
    return cx + 70 - 6 * t, cy + 30 + 4 * t, 16.0 + 5.0 * t


@pytest.mark.parametrize("study", STUDIES, ids=[s.key for s in STUDIES])
def test_finds_the_blob_on_every_frame_of_the_sample_clips(study) -> None:  # type: ignore[no-untyped-def]
    with FrameSource(ROOT / "data" / "samples" / "endoscopy" / f"{study.key}.mp4") as source:
        frames = list(source)
    assert len(frames) == sample.CLIP_FPS * sample.CLIP_SECONDS
    for frame in frames:
        found = demo_detector(frame)
        assert len(found) == 1, frame.index
        (det,) = found
        assert isinstance(det, Detection) and det.frame_index == frame.index and det.label == "polyp"
        assert det.time == frame.timestamp and det.score is not None and 0.4 < det.score <= 1.0
        px, py, pr = truth(frame.index / sample.CLIP_FPS)
        assert det.box is not None
        x0, y0, x1, y1 = det.box
        # the box lies on the blob (the blob's soft rim is not in it) and is centred on it
        assert px - pr - 1 <= x0 < x1 <= px + pr + 1 and py - pr - 1 <= y0 < y1 <= py + pr + 1, det.box
        assert abs((x0 + x1) / 2 - px) < 5 and abs((y0 + y1) / 2 - py) < 5, (det.box, px, py)
        assert (x1 - x0) > pr and (y1 - y0) > pr


def test_nothing_on_frames_without_the_blob() -> None:
    mucosa = np.zeros((240, 320, 3), np.uint8)
    mucosa[...] = (200, 88, 80)        # the lumen's colour: green/red 0.44
    assert demo_detector(Frame(0, 0.0, mucosa)) == []
    white = np.full((240, 320, 3), 250, np.uint8)   # glare: green/red near 1
    assert demo_detector(Frame(1, 0.0, white)) == []
    speck = mucosa.copy()
    speck[10:20, 10:20] = (236, 150, 122)   # the blob's colour, but 64 pixels once eroded: too few
    assert demo_detector(Frame(2, 0.0, speck)) == []
    speck[100:130, 100:140] = (236, 150, 122)
    (det,) = demo_detector(Frame(3, 0.5, speck))
    assert det.box == (100.0, 100.0, 140.0, 130.0) and det.score == 1.0


def test_the_drawn_frame_matches_the_decoded_frame() -> None:
    # the sample frame function, undecoded: the detector sees the same blob as in the clip
    study = STUDIES[0]
    (det,) = demo_detector(Frame(0, 1.0, sample.frame(study, 1.0)))
    px, py, _ = truth(1.0)
    assert det.box is not None and abs((det.box[0] + det.box[2]) / 2 - px) < 3


def test_parameters_are_checked_and_named() -> None:
    assert ALGORITHM.name == "kit-demo-blob-detector" and ALGORITHM.parameters["min_pixels"] == 150
    assert DemoDetector(min_pixels=10).algorithm.parameters["min_pixels"] == 10
    with pytest.raises(InvalidInputError):
        DemoDetector(green_red_min=0.9, green_red_max=0.5)
    with pytest.raises(InvalidInputError):
        demo_detector(np.zeros((4, 4, 3), np.uint8))  # type: ignore[arg-type]
