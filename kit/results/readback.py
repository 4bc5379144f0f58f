"""Read DICOM SR (TID 1500) and SEG back into :class:`~kit.results.model.AnalysisResult` (pure).

Works on kit's own objects (:mod:`kit.results.sr`, :mod:`kit.results.seg`)
and on other tools' TID 1500 measurement reports and segmentations, so a
researcher can compare a model against annotations already in the PACS:

- :func:`read_sr` -> ``AnalysisResult``: subject from the header; algorithm
  from the groups' TID 4019 (else the device observer, else the header's
  Manufacturer/SoftwareVersions); one :class:`Measurement` per NUM item of a
  measurement group (code, value, UCUM unit, the group's Finding, the
  measurement's Finding Site); one :class:`Label` per qualitative evaluation
  (a coded evaluation, its "Certainty of Finding" child as the score when it
  lies in [0, 1], a % value divided by 100); the conclusion from "Impression"
  / "Conclusion" TEXT items; ``result_id`` from kit's RESULT-ID item, else
  the SR's SOP Instance UID. Given the SEG (``seg=``), its segments become the
  result's regions and a Volumetric ROI group's findings name their segment's
  label; Planar ROI groups with a rectangle become boxes.
- :func:`read_seg` -> regions (masks as numpy bool arrays, one frame per
  source image the SEG references) and :func:`seg_segments_frame`.
- :func:`differences` compares what was sent with what was read back on the
  fields that survive DICOM; :func:`stored_differences` compares the instance
  sent with the one the PACS returns, element by element; the delivery uses both
  to verify a write-back.

Codes of schemes the result model does not know keep their value and meaning
under a local scheme: ``SRT`` (the retired SNOMED designator) becomes ``SCT``,
any other ``X`` becomes ``99X`` (upper-cased, e.g. ``NCIt`` -> ``99NCIT``).

Decoding and the content-item classes are pydicom's and highdicom's; the walk
over the content tree is here (highdicom's group accessors drop the order of
groups and conflate a qualitative evaluation named "Finding" with the group's
Finding). Every failure is a :class:`~kit.errors.KitError`: a data set that is
not an SR/SEG or is malformed raises :class:`~kit.errors.DicomFileError`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import re
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import highdicom as hd
import numpy as np
import polars as pl
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from kit.errors import DicomFileError, InvalidInputError, KitError
from kit.results.model import (
    SCHEMES,
    Algorithm,
    AnalysisResult,
    BoundingBox,
    Code,
    Label,
    Measurement,
    Region,
    Subject,
)
from kit.results.sr import CONCLUSION, RESULT_ID, SCORE

__all__ = [
    "MAX_SEG_VOXELS",
    "SEGMENTS_SCHEMA",
    "Source",
    "SR_SOP_CLASSES",
    "differences",
    "read_seg",
    "read_sr",
    "seg_segments_frame",
    "sr_measurements_frame",
    "stored_differences",
]

#: SR storage classes whose TID 1500 content :func:`read_sr` reads.
SR_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.35",  # Extensible SR
})
#: Largest decoded SEG (source images x rows x columns x segments) :func:`read_seg` allocates.
MAX_SEG_VOXELS = 1 << 30
#: What the readers take: a data set, its Part 10 bytes, or a file.
Source = Dataset | bytes | bytearray | memoryview | str | os.PathLike[str]
#: Columns of :func:`seg_segments_frame`.
SEGMENTS_SCHEMA: dict[str, Any] = {
    "patient_id": pl.String, "accession_number": pl.String, "study_instance_uid": pl.String,
    "series_instance_uid": pl.String, "sop_instance_uid": pl.String, "segment_number": pl.Int64,
    "label": pl.String, "category_code": pl.String, "category_scheme": pl.String, "category": pl.String,
    "kind_code": pl.String, "kind_scheme": pl.String, "kind": pl.String, "algorithm_type": pl.String,
    "algorithm": pl.String, "algorithm_version": pl.String, "tracking_id": pl.String,
    "tracking_uid": pl.String, "source_images": pl.Int64, "voxels": pl.Int64}

_MAX_DEPTH = 32  # content tree nesting walked
_MAX_ITEMS = 200_000  # content items walked
_LIBRARY_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, LookupError,
                   NotImplementedError, RuntimeError, OverflowError, AssertionError, RecursionError,
                   UnicodeError, struct.error)

# concept names (value, scheme)
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_GROUP = ("125007", "DCM")
_TRACKING_ID = ("112039", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_CATEGORY = ("276214006", "SCT")
_FINDING_SITE = ("363698007", "SCT")
_METHOD = ("370129005", "SCT")
_ALG_NAME, _ALG_VERSION, _ALG_PARAM, _ALG_MAKER = ("111001", "DCM"), ("111003", "DCM"), \
    ("111002", "DCM"), ("122405", "DCM")
_REFERENCED_SEGMENT = ("121191", "DCM")
_IMAGE_REGION = ("111030", "DCM")
_DEVICE_NAME, _DEVICE_MODEL, _DEVICE_MAKER = ("121013", "DCM"), ("121015", "DCM"), ("121014", "DCM")
_CONCLUSIONS = {(CONCLUSION.value, CONCLUSION.scheme), ("121077", "DCM")}
_RESULT_ID = (RESULT_ID.value, RESULT_ID.scheme)
_SCORE = (SCORE.value, SCORE.scheme)
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _bad(message: str, source: str = "readback") -> DicomFileError:
    return DicomFileError(message, source=source)


def _load(ds: Source, what: str) -> Dataset:
    if isinstance(ds, Dataset):
        return ds
    if isinstance(ds, (bytes, bytearray, memoryview)):
        try:
            return pydicom.dcmread(io.BytesIO(bytes(ds)), force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on hostile bytes
            raise _bad(f"cannot read {what} bytes: {type(exc).__name__}: {exc}") from exc
    if isinstance(ds, (str, os.PathLike)):
        try:
            return pydicom.dcmread(ds)
        except (InvalidDicomError, OSError, *_LIBRARY_ERRORS) as exc:
            raise _bad(f"cannot read {what} file: {exc}", source=str(ds)) from exc
    raise InvalidInputError(f"{what}: a pydicom Dataset, bytes or a path, not {type(ds).__name__}")


# -- small readers -------------------------------------------------------------------------------

def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _scheme(designator: str) -> str:
    if designator in SCHEMES:
        return designator
    if designator.upper() in ("SRT", "SNM3", "SNOMED"):
        return "SCT"
    local = re.sub(r"[^A-Z0-9_]", "_", designator.upper())[:14] or "X"
    return local if local.startswith("99") and len(local) > 2 else f"99{local}"[:16]


def _code(item: Dataset) -> Code:
    """A Code from a code sequence item (CodeValue, Long/URN Code Value)."""
    value = _str(item, "CodeValue") or _str(item, "LongCodeValue") or _str(item, "URNCodeValue")
    meaning = _str(item, "CodeMeaning") or value
    return Code(value[:64], _scheme(_str(item, "CodingSchemeDesignator")), meaning[:256])


def _key(code: Code) -> tuple[str, str]:
    return code.value, code.scheme


def _name(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    return _key(_code(seq[0]))


def _concept(item: Dataset) -> Code:
    return _code(item.ConceptNameCodeSequence[0])


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


def _num(item: Dataset) -> tuple[float, Code] | None:
    seq = item.get("MeasuredValueSequence")
    if not seq:
        return None
    mv = seq[0]
    fp = mv.get("FloatingPointValue")
    value = float(fp) if fp is not None else float(mv.NumericValue)
    unit = _code(mv.MeasurementUnitsCodeSequence[0])
    if not math.isfinite(value):
        return None
    return value, unit


def _check_depth(ds: Dataset) -> None:
    """Refuse content trees nested deeper or larger than a report has any reason to be."""
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _bad(f"content tree nested deeper than {_MAX_DEPTH}")
        for child in node.get("ContentSequence") or []:
            seen += 1
            if seen > _MAX_ITEMS:
                raise _bad(f"content tree has more than {_MAX_ITEMS} items")
            stack.append((child, depth + 1))


# -- SR ------------------------------------------------------------------------------------------

class _Group:
    """One measurement group's content, read in document order."""

    def __init__(self, item: Dataset) -> None:
        self.tracking: str | None = None
        self.finding: Code | None = None
        self.category: Code | None = None
        self.category_score: float | None = None  # a box's score (kit.results.sr)
        self.segment: int | None = None
        self.rectangle: tuple[str, tuple[float, float, float, float], int | None] | None = None
        self.algorithm: dict[str, Any] = {}
        self.measurements: list[tuple[Code, float, Code, Code | None]] = []
        self.labels: list[tuple[Code, Code, float | None]] = []
        children = _children(item)
        stop = next((i for i, c in enumerate(children)
                     if _name(c) == _ALG_NAME or _str(c, "ValueType") == "NUM"), len(children))
        for i, child in enumerate(children):
            self._read(child, before_algorithm=i < stop)

    def _read(self, child: Dataset, *, before_algorithm: bool) -> None:
        name, vtype = _name(child), _str(child, "ValueType")
        if name is None:
            return
        if name == _TRACKING_ID and vtype == "TEXT":
            self.tracking = _str(child, "TextValue") or None
        elif name in (_ALG_NAME, _ALG_VERSION, _ALG_MAKER) and vtype == "TEXT":
            self.algorithm.setdefault(name[0], _str(child, "TextValue"))
        elif name == _ALG_PARAM and vtype == "TEXT":
            self.algorithm.setdefault("params", []).append(_str(child, "TextValue"))
        elif vtype == "CODE" and name == _FINDING_CATEGORY:
            self.category = _code(child.ConceptCodeSequence[0])
            self.category_score = _score(child)
        elif vtype == "CODE" and name == _FINDING and self.finding is None and before_algorithm:
            self.finding = _code(child.ConceptCodeSequence[0])
        elif vtype == "CODE" and name != _METHOD and _str(child, "RelationshipType") == "CONTAINS":
            self.labels.append((_concept(child), _code(child.ConceptCodeSequence[0]), _score(child)))
        elif vtype == "NUM" and _str(child, "RelationshipType") == "CONTAINS":
            num = _num(child)
            if num is not None:
                site = next((_code(c.ConceptCodeSequence[0]) for c in _children(child)
                             if _name(c) == _FINDING_SITE and _str(c, "ValueType") == "CODE"), None)
                self.measurements.append((_concept(child), num[0], num[1], site))
        elif vtype == "IMAGE" and name == _REFERENCED_SEGMENT:
            ref = child.ReferencedSOPSequence[0]
            numbers = ref.get("ReferencedSegmentNumber")
            if numbers is not None:
                self.segment = int(numbers[0] if isinstance(numbers, Sequence) else numbers)
        elif vtype == "SCOORD" and name == _IMAGE_REGION:
            self.rectangle = _rectangle(child)


def _score(item: Dataset) -> float | None:
    for child in _children(item):
        if _name(child) == _SCORE and _str(child, "ValueType") == "NUM":
            num = _num(child)
            if num is None:
                return None
            value = num[0] / 100.0 if num[1].value == "%" else num[0]
            return value if 0.0 <= value <= 1.0 else None
    return None


def _rectangle(item: Dataset) -> tuple[str, tuple[float, float, float, float], int | None] | None:
    """An axis-aligned rectangle (closed POLYLINE) on one image: (SOP Instance UID, corners, frame)."""
    if _str(item, "GraphicType") != "POLYLINE":
        return None
    points = [float(v) for v in item.GraphicData]
    if len(points) not in (8, 10) or not all(math.isfinite(v) for v in points):
        return None
    xs, ys = points[0::2], points[1::2]
    if len(set(xs[:4])) != 2 or len(set(ys[:4])) != 2:
        return None
    refs = [c for c in _children(item) if _str(c, "ValueType") == "IMAGE"]
    if not refs:
        return None
    ref = refs[0].ReferencedSOPSequence[0]
    frames = ref.get("ReferencedFrameNumber")
    frame = int(frames[0] if isinstance(frames, Sequence) else frames) if frames else None
    return str(ref.ReferencedSOPInstanceUID), (min(xs), min(ys), max(xs), max(ys)), frame


def _groups(root: Dataset) -> Iterator[_Group]:
    for item in _children(root):
        if _name(item) == _IMAGING_MEASUREMENTS and _str(item, "ValueType") == "CONTAINER":
            for group in _children(item):
                if _name(group) == _GROUP and _str(group, "ValueType") == "CONTAINER":
                    yield _Group(group)


def _texts(root: Dataset, names: set[tuple[str, str]], depth: int = 0) -> Iterator[str]:
    """TEXT items named ``names`` at the root or in root-level containers other than the groups."""
    for item in _children(root):
        name = _name(item)
        if _str(item, "ValueType") == "TEXT" and name in names:
            yield str(item.get("TextValue", ""))
        elif (_str(item, "ValueType") == "CONTAINER" and depth == 0
              and name not in (_IMAGING_MEASUREMENTS, ("111028", "DCM"))):  # not the groups, not the library
            yield from _texts(item, names, depth + 1)


def _parameter(text: str) -> tuple[str, str | int | float | bool] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and len(obj) == 1:
        key, value = next(iter(obj.items()))
        if isinstance(value, (str, int, float, bool)) and key.strip():
            return key, value
    key, sep, value = text.partition("=")
    if sep and key.strip():
        return key.strip(), value.strip()
    return (text, "") if text.strip() else None


def _algorithm(ds: Dataset, root: Dataset, groups: list[_Group]) -> Algorithm:
    found = next((g.algorithm for g in groups if g.algorithm.get(_ALG_NAME[0])), {})
    name, version, maker = found.get(_ALG_NAME[0]), found.get(_ALG_VERSION[0]), found.get(_ALG_MAKER[0])
    if not name:
        texts = {_name(c): _str(c, "TextValue") for c in _children(root) if _str(c, "ValueType") == "TEXT"}
        name, version, maker = texts.get(_DEVICE_NAME), texts.get(_DEVICE_MODEL), texts.get(_DEVICE_MAKER)
    name = name or _str(ds, "ManufacturerModelName") or _str(ds, "Manufacturer") or "unknown"
    version = version or _str(ds, "SoftwareVersions") or "unknown"
    params: dict[str, str | int | float | bool] = {}
    for text in found.get("params", []):
        pair = _parameter(text)
        if pair is not None and len(pair[0]) <= 64 and not any(ord(ch) < 32 for ch in pair[0]):
            params.setdefault(*pair)
    maker = maker or _str(ds, "Manufacturer") or "unknown"
    return Algorithm(name[:64], version[:64], params, manufacturer=maker[:64])


def _subject(ds: Dataset, extra: Sequence[str] = ()) -> Subject:
    birth = None
    raw = _str(ds, "PatientBirthDate")
    if re.fullmatch(r"\d{8}", raw):
        try:
            birth = dt.date(int(raw[:4]), int(raw[4:6]), int(raw[6:]))
        except ValueError:
            birth = None
    sex = _str(ds, "PatientSex")
    instances: list[str] = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            for ref in series.get("ReferencedSOPSequence") or []:
                uid = _str(ref, "ReferencedSOPInstanceUID")
                if _UID.match(uid) and len(uid) <= 64 and \
                        _str(ref, "ReferencedSOPClassUID") != SegmentationStorage:
                    instances.append(uid)
    instances += list(extra)
    return Subject(
        patient_id=_str(ds, "PatientID"), study_instance_uid=_str(ds, "StudyInstanceUID"),
        accession_number=_str(ds, "AccessionNumber") or None,
        patient_name=_str(ds, "PatientName") or None, patient_birth_date=birth,
        patient_sex=sex if sex in ("M", "F", "O") else None,
        sop_instance_uids=tuple(dict.fromkeys(instances)))


def _created(ds: Dataset) -> dt.datetime:
    date, time = _str(ds, "ContentDate"), _str(ds, "ContentTime")
    offset = _str(ds, "TimezoneOffsetFromUTC")
    try:
        value = dt.datetime.strptime(date + time.split(".")[0].ljust(6, "0")[:6], "%Y%m%d%H%M%S")
        if "." in time:
            value = value.replace(microsecond=int(time.split(".")[1][:6].ljust(6, "0")))
        tz = dt.UTC
        if re.fullmatch(r"[+-]\d{4}", offset):
            sign = 1 if offset[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
        return value.replace(tzinfo=tz)
    except ValueError:
        return dt.datetime.now(dt.UTC)


def _read_sr(ds: Dataset, seg: Dataset | None) -> AnalysisResult:
    if _str(ds, "SOPClassUID") not in SR_SOP_CLASSES:
        raise _bad(f"not a structured report: SOP Class {_str(ds, 'SOPClassUID') or '(none)'}")
    if not ds.get("ContentSequence"):
        raise _bad("the SR has no content")
    _check_depth(ds)
    regions: tuple[Region, ...] = ()
    by_number: dict[int, str] = {}
    if seg is not None:
        regions = read_seg(seg)
        by_number = {int(s.SegmentNumber): str(s.SegmentLabel).strip()
                     for s in seg.get("SegmentSequence") or []}
    groups = list(_groups(ds))
    boxes: dict[tuple[Any, ...], BoundingBox] = {}
    for g in groups:
        if g.rectangle is not None and g.tracking:
            uid, (x0, y0, x1, y1), frame = g.rectangle
            kind = g.category or g.finding or Code("ROI", "99KIT", "Region of interest")
            box = BoundingBox(g.tracking[:64], kind, uid, x0, y0, x1, y1, frame_number=frame,
                              score=g.category_score)
            boxes.setdefault((box.label, uid, x0, y0, x1, y1, frame), box)
    names = {r.label for r in regions} | {b.label for b in boxes.values()}
    measurements: list[Measurement] = []
    labels: list[Label] = []
    for g in groups:
        if g.segment is not None:
            region = by_number.get(g.segment)
        elif g.rectangle is not None:
            region = g.tracking
        else:
            region = None
        region = region if region in names else None
        for name, value, unit, site in g.measurements:
            measurements.append(Measurement(name, value, unit, finding=g.finding, finding_site=site,
                                            region=region))
        for concept, coded_value, score in g.labels:
            labels.append(Label(concept, coded_value, score, region=region))
    conclusion = "\n".join(t for t in _texts(ds, _CONCLUSIONS) if t.strip()) or None
    rid = next((t.strip() for t in _texts(ds, {_RESULT_ID}) if _FHIR_ID.match(t.strip())), None)
    sop = _str(ds, "SOPInstanceUID")
    extra = [u for r in regions for u in r.source_instances] + [b.source_instance for b in boxes.values()]
    inputs = (sop,) + ((_str(seg, "SOPInstanceUID"),) if seg is not None else ())
    return AnalysisResult(
        subject=_subject(ds, extra), algorithm=_algorithm(ds, ds, groups),
        measurements=tuple(measurements), labels=tuple(labels), regions=regions,
        boxes=tuple(boxes.values()), conclusion=conclusion,
        result_id=rid or (sop if _FHIR_ID.match(sop) else "unknown"), inputs=inputs, created=_created(ds))


def read_sr(ds: Source, seg: Source | None = None
            ) -> AnalysisResult:
    """Read a TID 1500 measurement report (and optionally its SEG) back into an ``AnalysisResult``.

    Parameters
    ----------
    ds : pydicom.Dataset, bytes or path
        An Enhanced, Comprehensive, Comprehensive 3D or Extensible SR.
    seg : pydicom.Dataset, bytes or path, optional
        The SEG the report's Volumetric ROI groups reference: its segments
        become the result's regions, and the groups' findings name them.

    Returns
    -------
    AnalysisResult
        See the module docstring for what maps where. ``result_id`` is kit's
        RESULT-ID item, else the SR's SOP Instance UID.

    Raises
    ------
    kit.errors.DicomFileError
        Not an SR, no content, a malformed content tree, or nothing to read.
    kit.errors.InvalidInputError
        The content reads into an invalid result (e.g. no patient id).
    """
    sr = _load(ds, "SR")
    seg_ds = None if seg is None else _load(seg, "SEG")
    try:
        return _read_sr(sr, seg_ds)
    except KitError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile content: pydicom/highdicom raise many types
        raise _bad(f"malformed SR content: {type(exc).__name__}: {exc}") from exc


def sr_measurements_frame(ds: Source) -> pl.DataFrame:
    """The measurements of an SR as a frame: the columns of ``AnalysisResult.measurements_frame()``."""
    return read_sr(ds).measurements_frame()


# -- SEG -----------------------------------------------------------------------------------------

def _segmentation(ds: Dataset) -> hd.seg.Segmentation:
    if _str(ds, "SOPClassUID") != SegmentationStorage:
        raise _bad(f"not a segmentation: SOP Class {_str(ds, 'SOPClassUID') or '(none)'}")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        size = frames * int(ds.Rows) * int(ds.Columns)
    except _LIBRARY_ERRORS as exc:
        raise _bad(f"SEG without a valid frame size: {exc}") from exc
    if size > MAX_SEG_VOXELS:
        raise _bad(f"SEG frames hold more than {MAX_SEG_VOXELS} pixels")
    return hd.seg.Segmentation.from_dataset(ds, copy=True)


def _segments(ds: Dataset) -> tuple[hd.seg.Segmentation, list[str], list[tuple[Any, np.ndarray]]]:
    seg = _segmentation(ds)
    uids = list(dict.fromkeys(str(u[2]) for u in seg.get_source_image_uids()))
    if not uids:
        raise _bad("the SEG references no source images")
    numbers = list(seg.segment_numbers)
    if len(uids) * int(ds.Rows) * int(ds.Columns) * max(len(numbers), 1) > MAX_SEG_VOXELS:
        raise _bad(f"the SEG's masks would hold more than {MAX_SEG_VOXELS} pixels")
    out: list[tuple[Any, np.ndarray]] = []
    for number in numbers:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], assert_missing_frames_are_empty=True,
            skip_overlap_checks=True)
        mask = np.asarray(pixels[..., 0])
        out.append((seg.get_segment_description(number), mask >= 0.5 if mask.dtype.kind == "f" else mask > 0))
    return seg, uids, out


def read_seg(ds: Source) -> tuple[Region, ...]:
    """The segments of a SEG as ``Region`` objects, masks per source image.

    Each region's ``source_instances`` are all the source images the SEG
    references (in its order) and its mask has one frame per source image
    (frames the SEG omitted as empty are all False). FRACTIONAL segments are
    thresholded at 0.5.

    Raises
    ------
    kit.errors.DicomFileError
        Not a SEG, malformed, larger than :data:`MAX_SEG_VOXELS`, or of
        multi-frame source images.
    """
    seg = _load(ds, "SEG")
    try:
        _, uids, segments = _segments(seg)
        return tuple(Region(_str(desc, "SegmentLabel") or f"segment {int(desc.SegmentNumber)}",
                            _code(desc.SegmentedPropertyCategoryCodeSequence[0]),
                            _code(desc.SegmentedPropertyTypeCodeSequence[0]), mask, tuple(uids))
                     for desc, mask in segments)
    except KitError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile content: pydicom/highdicom raise many types
        raise _bad(f"malformed SEG: {type(exc).__name__}: {exc}") from exc


def seg_segments_frame(ds: Source) -> pl.DataFrame:
    """One row per segment of a SEG (:data:`SEGMENTS_SCHEMA`), with the join keys and voxel counts."""
    seg = _load(ds, "SEG")
    try:
        _, uids, segments = _segments(seg)
        rows = []
        for desc, mask in segments:
            category = _code(desc.SegmentedPropertyCategoryCodeSequence[0])
            kind = _code(desc.SegmentedPropertyTypeCodeSequence[0])
            alg = (desc.get("SegmentationAlgorithmIdentificationSequence") or [Dataset()])[0]
            rows.append({
                "patient_id": _str(seg, "PatientID"),
                "accession_number": _str(seg, "AccessionNumber") or None,
                "study_instance_uid": _str(seg, "StudyInstanceUID"),
                "series_instance_uid": _str(seg, "SeriesInstanceUID"),
                "sop_instance_uid": _str(seg, "SOPInstanceUID"), "segment_number": int(desc.SegmentNumber),
                "label": _str(desc, "SegmentLabel"), "category_code": category.value,
                "category_scheme": category.scheme, "category": category.meaning,
                "kind_code": kind.value, "kind_scheme": kind.scheme, "kind": kind.meaning,
                "algorithm_type": _str(desc, "SegmentAlgorithmType"),
                "algorithm": _str(alg, "AlgorithmName") or _str(desc, "SegmentAlgorithmName") or None,
                "algorithm_version": _str(alg, "AlgorithmVersion") or None,
                "tracking_id": _str(desc, "TrackingID") or None,
                "tracking_uid": _str(desc, "TrackingUID") or None,
                "source_images": len(uids), "voxels": int(mask.sum())})
        return pl.DataFrame(rows, schema=SEGMENTS_SCHEMA)
    except KitError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile content: pydicom/highdicom raise many types
        raise _bad(f"malformed SEG: {type(exc).__name__}: {exc}") from exc


# -- verification --------------------------------------------------------------------------------

def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _pair(kind: str, sent: Sequence[tuple[Any, float | None]], read: Sequence[tuple[Any, float | None]]
          ) -> list[str]:
    """Compare two multisets of (key, number) pairs, the numbers to float tolerance."""
    out: list[str] = []
    left = sorted(sent, key=lambda p: (repr(p[0]), p[1] if p[1] is not None else -math.inf))
    right = sorted(read, key=lambda p: (repr(p[0]), p[1] if p[1] is not None else -math.inf))
    unmatched = list(right)
    for key, value in left:
        match = next((i for i, (k, v) in enumerate(unmatched) if k == key and _close(v, value)), None)
        if match is None:
            out.append(f"{kind} sent but not read back: {key} = {value}")
        else:
            unmatched.pop(match)
    out += [f"{kind} read back but not sent: {k} = {v}" for k, v in unmatched]
    return out


def _masks(region: Region) -> dict[str, np.ndarray]:
    """Mask per source image, without empty frames (a SEG omits them)."""
    out: dict[str, np.ndarray] = {}
    for uid, frame in zip(region.source_instances, region.mask, strict=True):
        out[uid] = out[uid] | frame if uid in out else frame
    return {uid: m for uid, m in out.items() if m.any()}


def differences(sent: AnalysisResult, read: AnalysisResult) -> list[str]:
    """What differs between a sent result and the one read back, on the fields that survive DICOM.

    Compared: the subject's patient id, study UID and accession number (when
    sent), ``result_id``, the algorithm (name, version, manufacturer,
    parameters), measurements (codes, unit, finding, finding site, region;
    values to float tolerance; as a multiset), labels (name, value, region,
    score), the conclusion (trailing white space ignored), regions (label,
    category, kind, mask per source image; empty frames count as absent) and
    boxes (label, kind, image, corners, frame, score). Not compared: the time
    of boxes (not written), ``inputs``, ``created`` and the subject's other fields.

    Returns
    -------
    list of str
        One sentence per difference; empty when the read-back equals what was sent.
    """
    out: list[str] = []
    s, r = sent.subject, read.subject
    for field in ("patient_id", "study_instance_uid", "accession_number"):
        if getattr(s, field) is not None and getattr(s, field) != getattr(r, field):
            out.append(f"subject.{field}: sent {getattr(s, field)!r}, read {getattr(r, field)!r}")
    if sent.result_id != read.result_id:
        out.append(f"result_id: sent {sent.result_id!r}, read {read.result_id!r}")
    sa, ra = sent.algorithm, read.algorithm
    if (sa.name, sa.version, sa.manufacturer, dict(sa.parameters)) != \
            (ra.name, ra.version, ra.manufacturer, dict(ra.parameters)):
        out.append(f"algorithm: sent {sa}, read {ra}")
    out += _pair("measurement", *[[((m.name, m.unit, m.finding, m.finding_site, m.region), m.value)
                                   for m in res.measurements] for res in (sent, read)])
    out += _pair("label", [((lb.name, lb.value, lb.region), lb.score) for lb in sent.labels],
                 [((lb.name, lb.value, lb.region), lb.score) for lb in read.labels])
    if (sent.conclusion or "").rstrip() != (read.conclusion or "").rstrip():
        out.append(f"conclusion: sent {sent.conclusion!r}, read {read.conclusion!r}")
    read_regions = {x.label: x for x in read.regions}
    for region in sent.regions:
        other = read_regions.pop(region.label, None)
        if other is None:
            out.append(f"region {region.label!r} not read back")
            continue
        if (region.category, region.kind) != (other.category, other.kind):
            out.append(f"region {region.label!r}: sent {region.category}/{region.kind}, "
                       f"read {other.category}/{other.kind}")
        mine, theirs = _masks(region), _masks(other)
        if mine.keys() != theirs.keys():
            out.append(f"region {region.label!r}: non-empty on {len(mine)} image(s) sent, {len(theirs)} "
                       f"read, e.g. {sorted(mine.keys() ^ theirs.keys())[:2]}")
        else:
            diff = [u for u in mine if mine[u].shape != theirs[u].shape
                    or not np.array_equal(mine[u], theirs[u])]
            if diff:
                out.append(f"region {region.label!r}: masks differ on {len(diff)} image(s), e.g. {diff[0]}")
    out += [f"region {label!r} read back but not sent" for label in read_regions]
    boxes: list[Sequence[tuple[Any, float | None]]] = [
        [((x.label, x.kind, x.source_instance, x.frame_number), x.score) for x in res.boxes]
        for res in (sent, read)]
    out += _pair("box", boxes[0], boxes[1])
    corners = {(x.label, x.source_instance): (x.x0, x.y0, x.x1, x.y1) for x in read.boxes}
    for box in sent.boxes:
        mine_c, got = (box.x0, box.y0, box.x1, box.y1), corners.get((box.label, box.source_instance))
        if got is not None and not all(_close(x, y) for x, y in zip(mine_c, got, strict=True)):
            out.append(f"box {box.label!r}: corners sent {mine_c}, read {got}")
    return out


#: Not compared by :func:`stored_differences`: Pixel Data (a PACS may store it compressed; a SEG's
#: masks are compared decoded, by :func:`differences`)
_NOT_COMPARED = frozenset({0x7FE00010})
#: Differences :func:`stored_differences` lists at most
_MAX_LISTED = 20


def stored_differences(sent: Dataset, stored: Dataset) -> list[str]:
    """Data elements of ``sent`` that ``stored`` (the same instance, retrieved from the PACS) does
    not hold with the same value, at any depth of their sequences.

    Elements the PACS added (a Retrieve AE Title, its private tags) are allowed; Pixel Data is not
    compared (see :data:`_NOT_COMPARED`). Anything else it changed, removed or added inside a
    sequence (an SR content item, a reference, a flag, a patient's name, a measurement's
    Numeric Value beside its Floating Point Value) is a difference: what the PACS holds is not
    what was sent.

    Returns
    -------
    list of str
        One sentence per difference (at most twenty); empty when every element sent is stored.
    """
    out: list[str] = []
    _compare(sent, stored, "", out)
    return out


def _compare(sent: Dataset, stored: Dataset, path: str, out: list[str]) -> None:
    for elem in sent:
        if len(out) >= _MAX_LISTED:
            return
        if int(elem.tag) in _NOT_COMPARED:
            continue
        where = f"{path}{elem.keyword or elem.tag}"
        other = stored.get(elem.tag)
        if other is None:
            out.append(f"{where}: sent, not stored")
        elif elem.VR == "SQ":
            items, theirs = elem.value, other.value
            if other.VR != "SQ" or len(items) != len(theirs):
                out.append(f"{where}: {len(items)} item(s) sent, "
                           f"{len(theirs) if other.VR == 'SQ' else 'no sequence'} stored")
                continue
            for i, (mine, their) in enumerate(zip(items, theirs, strict=True)):
                _compare(mine, their, f"{where}[{i}].", out)
        elif other.VR != elem.VR or _value(elem.value) != _value(other.value):
            out.append(f"{where}: sent {_value(elem.value)!r}, stored {_value(other.value)!r}"[:200])


def _value(value: Any) -> Any:
    """An element value as plain Python to compare (multi-values as lists, names as text)."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return [_value(v) for v in value]
    if isinstance(value, pydicom.valuerep.PersonName):
        return str(value)
    return value
