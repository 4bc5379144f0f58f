"""kit.dicom.pixels: series loading, VOI windowing, PNG encoding."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from kit.dicom.pixels import WINDOW_PRESETS, Window, load_series, to_png, window
from kit.errors import DicomFileError, InvalidInputError
from kit.examples.cohort import studies
from kit.examples.dicom import ct_hu, mr_signal

Regenerated = tuple[Path, dict[str, list[Path]]]


def _reference(x: float, c: float, w: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1, output range 0..255, written as the standard states it."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0


@given(st.floats(-3000, 3000), st.floats(-1000, 1000), st.floats(2, 4000))
def test_window_follows_the_standard(x: float, c: float, w: float) -> None:
    got = int(window(np.array([x]), c, w)[0])
    assert abs(got - _reference(x, c, w)) <= 0.5 + 1e-6


def test_window_edges_and_validation() -> None:
    a = np.array([-2000.0, -160.0, -159.0, 39.5, 239.0, 240.0, 3000.0])
    out = window(a, 40, 400)
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[1] == 0 and out[-1] == 255 and out[-2] == 255
    assert out[3] == 128  # the centre maps to mid-grey
    assert (np.diff(out.astype(int)) >= 0).all()
    assert list(window(np.array([0.0, 1.0]), 1, 1)) == [0, 255]
    with pytest.raises(InvalidInputError):
        window(a, 40, 0.5)
    with pytest.raises(InvalidInputError):
        Window(0, float("nan"))
    assert tuple(WINDOW_PRESETS["lung"]) == (-600, 1500)
    assert set(WINDOW_PRESETS) >= {"lung", "mediastinum", "bone", "brain", "soft_tissue"}


def test_to_png_round_trips() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for a in (grey, rgb):
        back = np.asarray(Image.open(io.BytesIO(to_png(a))))
        assert np.array_equal(back, a)
    scaled = np.asarray(Image.open(io.BytesIO(to_png(np.array([[-5.0, 5.0]])))))
    assert scaled.tolist() == [[0, 255]]
    with pytest.raises(InvalidInputError):
        to_png(np.zeros((2, 2, 2), dtype=np.uint8))


def test_load_series_sorts_rescales_and_keeps_uids(regenerated: Regenerated) -> None:
    root, _ = regenerated
    study = studies(modality="CT")[0]
    paths = sorted((root / "dicom" / study.mrn / study.key).rglob("*.dcm"))
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    vol = load_series(shuffled)
    assert vol.array.dtype == np.float32 and vol.shape == (16, 128, 128)
    assert np.array_equal(vol.array, ct_hu(study).astype(np.float32))  # rescale applied, order restored
    assert vol.sop_instance_uids == tuple(study.instance_uid(1, k + 1) for k in range(16))
    assert list(vol.positions) == sorted(vol.positions)
    assert vol.spacing == (5.0, 2.5, 2.5)
    assert vol.default_window == Window(40, 400)
    assert vol.modality == "CT" and vol.series_instance_uid == study.series_uid(1)
    with pytest.raises(ValueError):
        vol.array[0, 0, 0] = 1  # read-only


def test_load_series_mr_and_rgb(regenerated: Regenerated) -> None:
    root, _ = regenerated
    mr = studies(modality="MR")[0]
    vol = load_series((root / "dicom" / mr.mrn / mr.key).rglob("*.dcm"))
    assert np.array_equal(vol.array, mr_signal(mr).astype(np.float32))
    es = studies(modality="ES")[0]
    rgb = load_series((root / "dicom" / es.mrn / es.key).rglob("*.dcm"))
    assert rgb.is_rgb and rgb.shape == (4, 240, 320, 3) and rgb.array.dtype == np.uint8


def test_load_series_failures(regenerated: Regenerated, tmp_path: Path) -> None:
    root, _ = regenerated
    with pytest.raises(InvalidInputError):
        load_series([])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(DicomFileError):
        load_series([junk])
    a, b = studies(modality="CT")[:2]
    mixed = [next((root / "dicom" / s.mrn / s.key).rglob("*.dcm")) for s in (a, b)]
    with pytest.raises(InvalidInputError, match="series"):
        load_series(mixed)
