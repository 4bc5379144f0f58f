"""readback: SR TID 1500 and SEG (kit's own and another tool's) back into AnalysisResult; differences()."""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
from collections.abc import Callable
from typing import Any

import highdicom as hd
import numpy as np
import polars as pl
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from kit.errors import DicomFileError, InvalidInputError, KitError
from kit.results import AnalysisResult, Code, Label
from kit.results.readback import (
    SEGMENTS_SCHEMA,
    differences,
    read_seg,
    read_sr,
    seg_segments_frame,
    sr_measurements_frame,
)
from kit.results.seg import encode_seg
from kit.results.sr import encode_sr
from tests.unit.results import dicom_cases as cases

CASES: dict[str, Callable[[list[Dataset]], AnalysisResult]] = {
    "measurements only": lambda src: cases.measurements_only(),
    "labels only": lambda src: cases.labels_only(),
    "conclusion only": lambda src: cases.conclusion_only(),
    "regions and measurements": cases.regions_and_measurements,
}


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("case", list(CASES))
def test_encode_then_read_back_is_the_same_result(case: str) -> None:
    src = cases.ct()
    sent = CASES[case](src)
    seg = encode_seg(sent, src)
    sr = encode_sr(sent, src, seg)
    read = read_sr(sr, seg)
    assert differences(sent, read) == []
    # the same through the bytes a PACS stores and sends back
    assert differences(sent, read_sr(_bytes(sr), None if seg is None else _bytes(seg))) == []
    assert read.result_id == sent.result_id and read.created == sent.created
    assert read.subject.patient_name == str(src[0].PatientName)
    assert read.inputs[0] == sent.uid("sr")


def test_round_trip_through_files(tmp_path: Any) -> None:
    src = cases.ct()
    sent = cases.regions_and_measurements(src)
    seg = encode_seg(sent, src)
    assert seg is not None
    sr = encode_sr(sent, src, seg)
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    read = read_sr(tmp_path / "sr.dcm", str(tmp_path / "seg.dcm"))
    assert differences(sent, read) == []
    assert read.boxes == sent.boxes[:1] or [b.label for b in read.boxes] == ["box 1"]


def test_without_the_seg_the_findings_lose_only_their_region() -> None:
    src = cases.ct()
    sent = cases.regions_and_measurements(src)
    read = read_sr(encode_sr(sent, src))
    assert read.regions == ()
    assert any("region 'lesion 1' not read back" in d for d in differences(sent, read))
    segments = {r.label for r in sent.regions}

    def unlink(x: Any) -> Any:
        return dataclasses.replace(x, region=None) if x.region in segments else x
    expected = dataclasses.replace(sent, regions=(), measurements=tuple(map(unlink, sent.measurements)),
                                   labels=tuple(map(unlink, sent.labels)))
    assert differences(expected, read) == []  # boxes (in the SR itself) keep theirs


def test_measurements_frame_of_the_sr_equals_the_results() -> None:
    sent = cases.measurements_only()
    frame = sr_measurements_frame(encode_sr(sent, cases.ct()))
    expected = sent.measurements_frame()
    assert frame.schema == expected.schema
    assert frame.sort("value").equals(expected.sort("value"))


def test_seg_reads_back_into_regions_and_a_segments_frame() -> None:
    src = cases.ct()
    sent = cases.regions_and_measurements(src)
    seg = encode_seg(sent, src)
    assert seg is not None
    regions = read_seg(seg)
    assert [r.label for r in regions] == ["lesion 1", "lesion 2"]
    lesion = regions[0]
    assert (lesion.category, lesion.kind) == (cases.ALTERED, cases.LESION)
    full = {u: m for u, m in zip(lesion.source_instances, lesion.mask, strict=True)}
    volume = np.stack([full.get(str(d.SOPInstanceUID), np.zeros((128, 128), bool)) for d in src])
    assert np.array_equal(volume, cases.lesion_mask())
    frame = seg_segments_frame(seg)
    assert frame.schema == pl.Schema(SEGMENTS_SCHEMA)
    assert frame["label"].to_list() == ["lesion 1", "lesion 2"]
    assert frame["voxels"].to_list() == [int(cases.lesion_mask().sum()), 128]
    assert frame["kind_code"].to_list() == [cases.LESION.value, cases.NODULE.value]
    assert set(frame["algorithm"].to_list()) == {"sphere-finder"}


# -- another tool's objects, built with highdicom by hand ----------------------------------------

def _other_tool_seg(src: list[Dataset]) -> Dataset:
    mask = np.zeros((3, 128, 128, 1), bool)
    mask[:, 30:40, 70:90] = True
    return hd.seg.Segmentation(
        source_images=src[8:11], pixel_array=mask, segmentation_type="FRACTIONAL",
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="Tumor",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept("C3262", "NCIt", "Neoplasm"),
            algorithm_type="MANUAL")],
        series_instance_uid=generate_uid(), series_number=7, sop_instance_uid=generate_uid(),
        instance_number=1, manufacturer="OtherVendor", manufacturer_model_name="Annotator",
        software_versions="9.1", device_serial_number="42")


def _other_tool_sr(src: list[Dataset], seg: Dataset) -> Dataset:
    person = hd.sr.ObserverContext(
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Reader^Rita"))
    image_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Nodule A"),
        finding_type=hd.sr.CodedConcept("27925004", "SRT", "Nodule"),  # the retired SNOMED designator
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Diameter, value=14, unit=codes.UCUM.Millimeter,
                              finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)]),
            hd.sr.Measurement(name=hd.sr.CodedConcept("C25244", "NCIt", "Area"), value=120.5,
                              unit=hd.sr.CodedConcept("mm2", "UCUM", "square millimeter"))],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            name=hd.sr.CodedConcept("RID5", "RADLEX", "Margin"),
            value=hd.sr.CodedConcept("RID5709", "RADLEX", "Spiculated"))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src[9])])
    polygon = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Outline"),
        referenced_region=hd.sr.ImageRegion(
            graphic_type="POLYLINE", graphic_data=np.array([[10.0, 10.0], [30.0, 12.0], [20.0, 30.0],
                                                            [10.0, 10.0]]),
            source_image=hd.sr.SourceImageForRegion.from_source_image(src[9])),
        measurements=[hd.sr.Measurement(name=hd.sr.CodedConcept("C25244", "NCIt", "Area"), value=200,
                                        unit=hd.sr.CodedConcept("mm2", "UCUM", "square millimeter"))])
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Tumor track"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(d) for d in src[8:11]]),
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=3750.0,
                                        unit=codes.UCUM.CubicMillimeter)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=person),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[image_group, polygon, volumetric])
    return hd.sr.Comprehensive3DSR(
        evidence=[*src, seg], content=report, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="OtherVendor")


def test_another_tools_tid1500_reads_to_the_expected_measurements() -> None:
    src = cases.ct()
    seg = _other_tool_seg(src)
    sr = _other_tool_sr(src, seg)
    read = read_sr(sr, seg)
    assert read.result_id == sr.SOPInstanceUID  # no kit result id: the SR's own UID
    assert read.subject.patient_id == cases.MRN and read.subject.study_instance_uid == cases.study().study_uid
    assert read.algorithm.name == "OtherVendor" and read.conclusion is None
    rows = {(m.name.meaning, m.value): m for m in read.measurements}
    assert set(rows) == {("Diameter", 14.0), ("Area", 120.5), ("Area", 200.0), ("Volume", 3750.0)}
    diameter = rows[("Diameter", 14.0)]
    assert diameter.finding == Code("27925004", "SCT", "Nodule")  # SRT -> SCT
    assert diameter.finding_site == Code("39607008", "SCT", "Lung") and diameter.unit.value == "mm"
    assert rows[("Area", 120.5)].name == Code("C25244", "NCIt", "Area")
    assert rows[("Area", 200.0)].region is None  # a polygon is not a box
    assert rows[("Volume", 3750.0)].region == "Tumor"  # the segment's label, from the SEG
    assert read.labels == (Label(Code("RID5", "RADLEX", "Margin"), Code("RID5709", "RADLEX", "Spiculated")),)
    (tumor,) = read.regions
    assert tumor.kind == Code("C3262", "NCIt", "Neoplasm") and int(tumor.mask.sum()) == 3 * 10 * 20
    frame = sr_measurements_frame(sr)
    assert frame.schema == cases.measurements_only().measurements_frame().schema
    assert sorted(frame["value"].to_list()) == [14.0, 120.5, 200.0, 3750.0]
    assert frame["region"].to_list() == [None] * 4  # without the SEG no region is known


# -- differences can fail ------------------------------------------------------------------------

def test_differences_names_what_changed() -> None:
    src = cases.ct()
    sent = cases.regions_and_measurements(src)
    seg = encode_seg(sent, src)
    read = read_sr(encode_sr(sent, src, seg), seg)
    assert differences(sent, read) == []
    m0 = read.measurements[0]

    def changed(**kw: Any) -> list[str]:
        return differences(sent, dataclasses.replace(read, **kw))

    tiny = dataclasses.replace(m0, value=m0.value * (1 + 1e-13))
    assert changed(measurements=(tiny, *read.measurements[1:])) == []  # float tolerance
    off = dataclasses.replace(m0, value=m0.value * (1 + 1e-6))
    assert any("measurement" in d for d in changed(measurements=(off, *read.measurements[1:])))
    cm = dataclasses.replace(m0, unit=Code("cm", "UCUM", "centimeter"))
    assert any("measurement" in d for d in changed(measurements=(cm, *read.measurements[1:])))
    assert any("measurement" in d for d in changed(measurements=read.measurements[1:]))
    score = dataclasses.replace(read.labels[0], score=0.5)
    assert any("label" in d for d in changed(labels=(score, *read.labels[1:])))
    assert any("conclusion" in d for d in changed(conclusion="Two lesions."))
    assert changed(conclusion="One lesion.  ") == []
    flipped = read.regions[0].mask.copy()
    flipped[1, 0, 0] = ~flipped[1, 0, 0]
    region = dataclasses.replace(read.regions[0], mask=flipped)
    assert any("masks differ" in d for d in changed(regions=(region, read.regions[1])))
    assert any("not read back" in d for d in changed(
        regions=read.regions[1:], measurements=tuple(m for m in read.measurements if m.region != "lesion 1"),
        labels=tuple(lb for lb in read.labels if lb.region != "lesion 1")))
    subject = dataclasses.replace(read.subject, patient_id="MRN0000")
    assert any("patient_id" in d for d in changed(subject=subject))
    assert any("result_id" in d for d in changed(result_id="other"))
    box = dataclasses.replace(read.boxes[0], x1=91.0)
    assert any("corners" in d for d in changed(boxes=(box,)))
    assert read.boxes[0].score == 0.8  # the certainty of the box's kind, in each of its two groups
    for score in (0.5, None):
        box = dataclasses.replace(read.boxes[0], score=score)
        assert any(d.startswith("box ") for d in changed(boxes=(box,))), score


def test_a_region_on_more_images_than_it_covers_compares_equal() -> None:
    # Empty mask frames are not in a SEG; the comparison treats them as absent.
    src = cases.ct()
    sent = cases.result(regions=(cases.lesion_region(src, all_slices=True),))
    seg = encode_seg(sent, src)
    assert seg is not None and int(seg.NumberOfFrames) == 3
    assert differences(sent, read_sr(encode_sr(sent, src, seg), seg)) == []


# -- bad input: only KitError --------------------------------------------------------------------

def test_not_an_sr_or_not_a_seg() -> None:
    src = cases.ct()
    with pytest.raises(DicomFileError, match="not a structured report"):
        read_sr(src[0])
    with pytest.raises(DicomFileError, match="not a segmentation"):
        read_seg(src[0])
    with pytest.raises(DicomFileError):
        read_sr(b"not dicom at all")
    with pytest.raises(InvalidInputError):
        read_sr(42)  # type: ignore[arg-type]
    sr = encode_sr(cases.measurements_only(), src)
    del sr.PatientID
    with pytest.raises(InvalidInputError):
        read_sr(sr)


def test_a_content_tree_nested_too_deep_is_refused() -> None:
    sr = encode_sr(cases.measurements_only(), cases.ct())
    node = sr.ContentSequence[-1]
    for _ in range(40):
        child = copy.deepcopy(node)
        child.ContentSequence = []
        node.ContentSequence = [child]
        node = child
    with pytest.raises(DicomFileError, match="deeper"):
        read_sr(sr)


def test_a_seg_claiming_huge_frames_is_refused_before_decoding() -> None:
    src = cases.ct()
    seg = encode_seg(cases.regions_and_measurements(src), src)
    assert seg is not None
    seg.NumberOfFrames = 100_000
    seg.Rows = seg.Columns = 4096
    with pytest.raises(DicomFileError, match="more than"):
        read_seg(seg)


@functools.cache
def _encoded() -> tuple[Dataset, Dataset]:
    src = cases.ct()
    sent = cases.regions_and_measurements(src)
    seg = encode_seg(sent, src)
    assert seg is not None
    return encode_sr(sent, src, seg), seg


def _elements(ds: Dataset) -> list[tuple[Dataset, int]]:
    """Every (data set, tag) in ``ds`` and its sequences, pixel data excluded."""
    out: list[tuple[Dataset, int]] = []
    todo = [ds]
    while todo:
        node = todo.pop()
        for elem in node:
            if elem.tag == 0x7FE00010:
                continue
            out.append((node, int(elem.tag)))
            if elem.VR == "SQ":
                todo.extend(elem.value)
    return out


_GARBAGE = ["", "-1", "0", "1e999", "NaN", "x" * 70, "\\".join(["7"] * 3), "1.2.3", "99999999"]


@functools.cache
def _raw(which: str) -> bytes:
    return _bytes(_encoded()[0 if which == "sr" else 1])


def _mutate(which: str, data: st.DataObject) -> Dataset:
    ds = pydicom.dcmread(io.BytesIO(_raw(which)))  # a fresh copy, faster than deepcopy
    elements = _elements(ds)
    for _ in range(data.draw(st.integers(1, 4))):
        node, tag = elements[data.draw(st.integers(0, len(elements) - 1))]
        if tag not in node:
            continue
        op = data.draw(st.sampled_from(["delete", "empty", "garbage"]))
        elem = node[tag]
        try:
            if op == "delete":
                del node[tag]
            elif op == "empty":
                elem.value = [] if elem.VR == "SQ" else None
            elif elem.VR != "SQ":
                elem.value = data.draw(st.sampled_from(_GARBAGE))
        except Exception:  # noqa: BLE001 - pydicom refused the mutation itself: not what we test
            assume(False)
    return ds


def _only_kit_errors(call: Callable[[], object]) -> None:
    try:
        call()
    except KitError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_sr_raises_only_kit_errors(data: st.DataObject) -> None:
    mutated = _mutate("sr", data)
    _only_kit_errors(lambda: read_sr(mutated))
    _only_kit_errors(lambda: sr_measurements_frame(mutated))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_seg_raises_only_kit_errors(data: st.DataObject) -> None:
    sr = pydicom.dcmread(io.BytesIO(_raw("sr")))
    mutated = _mutate("seg", data)
    _only_kit_errors(lambda: read_seg(mutated))
    _only_kit_errors(lambda: seg_segments_frame(mutated))
    _only_kit_errors(lambda: read_sr(sr, mutated))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_garbled_bytes_raise_only_kit_errors(data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["sr", "seg"]))
    raw = bytearray(_raw(which))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for _ in range(data.draw(st.integers(0, 6))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    reader = read_sr if which == "sr" else read_seg
    _only_kit_errors(lambda: reader(bytes(raw)))
