"""encode_sr: a validated Comprehensive 3D SR TID 1500 from an AnalysisResult (highdicom underneath)."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from kit.errors import InvalidInputError
from kit.results import Label, Measurement, Region
from kit.results.seg import encode_seg
from kit.results.sr import CONCLUSION, RESULT_ID, SCORE, encode_sr
from tests.unit.results import dicom_cases as cases

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _items(ds: Dataset) -> list[Dataset]:
    out, todo = [], list(ds.ContentSequence)
    while todo:
        item = todo.pop()
        out.append(item)
        todo.extend(item.get("ContentSequence", []))
    return out


def _named(ds: Dataset, value: str) -> list[Dataset]:
    return [i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == value]


def test_header_identifiers_come_from_the_result_and_the_sources() -> None:
    src = cases.ct()
    result = cases.measurements_only()
    sr = encode_sr(result, src)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
    assert sr.SOPInstanceUID == result.uid("sr")
    assert sr.SeriesInstanceUID == result.uid("sr-series")
    assert (sr.PatientID, sr.StudyInstanceUID) == (cases.MRN, cases.study().study_uid)
    assert sr.AccessionNumber == cases.study().accession
    assert str(sr.PatientName) == str(src[0].PatientName)
    assert (str(sr.ContentDate), str(sr.ContentTime)[:6]) == ("20260401", "123000")
    assert sr.CompletionFlag == "COMPLETE"
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {str(d.SOPInstanceUID) for d in src}


def test_accession_number_is_the_subjects_even_if_the_images_say_otherwise() -> None:
    src = cases.ct()
    for d in src:
        d.AccessionNumber = "OTHER"
    assert encode_sr(cases.measurements_only(), src).AccessionNumber == cases.study().accession


def test_re_encoding_the_same_result_gives_the_same_uids() -> None:
    src = cases.ct()
    a, b = encode_sr(cases.measurements_only(), src), encode_sr(cases.measurements_only(), src)
    for kw in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        assert a[kw].value == b[kw].value
    tracking = [i.UID for i in _named(a, "112040")]
    assert tracking == [i.UID for i in _named(b, "112040")] and tracking
    other = encode_sr(dataclasses.replace(cases.measurements_only(), result_id="res-0002"), src)
    assert other.SOPInstanceUID != a.SOPInstanceUID


@pytest.mark.parametrize("field, value", [("PatientID", "MRN9999"),
                                          ("StudyInstanceUID", "1.2.3.4.5")])
def test_sources_of_another_patient_or_study_are_refused(field: str, value: str) -> None:
    src = cases.ct()
    setattr(src[3], field, value)
    with pytest.raises(InvalidInputError, match="patient|study"):
        encode_sr(cases.measurements_only(), src)


def test_no_sources_a_missing_image_or_a_header_without_ids_are_refused() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    with pytest.raises(InvalidInputError, match="no source images"):
        encode_sr(result, [])
    with pytest.raises(InvalidInputError, match="not among the sources"):
        encode_sr(result, src[:5])  # the lesion lies on slices 8-10
    broken = cases.ct()
    del broken[0].PatientID
    with pytest.raises(InvalidInputError, match="lacks"):
        encode_sr(cases.measurements_only(), broken)
    with pytest.raises(InvalidInputError, match="given twice"):
        encode_sr(cases.measurements_only(), [src[0], src[0]])


def test_device_observer_and_algorithm_identification() -> None:
    sr = encode_sr(cases.measurements_only(), cases.ct())
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    content = hd.sr.MeasurementReport.from_sequence([report])
    device = content.get_observer_contexts(observer_type=codes.cid270.Device)[0]
    attrs = device.observer_identifying_attributes
    assert (attrs.name, attrs.manufacturer_name, attrs.model_name) == ("sphere-finder", "kit", "1.2.0")
    params = sorted(i.TextValue for i in _named(sr, "111002"))
    assert '{"threshold_hu": 60}' in params and '{"smooth": true}' in params
    assert {i.TextValue for i in _named(sr, "111001")} == {"sphere-finder"}
    assert {i.TextValue for i in _named(sr, "111003")} == {"1.2.0"}


def test_measurements_labels_and_conclusion_where_the_docstring_says() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    sr = encode_sr(result, src)
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.Comprehensive3DSR.from_dataset(sr)])
    image = report.get_image_measurement_groups()
    assert len(image) == 1 and image[0].tracking_identifier == "image"
    assert [m.value for m in image[0].get_measurements()] == [-850.0]
    volumetric = report.get_volumetric_roi_measurement_groups()
    assert {g.tracking_identifier for g in volumetric} == {"lesion 1", "lesion 2"}
    lesion = [g for g in volumetric if g.tracking_identifier == "lesion 1"]
    values = sorted(m.value for g in lesion for m in g.get_measurements())
    assert values == sorted(m.value for m in result.measurements if m.region == "lesion 1")
    assert {m.unit.value for g in lesion for m in g.get_measurements()} == {"mm", "mm3", "[hnsf'U]"}
    planar = report.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in planar] == ["box 1", "box 1"]  # (box, Nodule), (box, -)
    assert planar[0].roi is not None
    # a label's score is a NUM child of its CODE item; a box's, of each of its groups' Finding category
    scores = _named(sr, SCORE.value)
    assert sorted(float(s.MeasuredValueSequence[0].NumericValue) for s in scores) == [0.25, 0.8, 0.8]
    categories = [i for g in planar for i in g[0].ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "276214006"]
    certainty = [float(c.ContentSequence[0].MeasuredValueSequence[0].NumericValue) for c in categories]
    assert certainty == [0.8, 0.8]
    assert {c.ContentSequence[0].RelationshipType for c in categories} == {"HAS PROPERTIES"}
    # the conclusion and the result id
    assert [i.TextValue for i in _named(sr, CONCLUSION.value)] == ["One lesion."]
    assert [i.TextValue for i in _named(sr, RESULT_ID.value)] == ["res-0001"]
    assert _named(sr, RESULT_ID.value)[0].RelationshipType == "HAS OBS CONTEXT"


def test_regions_reference_the_segments_of_the_seg() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    seg = encode_seg(result, src)
    assert seg is not None
    for sr in (encode_sr(result, src, seg), encode_sr(result, src)):  # with or without the SEG at hand
        report = hd.sr.MeasurementReport.from_sequence([hd.sr.Comprehensive3DSR.from_dataset(sr)])
        refs = {g.tracking_identifier: g.referenced_segment for g in
                report.get_volumetric_roi_measurement_groups()}
        for region, number in (("lesion 1", 1), ("lesion 2", 2)):
            item = refs[region][0]
            ref = item.ReferencedSOPSequence[0]
            assert ref.ReferencedSOPClassUID == SegmentationStorage
            assert ref.ReferencedSOPInstanceUID == seg.SOPInstanceUID
            assert ref.ReferencedSegmentNumber == number
            assert seg.SegmentSequence[number - 1].SegmentLabel == region
        sources = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in refs["lesion 1"][1:]}
        assert sources == set(result.regions[0].source_instances)


def test_a_seg_that_is_not_this_results_is_refused() -> None:
    src = cases.ct()
    result = cases.regions_and_measurements(src)
    seg = encode_seg(result, src)
    assert seg is not None
    seg.SegmentSequence[0].SegmentLabel = "something else"
    with pytest.raises(InvalidInputError, match="no segment labelled"):
        encode_sr(result, src, seg)
    with pytest.raises(InvalidInputError, match="not a DICOM Segmentation"):
        encode_sr(result, src, src[0])


def test_a_conclusion_only_result_still_makes_a_valid_tid1500() -> None:
    sr = encode_sr(cases.conclusion_only(), cases.ct())
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.Comprehensive3DSR.from_dataset(sr)])
    groups = report.get_image_measurement_groups()
    assert len(groups) == 1 and groups[0].get_measurements() == []
    assert _named(sr, CONCLUSION.value)[0].TextValue == cases.conclusion_only().conclusion


def test_meanings_dicom_cannot_hold_are_refused_before_encoding() -> None:
    # DICOM's CodeMeaning is LO (64 characters): the model refuses longer ones, so no encoder meets them.
    with pytest.raises(InvalidInputError, match="Code.meaning.*64"):
        dataclasses.replace(cases.DIAMETER, meaning="x" * 65)
    result = cases.result(measurements=(Measurement(dataclasses.replace(cases.DIAMETER, meaning="x" * 64),
                                                    1.0, cases.MM),))
    assert encode_sr(result, cases.ct()).SOPInstanceUID == result.uid("sr")


def test_label_and_region_objects_survive_to_the_content() -> None:
    src = cases.ct()
    region = Region("r", cases.ALTERED, cases.LESION, cases.lesion_mask()[8:11],
                    tuple(str(d.SOPInstanceUID) for d in src[8:11]))
    result = cases.result(regions=(region,), labels=(Label(cases.MALIGNANCY, cases.BENIGN, 1.0, region="r"),))
    sr = encode_sr(result, src)
    evals = _named(sr, cases.MALIGNANCY.value)
    assert len(evals) == 1 and evals[0].ConceptCodeSequence[0].CodeValue == cases.BENIGN.value


def test_sources_without_type2_patient_and_study_attributes_still_encode() -> None:
    src = cases.ct()
    for d in src:
        for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber"):
            delattr(d, keyword)
    result = cases.regions_and_measurements(src)
    seg = encode_seg(result, src)
    sr = encode_sr(result, src, seg)
    assert seg is not None and sr.PatientName == "" and sr.AccessionNumber == cases.study().accession
    assert all("PatientName" not in d for d in src)  # the caller's data sets are not changed
