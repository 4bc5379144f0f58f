"""StudyBrowser and ImageViewer build and update without a browser."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pydicom
import pytest

from kit.dicom.pixels import WINDOW_PRESETS
from kit.errors import InvalidInputError
from kit.examples.cohort import studies
from kit.examples.dicom import ct_datasets, instance_path, mr_datasets, write_dataset
from kit.widgets import ImageViewer, StudyBrowser


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("widgets")
    ct, mr = studies(modality="CT")[0], studies(modality="MR")[0]
    out = []
    for study, datasets in ((ct, ct_datasets(ct)), (mr, mr_datasets(mr))):
        for ds in datasets:
            out.append(write_dataset(ds, instance_path(root, study, 1, int(ds.InstanceNumber))))
    return out


@pytest.fixture(scope="module")
def frame(files: list[Path]) -> pl.DataFrame:
    rows = []
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        rows.append({"patient_id": ds.PatientID, "patient_name": str(ds.PatientName),
                     "study_instance_uid": ds.StudyInstanceUID, "study_date": ds.StudyDate,
                     "modality": ds.Modality, "study_description": ds.StudyDescription,
                     "series_instance_uid": ds.SeriesInstanceUID, "series_number": int(ds.SeriesNumber),
                     "series_description": ds.SeriesDescription, "path": str(p)})
    return pl.DataFrame(rows)


def test_browser_selection_changes_selected_paths(frame: pl.DataFrame, files: list[Path]) -> None:
    ct, mr = studies(modality="CT")[0], studies(modality="MR")[0]
    browser = StudyBrowser(frame)
    seen: list[list[Path]] = []
    browser.on_select(seen.append)
    first = browser.study
    assert first in (ct.study_uid, mr.study_uid)
    other = mr.study_uid if first == ct.study_uid else ct.study_uid
    before = browser.selected_paths
    browser.study = other
    after = browser.selected_paths
    assert len(seen) == 1 and seen[0] == after
    assert {len(before), len(after)} == {16, 12}
    assert set(before) | set(after) == set(files) and not set(before) & set(after)
    assert "AX" in browser._table.value or "AXIAL" in browser._table.value
    browser.series = browser._series.options[1][1]
    assert browser.series is not None and len(seen) == 2 and seen[1] == after
    with pytest.raises(InvalidInputError):
        StudyBrowser(frame.drop("path"))


def test_viewer_sliders_change_the_image(files: list[Path]) -> None:
    viewer = ImageViewer(files[:16])
    assert len(viewer.volume) == 16 and viewer.slice_index == 8
    assert (viewer.center, viewer.width) == (40.0, 400.0)  # the images' own window
    start = viewer.image
    assert start.startswith(b"\x89PNG")
    viewer.slice_index = 9
    moved = viewer.image
    assert moved != start
    viewer.preset = "lung"
    assert (viewer.center, viewer.width) == tuple(WINDOW_PRESETS["lung"])
    assert viewer.image != moved
    lung = viewer.image
    viewer.width = 600
    assert viewer.preset == "(custom)" and viewer.image != lung
    viewer.preset = "(image)"
    assert (viewer.center, viewer.width) == (40.0, 400.0)
    with pytest.raises(InvalidInputError):
        viewer.slice_index = 16
    with pytest.raises(InvalidInputError):
        viewer.preset = "nonsense"


def test_viewer_accepts_a_volume_and_a_preset(files: list[Path]) -> None:
    from kit.dicom.pixels import load_series

    vol = load_series(files[16:])
    viewer = ImageViewer(vol, preset="brain")
    assert viewer.volume is vol and viewer.preset == "brain"
    assert (viewer.center, viewer.width) == tuple(WINDOW_PRESETS["brain"])
