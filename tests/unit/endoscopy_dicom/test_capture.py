"""The pure builders: Procedure, VL Endoscopic stills, the H.264 Video Endoscopic clip, StillPicker."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kit.dicom.matching import worklist_items_from_cohort
from kit.dicom.query import worklist_to_frame
from kit.endoscopy.capture import (
    ClipEncoder,
    Procedure,
    StillPicker,
    decode_clip,
    still_dataset,
    video_dataset,
)
from kit.endoscopy.frame import Frame
from kit.endoscopy.vendors import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    JPEG_BASELINE,
    MPEG4_HP41,
    MPEG4_HP42_2D,
    apply_overrides,
    profile,
)
from kit.errors import DicomFileError, InvalidInputError, KitError

CLIP = Path(__file__).resolve().parents[3] / "data" / "samples" / "endoscopy" / "MRN1001-ES2.mp4"
GENERIC = profile("generic")
PROC = Procedure("MRN1001", "1.2.826.0.1.3680043.8.498.1234", accession_number="ACC100102",
                 patient_name="Moreau^Alice", patient_birth_date=dt.date(1958, 3, 14), patient_sex="F",
                 description="COLONOSCOPY", station_aet="ENDO1")


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """The sample clip decoded by a bare PyAV loop (the kit's source is not under test here)."""
    out = []
    with av.open(str(CLIP)) as container:
        for i, video in enumerate(container.decode(video=0)):
            out.append(Frame(i, float(video.time), video.to_ndarray(format="rgb24"), 0.0))
    return out


def roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


#: Type 1/2 attributes of the VL Endoscopic Image IOD's modules (PS3.3 A.32.1) kit must write.
COMMON = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "Modality",
          "SeriesInstanceUID", "SeriesNumber", "Manufacturer", "InstanceNumber", "PatientOrientation",
          "ContentDate", "ContentTime", "AcquisitionContextSequence", "ImageType", "SamplesPerPixel",
          "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
          "PixelRepresentation", "PlanarConfiguration", "LossyImageCompression", "SOPClassUID",
          "SOPInstanceUID", "PixelData")


@pytest.mark.parametrize("syntax", [JPEG_BASELINE, EXPLICIT_VR_LITTLE_ENDIAN])
def test_still_is_a_vl_endoscopic_image_of_the_procedure(frames: list[Frame], syntax: str) -> None:
    series = generate_uid()
    ds = roundtrip(still_dataset(frames[7], PROC, GENERIC, series_instance_uid=series, instance_number=2,
                                 transfer_syntax=syntax))
    missing = [k for k in COMMON if k not in ds]
    assert not missing
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1"
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID) == (
        PROC.patient_id, PROC.accession_number, PROC.study_instance_uid)
    assert (ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber) == ("ES", series, 2)
    assert ds.StationName == "ENDO1"
    assert (ds.Rows, ds.Columns) == (240, 320)
    pixels = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    if syntax == EXPLICIT_VR_LITTLE_ENDIAN:
        assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "00"
        assert np.array_equal(pixels, frames[7].image)
    else:
        assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.LossyImageCompression == "01"
        assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert np.abs(pixels.astype(int) - frames[7].image).mean() < 4


def test_the_profile_picks_the_still_syntax(frames: list[Frame]) -> None:
    raw = apply_overrides(GENERIC, {"still_transfer_syntax": EXPLICIT_VR_LITTLE_ENDIAN})
    ds = still_dataset(frames[0], PROC, raw, series_instance_uid=generate_uid())
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_VR_LITTLE_ENDIAN
    with pytest.raises(InvalidInputError, match="JPEG Baseline or Explicit VR"):
        still_dataset(frames[0], PROC, GENERIC, series_instance_uid=generate_uid(),
                      transfer_syntax="1.2.840.10008.1.2.4.90")


def test_a_name_outside_latin1_switches_to_utf8(frames: list[Frame]) -> None:
    proc = Procedure("MRN9", "1.2.3", patient_name="Дмитриев^Иван")
    ds = roundtrip(still_dataset(frames[0], proc, GENERIC, series_instance_uid=generate_uid()))
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Дмитриев^Иван"
    latin = roundtrip(still_dataset(frames[0], PROC, GENERIC, series_instance_uid=generate_uid()))
    assert latin.SpecificCharacterSet == "ISO_IR 100"


def test_clip_is_a_video_endoscopic_image_that_decodes_to_the_captured_frames(frames: list[Frame]) -> None:
    encoder = ClipEncoder(12)
    for f in frames:
        encoder.add(f)
    stream = encoder.finish()
    ds = roundtrip(video_dataset(stream, PROC, GENERIC, frames=encoder.frames, width=encoder.width,
                                 height=encoder.height, frame_time_ms=1000 / 12,
                                 series_instance_uid=generate_uid()))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.77.1.1.1"
    assert ds.file_meta.TransferSyntaxUID == MPEG4_HP41
    assert (ds.NumberOfFrames, ds.Rows, ds.Columns) == (len(frames), 240, 320)
    assert ds.PhotometricInterpretation == "YBR_PARTIAL_420"
    assert ds.LossyImageCompressionMethod == "ISO_14496_10"
    assert ds.FrameIncrementPointer == 0x00181063 and float(ds.FrameTime) == pytest.approx(83.3333, abs=1e-3)
    missing = [k for k in (*COMMON, "CineRate") if k not in ds]
    assert not missing
    decoded = decode_clip(ds)
    assert len(decoded) == len(frames)
    error = np.mean([np.abs(d.astype(int) - f.image).mean() for d, f in zip(decoded, frames, strict=True)])
    assert error < 6, error  # lossy, but the same pictures in the same order
    with av.open(io.BytesIO(stream), format="h264") as c:  # High Profile, as the transfer syntax says
        ctx = c.streams.video[0].codec_context
        assert ctx.profile == "High"


def test_clip_encoder_refuses_bad_frames() -> None:
    odd = Frame(0, 0.0, np.zeros((241, 320, 3), np.uint8))
    with pytest.raises(InvalidInputError, match="even frame sizes"):
        ClipEncoder(25).add(odd)
    enc = ClipEncoder(25)
    enc.add(Frame(0, 0.0, np.zeros((240, 320, 3), np.uint8)))
    with pytest.raises(InvalidInputError, match="the clip is 320x240"):
        enc.add(Frame(1, 0.04, np.zeros((480, 640, 3), np.uint8)))
    enc.close()
    with pytest.raises(InvalidInputError, match="exceeds H.264 level 4.1"):
        ClipEncoder(60).add(Frame(0, 0.0, np.zeros((1080, 1920, 3), np.uint8)))
    with pytest.raises(InvalidInputError, match="at least one frame"):
        ClipEncoder(25).finish()
    with pytest.raises(InvalidInputError, match="a Frame"):
        ClipEncoder(25).add(np.zeros((4, 4, 3), np.uint8))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="at most 2 frames"):
        small = ClipEncoder(25, max_frames=2)
        for i in range(3):
            small.add(Frame(i, i / 25, np.zeros((16, 16, 3), np.uint8)))
    for fps in (0, -1, float("nan"), True, 1e9):
        with pytest.raises(InvalidInputError):
            ClipEncoder(fps)


def test_level_42_allows_1080p60() -> None:
    enc = ClipEncoder(60, transfer_syntax=MPEG4_HP42_2D)
    enc.add(Frame(0, 0.0, np.zeros((1080, 1920, 3), np.uint8)))
    assert enc.finish()


def test_decode_clip_refuses_what_is_not_h264(frames: list[Frame]) -> None:
    still = roundtrip(still_dataset(frames[0], PROC, GENERIC, series_instance_uid=generate_uid()))
    with pytest.raises(DicomFileError, match="not an H.264 video"):
        decode_clip(still)
    ds = video_dataset(b"\x00\x00\x00\x01garbage" * 10, PROC, GENERIC, frames=1, width=16, height=16,
                       frame_time_ms=40, series_instance_uid=generate_uid())
    with pytest.raises(DicomFileError):
        decode_clip(roundtrip(ds))


def test_procedure_from_the_worklist_row() -> None:
    items = [i for i in worklist_items_from_cohort() if i.AccessionNumber == "ACC100102"]
    row = worklist_to_frame(items).row(0, named=True)
    p = Procedure.from_row(row)
    assert (p.patient_id, p.accession_number, p.patient_name, p.station_aet) == (
        "MRN1001", "ACC100102", "Moreau^Alice", "ENDO1")
    assert p.study_instance_uid == str(items[0].StudyInstanceUID)
    assert p.scheduled == dt.datetime(2026, 2, 3, 10, 30)
    assert Procedure.from_dataset(items[0]) == p
    with pytest.raises(InvalidInputError, match="cannot be captured into"):
        Procedure.from_row({**row, "study_instance_uid": None})


@pytest.mark.parametrize("kwargs", [
    {"patient_id": ""}, {"study_instance_uid": "1.02.3"}, {"accession_number": "A" * 17},
    {"patient_sex": "X"}, {"patient_name": "a\x00b"},
])
def test_procedure_is_valid_by_construction(kwargs: dict[str, str]) -> None:
    base = {"patient_id": "MRN1", "study_instance_uid": "1.2.3"}
    with pytest.raises(InvalidInputError):
        Procedure(**{**base, **kwargs})  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12).map(lambda n: 2 * n), st.integers(1, 12).map(lambda n: 2 * n),
       st.integers(0, 2**32 - 1))
def test_fuzz_explicit_still_is_lossless_and_clip_keeps_the_frame_count(w: int, h: int, seed: int) -> None:
    """Fast path == slow path: the uncompressed still reads back as the exact pixels; a clip of n
    random frames decodes to n frames."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(int(rng.integers(1, 5)))]
    frame = Frame(0, 0.0, images[0])
    ds = roundtrip(still_dataset(frame, PROC, GENERIC, series_instance_uid=generate_uid(),
                                 transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN))
    assert np.array_equal(ds.pixel_array.reshape(h, w, 3), images[0])
    enc = ClipEncoder(25)
    for i, img in enumerate(images):
        enc.add(Frame(i, i / 25, img))
    clip = roundtrip(video_dataset(enc.finish(), PROC, GENERIC, frames=enc.frames, width=w, height=h,
                                   frame_time_ms=40, series_instance_uid=generate_uid()))
    assert len(decode_clip(clip)) == len(images)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.integers(0, 40))
def test_fuzz_still_picker_is_bounded_ordered_and_spread(n: int, count: int) -> None:
    picker = StillPicker(count)
    peak = 0
    for i in range(n):
        picker.offer(Frame(i, i / 30, np.zeros((1, 1, 3), np.uint8)))
        peak = max(peak, len(picker._kept))
    assert peak <= max(4 * count, 0)
    picked = [f.index for f in picker.picked()]
    assert len(picked) == min(n, count)
    assert picked == sorted(set(picked))
    if count and n >= count:  # spread: no two picks closer than a third of the even spacing, none bunched
        gaps = np.diff([-0.5 * n / count, *picked, n - 0.5 * n / count])
        assert gaps.max() <= 3 * n / count + 2


@pytest.mark.parametrize("bad", [-1, 1001, True, 2.5])
def test_still_picker_count_is_checked(bad: object) -> None:
    with pytest.raises(KitError):
        StillPicker(bad)  # type: ignore[arg-type]


def test_built_instances_encode_as_encapsulated_without_a_file_round_trip(frames: list[Frame]) -> None:
    """What the DIMSE client encodes is the dataset as built (no dcmwrite first): JPEG and H.264 pixel
    data must be written with undefined length, else a PACS answers 0xC000 "needs encapsulated pixel data"."""
    from pynetdicom.dsutils import encode

    marker = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
    still = still_dataset(frames[0], PROC, GENERIC, series_instance_uid=generate_uid())
    enc = ClipEncoder(12)
    enc.add(frames[0])
    clip = video_dataset(enc.finish(), PROC, GENERIC, frames=1, width=320, height=240, frame_time_ms=83.3,
                         series_instance_uid=generate_uid())
    for ds in (still, clip):
        assert marker in encode(ds, False, True)
