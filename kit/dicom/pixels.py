"""Pixel data of a DICOM series as a volume, windowing and PNG rendering (pure: numpy, pydicom, pillow).

pydicom decodes the pixels (``Dataset.pixel_array``, including JPEG through
pillow) and applies the Modality LUT / rescale (:func:`pydicom.pixels.apply_modality_lut`);
pillow writes the PNG. Written here by hand, because no library does it in
this shape: ordering the slices of a series along the normal of the image
plane, and a VOI window to 8-bit display values from an explicit centre and
width (pydicom's ``apply_windowing`` reads the window from a dataset and
returns values in the stored range, not 0-255).

>>> from kit import examples
>>> vol = load_series(sorted(examples.study_dir("MRN1001").rglob("*.dcm")))
>>> png = to_png(window(vol.array[9], *WINDOW_PRESETS["lung"]))
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from kit.errors import DicomFileError, InvalidInputError

__all__ = ["WINDOW_PRESETS", "Volume", "Window", "load_series", "to_png", "window"]


@dataclasses.dataclass(frozen=True)
class Window:
    """A VOI window: ``center`` and ``width`` in output units of the Modality LUT (HU for CT).

    Unpacks as ``(center, width)``: ``window(a, *Window(40, 400))``.
    """

    center: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)) or self.width < 1:
            raise InvalidInputError(f"window width must be a finite number >= 1, got {self.width!r}")

    def __iter__(self) -> Iterator[float]:
        yield self.center
        yield self.width


#: Common CT windows (centre, width in HU), plus brain for MR/CT heads.
WINDOW_PRESETS: Mapping[str, Window] = MappingProxyType({
    "lung": Window(-600, 1500),
    "mediastinum": Window(50, 350),
    "soft_tissue": Window(40, 400),
    "bone": Window(400, 1800),
    "brain": Window(40, 80),
})


@dataclasses.dataclass(frozen=True, eq=False)
class Volume:
    """The pixels of one series, ordered along the slice normal.

    Attributes
    ----------
    array : numpy.ndarray
        ``float32 [slices, rows, cols]`` after the Modality LUT (HU for CT), or
        ``uint8 [slices, rows, cols, 3]`` for colour images (RGB). Read-only.
    spacing : tuple of float
        Voxel size in mm as (slice, row, column); slice spacing from the image
        positions, else SpacingBetweenSlices/SliceThickness, else 1.
    sop_instance_uids : tuple of str
        SOPInstanceUID of each slice (repeated for the frames of a multi-frame image).
    positions : tuple of float
        Position of each slice along the normal of the image plane (mm), or the
        InstanceNumber when the images carry no geometry.
    default_window : Window or None
        WindowCenter/WindowWidth of the first image, if present.
    modality, series_instance_uid : str
        From the images.
    """

    array: NDArray[np.generic]
    spacing: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...]
    positions: tuple[float, ...]
    default_window: Window | None = None
    modality: str = ""
    series_instance_uid: str = ""

    def __post_init__(self) -> None:
        a = self.array
        if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] != 3):
            raise InvalidInputError(f"volume array must be [slices, rows, cols(, 3)], got shape {a.shape}")
        if len(self.sop_instance_uids) != a.shape[0] or len(self.positions) != a.shape[0]:
            raise InvalidInputError(
                f"{a.shape[0]} slices but {len(self.sop_instance_uids)} SOP instance UIDs "
                f"and {len(self.positions)} positions")
        if len(self.spacing) != 3 or not all(s > 0 for s in self.spacing):
            raise InvalidInputError(f"spacing must be three positive numbers, got {self.spacing}")
        a.setflags(write=False)

    @property
    def is_rgb(self) -> bool:
        """True for colour (RGB) images."""
        return self.array.ndim == 4

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`array`."""
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])


def _read(item: str | Path | Dataset) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        return pydicom.dcmread(item)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomFileError(f"cannot read DICOM file: {exc}", source=str(item)) from exc


def _normal(ds: Dataset) -> NDArray[np.float64] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6 or ds.get("ImagePositionPatient") is None:
        return None
    row, col = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    return np.cross(row, col)


def _frames(ds: Dataset, source: str) -> NDArray[np.generic]:
    """Decoded frames ``[n, rows, cols(, 3)]`` after the Modality LUT; RGB stays uint8."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many kinds for missing/undecodable pixel data
        raise DicomFileError(f"cannot decode pixel data: {exc}", source=source) from exc
    rgb = int(ds.get("SamplesPerPixel", 1)) == 3
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        pixels = pixels[np.newaxis]
    if rgb:
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)


def load_series(paths: Iterable[str | Path | Dataset]) -> Volume:
    """Load the images of one series into a :class:`Volume`.

    Parameters
    ----------
    paths : iterable of path or pydicom.Dataset
        The files (or datasets) of one series, in any order.

    Returns
    -------
    Volume
        Slices sorted by ImagePositionPatient along the slice normal (by
        InstanceNumber when the images carry no geometry), rescaled to
        float32 (HU for CT); colour images as uint8 RGB.

    Raises
    ------
    DicomFileError
        A file is not DICOM or its pixels cannot be decoded.
    InvalidInputError
        No files, several series, or images of different sizes.
    """
    items = list(paths)
    if not items:
        raise InvalidInputError("load_series needs at least one image")
    datasets = [(_read(p), p if not isinstance(p, Dataset) else "<dataset>") for p in items]
    series = {str(ds.get("SeriesInstanceUID", "")) for ds, _ in datasets}
    if len(series) > 1:
        raise InvalidInputError(f"images of {len(series)} different series given to load_series")
    first = datasets[0][0]
    normal = _normal(first)

    def key(entry: tuple[Dataset, object]) -> tuple[float, int]:
        ds = entry[0]
        number = int(ds.get("InstanceNumber", 0) or 0)
        if normal is not None and ds.get("ImagePositionPatient") is not None:
            return float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)), number
        return float(number), number

    datasets.sort(key=key)
    stacks: list[NDArray[np.generic]] = []
    uids: list[str] = []
    positions: list[float] = []
    for ds, source in datasets:
        frames = _frames(ds, str(source))
        if stacks and frames.shape[1:] != stacks[0].shape[1:]:
            raise InvalidInputError(f"image size {frames.shape[1:]} differs from {stacks[0].shape[1:]}",
                                    source=str(source))
        stacks.append(frames)
        uids.extend([str(ds.get("SOPInstanceUID", ""))] * frames.shape[0])
        pos = key((ds, source))[0]
        step = float(ds.get("SpacingBetweenSlices", 0) or 0)
        positions.extend(pos + i * step for i in range(frames.shape[0]))
    array = np.concatenate(stacks, axis=0)

    row_mm, col_mm = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    slice_mm = 0.0
    if normal is not None and len(positions) > 1:
        steps = np.abs(np.diff(np.asarray(positions)))
        steps = steps[steps > 0]
        slice_mm = float(np.median(steps)) if steps.size else 0.0
    if slice_mm <= 0:
        slice_mm = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)

    default = None
    wc, ww = first.get("WindowCenter"), first.get("WindowWidth")
    if wc is not None and ww is not None:
        wc = wc[0] if isinstance(wc, Sequence) and not isinstance(wc, str) else wc
        ww = ww[0] if isinstance(ww, Sequence) and not isinstance(ww, str) else ww
        try:
            default = Window(float(wc), float(ww))
        except (InvalidInputError, TypeError, ValueError):
            default = None
    return Volume(array=array, spacing=(slice_mm, row_mm, col_mm), sop_instance_uids=tuple(uids),
                  positions=tuple(positions), default_window=default,
                  modality=str(first.get("Modality", "")),
                  series_instance_uid=str(first.get("SeriesInstanceUID", "")))


def window(array: NDArray[np.generic], center: float, width: float) -> NDArray[np.uint8]:
    """Map values to 0-255 with a linear VOI window (DICOM PS3.3 C.11.2.1.2.1).

    Parameters
    ----------
    array : numpy.ndarray
        Values after the Modality LUT (HU for CT), any shape.
    center, width : float
        Window centre and width (width >= 1).

    Returns
    -------
    numpy.ndarray of uint8
        0 at or below ``center - 0.5 - (width - 1) / 2``, 255 above
        ``center - 0.5 + (width - 1) / 2``, linear in between.
    """
    Window(center, width)  # validates
    x = np.asarray(array, dtype=np.float64)
    if width == 1:
        return np.where(x <= center - 0.5, 0, 255).astype(np.uint8)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def to_png(array: NDArray[np.generic]) -> bytes:
    """Encode a 2-D greyscale or ``[rows, cols, 3]`` RGB image as PNG.

    ``uint8`` arrays are written as they are; other dtypes are scaled from
    their minimum and maximum to 0-255 first (use :func:`window` for a
    proper display window).
    """
    from PIL import Image

    a = np.asarray(array)
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise InvalidInputError(f"to_png needs [rows, cols] or [rows, cols, 3], got shape {a.shape}")
    if a.dtype != np.uint8:
        lo, hi = float(np.min(a)), float(np.max(a))
        a = window(a, (lo + hi) / 2 + 0.5, max(hi - lo + 1, 1.0))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()
