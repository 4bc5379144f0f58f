"""Synthetic endoscopy for the sample cohort: VL Endoscopic stills and a short video clip.

For every performed endoscopy (ES) study of :mod:`kit.examples.cohort`:

- :data:`STILLS` VL Endoscopic Image Storage instances (RGB 320x240, JPEG
  Baseline, YBR_FULL_422) in the DICOM layout
  ``<out>/dicom/<MRN>/<study key>/1/<instance:04d>.dcm``;
- one clip ``<out>/endoscopy/<study key>.mp4`` (H.264 via PyAV's libx264,
  mpeg4 if that encoder is missing; :data:`CLIP_SECONDS` s at :data:`CLIP_FPS`
  fps, 320x240) and a JSON sidecar ``<study key>.json`` naming the study
  (``patient_id``, ``accession_number``, ``study_instance_uid``, ...).

The frames are a colon-like (or stomach-like) lumen with haustral folds,
a mucosal texture seeded from the MRN and a polyp-like blob, drawn by hand
with numpy (no library makes such frames). JPEG encoding is pillow's, DICOM
encapsulation pydicom's, video encoding and muxing PyAV's. The x264 encoder
runs single-threaded, without macroblock-tree rate control (which made the
bytes vary between runs), and the muxer writes no creation time, so a clip's
bytes are reproducible with the same PyAV build; the manifest also records a
hash of the decoded frames, which is what :func:`kit.examples.check` compares
when the bytes differ (another PyAV/x264 build).
"""

from __future__ import annotations

import datetime as dt
import io
import json
from fractions import Fraction
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, VLEndoscopicImageStorage

from kit.examples.cohort import ENDOSCOPY_AET, Study, studies
from kit.examples.dicom import base_dataset, instance_path, rng_for, write_dataset

__all__ = [
    "CLIP_FPS",
    "CLIP_SECONDS",
    "HEIGHT",
    "STILLS",
    "WIDTH",
    "clip_codec",
    "clip_frames",
    "clip_path",
    "frame",
    "generate",
    "still_datasets",
]

WIDTH, HEIGHT = 320, 240
STILLS = 4
CLIP_FPS = 12
CLIP_SECONDS = 3
_STILL_TIMES = (0.0, 0.8, 1.6, 2.4)  # seconds into the clip where each still is taken
_JPEG_QUALITY = 85


def clip_path(out_dir: Path, study: Study) -> Path:
    """``<out>/endoscopy/<study key>.mp4``."""
    return Path(out_dir) / "endoscopy" / f"{study.key}.mp4"


def _texture(study: Study) -> NDArray[np.float64]:
    """Low-frequency mucosal texture in [0, 1], fixed per study (seeded from the MRN)."""
    from PIL import Image

    coarse = rng_for(study.mrn, "endoscopy", "texture").random((HEIGHT // 16, WIDTH // 16))
    img = Image.fromarray(np.uint8(coarse * 255)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float64) / 255.0


def frame(study: Study, t: float, texture: NDArray[np.float64] | None = None) -> NDArray[np.uint8]:
    """The synthetic endoscopic view of ``study`` at time ``t`` seconds, ``uint8 [240, 320, 3]`` RGB.

    Parameters
    ----------
    study : Study
        An ES study; colonoscopies are pink with ring folds, gastroscopies redder.
    t : float
        Time into the clip; the camera advances and the lumen drifts with it.
    texture : ndarray or None
        The study's texture (computed if omitted; pass it to draw many frames fast).
    """
    tex = _texture(study) if texture is None else texture
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    cx = WIDTH / 2 + 24 * np.sin(0.7 * t)
    cy = HEIGHT / 2 + 14 * np.cos(0.5 * t)
    d = np.hypot(x - cx, y - cy)
    theta = np.arctan2(y - cy, x - cx)
    colon = study.body_part == "COLON"
    base = np.array([214, 120, 104] if colon else [204, 92, 82], dtype=np.float64)
    folds = 0.5 + 0.5 * np.sin(9.0 * np.log1p(d / 12.0) - 3.0 * t + 0.4 * np.sin(3 * theta))
    shade = np.clip(d / 150.0, 0.06, 1.0) ** 0.7
    light = shade * (0.72 + 0.22 * folds) * (0.85 + 0.3 * (tex - 0.5))
    rgb = base[None, None, :] * light[..., None]
    # vessels: thin darker-red streaks from the texture's level lines
    vessels = np.exp(-(((tex * 14.0) % 1.0 - 0.5) ** 2) / 0.004) * (d > 40)
    rgb *= (1.0 - 0.18 * vessels)[..., None] * np.array([1.0, 0.8, 0.85])[None, None, :]
    # the polyp: a raised blob at a fixed place in the lumen wall that grows as the camera advances
    px, py = cx + 70 - 6 * t, cy + 30 + 4 * t
    pr = 16.0 + 5.0 * t
    blob = np.clip(1.0 - np.hypot(x - px, y - py) / pr, 0.0, 1.0)
    dome = np.sqrt(blob)
    polyp = np.array([236, 150, 122] if colon else [228, 130, 110], dtype=np.float64)
    rgb = rgb * (1 - dome[..., None]) + polyp[None, None, :] * (dome * (0.75 + 0.25 * dome))[..., None]
    # specular highlights: on fold crests and on the polyp's top
    spec = np.clip((folds - 0.97) / 0.03, 0, 1) * (tex > 0.62) * (d > 30)
    spec = np.maximum(spec, np.clip((blob - 0.8) / 0.2, 0, 1) ** 2)
    rgb = rgb + (255.0 - rgb) * spec[..., None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def clip_frames(study: Study) -> list[NDArray[np.uint8]]:
    """All frames of the study's clip, ``CLIP_FPS * CLIP_SECONDS`` RGB images."""
    tex = _texture(study)
    return [frame(study, i / CLIP_FPS, tex) for i in range(CLIP_FPS * CLIP_SECONDS)]


def _jpeg(rgb: NDArray[np.uint8]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # subsampling=1 is 4:2:2, what DICOM's YBR_FULL_422 describes
    Image.fromarray(rgb).save(buf, format="JPEG", quality=_JPEG_QUALITY, subsampling=1, optimize=False)
    return buf.getvalue()


def still_datasets(study: Study) -> list[Dataset]:
    """The VL Endoscopic Image Storage datasets (JPEG Baseline) of one performed ES study."""
    if study.modality != "ES" or study.scheduled:
        raise ValueError(f"{study.key} is not a performed endoscopy study")
    tex = _texture(study)
    start = dt.datetime.combine(study.date, study.time)
    out = []
    for k, t in enumerate(_STILL_TIMES[:STILLS]):
        taken = start + dt.timedelta(seconds=60 + 20 * k)
        ds = base_dataset(study, sop_class_uid=VLEndoscopicImageStorage, series_number=1,
                          instance_number=k + 1, series_description=f"{study.description} STILLS",
                          transfer_syntax=JPEGBaseline8Bit, content_time=taken.time())
        ds.file_meta.SourceApplicationEntityTitle = ENDOSCOPY_AET
        ds.StationName = ENDOSCOPY_AET
        ds.AcquisitionDateTime = taken.strftime("%Y%m%d%H%M%S")
        ds.AcquisitionContextSequence = []
        ds.PatientOrientation = ""
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.Rows, ds.Columns = HEIGHT, WIDTH
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        jpeg = _jpeg(frame(study, t, tex))
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{HEIGHT * WIDTH * 3 / len(jpeg):.2f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        out.append(ds)
    return out


def clip_codec() -> str:
    """The video encoder used for clips: ``libx264`` when PyAV has it, else ``mpeg4``."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # PyAV raises UnknownCodecError (or ValueError in old versions)
        return "mpeg4"
    return "libx264"


def _encode_clip(frames: list[NDArray[np.uint8]], codec: str) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = cast("av.VideoStream", container.add_stream(codec, rate=CLIP_FPS))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            # single-threaded and no macroblock-tree rate control: with mbtree on, x264's
            # output varies from run to run (decoded frames equal, bytes not)
            stream.options = {"preset": "medium", "crf": "26", "threads": "1", "g": str(CLIP_FPS),
                              "x264-params": "mbtree=0"}
        else:
            stream.options = {"qscale": "4", "threads": "1", "g": str(CLIP_FPS)}
        stream.time_base = Fraction(1, CLIP_FPS)
        for index, rgb in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            video_frame.pts = index
            video_frame.time_base = Fraction(1, CLIP_FPS)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def generate(out_dir: Path) -> list[Path]:
    """Write the stills, clip and sidecar of every performed ES study.

    Parameters
    ----------
    out_dir : Path
        The samples root.

    Returns
    -------
    list of Path
        The DICOM stills, then each study's ``.mp4`` and ``.json``.
    """
    written: list[Path] = []
    codec = clip_codec()
    for study in studies(modality="ES", scheduled=False):
        for ds in still_datasets(study):
            written.append(write_dataset(ds, instance_path(out_dir, study, 1, int(ds.InstanceNumber))))
        frames = clip_frames(study)
        mp4 = clip_path(out_dir, study)
        mp4.parent.mkdir(parents=True, exist_ok=True)
        mp4.write_bytes(_encode_clip(frames, codec))
        sidecar = mp4.with_suffix(".json")
        meta = {
            "patient_id": study.mrn,
            "accession_number": study.accession,
            "study_instance_uid": study.study_uid,
            "study_key": study.key,
            "modality": study.modality,
            "study_description": study.description,
            "study_datetime": dt.datetime.combine(study.date, study.time).isoformat(),
            "station_aet": ENDOSCOPY_AET,
            "clip": mp4.name,
            "codec": codec,
            "fps": CLIP_FPS,
            "frames": len(frames),
            "width": WIDTH,
            "height": HEIGHT,
        }
        sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        written += [mp4, sidecar]
    return written
