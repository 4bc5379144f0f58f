"""encode_seg: one BINARY segment per Region, on the source images, read back with highdicom itself."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid

from kit.errors import InvalidInputError
from kit.results import Region
from kit.results.seg import encode_seg
from tests.unit.results import dicom_cases as cases

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


def test_no_regions_no_seg() -> None:
    assert encode_seg(cases.measurements_only(), cases.ct()) is None


def test_the_lesion_mask_survives_as_a_binary_segment() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    seg = encode_seg(result, src)
    assert seg is not None
    assert seg.SOPClassUID == SEGMENTATION and seg.SegmentationType == "BINARY"
    assert seg.SOPInstanceUID == result.uid("seg") and seg.SeriesInstanceUID == result.uid("seg-series")
    assert (seg.PatientID, seg.StudyInstanceUID, seg.AccessionNumber) == \
        (cases.MRN, cases.study().study_uid, cases.study().accession)
    parsed = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(d.SOPInstanceUID) for d in src]
    used = [u for u in uids if u in {x for r in result.regions for x in r.source_instances}]
    pixels = parsed.get_pixels_by_source_instance(used, assert_missing_frames_are_empty=True)
    full = np.zeros((len(src), 128, 128, 2), bool)
    full[[uids.index(u) for u in used]] = pixels.astype(bool)
    assert np.array_equal(full[..., 0], cases.lesion_mask())  # the cohort's sphere, voxel for voxel
    assert full[2, ..., 1].sum() == 128 and full[..., 1].sum() == 128
    # only non-empty frames are stored: 3 lesion slices + 1 slice of the second region
    assert int(seg.NumberOfFrames) == 4


def test_segment_descriptions_carry_label_codes_algorithm_and_tracking() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    seg = encode_seg(result, src)
    assert seg is not None
    first = seg.SegmentSequence[0]
    assert (first.SegmentNumber, first.SegmentLabel) == (1, "lesion 1")
    assert first.SegmentedPropertyCategoryCodeSequence[0].CodeValue == cases.ALTERED.value
    assert first.SegmentedPropertyTypeCodeSequence[0].CodeValue == cases.LESION.value
    assert first.SegmentAlgorithmType == "AUTOMATIC"
    alg = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (alg.AlgorithmName, alg.AlgorithmVersion) == ("sphere-finder", "1.2.0")
    assert first.TrackingUID == result.uid("tracking:lesion 1") and first.TrackingID == "lesion 1"
    assert seg.SegmentSequence[1].SegmentLabel == "lesion 2"


def test_re_encoding_gives_the_same_uids() -> None:
    src = cases.ct()
    a = encode_seg(cases.regions_and_measurements(src), src)
    b = encode_seg(cases.regions_and_measurements(src), src)
    assert a is not None and b is not None
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert a.PixelData == b.PixelData


def test_a_mask_of_another_size_than_its_image_is_refused() -> None:
    src = cases.ct()
    region = Region("small", cases.ALTERED, cases.LESION, np.ones((1, 64, 64), bool),
                    (str(src[0].SOPInstanceUID),))
    with pytest.raises(InvalidInputError, match="mask frame 0 is"):
        encode_seg(cases.result(regions=(region,)), src)


def test_regions_on_two_series_are_refused() -> None:
    src = cases.ct()
    other = copy.deepcopy(src[1])
    other.SeriesInstanceUID, other.SOPInstanceUID = generate_uid(), generate_uid()
    src.append(other)
    region = Region("two", cases.ALTERED, cases.LESION, np.ones((2, 128, 128), bool),
                    (str(src[0].SOPInstanceUID), str(other.SOPInstanceUID)))
    with pytest.raises(InvalidInputError, match="more than one series"):
        encode_seg(cases.result(regions=(region,)), src)


def test_sources_are_checked_like_for_the_sr() -> None:
    src = cases.ct()
    src[0].PatientID = "MRN0000"
    with pytest.raises(InvalidInputError, match="patient"):
        encode_seg(cases.regions_and_measurements(cases.ct()), src)
