"""Per-frame detections of an endoscopy model as one :class:`~kit.results.model.AnalysisResult` (pure).

A polyp detector says, per video frame: a box (or a mask), a label, a score,
when. :func:`detections_result` turns a list of :class:`Detection` into the
kit's result object for the procedure that was captured, so
:func:`kit.results.deliver.deliver` sends it to the PACS (SR TID 1500, SEG),
the EHR (Observation, DiagnosticReport) and the HL7 engine (ORU^R01) like any
other result, with the procedure's patient, study and accession number.

Where each detection lands: a frame that was captured as a still refers to
that VL Endoscopic instance; any other captured frame refers to its frame of
the Video Endoscopic clip (the SR references the clip with the frame number).
A mask becomes a :class:`~kit.results.model.Region`, which a DICOM SEG
segments: it must lie on a still. Each detection is a box or region labelled
``<label>-<n>`` (``n`` its position in the list, from 1) plus a qualitative
finding (DCM 121071 "Finding" = the detection's code) with its score.

Written by hand: only the mapping; the result model, its encoders and its
delivery are :mod:`kit.results`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from typing import Any, Final, Protocol

import numpy as np
from numpy.typing import NDArray

from kit.endoscopy.capture import Procedure
from kit.errors import InvalidInputError
from kit.results.model import Algorithm, AnalysisResult, BoundingBox, Code, Label, Region, Subject

__all__ = ["FINDING", "LESION", "MAX_DETECTIONS", "Detection", "Locator", "detections_result"]

#: Concept name of each detection's qualitative finding.
FINDING: Final = Code("121071", "DCM", "Finding")
#: Default finding of a detection.
LESION: Final = Code("52988006", "SCT", "Lesion")
_ALTERED: Final = Code("49755003", "SCT", "Morphologically Altered Structure")
#: Most detections in one result (one SR content item each; a PACS chokes long before).
MAX_DETECTIONS: Final = 2000


class Locator(Protocol):
    """What was captured: the procedure and where each captured frame was stored (a :class:`Capture`)."""

    @property
    def procedure(self) -> Procedure: ...

    def locate(self, frame_index: int) -> tuple[str, int | None]: ...


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message, source="detections")


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One thing a model found on one frame.

    Parameters
    ----------
    frame_index : int
        :attr:`kit.endoscopy.frame.Frame.index` of the frame it was found on.
    label : str
        Short name (``"polyp"``); letters, digits, ``_`` and ``-``, up to 48.
    score : float, optional
        Confidence in [0, 1].
    box : (x0, y0, x1, y1), optional
        Pixel corners, x1 > x0 and y1 > y0.
    mask : ndarray, optional
        Boolean (rows, columns) mask of the frame.
    time : float, optional
        Seconds from the start of the capture (:attr:`Frame.timestamp`).
    finding : Code
        What was found (default SCT 52988006 "Lesion").

    At least one of ``box`` and ``mask`` is required.
    """

    frame_index: int
    label: str
    score: float | None = None
    box: tuple[float, float, float, float] | None = None
    mask: NDArray[np.bool_] | None = None
    time: float | None = None
    finding: Code = LESION

    def __post_init__(self) -> None:
        index = self.frame_index
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise _bad(f"frame_index: an integer >= 0, not {self.frame_index!r}")
        if not isinstance(self.label, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,48}", self.label):
            raise _bad(f"label: 1-48 letters, digits, _ or -, not {self.label!r}")
        if self.score is not None and not (_finite(self.score) and 0.0 <= float(self.score) <= 1.0):
            raise _bad(f"score: a number in [0, 1], not {self.score!r}")
        if self.time is not None and not (_finite(self.time) and float(self.time) >= 0):
            raise _bad(f"time: seconds >= 0, not {self.time!r}")
        if not isinstance(self.finding, Code):
            raise _bad("finding: a kit.results.Code")
        if self.box is None and self.mask is None:
            raise _bad("a detection needs a box or a mask")
        if self.box is not None:
            box = tuple(self.box)
            if len(box) != 4 or not all(_finite(v) and v >= 0 for v in box) \
                    or not (box[2] > box[0] and box[3] > box[1]):
                raise _bad(f"box: (x0, y0, x1, y1) with x1 > x0 >= 0 and y1 > y0 >= 0, not {self.box!r}")
            object.__setattr__(self, "box", tuple(float(v) for v in box))
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.ndim != 2 or 0 in mask.shape or not (mask.dtype == np.bool_ or (
                    np.issubdtype(mask.dtype, np.integer) and bool(np.isin(mask, (0, 1)).all()))):
                raise _bad(f"mask: a 2-D binary (rows, columns) array, not {mask.dtype} {mask.shape}")
            object.__setattr__(self, "mask", mask.astype(bool))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def detections_result(detections: Iterable[Detection], capture: Locator, *, algorithm: Algorithm,
                      conclusion: str | None = None, result_id: str | None = None) -> AnalysisResult:
    """The detections of one captured procedure as one :class:`AnalysisResult`.

    Parameters
    ----------
    detections : iterable of Detection
        The model's output, in any order (at most :data:`MAX_DETECTIONS`).
    capture : Capture
        What :func:`kit.endoscopy.store.capture_procedure` stored (anything with
        ``procedure`` and ``locate(frame_index)``).
    algorithm : Algorithm
        The model: name, version, parameters.
    conclusion : str, optional
        A sentence for the report; default: how many findings on how many frames.
    result_id : str, optional
        Stable id (default a new UUID); re-sending the same result duplicates nothing.

    Returns
    -------
    AnalysisResult
        Subject: the procedure's patient, study and accession and the stored
        instances the detections lie on; one box (or region) and one scored
        label per detection.

    Raises
    ------
    kit.errors.InvalidInputError
        A detection on a frame that was not captured, a mask on a frame that
        is only in the clip (capture it as a still), too many detections.
    """
    items = list(detections)
    if len(items) > MAX_DETECTIONS:
        raise _bad(f"{len(items)} detections; at most {MAX_DETECTIONS} go into one result")
    if any(not isinstance(d, Detection) for d in items):
        raise _bad("detections are Detection objects")
    procedure = capture.procedure
    boxes: list[BoundingBox] = []
    regions: list[Region] = []
    labels: list[Label] = []
    used: dict[str, None] = {}
    for n, det in enumerate(items, start=1):
        uid, frame_number = capture.locate(det.frame_index)
        used[uid] = None
        name = f"{det.label}-{n}"
        target = name
        if det.mask is not None:
            if frame_number is not None:
                raise _bad(f"detection {n}: a mask must lie on a still; frame {det.frame_index} is only in "
                           f"the clip (capture it as a still)")
            regions.append(Region(name, _ALTERED, det.finding, det.mask, (uid,)))
        if det.box is not None:
            if det.mask is not None:
                target = name + "-box"
            x0, y0, x1, y1 = det.box
            boxes.append(BoundingBox(name if det.mask is None else target, det.finding, uid, x0, y0, x1, y1,
                                     frame_number=frame_number, time=det.time, score=det.score))
        labels.append(Label(FINDING, det.finding, det.score, region=name))
    if conclusion is None:
        frames = len({d.frame_index for d in items})
        conclusion = (f"{len(items)} finding(s) on {frames} frame(s) by {algorithm.name} {algorithm.version}"
                      if items else f"No finding by {algorithm.name} {algorithm.version}")
    subject = Subject(patient_id=procedure.patient_id, study_instance_uid=procedure.study_instance_uid,
                      accession_number=procedure.accession_number, patient_name=procedure.patient_name,
                      patient_birth_date=procedure.patient_birth_date, patient_sex=procedure.patient_sex,
                      sop_instance_uids=tuple(used))
    result = AnalysisResult(subject=subject, algorithm=algorithm, labels=tuple(labels),
                            regions=tuple(regions), boxes=tuple(boxes), conclusion=conclusion,
                            inputs=tuple(used))
    return result if result_id is None else dataclasses.replace(result, result_id=result_id)
