"""Captured frames as DICOM: VL Endoscopic stills and a Video Endoscopic clip (pure).

:class:`Procedure` is one worklist item (the patient, the study, the accession
number the tower was scheduled for). The builders turn decoded
:class:`~kit.endoscopy.frame.Frame` objects into instances of that study:

- :func:`still_dataset`: one frame as a VL Endoscopic Image Storage instance
  (1.2.840.10008.5.1.4.1.1.77.1.1), JPEG Baseline (YBR_FULL_422, Pillow's
  encoder) or Explicit VR Little Endian (RGB), as the vendor profile says;
- :class:`ClipEncoder` and :func:`video_dataset`: frames encoded with PyAV's
  libx264 into an H.264 High Profile elementary stream (Annex B, no B-frames),
  encapsulated (one fragment, empty Basic Offset Table, PS3.5 A.4.11) as a Video
  Endoscopic Image Storage instance (1.2.840.10008.5.1.4.1.1.77.1.1.1) in the
  MPEG-4 AVC/H.264 High Profile / Level 4.1 (1.2.840.10008.1.2.4.102) or
  Level 4.2 2D (…104) transfer syntax;
- :func:`decode_clip`: the frames of such an instance, decoded by PyAV (how
  a stored clip is checked);
- :class:`StillPicker`: N evenly spaced stills from a stream of unknown
  length in bounded memory.

Nothing here opens a socket or a file: the encoders write into memory. The
IODs (PS3.3 A.32.1 VL Endoscopic Image, A.32.5 Video Endoscopic Image) are
built attribute by attribute with pydicom because highdicom has no VL
endoscopic class; JPEG is Pillow's, H.264 PyAV's (FFmpeg's libx264),
encapsulation pydicom's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from kit.endoscopy.frame import Frame
from kit.endoscopy.vendors import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    MPEG4_HP41,
    MPEG4_HP42_2D,
    VIDEO_ENDOSCOPIC_IMAGE_STORAGE,
    VL_ENDOSCOPIC_IMAGE_STORAGE,
    VendorProfile,
)
from kit.errors import InvalidInputError, KitError

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "MAX_CLIP_BYTES",
    "MAX_CLIP_FRAMES",
    "ClipEncoder",
    "Procedure",
    "StillPicker",
    "decode_clip",
    "still_dataset",
    "video_dataset",
]

#: kit's Implementation Class UID in the file meta of what it captures.
IMPLEMENTATION_CLASS_UID: Final = "1.2.826.0.1.3680043.8.498.1"
#: Largest encoded clip (one fragment must stay under 4 GiB; a PACS wants far less).
MAX_CLIP_BYTES: Final = 1 << 30
#: Most frames in one clip (10 minutes at 60 fps).
MAX_CLIP_FRAMES: Final = 36_000
#: Largest frame side accepted (DICOM Rows/Columns are 16-bit).
MAX_SIDE: Final = 8192

# H.264 level limits (ITU-T H.264 Table A-1): max frame size and rate in 16x16 macroblocks.
_LEVELS: Final = {MPEG4_HP41: ("4.1", 8192, 245_760), MPEG4_HP42_2D: ("4.2", 8704, 522_240)}


def _bad(message: str, source: str = "capture") -> InvalidInputError:
    return InvalidInputError(message, source=source)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


@dataclasses.dataclass(frozen=True)
class Procedure:
    """One scheduled (or performed) endoscopy: who, which study, which accession.

    Build it from a worklist row (:meth:`from_row`, the columns of
    :func:`kit.dicom.query.worklist_to_frame`) or a worklist item
    (:meth:`from_dataset`). ``patient_id`` and ``study_instance_uid`` are
    required: captured instances go into that study of that patient.
    """

    patient_id: str
    study_instance_uid: str
    accession_number: str | None = None
    patient_name: str | None = None
    patient_birth_date: dt.date | None = None
    patient_sex: str | None = None
    requested_procedure_id: str | None = None
    description: str | None = None
    station_aet: str | None = None
    referring_physician_name: str | None = None
    scheduled: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.patient_id, str) or not self.patient_id.strip() or len(self.patient_id) > 64:
            raise _bad(f"patient_id: 1-64 characters, not {self.patient_id!r}", "Procedure")
        uid = self.study_instance_uid
        if not isinstance(uid, str) or len(uid) > 64 or not all(p.isdigit() and (p == "0" or p[0] != "0")
                                                                  for p in uid.split(".")):
            raise _bad(f"study_instance_uid: not a DICOM UID: {uid!r}", "Procedure")
        if self.accession_number is not None and len(self.accession_number) > 16:
            raise _bad("accession_number: at most 16 characters (SH)", "Procedure")
        if self.patient_sex not in (None, "M", "F", "O"):
            raise _bad(f"patient_sex: M, F or O, not {self.patient_sex!r}", "Procedure")
        for name in ("patient_name", "description", "referring_physician_name", "requested_procedure_id",
                     "station_aet"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > 324
                                      or any(ord(c) < 32 for c in value)):
                raise _bad(f"{name}: text without control characters, not {value!r}", "Procedure")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Procedure:
        """A procedure from a worklist (or study-level C-FIND) frame row, e.g. ``df.row(0, named=True)``."""
        date = row.get("scheduled_procedure_step_start_date")
        time = row.get("scheduled_procedure_step_start_time")
        scheduled = dt.datetime.combine(date, time or dt.time()) if isinstance(date, dt.date) else None
        birth = row.get("patient_birth_date")
        try:
            return cls(
                patient_id=str(row.get("patient_id") or ""),
                study_instance_uid=str(row.get("study_instance_uid") or ""),
                accession_number=_text(row.get("accession_number")),
                patient_name=_text(row.get("patient_name")),
                patient_birth_date=birth if isinstance(birth, dt.date) else None,
                patient_sex=_text(row.get("patient_sex")),
                requested_procedure_id=_text(row.get("requested_procedure_id")),
                description=_text(row.get("requested_procedure_description")
                                  or row.get("scheduled_procedure_step_description")
                                  or row.get("study_description")),
                station_aet=_text(row.get("scheduled_station_ae_title")),
                referring_physician_name=_text(row.get("referring_physician_name")),
                scheduled=scheduled)
        except InvalidInputError as exc:
            raise _bad(f"the worklist item cannot be captured into: {exc}", "worklist") from exc

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Procedure:
        """A procedure from a Modality Worklist item (a pydicom Dataset)."""
        from kit.dicom.query import worklist_to_frame

        frame = worklist_to_frame([ds])
        if frame.height == 0:  # pragma: no cover - one item always gives a row
            raise _bad("empty worklist item", "worklist")
        return cls.from_row(frame.row(0, named=True))


# -- shared header ------------------------------------------------------------------------------
def _charset(procedure: Procedure, wanted: str) -> str:
    """The profile's character set if every text fits it, else UTF-8 (ISO_IR 192)."""
    codec = {"ISO_IR 100": "latin-1", "ISO_IR 6": "ascii", "": "ascii"}.get(wanted)
    texts = [procedure.patient_name, procedure.description, procedure.referring_physician_name,
             procedure.patient_id]
    if codec is None:
        return wanted
    try:
        for t in texts:
            if t:
                t.encode(codec)
    except UnicodeEncodeError:
        return "ISO_IR 192"
    return wanted


def _header(procedure: Procedure, profile: VendorProfile, *, sop_class: str, sop_instance_uid: str,
            transfer_syntax: str, series_instance_uid: str, series_number: int, instance_number: int,
            when: dt.datetime, series_description: str) -> Dataset:
    if not isinstance(procedure, Procedure):
        raise _bad(f"procedure must be a Procedure, not {type(procedure).__name__}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = "KIT_ENDO"
    meta.SourceApplicationEntityTitle = (procedure.station_aet or profile.station_aet)[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = _charset(procedure, profile.character_set)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    da, tm = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    ds.InstanceCreationDate, ds.InstanceCreationTime = da, tm
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), UID(sop_instance_uid)
    when_study = procedure.scheduled or when
    ds.StudyDate, ds.StudyTime = when_study.strftime("%Y%m%d"), when_study.strftime("%H%M%S")
    ds.SeriesDate, ds.SeriesTime = da, tm
    ds.ContentDate, ds.ContentTime = da, tm
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f")
    ds.AccessionNumber = procedure.accession_number or ""
    ds.Modality = profile.modality
    ds.Manufacturer = "kit"
    ds.StationName = (procedure.station_aet or profile.station_aet)[:16]
    ds.ReferringPhysicianName = procedure.referring_physician_name or ""
    ds.StudyDescription = (procedure.description or "")[:64]
    ds.SeriesDescription = series_description[:64]
    ds.PatientName = procedure.patient_name or ""
    ds.PatientID = procedure.patient_id
    birth = procedure.patient_birth_date
    ds.PatientBirthDate = birth.strftime("%Y%m%d") if birth else ""
    ds.PatientSex = procedure.patient_sex or ""
    ds.StudyInstanceUID = UID(procedure.study_instance_uid)
    ds.SeriesInstanceUID = UID(series_instance_uid)
    ds.StudyID = (procedure.requested_procedure_id or "")[:16]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.AcquisitionContextSequence = []
    ds.Laterality = ""
    return ds


def _check_image(image: Any, where: str) -> NDArray[np.uint8]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise _bad(f"{where}: a uint8 (height, width, 3) RGB image, not "
                   f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
    h, w = image.shape[:2]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise _bad(f"{where}: {w}x{h} pixels is outside 1-{MAX_SIDE} per side")
    return image


# -- stills -------------------------------------------------------------------------------------
def _jpeg(image: NDArray[np.uint8], quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # subsampling=1 is 4:2:2 (what YBR_FULL_422 says); baseline, not progressive
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality, subsampling=1,
                                            optimize=False, progressive=False)
    return buf.getvalue()


def still_dataset(frame: Frame, procedure: Procedure, profile: VendorProfile, *,
                  series_instance_uid: str, instance_number: int = 1, series_number: int = 10,
                  sop_instance_uid: str | None = None, transfer_syntax: str | None = None,
                  when: dt.datetime | None = None, quality: int = 90) -> Dataset:
    """One frame as a VL Endoscopic Image Storage instance of the procedure's study.

    Parameters
    ----------
    frame : Frame
        The decoded frame (RGB).
    procedure : Procedure
        Patient, study and accession number (from the worklist).
    profile : VendorProfile
        Modality, station AE title, character set and the still transfer syntax.
    series_instance_uid : str
        The capture's series (one series per capture session).
    instance_number, series_number : int
    sop_instance_uid : str, optional
        Default: a new UID.
    transfer_syntax : str, optional
        JPEG Baseline (1.2.840.10008.1.2.4.50) or Explicit VR Little Endian
        (1.2.840.10008.1.2.1); default ``profile.still_transfer_syntax``.
    when : datetime, optional
        Acquisition time (default now, local time).
    quality : int
        JPEG quality, 1-95.

    Returns
    -------
    pydicom.Dataset
        With file meta; ready for C-STORE or ``dcmwrite``.

    Raises
    ------
    kit.errors.InvalidInputError
        Not a Frame, an image that is not RGB uint8, an unsupported transfer syntax.
    """
    if not isinstance(frame, Frame):
        raise _bad(f"a Frame, not {type(frame).__name__}")
    image = _check_image(frame.image, f"frame {frame.index}")
    syntax = transfer_syntax or profile.still_transfer_syntax
    if syntax not in (JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN):
        raise _bad(f"stills are written in JPEG Baseline or Explicit VR Little Endian, not {syntax}")
    if not 1 <= int(quality) <= 95:
        raise _bad(f"JPEG quality is 1-95, not {quality}")
    ds = _header(procedure, profile, sop_class=profile.still_sop_class,
                 sop_instance_uid=sop_instance_uid or generate_uid(), transfer_syntax=syntax,
                 series_instance_uid=series_instance_uid, series_number=series_number,
                 instance_number=instance_number, when=when or dt.datetime.now(),
                 series_description="ENDOSCOPY STILLS")
    if ds.SOPClassUID != VL_ENDOSCOPIC_IMAGE_STORAGE:
        raise _bad(f"stills are VL Endoscopic Image Storage, the profile says {ds.SOPClassUID}")
    h, w = image.shape[:2]
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if syntax == JPEG_BASELINE:
        jpeg = _jpeg(image, int(quality))
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{h * w * 3 / len(jpeg):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True  # encapsulated: what an encoder must write
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(image).tobytes()
        ds["PixelData"].VR = "OB"
    return ds


class StillPicker:
    """Keeps about ``count`` evenly spaced frames of a stream of unknown length, in bounded memory.

    Frames are offered in order; the picker keeps every ``stride``-th one and,
    when it holds ``4 * count``, drops every other and doubles the stride, so
    it never holds more than ``4 * count`` frames. :meth:`picked` returns
    ``count`` of them spread evenly over the stream (all of them when fewer arrived).
    """

    def __init__(self, count: int) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
            raise _bad(f"stills: 0-1000, not {count!r}")
        self.count = count
        self._stride = 1
        self._seen = 0
        self._kept: list[Frame] = []

    def offer(self, frame: Frame) -> None:
        """Consider one frame (frames must come in stream order)."""
        if self.count == 0:
            return
        if self._seen % self._stride == 0:
            self._kept.append(frame)
            if len(self._kept) >= 4 * self.count:
                self._kept = self._kept[::2]
                self._stride *= 2
        self._seen += 1

    def picked(self) -> list[Frame]:
        """Up to ``count`` frames, evenly spaced over what was offered, in order."""
        kept = self._kept
        if len(kept) <= self.count:
            return list(kept)
        step = len(kept) / self.count
        return [kept[int(i * step + step / 2)] for i in range(self.count)]


# -- the clip -----------------------------------------------------------------------------------
class ClipEncoder:
    """Frames to an H.264 High Profile elementary stream (PyAV/libx264), in memory.

    Parameters
    ----------
    fps : float
        Frame rate written into the stream (and the DICOM Frame Time).
    transfer_syntax : str
        1.2.840.10008.1.2.4.102 (Level 4.1) or …104 (Level 4.2, 2D): the
        frame size and rate must fit that level.
    max_frames, max_bytes : int
        Bounds: more frames or a bigger stream is an :class:`~kit.errors.InvalidInputError`.

    Use :meth:`add` for every frame in order, then :meth:`finish`. No
    B-frames and no look-ahead (``tune=zerolatency``): every frame added is
    one frame decoded.
    """

    def __init__(self, fps: float, *, transfer_syntax: str = MPEG4_HP41, max_frames: int = MAX_CLIP_FRAMES,
                 max_bytes: int = MAX_CLIP_BYTES, crf: int = 23) -> None:
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) \
                or not 1 <= fps <= 240:
            raise _bad(f"fps: 1-240, not {fps!r}")
        if transfer_syntax not in _LEVELS:
            raise _bad(f"clips are written in {sorted(_LEVELS)}, not {transfer_syntax!r}")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.transfer_syntax = transfer_syntax
        self.max_frames, self.max_bytes, self.crf = int(max_frames), int(max_bytes), int(crf)
        self.frames = 0
        self.width = self.height = 0
        self._buffer = io.BytesIO()
        self._container: Any = None
        self._stream: Any = None
        self._done = False

    def _open(self, width: int, height: int) -> None:
        import av

        level, max_fs, max_mbps = _LEVELS[self.transfer_syntax]
        if width % 2 or height % 2:
            raise _bad(f"H.264 4:2:0 needs even frame sizes, not {width}x{height}")
        mbs = math.ceil(width / 16) * math.ceil(height / 16)
        if width > 1920 or height > 1080 or mbs > max_fs or mbs * float(self.fps) > max_mbps:
            raise _bad(f"{width}x{height} at {float(self.fps):g} fps exceeds H.264 level {level} "
                       f"({self.transfer_syntax}); Level 4.2 ({MPEG4_HP42_2D}) allows up to 1080p60")
        try:
            self._container = av.open(self._buffer, mode="w", format="h264")
            stream = self._container.add_stream("libx264", rate=self.fps)
        except (av.FFmpegError, ValueError) as exc:  # no libx264 in this PyAV build
            raise KitError(f"PyAV cannot encode H.264 here (libx264 missing?): {exc}") from exc
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"profile": "high", "level": level, "preset": "veryfast", "tune": "zerolatency",
                          "crf": str(self.crf), "threads": "1", "g": str(max(1, round(float(self.fps))))}
        self._stream = stream
        self.width, self.height = width, height

    def add(self, frame: Frame) -> None:
        """Encode one frame (all frames must have the first one's size)."""
        if self._done:
            raise _bad("the clip is finished")
        if not isinstance(frame, Frame):
            raise _bad(f"a Frame, not {type(frame).__name__}")
        image = _check_image(frame.image, f"frame {frame.index}")
        h, w = image.shape[:2]
        if self._stream is None:
            self._open(w, h)
        elif (w, h) != (self.width, self.height):
            raise _bad(f"frame {frame.index} is {w}x{h}, the clip is {self.width}x{self.height}")
        if self.frames >= self.max_frames:
            raise _bad(f"a clip holds at most {self.max_frames} frames")
        import av

        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        video.pts = self.frames
        self._mux(self._stream.encode(video))
        self.frames += 1

    def _mux(self, packets: Iterable[Any]) -> None:
        for packet in packets:
            self._container.mux(packet)
        if self._buffer.tell() > self.max_bytes:
            raise _bad(f"the encoded clip exceeds {self.max_bytes} bytes")

    def finish(self) -> bytes:
        """Flush the encoder; the whole elementary stream."""
        if self._stream is None:
            raise _bad("a clip needs at least one frame")
        if not self._done:
            self._mux(self._stream.encode(None))
            self._container.close()
            self._done = True
        return self._buffer.getvalue()

    def close(self) -> None:
        """Drop the encoder without finishing (after an error)."""
        if self._container is not None and not self._done:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing a half-written in-memory stream; nothing to keep
                pass
            self._done = True


def video_dataset(stream: bytes, procedure: Procedure, profile: VendorProfile, *, frames: int,
                  width: int, height: int, frame_time_ms: float, series_instance_uid: str,
                  instance_number: int = 1, series_number: int = 11, sop_instance_uid: str | None = None,
                  transfer_syntax: str | None = None, when: dt.datetime | None = None) -> Dataset:
    """An encoded H.264 stream as a Video Endoscopic Image Storage instance of the procedure's study.

    Parameters
    ----------
    stream : bytes
        The H.264 elementary stream (:meth:`ClipEncoder.finish`).
    procedure, profile
        As for :func:`still_dataset`; ``profile.video_transfer_syntax`` is the default syntax.
    frames, width, height : int
        Number of frames and their size (NumberOfFrames, Columns, Rows).
    frame_time_ms : float
        Nominal time between frames (Frame Time, ms).
    series_instance_uid, instance_number, series_number, sop_instance_uid, when
        As for :func:`still_dataset`.

    Returns
    -------
    pydicom.Dataset
        The encapsulated stream as one fragment after an empty Basic Offset Table.

    Raises
    ------
    kit.errors.InvalidInputError
        Empty stream, no frames, an unsupported transfer syntax or bad sizes.
    """
    syntax = transfer_syntax or profile.video_transfer_syntax
    if syntax not in _LEVELS:
        raise _bad(f"clips are written in {sorted(_LEVELS)}, not {syntax!r}")
    if not isinstance(stream, (bytes, bytearray)) or not stream:
        raise _bad("an empty video stream")
    if len(stream) > MAX_CLIP_BYTES:
        raise _bad(f"the video stream exceeds {MAX_CLIP_BYTES} bytes")
    if not 1 <= frames <= MAX_CLIP_FRAMES or not (1 <= width <= 1920 and 1 <= height <= 1080):
        raise _bad(f"{frames} frames of {width}x{height} is not a clip kit writes")
    if not math.isfinite(frame_time_ms) or not 0 < frame_time_ms <= 60_000:
        raise _bad(f"frame_time_ms: a positive number of milliseconds, not {frame_time_ms!r}")
    ds = _header(procedure, profile, sop_class=profile.video_sop_class,
                 sop_instance_uid=sop_instance_uid or generate_uid(), transfer_syntax=syntax,
                 series_instance_uid=series_instance_uid, series_number=series_number,
                 instance_number=instance_number, when=when or dt.datetime.now(),
                 series_description="ENDOSCOPY VIDEO")
    if ds.SOPClassUID != VIDEO_ENDOSCOPIC_IMAGE_STORAGE:
        raise _bad(f"clips are Video Endoscopic Image Storage, the profile says {ds.SOPClassUID}")
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = f"{frame_time_ms:.4f}"[:16]
    ds.CineRate = max(1, round(1000.0 / frame_time_ms))
    ds.RecommendedDisplayFrameRate = ds.CineRate
    ds.StartTrim, ds.StopTrim = 1, frames
    ds.ActualFrameDuration = max(1, round(frame_time_ms))
    ds.PreferredPlaybackSequencing = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{height * width * 3 * frames / len(stream):.2f}"
    ds.LossyImageCompressionMethod = "ISO_14496_10"
    ds.PixelData = encapsulate([bytes(stream)], has_bot=False)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def decode_clip(ds: Dataset, *, max_frames: int = MAX_CLIP_FRAMES) -> list[NDArray[np.uint8]]:
    """The frames of a Video Endoscopic (H.264) instance, decoded by PyAV as RGB arrays.

    Raises
    ------
    kit.errors.DicomFileError
        Not an encapsulated H.264 instance, or the stream does not decode.
    """
    from pydicom.encaps import generate_fragments

    from kit.errors import DicomFileError

    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in _LEVELS and syntax not in ("1.2.840.10008.1.2.4.103",):
        raise DicomFileError(f"not an H.264 video instance (transfer syntax {syntax or 'none'})",
                             source="decode_clip")
    try:
        data = b"".join(generate_fragments(ds.PixelData))
    except (AttributeError, ValueError, TypeError) as exc:
        raise DicomFileError(f"no encapsulated pixel data: {exc}", source="decode_clip") from exc
    import av

    out: list[NDArray[np.uint8]] = []
    try:
        with av.open(io.BytesIO(data), mode="r", format="h264") as container:
            for video in container.decode(video=0):
                if len(out) >= max_frames:
                    raise DicomFileError(f"more than {max_frames} frames", source="decode_clip")
                out.append(np.asarray(video.to_ndarray(format="rgb24"), dtype=np.uint8))
    except av.FFmpegError as exc:
        raise DicomFileError(f"the H.264 stream does not decode: {exc}", source="decode_clip") from exc
    if not out:
        raise DicomFileError("the H.264 stream holds no frame", source="decode_clip")
    return out
