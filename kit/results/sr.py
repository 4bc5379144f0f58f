"""An :class:`~kit.results.model.AnalysisResult` as a DICOM Comprehensive 3D SR (TID 1500), through highdicom.

:func:`encode_sr` builds a Measurement Report (TID 1500) with highdicom's
templates and validates it by constructing a ``highdicom.sr.Comprehensive3DSR``.
How the result maps onto the content tree (what :mod:`kit.results.readback`
reads back):

- Observation context (TID 1001/1002): a device observer named after the
  algorithm (UID ``result.uid("device")``, manufacturer, model name = version).
- ``result_id``: a TEXT item ``(RESULT-ID, 99KIT, "Analysis Result Identifier")``
  with relationship HAS OBS CONTEXT at the root of the report (:data:`RESULT_ID`).
- One measurement group per (region or box, finding): a region (a segment of
  the result's SEG, :mod:`kit.results.seg`) gives a Volumetric ROI group
  (TID 1411) with a Referenced Segment and its source images; a box gives a
  Planar ROI group (TID 1410) with the rectangle as a closed POLYLINE on its
  image (the box's ``kind`` as the group's Finding Category, its ``score`` as a
  :data:`SCORE` child of that item, as a label's; its ``time`` is not written:
  ``frame_number`` names the frame of a DICOM video); findings about
  no region go into image-level groups (TID 1501) that reference every source
  image. The tracking identifier (TID 4108) is the region or box label
  (``"image"`` for image-level groups), the tracking UID derives from the
  result id and that label; the group's Finding is the measurements'
  ``finding``; TID 4019 Algorithm Identification carries name, version,
  manufacturer and one JSON object ``{"name": value}`` per parameter.
- Measurements: TID 300 NUM items, code and UCUM unit as given, ``finding_site``
  as the measurement's Finding Site.
- Labels: qualitative evaluations (CODE items, name and value as given); a
  score is a NUM child of that CODE item, ``(111012, DCM, "Certainty of
  Finding")`` in UCUM ``1`` (:data:`SCORE`), relationship HAS PROPERTIES.
- The conclusion: a TEXT item ``(121073, DCM, "Impression")`` (CID 7002
  Diagnostic Imaging Report Elements, :data:`CONCLUSION`) in the TID 1500
  "Qualitative Evaluations" container ``(C0034375, UMLS)``.
- Header: patient and study from the source images (which must match the
  result's subject), AccessionNumber from the subject, SOP Instance UID
  ``result.uid("sr")``, Series Instance UID ``result.uid("sr-series")``,
  content date/time from ``result.created`` (UTC), the source images in the
  image library (TID 1600) and in the evidence.

Nothing here is hand-encoded: the content items, templates and the SR IOD are
highdicom's; this module only chooses where each field of the result goes.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage

from kit.errors import InvalidInputError
from kit.results.model import AnalysisResult, BoundingBox, Code, Label, Measurement

__all__ = [
    "CONCLUSION",
    "IMAGE_GROUP",
    "QUALITATIVE_EVALUATIONS",
    "RESULT_ID",
    "SCORE",
    "SCORE_UNIT",
    "SERIES_NUMBER",
    "check_sources",
    "coded",
    "encode_sr",
]

#: Concept name of the conclusion (CID 7002 "Diagnostic Imaging Report Elements").
CONCLUSION = Code("121073", "DCM", "Impression")
#: Concept name of a label's score (a NUM child of the label's CODE item), unit :data:`SCORE_UNIT`.
SCORE = Code("111012", "DCM", "Certainty of Finding")
SCORE_UNIT = Code("1", "UCUM", "no units")
#: Concept name of the TEXT item (HAS OBS CONTEXT, at the root) that carries ``result_id``.
RESULT_ID = Code("RESULT-ID", "99KIT", "Analysis Result Identifier")
#: The TID 1500 container the conclusion goes into.
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
#: Tracking identifier of image-level measurement groups (findings about no region).
IMAGE_GROUP = "image"
#: Series Number of kit's SR series (the SEG series is this + 1).
SERIES_NUMBER = 900

_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
_FINDING_CATEGORY = Code("276214006", "SCT", "Finding category")
_UNIT_ONE = SCORE_UNIT


def coded(code: Code) -> hd.sr.CodedConcept:
    """A :class:`~kit.results.model.Code` as a highdicom ``CodedConcept``."""
    return hd.sr.CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


#: Type 2 patient/study attributes highdicom copies from the sources: filled in empty when absent.
_TYPE2 = ("PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message, source="encode_sr")


def _header(ds: Dataset) -> Dataset:
    """``ds``, or a copy with the absent type 2 patient/study attributes present and empty."""
    missing = [k for k in _TYPE2 if k not in ds]
    if not missing:
        return ds
    copy = Dataset()
    for elem in ds:
        copy.add(elem)
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    for keyword in missing:
        setattr(copy, keyword, "")
    return copy


def check_sources(result: AnalysisResult, sources: Sequence[Dataset], *,
                  where: str = "encode_sr") -> dict[str, Dataset]:
    """The source images by SOP Instance UID, after checking them against the result's subject.

    Raises
    ------
    kit.errors.InvalidInputError
        No sources, a source of another patient or study, a repeated instance,
        or an instance a region or box lies on that is not among the sources.

    Notes
    -----
    Sources without a type 2 patient/study attribute (PatientName,
    PatientBirthDate, AccessionNumber, StudyID, ...) are replaced by copies
    where it is present and empty, as the standard allows; the originals are
    not changed.
    """
    if not isinstance(result, AnalysisResult):
        raise InvalidInputError(f"an AnalysisResult, not {type(result).__name__}", source=where)
    items = list(sources)
    if not items:
        raise InvalidInputError("no source images: the SR/SEG needs the images the result is about",
                                source=where)
    by_uid: dict[str, Dataset] = {}
    subject = result.subject
    for ds in items:
        if not isinstance(ds, Dataset):
            raise InvalidInputError(f"sources are pydicom Datasets, not {type(ds).__name__}", source=where)
        try:
            sop, patient, study = str(ds.SOPInstanceUID), str(ds.PatientID), str(ds.StudyInstanceUID)
            str(ds.SOPClassUID), str(ds.SeriesInstanceUID)
        except AttributeError as exc:
            raise InvalidInputError(f"a source image lacks {exc}", source=where) from exc
        if patient != subject.patient_id:
            raise InvalidInputError(f"source {sop} is of patient {patient!r}, the result is about "
                                    f"{subject.patient_id!r}", source=where)
        if study != subject.study_instance_uid:
            raise InvalidInputError(f"source {sop} is in study {study}, the result is about "
                                    f"{subject.study_instance_uid}", source=where)
        if sop in by_uid:
            raise InvalidInputError(f"source {sop} given twice", source=where)
        by_uid[sop] = _header(ds)
    used = [u for r in result.regions for u in r.source_instances] + \
        [b.source_instance for b in result.boxes]
    missing = sorted(set(used) - set(by_uid))
    if missing:
        raise InvalidInputError(f"regions/boxes lie on images not among the sources: {missing[:3]}",
                                source=where)
    return by_uid


def _algorithm(result: AnalysisResult) -> hd.sr.AlgorithmIdentification:
    a = result.algorithm
    params = [json.dumps({k: v}, sort_keys=True) for k, v in a.parameters.items()]
    return hd.sr.AlgorithmIdentification(name=a.name, version=a.version, parameters=params or None,
                                         manufacturer=a.manufacturer)


def _measurement(m: Measurement) -> hd.sr.Measurement:
    sites = [hd.sr.FindingSite(coded(m.finding_site))] if m.finding_site else None
    return hd.sr.Measurement(name=coded(m.name), value=m.value, unit=coded(m.unit), finding_sites=sites)


def _score(value: float) -> hd.sr.ContentSequence:
    """The children of a CODE item that carry its score (:data:`SCORE`, HAS PROPERTIES)."""
    return hd.sr.ContentSequence([hd.sr.NumContentItem(
        name=coded(SCORE), value=value, unit=coded(_UNIT_ONE),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)])


def _evaluation(label: Label) -> hd.sr.QualitativeEvaluation:
    ev = hd.sr.QualitativeEvaluation(name=coded(label.name), value=coded(label.value))
    if label.score is not None:
        ev[0].ContentSequence = _score(label.score)
    return ev


def _rectangle(box: BoundingBox) -> np.ndarray:
    return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1],
                     [box.x0, box.y0]], dtype=float)


def _groups(result: AnalysisResult) -> list[tuple[tuple[str, str] | None, Code | None,
                                                   list[Measurement], list[Label]]]:
    """Findings grouped by (region or box, finding), in first-seen order; every region and box has one."""
    kinds = {r.label: "region" for r in result.regions} | {b.label: "box" for b in result.boxes}
    groups: dict[tuple[tuple[str, str] | None, Code | None], tuple[list[Measurement], list[Label]]] = {}
    for m in result.measurements:
        ref = (kinds[m.region], m.region) if m.region else None
        groups.setdefault((ref, m.finding), ([], []))[0].append(m)
    for lb in result.labels:
        ref = (kinds[lb.region], lb.region) if lb.region else None
        groups.setdefault((ref, None), ([], []))[1].append(lb)
    seen = {ref for ref, _ in groups}
    for label, kind in kinds.items():
        if (kind, label) not in seen:
            groups[((kind, label), None)] = ([], [])
    if not groups:  # a conclusion only: TID 1500 needs one group
        groups[(None, None)] = ([], [])
    return [(ref, finding, ms, lbs) for (ref, finding), (ms, lbs) in groups.items()]


def _group_items(result: AnalysisResult, by_uid: dict[str, Dataset], seg_uid: str,
                 segment_numbers: dict[str, int]) -> list[Any]:
    algorithm = _algorithm(result)
    regions = {r.label: r for r in result.regions}
    boxes = {b.label: b for b in result.boxes}
    out: list[Any] = []
    for ref, finding, ms, lbs in _groups(result):
        label = ref[1] if ref else IMAGE_GROUP
        tracking = hd.sr.TrackingIdentifier(uid=result.uid(f"tracking:{label}"), identifier=label)
        common: dict[str, Any] = {
            "tracking_identifier": tracking, "algorithm_id": algorithm,
            "finding_type": coded(finding) if finding else None,
            "measurements": [_measurement(m) for m in ms] or None,
            "qualitative_evaluations": [_evaluation(lb) for lb in lbs] or None}
        if ref is None:
            sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in by_uid.values()]
            out.append(hd.sr.MeasurementsAndQualitativeEvaluations(source_images=sources, **common))
        elif ref[0] == "region":
            region = regions[ref[1]]
            segment = hd.sr.ReferencedSegment(
                sop_class_uid=SegmentationStorage, sop_instance_uid=seg_uid,
                segment_number=segment_numbers[region.label],
                source_images=[hd.sr.SourceImageForSegmentation.from_source_image(by_uid[u])
                               for u in dict.fromkeys(region.source_instances)])
            out.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=segment, **common))
        else:
            box = boxes[ref[1]]
            frames = [box.frame_number] if box.frame_number is not None else None
            source = hd.sr.SourceImageForRegion.from_source_image(by_uid[box.source_instance],
                                                                  referenced_frame_numbers=frames)
            roi = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                    graphic_data=_rectangle(box), source_image=source)
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_region=roi, finding_category=coded(box.kind), **common)
            if box.score is not None:  # the certainty of the box's kind, as a label's of its value
                category = next(item for item in group[0].ContentSequence
                                if item.ValueType == "CODE"
                                and item.ConceptNameCodeSequence[0].CodeValue == _FINDING_CATEGORY.value)
                category.ContentSequence = _score(box.score)
            out.append(group)
    return out


def _segments(result: AnalysisResult, seg: Dataset | None) -> tuple[str, dict[str, int], Dataset | None]:
    """The SEG's SOP Instance UID and segment number per region label (checked against ``seg``)."""
    numbers = {r.label: i for i, r in enumerate(result.regions, start=1)}
    if seg is None:
        if not result.regions:
            return "", numbers, None
        stub = Dataset()  # the evidence entry of the SEG kit.results.seg makes for this result
        stub.SOPClassUID, stub.SOPInstanceUID = SegmentationStorage, result.uid("seg")
        stub.StudyInstanceUID = result.subject.study_instance_uid
        stub.SeriesInstanceUID = result.uid("seg-series")
        return str(stub.SOPInstanceUID), numbers, stub
    if not isinstance(seg, Dataset) or str(seg.get("SOPClassUID", "")) != SegmentationStorage:
        raise _bad("seg is not a DICOM Segmentation data set")
    if str(seg.get("StudyInstanceUID", "")) != result.subject.study_instance_uid:
        raise _bad("seg is in another study than the result")
    found = {str(s.get("SegmentLabel", "")): int(s.get("SegmentNumber", 0))
             for s in seg.get("SegmentSequence", [])}
    for label in numbers:
        if label not in found:
            raise _bad(f"seg has no segment labelled {label!r} (segments: {sorted(found)[:5]})")
    return str(seg.SOPInstanceUID), {label: found[label] for label in numbers}, seg


def encode_sr(result: AnalysisResult, sources: Sequence[Dataset], seg: Dataset | None = None) -> Dataset:
    """Encode a result as a Comprehensive 3D SR Measurement Report (TID 1500).

    Parameters
    ----------
    result : AnalysisResult
        The result. Its regions are referenced as segments of its SEG.
    sources : sequence of pydicom.Dataset
        The images the result is about (headers are enough), all of the
        subject's patient and study; every image a region or box lies on must
        be among them.
    seg : pydicom.Dataset, optional
        The SEG :func:`kit.results.seg.encode_seg` made for this result. The
        SR references its segments by number and label; without it, the SR
        references the SEG that ``encode_seg`` makes (same UIDs, segments in
        region order), so the two can be encoded independently.

    Returns
    -------
    pydicom.Dataset
        A validated ``highdicom.sr.Comprehensive3DSR`` (SOP Class
        1.2.840.10008.5.1.4.1.1.88.34), SOP Instance UID ``result.uid("sr")``,
        Series Instance UID ``result.uid("sr-series")``.

    Raises
    ------
    kit.errors.InvalidInputError
        The sources do not match the subject, miss an image a region lies on,
        ``seg`` is not this result's SEG, or highdicom refuses the content.
    """
    by_uid = check_sources(result, sources)
    seg_uid, numbers, seg_evidence = _segments(result, seg)
    try:
        device = hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=result.uid("device"), name=result.algorithm.name,
                manufacturer_name=result.algorithm.manufacturer, model_name=result.algorithm.version))
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=device),
            procedure_reported=coded(_PROCEDURE),
            imaging_measurements=_group_items(result, by_uid, seg_uid, numbers),
            referenced_images=list(by_uid.values()))
        root = report[0].ContentSequence
        rid = hd.sr.TextContentItem(name=coded(RESULT_ID), value=result.result_id,
                                    relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT)
        first_contains = next(i for i, item in enumerate(root) if item.RelationshipType == "CONTAINS")
        root.insert(first_contains, rid)
        if result.conclusion is not None:
            container = hd.sr.ContainerContentItem(
                name=QUALITATIVE_EVALUATIONS,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
                name=coded(CONCLUSION), value=result.conclusion,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
            root.append(container)
        created = result.created.astimezone(dt.UTC)
        evidence = list(by_uid.values()) + ([seg_evidence] if seg_evidence is not None else [])
        sr = hd.sr.Comprehensive3DSR(
            evidence=evidence, content=report, series_instance_uid=result.uid("sr-series"),
            series_number=SERIES_NUMBER, sop_instance_uid=result.uid("sr"), instance_number=1,
            manufacturer=result.algorithm.manufacturer, is_complete=True,
            series_description=f"{result.algorithm.name} {result.algorithm.version}"[:64],
            content_date=created.date(), content_time=created.time().replace(tzinfo=None))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise _bad(f"highdicom refused the SR: {exc}") from exc
    sr.TimezoneOffsetFromUTC = "+0000"
    if result.subject.accession_number is not None:
        sr.AccessionNumber = result.subject.accession_number
    return sr
