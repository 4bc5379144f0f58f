"""Capture a procedure: frames to DICOM stills and a clip, stored to the PACS and found again (I/O).

:func:`capture_procedure` reads frames from any iterable of
:class:`~kit.endoscopy.frame.Frame` (a live :class:`FrameSource`, a decoded
file, a list), encodes the clip as it goes (:class:`~kit.endoscopy.capture.ClipEncoder`)
while :class:`~kit.endoscopy.capture.StillPicker` keeps the stills, so memory
stays bounded however long the procedure runs. Then it:

1. builds the VL Endoscopic stills and the Video Endoscopic clip for the
   procedure's patient and study (:mod:`kit.endoscopy.capture`);
2. checks them as a reader will: each is written and read back by pydicom,
   and the clip's stream decodes with PyAV to as many frames as were captured
   (nothing unreadable is sent);
3. C-STOREs them on one association and
4. finds every one again by C-FIND at IMAGE level in its series.

It returns a :class:`Capture`: what was stored, with UIDs, and which stored
frame each captured frame became (for :mod:`kit.endoscopy.detections`).

Written by hand: only the order of these steps; encoding is PyAV's and
Pillow's, the DICOM objects pydicom's, the network the DIMSE client's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import polars as pl
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kit.endoscopy.capture import (
    MAX_CLIP_FRAMES,
    ClipEncoder,
    Procedure,
    StillPicker,
    decode_clip,
    still_dataset,
    video_dataset,
)
from kit.endoscopy.frame import Frame
from kit.endoscopy.vendors import VendorProfile
from kit.endoscopy.vendors import profile as vendor_profile
from kit.errors import AssociationRejectedError, DicomError, InvalidInputError, VerificationError

if TYPE_CHECKING:
    from kit.dicom.dimse import PacsClient

__all__ = ["CAPTURE_SCHEMA", "Capture", "CapturedInstance", "capture_procedure", "collect"]

#: Columns of :attr:`Capture.frame`.
CAPTURE_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(), "sop_instance_uid": pl.String(), "sop_class_uid": pl.String(),
    "transfer_syntax_uid": pl.String(), "series_instance_uid": pl.String(), "number_of_frames": pl.Int32(),
    "frame_index": pl.Int64(), "patient_id": pl.String(), "accession_number": pl.String(),
    "study_instance_uid": pl.String(), "found": pl.Boolean(),
}

_NAMES = {"1.2.840.10008.5.1.4.1.1.77.1.1": "VL Endoscopic Image Storage",
          "1.2.840.10008.5.1.4.1.1.77.1.1.1": "Video Endoscopic Image Storage"}


@dataclasses.dataclass(frozen=True)
class CapturedInstance:
    """One stored instance: ``kind`` ``still`` or ``clip``, its UIDs and the frames it holds.

    ``frame_indices`` are the :attr:`Frame.index` values it was made from (one
    for a still; every captured frame, in order, for a clip: clip frame
    ``n`` (from 1) is ``frame_indices[n - 1]``).
    """

    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    series_instance_uid: str
    frame_indices: tuple[int, ...]
    found: bool = False


@dataclasses.dataclass(frozen=True, eq=False)
class Capture:
    """What :func:`capture_procedure` stored: the procedure, the instances and their datasets.

    ``datasets`` are the stored objects (by SOP Instance UID), e.g. the
    ``sources`` of :func:`kit.results.deliver.deliver`.
    """

    procedure: Procedure
    instances: tuple[CapturedInstance, ...]
    datasets: Mapping[str, Dataset]
    seconds: float

    @property
    def stills(self) -> list[CapturedInstance]:
        """The stored stills, in frame order."""
        return [i for i in self.instances if i.kind == "still"]

    @property
    def clip(self) -> CapturedInstance | None:
        """The stored clip (None when no clip was asked for)."""
        return next((i for i in self.instances if i.kind == "clip"), None)

    def locate(self, frame_index: int) -> tuple[str, int | None]:
        """Where a captured frame was stored: (SOP Instance UID, frame number from 1 or None).

        A frame stored as a still is that still (frame number None); any other
        captured frame is its frame of the clip.

        Raises
        ------
        kit.errors.InvalidInputError
            The frame was not captured.
        """
        for still in self.stills:
            if still.frame_indices == (frame_index,):
                return still.sop_instance_uid, None
        clip = self.clip
        if clip is not None and frame_index in clip.frame_indices:
            return clip.sop_instance_uid, clip.frame_indices.index(frame_index) + 1
        raise InvalidInputError(f"frame {frame_index} was not captured (neither a still nor in the clip)",
                                source="capture")

    @property
    def frame(self) -> pl.DataFrame:
        """One row per stored instance (:data:`CAPTURE_SCHEMA`)."""
        p = self.procedure
        rows = [{"kind": i.kind, "sop_instance_uid": i.sop_instance_uid, "sop_class_uid": i.sop_class_uid,
                 "transfer_syntax_uid": i.transfer_syntax_uid, "series_instance_uid": i.series_instance_uid,
                 "number_of_frames": len(i.frame_indices),
                 "frame_index": i.frame_indices[0] if i.kind == "still" else None,
                 "patient_id": p.patient_id, "accession_number": p.accession_number,
                 "study_instance_uid": p.study_instance_uid, "found": i.found} for i in self.instances]
        return pl.DataFrame(rows, schema=CAPTURE_SCHEMA)


def collect(frames: Iterable[Frame], *, seconds: float | None = None,
            max_frames: int = MAX_CLIP_FRAMES) -> Iterable[Frame]:
    """``frames`` up to ``seconds`` of stream time (by :attr:`Frame.timestamp`) or ``max_frames``."""
    first: float | None = None
    for n, frame in enumerate(frames):
        if not isinstance(frame, Frame):
            raise InvalidInputError(f"the source gave a {type(frame).__name__}, not a Frame",
                                    source="capture")
        if first is None:
            first = frame.timestamp
        if seconds is not None and frame.timestamp - first >= seconds:
            return
        if n >= max_frames:
            return
        yield frame


def _fps(stamps: Sequence[float], default: float) -> float:
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > a]
    if not steps:
        return default
    fps = 1.0 / statistics.median(steps)
    return min(max(fps, 1.0), 240.0)


def _roundtrip(ds: Dataset) -> Dataset:
    """``ds`` written and read back by pydicom (what a reader of the stored file gets)."""
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, ds, enforce_file_format=True)
        buffer.seek(0)
        return dcmread(buffer)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; none may escape as-is
        raise InvalidInputError(f"{ds.SOPInstanceUID}: pydicom cannot write and read it back: {exc}",
                                source="capture") from exc


def _check(datasets: Sequence[Dataset], clip_uid: str | None, clip_frames: int) -> None:
    """Every instance reads back; the clip decodes to ``clip_frames`` frames."""
    for ds in datasets:
        back = _roundtrip(ds)
        if str(back.SOPInstanceUID) == clip_uid:
            decoded = len(decode_clip(back, max_frames=clip_frames + 1))
            if decoded != clip_frames:
                raise VerificationError(f"the clip decodes to {decoded} frames, {clip_frames} were captured")


def _store(pacs: PacsClient, datasets: Sequence[Dataset]) -> None:
    try:
        pacs.store(datasets)
    except (DicomError, AssociationRejectedError) as exc:
        # the DIMSE client says "accepted no/none of the proposed presentation context(s)": say which
        # objects, and what a site can change
        if type(exc) in (DicomError, AssociationRejectedError) and "presentation context" in str(exc):
            kinds = sorted({f"{_NAMES.get(str(d.SOPClassUID), d.SOPClassUID)} in "
                            f"{d.file_meta.TransferSyntaxUID.name}" for d in datasets})
            raise type(exc)(f"the PACS refuses {', '.join(kinds)}: {str(exc).split(' (')[0]}; ask for it "
                            f"to be enabled, or set [endoscopy] overrides still_transfer_syntax / "
                            f"video_transfer_syntax to one it takes", peer=exc.peer) from exc
        raise


def _find(pacs: PacsClient, procedure: Procedure, series: str) -> set[str]:
    found = pacs.find("IMAGE", study_instance_uid=procedure.study_instance_uid, series_instance_uid=series,
                      limit=MAX_CLIP_FRAMES)
    return set(found["sop_instance_uid"].drop_nulls().to_list()) if "sop_instance_uid" in found.columns \
        else set()


def capture_procedure(pacs: PacsClient, procedure: Procedure, frames: Iterable[Frame], *,
                      profile: VendorProfile | None = None, stills: int | Sequence[int] = 0,
                      clip: bool = True, seconds: float | None = None, max_frames: int = MAX_CLIP_FRAMES,
                      fps: float | None = None, verify: bool = True,
                      when: dt.datetime | None = None) -> Capture:
    """Capture stills and a clip of a procedure, store them to the PACS and find them again.

    Parameters
    ----------
    pacs : PacsClient
        Where the instances go (C-STORE) and are looked for (C-FIND).
    procedure : Procedure
        The worklist item (:func:`kit.endoscopy.procedures.find_procedure`):
        patient, study and accession of every instance.
    frames : iterable of Frame
        Decoded frames in order (a frame source, a list).
    profile : VendorProfile, optional
        Transfer syntaxes, station AE title, character set (default ``generic``).
    stills : int or sequence of int
        How many stills, evenly spaced over the capture, or the
        :attr:`Frame.index` values to keep as stills.
    clip : bool
        Also store the whole capture as a clip.
    seconds : float, optional
        Stop after this much stream time; default: until ``frames`` ends.
    max_frames : int
        Stop after this many frames at most (bounds a live source).
    fps : float, optional
        The clip's frame rate; default from the frames' timestamps (else the profile's).
    verify : bool
        Find every stored instance again by C-FIND (else ``found`` stays False).
    when : datetime, optional
        Acquisition time written into the instances (default now).

    Returns
    -------
    Capture

    Raises
    ------
    kit.errors.InvalidInputError
        No frames, a frame that is not a Frame or not RGB uint8, frames of
        different sizes, a still index that never arrived, nothing to store.
    kit.errors.VerificationError
        A built instance does not read back (or the clip does not decode to
        the captured frames), or a stored instance is not found by C-FIND.
    kit.errors.DicomError
        The PACS refuses the SOP class or transfer syntax (the message says
        which and what to set), or answers a failure status.
    kit.errors.PeerError
        The PACS cannot be reached or drops the association.
    """
    started = time.perf_counter()
    prof = profile or vendor_profile("generic")
    if not isinstance(procedure, Procedure):
        raise InvalidInputError(f"procedure must be a Procedure, not {type(procedure).__name__}",
                                source="capture")
    wanted: set[int] | None = None
    picker: StillPicker | None = None
    if isinstance(stills, bool):
        raise InvalidInputError("stills: a count or frame indices, not a bool", source="capture")
    if isinstance(stills, int):
        picker = StillPicker(stills)
    else:
        wanted = {int(i) for i in stills}
    if not clip and not wanted and (picker is None or picker.count == 0):
        raise InvalidInputError("nothing to capture: ask for stills or a clip", source="capture")
    head: list[Frame] = []
    kept: list[Frame] = []
    indices: list[int] = []
    encoder: ClipEncoder | None = None
    stamps: list[float] = []
    try:
        for frame in collect(frames, seconds=seconds, max_frames=max_frames):
            indices.append(frame.index)
            stamps.append(frame.timestamp)
            if picker is not None:
                picker.offer(frame)
            elif wanted is not None and frame.index in wanted:
                kept.append(frame)
            if not clip:
                continue
            if encoder is None:  # the rate comes from the first frames' timestamps
                head.append(frame)
                if len(head) < 3:
                    continue
                encoder = ClipEncoder(fps or _fps(stamps, prof.frame_rate),
                                      transfer_syntax=prof.video_transfer_syntax, max_frames=max_frames)
                for f in head:
                    encoder.add(f)
                head = []
            else:
                encoder.add(frame)
        if not indices:
            raise InvalidInputError("the source gave no frames", source="capture")
        if clip and encoder is None:
            encoder = ClipEncoder(fps or _fps(stamps, prof.frame_rate),
                                  transfer_syntax=prof.video_transfer_syntax, max_frames=max_frames)
            for f in head:
                encoder.add(f)
        stream = encoder.finish() if encoder is not None else b""
    finally:
        if encoder is not None:
            encoder.close()
    if picker is not None:
        kept = picker.picked()
    if wanted is not None and {f.index for f in kept} != wanted:
        missing = sorted(wanted - {f.index for f in kept})
        raise InvalidInputError(f"still frame(s) {missing[:5]} never arrived (frames "
                                f"{indices[0]}-{indices[-1]} were captured)", source="capture")
    when = when or dt.datetime.now()
    still_series, clip_series = str(generate_uid()), str(generate_uid())
    datasets: list[Dataset] = []
    instances: list[CapturedInstance] = []
    for n, frame in enumerate(kept, start=1):
        ds = still_dataset(frame, procedure, prof, series_instance_uid=still_series, instance_number=n,
                           when=when)
        datasets.append(ds)
        instances.append(CapturedInstance("still", str(ds.SOPInstanceUID), str(ds.SOPClassUID),
                                          str(ds.file_meta.TransferSyntaxUID), still_series, (frame.index,)))
    clip_uid: str | None = None
    if encoder is not None:
        fps_used = float(encoder.fps)
        measured = _fps(stamps, fps_used)
        ds = video_dataset(stream, procedure, prof, frames=encoder.frames, width=encoder.width,
                           height=encoder.height, frame_time_ms=1000.0 / measured,
                           series_instance_uid=clip_series, when=when)
        clip_uid = str(ds.SOPInstanceUID)
        datasets.append(ds)
        instances.append(CapturedInstance("clip", clip_uid, str(ds.SOPClassUID),
                                          str(ds.file_meta.TransferSyntaxUID), clip_series, tuple(indices)))
    _check(datasets, clip_uid, encoder.frames if encoder is not None else 0)
    _store(pacs, datasets)
    if verify:
        found: set[str] = set()
        for series in {i.series_instance_uid for i in instances}:
            found |= _find(pacs, procedure, series)
        missing_uids = [i.sop_instance_uid for i in instances if i.sop_instance_uid not in found]
        if missing_uids:
            raise VerificationError(f"{len(missing_uids)} stored instance(s) not found again by C-FIND",
                                    differences=[f"{u} not found" for u in missing_uids[:10]])
        instances = [dataclasses.replace(i, found=True) for i in instances]
    return Capture(procedure, tuple(instances), {str(d.SOPInstanceUID): d for d in datasets},
                   round(time.perf_counter() - started, 4))
