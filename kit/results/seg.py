"""The regions of an :class:`~kit.results.model.AnalysisResult` as a DICOM SEG, through highdicom.

:func:`encode_seg` builds a BINARY ``highdicom.seg.Segmentation`` with one
segment per :class:`~kit.results.model.Region`, in the result's region order
(segment ``i + 1`` is ``result.regions[i]``): the region's label is the
Segment Label, its ``category`` and ``kind`` the Segmented Property Category
and Type, the algorithm (TID 4019-like Segment Algorithm Identification) the
result's, the tracking UID and id the same as the SR's measurement groups
(:mod:`kit.results.sr`). Mask frame ``i`` of a region lies on the source image
whose SOP Instance UID is ``region.source_instances[i]``; the SEG's frames
cover the source images any region lies on (in the order of ``sources``),
empty frames omitted. SOP Instance UID ``result.uid("seg")``, Series Instance
UID ``result.uid("seg-series")``, so the SR built without the SEG references
the same object.

The SEG IOD, its frame encoding and the validation are highdicom's; this module
only lays the masks out on the source images.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from kit.errors import InvalidInputError
from kit.results.model import AnalysisResult
from kit.results.sr import SERIES_NUMBER, check_sources, coded

__all__ = ["MAX_SEG_VOXELS", "encode_seg"]

#: Largest SEG (source frames x rows x columns x segments) encoded, so a result cannot exhaust memory.
MAX_SEG_VOXELS = 1 << 32


def _bad(message: str) -> InvalidInputError:
    return InvalidInputError(message, source="encode_seg")


def encode_seg(result: AnalysisResult, sources: Sequence[Dataset]) -> Dataset | None:
    """Encode a result's regions as a BINARY DICOM Segmentation.

    Parameters
    ----------
    result : AnalysisResult
        The result; one segment per region.
    sources : sequence of pydicom.Dataset
        The images the result is about, with pixel data attributes (Rows,
        Columns, geometry); every image a region lies on must be among them
        (matched by SOP Instance UID), all of the subject's patient and study,
        of one series.

    Returns
    -------
    pydicom.Dataset or None
        A validated ``highdicom.seg.Segmentation`` (SOP Class
        1.2.840.10008.5.1.4.1.1.66.4); None when the result has no regions.

    Raises
    ------
    kit.errors.InvalidInputError
        Sources that do not match the subject or the masks (size), images of
        several series, or highdicom refuses the segmentation.
    """
    by_uid = check_sources(result, sources, where="encode_seg")
    if not result.regions:
        return None
    used = {u for r in result.regions for u in r.source_instances}
    images = [ds for uid, ds in by_uid.items() if uid in used]
    if len({str(ds.SeriesInstanceUID) for ds in images}) > 1:
        raise _bad("regions lie on images of more than one series; a SEG segments one series")
    try:
        rows, cols = int(images[0].Rows), int(images[0].Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _bad(f"source image without Rows/Columns: {exc}") from exc
    if len(images) * rows * cols * len(result.regions) > MAX_SEG_VOXELS:
        raise _bad(f"the SEG would hold more than {MAX_SEG_VOXELS} voxels")
    frame_of = {str(ds.SOPInstanceUID): i for i, ds in enumerate(images)}
    pixels = np.zeros((len(images), rows, cols, len(result.regions)), dtype=bool)
    for s, region in enumerate(result.regions):
        for frame, uid in enumerate(region.source_instances):
            image = images[frame_of[uid]]
            if (int(image.Rows), int(image.Columns)) != region.mask.shape[1:]:
                raise _bad(f"region {region.label!r}: mask frame {frame} is {region.mask.shape[1:]}, "
                           f"image {uid} is {int(image.Rows)}x{int(image.Columns)}")
            pixels[frame_of[uid], :, :, s] |= region.mask[frame]
    a = result.algorithm
    algorithm = hd.AlgorithmIdentificationSequence(
        name=a.name, family=codes.cid7162.ArtificialIntelligence, version=a.version, source=a.manufacturer,
        parameters={k: json.dumps(v) for k, v in a.parameters.items()} or None)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i, segment_label=r.label, segmented_property_category=coded(r.category),
            segmented_property_type=coded(r.kind), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=result.uid(f"tracking:{r.label}"),
            tracking_id=r.label)
        for i, r in enumerate(result.regions, start=1)]
    created = result.created.astimezone(dt.UTC)
    try:
        seg = hd.seg.Segmentation(
            source_images=images, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=result.uid("seg-series"),
            series_number=SERIES_NUMBER + 1, sop_instance_uid=result.uid("seg"), instance_number=1,
            manufacturer=a.manufacturer, manufacturer_model_name=a.name, software_versions=a.version,
            device_serial_number=result.uid("device"),
            series_description=f"{a.name} {a.version}"[:64],
            content_date=created.date(), content_time=created.time().replace(tzinfo=None),
            content_label="KIT_SEG", content_description=f"regions of result {result.result_id}"[:64])
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise _bad(f"highdicom refused the SEG: {exc}") from exc
    seg.TimezoneOffsetFromUTC = "+0000"
    if result.subject.accession_number is not None:
        seg.AccessionNumber = result.subject.accession_number
    return seg
