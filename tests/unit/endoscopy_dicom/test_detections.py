"""Per-frame detections to one AnalysisResult: boxes on stills or clip frames, masks on stills."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.endoscopy.capture import Procedure
from kit.endoscopy.detections import FINDING, LESION, MAX_DETECTIONS, Detection, detections_result
from kit.errors import InvalidInputError, KitError
from kit.results import Algorithm, Code
from kit.results.fhir import encode_fhir
from kit.results.oru import encode_oru

PROC = Procedure("MRN1001", "1.2.3.4", accession_number="ACC100102", patient_name="Moreau^Alice")
STILL, CLIP = "1.2.3.4.5.1", "1.2.3.4.6.1"
ALGO = Algorithm("polypnet", "1.0", {"threshold": 0.5})


@dataclasses.dataclass
class Captured:
    """Frames 0-35 in the clip, frames 4 and 20 also stills (like Capture.locate)."""

    procedure: Procedure = PROC

    def locate(self, frame_index: int) -> tuple[str, int | None]:
        if frame_index in (4, 20):
            return f"{STILL}{frame_index}", None
        if 0 <= frame_index < 36:
            return CLIP, frame_index + 1
        raise InvalidInputError(f"frame {frame_index} was not captured")


def test_boxes_land_on_the_still_or_the_clip_frame_with_the_procedures_identifiers() -> None:
    dets = [Detection(4, "polyp", 0.9, box=(10, 10, 50, 40), time=0.33),
            Detection(10, "polyp", 0.8, box=(12, 11, 52, 44), time=0.83),
            Detection(10, "bleed", 0.4, box=(100, 100, 120, 130),
                      finding=Code("50960005", "SCT", "Hemorrhage"))]
    res = detections_result(dets, Captured(), algorithm=ALGO, result_id="endo-1")
    s = res.subject
    assert (s.patient_id, s.study_instance_uid, s.accession_number) == ("MRN1001", "1.2.3.4", "ACC100102")
    assert s.sop_instance_uids == (f"{STILL}4", CLIP)
    assert [(b.label, b.source_instance, b.frame_number, b.time, b.score) for b in res.boxes] == [
        ("polyp-1", f"{STILL}4", None, 0.33, 0.9), ("polyp-2", CLIP, 11, 0.83, 0.8),
        ("bleed-3", CLIP, 11, None, 0.4)]
    assert [(lb.name, lb.value.meaning, lb.score, lb.region) for lb in res.labels] == [
        (FINDING, "Lesion", 0.9, "polyp-1"), (FINDING, "Lesion", 0.8, "polyp-2"),
        (FINDING, "Hemorrhage", 0.4, "bleed-3")]
    assert res.result_id == "endo-1" and res.conclusion == "3 finding(s) on 2 frame(s) by polypnet 1.0"
    # the same identifiers reach the EHR and HL7 encoders
    assert "ACC100102" in encode_oru(res)
    assert "ACC100102" in str(encode_fhir(res))


def test_a_mask_on_a_still_is_a_region_and_its_box_stays_a_box() -> None:
    mask = np.zeros((240, 320), bool)
    mask[100:140, 150:200] = True
    res = detections_result([Detection(20, "polyp", 0.7, box=(150, 100, 200, 140), mask=mask)], Captured(),
                            algorithm=ALGO)
    (region,) = res.regions
    assert (region.label, region.kind, region.source_instances) == ("polyp-1", LESION, (f"{STILL}20",))
    assert region.mask.shape == (1, 240, 320) and region.mask.sum() == mask.sum()
    assert [b.label for b in res.boxes] == ["polyp-1-box"] and res.labels[0].region == "polyp-1"


def test_no_detection_is_a_result_that_says_so() -> None:
    res = detections_result([], Captured(), algorithm=ALGO)
    assert not res.boxes and res.conclusion == "No finding by polypnet 1.0"


@pytest.mark.parametrize(("det", "match"), [
    (Detection(99, "polyp", 0.5, box=(1, 1, 2, 2)), "frame 99 was not captured"),
    (Detection(10, "polyp", 0.5, mask=np.ones((4, 4), bool)), "a mask must lie on a still"),
])
def test_detections_that_have_nowhere_to_go(det: Detection, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        detections_result([det], Captured(), algorithm=ALGO)


def test_too_many_detections() -> None:
    dets = [Detection(1, "p", None, box=(0, 0, 1, 1))] * (MAX_DETECTIONS + 1)
    with pytest.raises(InvalidInputError, match="at most"):
        detections_result(dets, Captured(), algorithm=ALGO)


@pytest.mark.parametrize("kwargs", [
    {"frame_index": -1}, {"frame_index": True}, {"label": "has space"}, {"label": ""}, {"score": 1.5},
    {"score": float("nan")}, {"time": -1.0}, {"box": (5, 5, 5, 6)}, {"box": (1, 2, 3)}, {"box": None},
    {"mask": np.full((3, 3), 2)}, {"finding": "polyp"},
])
def test_detection_is_valid_by_construction(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"frame_index": 1, "label": "polyp", "score": 0.5, "box": (1, 1, 5, 5)}
    with pytest.raises(InvalidInputError):
        Detection(**{**base, **kwargs})  # type: ignore[arg-type]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 40), st.floats(-1, 400), st.floats(-1, 400), st.floats(-5, 60),
                          st.floats(-5, 60), st.one_of(st.none(), st.floats(-0.5, 1.5))), max_size=8))
def test_fuzz_detections_only_kit_errors(
        raw: list[tuple[int, float, float, float, float, float | None]]) -> None:
    try:
        dets = [Detection(i, "polyp", s, box=(x, y, x + w, y + h)) for i, x, y, w, h, s in raw]
        res = detections_result(dets, Captured(), algorithm=ALGO)
    except KitError:
        return
    assert len(res.boxes) == len(res.labels) == len(raw)
    assert {b.source_instance for b in res.boxes} <= set(res.subject.sop_instance_uids)
