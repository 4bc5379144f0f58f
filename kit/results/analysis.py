"""The analysis shipped with kit: find a soft-tissue nodule inside the lungs of a CT (pure).

A simple, honest method, enough to find the sample cohort's synthetic lesions
and to show the round trip (:mod:`kit.results.deliver`); not a clinical tool:

1. Stack the CT slices by position along the slice normal and convert to HU
   (RescaleSlope/Intercept).
2. Threshold at ``threshold_hu`` (default -300 HU): soft tissue, fat, bone and
   nodules are above it; air and aerated lung are below.
3. Label the 3-D connected components (6-connectivity, numpy only). The
   largest is the body wall with the mediastinum; any other component that
   does not touch the volume's edge is tissue surrounded by lung: a nodule
   candidate. The largest candidate of at least ``min_voxels`` is the lesion.
4. Measure it: the long-axis diameter (the largest in-plane extent along rows
   or columns on any slice, times PixelSpacing, as a reader measures), the
   volume (voxels times the voxel volume, mm3), its mean HU; the label's score
   is the lesion's compactness, its volume over that of the sphere of its
   diameter (1 for a perfect sphere, clipped to [0, 1]).

The result has one :class:`~kit.results.model.Region` whose mask has a frame
per slice the lesion lies on (``source_instances`` those slices' SOP Instance
UIDs), a diameter and a volume :class:`~kit.results.model.Measurement`, a
:class:`~kit.results.model.Label` with the score, and a conclusion. A CT
without a candidate gives a result with the conclusion "No lesion found." and
no findings.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from kit.errors import InvalidInputError
from kit.results.model import Algorithm, AnalysisResult, Code, Label, Measurement, Region, Subject

__all__ = [
    "ALGORITHM",
    "DIAMETER",
    "LESION",
    "VOLUME",
    "analyse_ct",
    "components",
]

#: Name and version of this analysis (its parameters are added per run).
ALGORITHM: Final = ("kit-lesion-finder", "1.0")
#: SNOMED CT "Diameter" and "Volume", the measurement names.
DIAMETER: Final = Code("81827009", "SCT", "Diameter")
VOLUME: Final = Code("118565006", "SCT", "Volume")
#: SNOMED CT "Lesion" (segment type and label value), "Lung structure" (finding site).
LESION: Final = Code("52988006", "SCT", "Lesion")
LUNG: Final = Code("39607008", "SCT", "Lung structure")
_ALTERED: Final = Code("49755003", "SCT", "Morphologically Altered Structure")
_FINDING: Final = Code("121071", "DCM", "Finding")
_MM: Final = Code("mm", "UCUM", "millimeter")
_MM3: Final = Code("mm3", "UCUM", "cubic millimeter")
_NO_LESION: Final = "No lesion found."


def components(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Label the 6-connected components of a 3-D mask (numpy only).

    Returns
    -------
    numpy.ndarray
        Same shape, int64: -1 outside the mask; inside, every voxel of a
        component carries the same label (the smallest flat index in it).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InvalidInputError(f"components needs a 3-D mask, not {mask.ndim}-D")
    n = mask.size
    big = np.int64(n)
    labels = np.where(mask, np.arange(n, dtype=np.int64).reshape(mask.shape), big)
    while True:
        best = labels.copy()
        for axis in range(3):
            for shift in (1, -1):
                moved = np.roll(labels, shift, axis=axis)
                edge = [slice(None)] * 3
                edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
                moved[tuple(edge)] = big  # no wrap-around
                np.minimum(best, moved, out=best)
        best = np.where(mask, best, big)
        flat = best.ravel()
        inside = flat < big
        flat[inside] = flat[flat[inside]]  # pointer jumping: follow each label to its own label
        if np.array_equal(best, labels):
            break
        labels = best
    return np.where(mask, labels, -1)


def _volume(sources: Sequence[Dataset]) -> tuple[list[Dataset], npt.NDArray[np.float64], float, float, float]:
    """Slices sorted along their normal, the HU volume, row/column spacing and slice spacing (mm)."""
    if not sources:
        raise InvalidInputError("analyse_ct needs the CT slices")
    try:
        orientation = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        slices = sorted(sources, key=lambda ds: float(np.dot(normal, np.asarray(
            ds.ImagePositionPatient, dtype=float))))
        row_mm, col_mm = (float(v) for v in slices[0].PixelSpacing)
        shapes = {(int(ds.Rows), int(ds.Columns)) for ds in slices}
        if len(shapes) != 1:
            raise InvalidInputError(f"the slices differ in size: {sorted(shapes)}")
        hu = np.stack([ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1)
                       + float(getattr(ds, "RescaleIntercept", 0) or 0) for ds in slices])
        if len(slices) > 1:
            positions = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float)))
                         for ds in slices]
            slice_mm = float(np.median(np.diff(positions)))
        else:
            slice_mm = float(slices[0].SliceThickness)
    except InvalidInputError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"not a CT series kit can analyse: {type(exc).__name__}: {exc}") from exc
    if not slice_mm > 0:
        raise InvalidInputError("the slices are not at distinct positions")
    return slices, hu, row_mm, col_mm, slice_mm


def analyse_ct(sources: Sequence[Dataset], *, threshold_hu: float = -300.0, min_voxels: int = 4,
               result_id: str | None = None, created: dt.datetime | None = None) -> AnalysisResult:
    """Find the largest soft-tissue nodule surrounded by lung in one CT series.

    Parameters
    ----------
    sources : sequence of pydicom.Dataset
        The slices of one CT series (with pixel data), in any order.
    threshold_hu : float
        Tissue/air threshold in HU.
    min_voxels : int
        Smallest candidate kept, in voxels.
    result_id : str, optional
        The result's id (default: derived from the series UID, the parameters
        and ``created``: one analysis run is one result, which re-sends without
        duplicating; a new run is a new result, never a silent change of one
        already sent under the same identifiers).
    created : datetime, optional
        When the analysis ran (timezone-aware; default now, UTC).

    Returns
    -------
    AnalysisResult
        See the module docstring.

    Raises
    ------
    kit.errors.InvalidInputError
        The slices are not one CT series kit can read.
    """
    slices, hu, row_mm, col_mm, slice_mm = _volume(sources)
    first = slices[0]
    series = {str(ds.SeriesInstanceUID) for ds in slices}
    if len(series) != 1:
        raise InvalidInputError(f"analyse_ct needs one series, got {len(series)}")
    params: dict[str, str | int | float | bool] = {"threshold_hu": float(threshold_hu),
                                                   "min_voxels": int(min_voxels)}
    algorithm = Algorithm(*ALGORITHM, params)
    series_uid = series.pop()
    uids = [str(ds.SOPInstanceUID) for ds in slices]
    subject = Subject(
        patient_id=str(first.PatientID), study_instance_uid=str(first.StudyInstanceUID),
        accession_number=str(getattr(first, "AccessionNumber", "") or "") or None,
        patient_name=str(getattr(first, "PatientName", "") or "") or None,
        patient_sex=str(getattr(first, "PatientSex", "")) if getattr(first, "PatientSex", "") in
        ("M", "F", "O") else None,
        series_instance_uid=series_uid, sop_instance_uids=tuple(uids))
    created = created or dt.datetime.now(dt.UTC)
    if result_id is None:
        from pydicom.uid import generate_uid

        result_id = str(generate_uid(prefix="2.25.", entropy_srcs=[series_uid, *ALGORITHM,
                                                                    repr(sorted(params.items())),
                                                                    created.isoformat()]))
    common = {"subject": subject, "algorithm": algorithm, "result_id": result_id, "inputs": tuple(uids),
              "created": created}

    labels = components(hu > threshold_hu)
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    lesion: npt.NDArray[np.bool_] | None = None
    if ids.size > 1:
        body = ids[np.argmax(counts)]
        edge = np.zeros(hu.shape, dtype=bool)
        edge[[0, -1], :, :] = edge[:, [0, -1], :] = edge[:, :, [0, -1]] = True
        touching = set(np.unique(labels[edge & (labels >= 0)]).tolist())
        candidates = [(int(c), int(i)) for i, c in zip(ids, counts, strict=True)
                      if i != body and int(i) not in touching and c >= min_voxels]
        if candidates:
            _, best = max(candidates)
            lesion = labels == best
    if lesion is None:
        return AnalysisResult(conclusion=_NO_LESION, **common)  # type: ignore[arg-type]

    on = [k for k in range(lesion.shape[0]) if lesion[k].any()]
    extent = 0.0
    for k in on:
        rows, cols = np.nonzero(lesion[k])
        extent = max(extent, (rows.max() - rows.min() + 1) * row_mm, (cols.max() - cols.min() + 1) * col_mm)
    voxels = int(lesion.sum())
    volume = voxels * row_mm * col_mm * slice_mm
    score = min(1.0, volume / (math.pi / 6 * extent ** 3))
    mean_hu = float(hu[lesion].mean())
    center = [float(np.mean(axis)) for axis in np.nonzero(lesion)]
    region = Region("lesion-1", _ALTERED, LESION, lesion[on], tuple(uids[k] for k in on))
    measurements = (
        Measurement(DIAMETER, round(extent, 2), _MM, finding=LESION, finding_site=LUNG, region="lesion-1"),
        Measurement(VOLUME, round(volume, 1), _MM3, finding=LESION, finding_site=LUNG, region="lesion-1"))
    label = Label(_FINDING, LESION, round(score, 3), region="lesion-1")
    conclusion = (f"Soft-tissue lesion in the lung, {extent:.1f} mm in diameter, {volume:.0f} mm3, "
                  f"mean {mean_hu:.0f} HU, on images {on[0] + 1}-{on[-1] + 1} of {len(uids)} "
                  f"(centre at slice {center[0] + 1:.1f}, row {center[1]:.1f}, column {center[2]:.1f}).")
    return AnalysisResult(measurements=measurements, labels=(label,), regions=(region,),
                          conclusion=conclusion, **common)  # type: ignore[arg-type]
