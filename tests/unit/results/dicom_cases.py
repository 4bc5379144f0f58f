"""Shared cases for the SR/SEG tests: the sample CT with its spherical lesion, and results about it."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from kit import examples
from kit.examples.cohort import Study
from kit.examples.dicom import CT_PIXEL_MM, CT_SIZE, CT_SLICE_MM, CT_SLICES
from kit.results import Algorithm, AnalysisResult, BoundingBox, Code, Label, Measurement, Region, Subject

MRN = "MRN1001"
DIAMETER = Code("81827009", "SCT", "Diameter")
VOLUME = Code("118565006", "SCT", "Volume")
MEAN_HU = Code("112031", "DCM", "Attenuation Coefficient")
MM = Code("mm", "UCUM", "millimeter")
MM3 = Code("mm3", "UCUM", "cubic millimeter")
HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
LESION = Code("52988006", "SCT", "Lesion")
NODULE = Code("27925004", "SCT", "Nodule")
ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
LUNG = Code("39607008", "SCT", "Lung")
MALIGNANCY = Code("MALIGNANCY", "99KIT", "Malignancy assessment")
BENIGN = Code("30807003", "SCT", "Benign")
FINDING = Code("121071", "DCM", "Finding")
CREATED = dt.datetime(2026, 4, 1, 12, 30, tzinfo=dt.UTC)


def study() -> Study:
    return next(s for s in examples.patient(MRN).studies if s.modality == "CT")


@functools.cache
def _ct_files() -> tuple[Dataset, ...]:
    files = sorted(examples.study_dir(MRN).rglob("*.dcm"))
    return tuple(sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber)))


def ct() -> list[Dataset]:
    """The CT slices of MRN1001 (fresh copies: tests may mutate them), slice k at index k."""
    import copy
    return [copy.deepcopy(d) for d in _ct_files()]


def lesion_mask() -> NDArray[np.bool_]:
    """The cohort's spherical lesion as a (slices, rows, columns) mask, by its geometry."""
    lesion = study().lesion
    assert lesion is not None
    z = np.arange(CT_SLICES)[:, None, None]
    r = np.arange(CT_SIZE)[None, :, None]
    c = np.arange(CT_SIZE)[None, None, :]
    lz, lr, lc = lesion.center
    return np.asarray(((z - lz) * CT_SLICE_MM) ** 2 + ((r - lr) * CT_PIXEL_MM) ** 2
                      + ((c - lc) * CT_PIXEL_MM) ** 2 <= lesion.radius_mm ** 2)


def subject(**kw: Any) -> Subject:
    s = study()
    return Subject(**{"patient_id": MRN, "study_instance_uid": s.study_uid,
                      "accession_number": s.accession, **kw})


def lesion_region(sources: list[Dataset], label: str = "lesion 1", *, all_slices: bool = False) -> Region:
    mask = lesion_mask()
    slices = range(CT_SLICES) if all_slices else [k for k in range(CT_SLICES) if mask[k].any()]
    return Region(label, ALTERED, LESION, mask[list(slices)],
                  tuple(str(sources[k].SOPInstanceUID) for k in slices))


def result(**kw: Any) -> AnalysisResult:
    base: dict[str, Any] = {"subject": subject(), "result_id": "res-0001", "created": CREATED,
                            "algorithm": Algorithm("sphere-finder", "1.2.0",
                                                   {"threshold_hu": 60, "smooth": True, "sigma": 1.5,
                                                    "mode": "3d"})}
    return AnalysisResult(**{**base, **kw})


def measurements_only() -> AnalysisResult:
    return result(measurements=(Measurement(VOLUME, 3053.6284, MM3, finding=LESION, finding_site=LUNG),
                                Measurement(MEAN_HU, 89.25, HU),
                                Measurement(DIAMETER, 18.000000000000004, MM, finding=LESION)))


def labels_only() -> AnalysisResult:
    return result(labels=(Label(MALIGNANCY, BENIGN, 0.8125), Label(FINDING, NODULE),
                          Label(FINDING, LESION, 0.0)))


def conclusion_only() -> AnalysisResult:
    return result(conclusion="Solitary pulmonary nodule, left upper lobe.\nNo other findings.")


def regions_and_measurements(sources: list[Dataset]) -> AnalysisResult:
    region = lesion_region(sources)
    second = Region("lesion 2", ALTERED, NODULE, np.eye(CT_SIZE, dtype=bool)[None],
                    (str(sources[2].SOPInstanceUID),))
    box = BoundingBox("box 1", NODULE, str(sources[9].SOPInstanceUID), 70.0, 30.0, 90.5, 50.0, score=0.8)
    return result(
        regions=(region, second), boxes=(box,),
        measurements=(Measurement(DIAMETER, 18.0, MM, finding=LESION, region="lesion 1"),
                      Measurement(VOLUME, float(region.mask.sum()) * CT_PIXEL_MM ** 2 * CT_SLICE_MM, MM3,
                                  finding=LESION, region="lesion 1"),
                      Measurement(MEAN_HU, 130.5, HU, region="lesion 1", finding_site=LUNG),
                      Measurement(DIAMETER, 20.0, MM, finding=NODULE, region="box 1"),
                      Measurement(MEAN_HU, -850.0, HU)),
        labels=(Label(MALIGNANCY, BENIGN, 0.25, region="lesion 1"), Label(FINDING, NODULE, region="box 1")),
        conclusion="One lesion.")
