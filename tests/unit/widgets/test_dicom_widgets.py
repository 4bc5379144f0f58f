"""StudyBrowser and ImageViewer build and update without a browser; the viewer follows the browser."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pydicom
import pytest

from kit.dicom.pixels import WINDOW_PRESETS
from kit.errors import DicomFileError, InvalidInputError
from kit.examples.cohort import studies
from kit.examples.dicom import ct_datasets, instance_path, mr_datasets, write_dataset
from kit.widgets import ImageViewer, StudyBrowser
from kit.widgets.dicom import ALL_SERIES

#: the CT study's second series (a copy of 8 of its slices, as another series)
SECOND = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901.2"


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
def second_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """8 slices of the CT study again, as series 2 (new series and instance UIDs)."""
    root = tmp_path_factory.mktemp("widgets2")
    ct = studies(modality="CT")[0]
    out = []
    for ds in ct_datasets(ct)[:8]:
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = SECOND, 2, "CORONAL COPY"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{SECOND}.{int(ds.InstanceNumber)}"
        out.append(write_dataset(ds, instance_path(root, ct, 2, int(ds.InstanceNumber))))
    return out


def _rows(paths: list[Path]) -> pl.DataFrame:
    rows = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        rows.append({"patient_id": ds.PatientID, "patient_name": str(ds.PatientName),
                     "study_instance_uid": ds.StudyInstanceUID, "study_date": ds.StudyDate,
                     "modality": ds.Modality, "study_description": ds.StudyDescription,
                     "series_instance_uid": ds.SeriesInstanceUID, "series_number": int(ds.SeriesNumber),
                     "series_description": ds.SeriesDescription, "path": str(p)})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def frame(files: list[Path]) -> pl.DataFrame:
    return _rows(files)


@pytest.fixture(scope="module")
def two_series(files: list[Path], second_series: list[Path]) -> pl.DataFrame:
    return _rows(files + second_series)


def _sops(paths: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


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
    assert any("AX" in d for d in browser.table["series_description"])
    assert browser._table.df.equals(browser.table)  # the interactive table shows the series frame
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


def test_series_picker_shows_all_series_never_a_blank(two_series: pl.DataFrame) -> None:
    # ipywidgets shows a blank picker for the value None: "(all series)" must be a real entry
    ct = studies(modality="CT")[0]
    browser = StudyBrowser(two_series)
    browser.study = ct.study_uid
    assert browser.series is None
    assert (browser._series.index, browser._series.label) == (0, ALL_SERIES)
    browser.series = SECOND
    assert browser._series.label.startswith("2 | CT | CORONAL COPY")
    browser.series = None
    assert (browser._series.index, browser._series.label) == (0, ALL_SERIES)
    browser.study = studies(modality="MR")[0].study_uid
    assert (browser._series.index, browser._series.label, browser.series) == (0, ALL_SERIES, None)
    with pytest.raises(InvalidInputError):
        browser.series = SECOND  # not a series of the MR study
    no_series = StudyBrowser(two_series.select("study_instance_uid", "path"))
    assert (no_series._series.index, no_series._series.label) == (0, ALL_SERIES)


def test_the_viewer_follows_the_browser(two_series: pl.DataFrame, files: list[Path],
                                        second_series: list[Path]) -> None:
    ct, mr = studies(modality="CT")[0], studies(modality="MR")[0]
    browser = StudyBrowser(two_series)
    browser.study = mr.study_uid
    viewer = browser.link(ImageViewer(browser.series_paths(), preset="brain"))
    assert len(viewer.volume) == 12
    browser.study = ct.study_uid  # (all series): the viewer shows the study's first series
    assert browser.series_uids[1] == SECOND and len(browser.selected_paths) == 24
    first = browser.series_uids[0]
    assert set(viewer.volume.sop_instance_uids) == _sops(files[:16]) and len(viewer.volume) == 16
    assert viewer.slice_index == 8 and viewer.preset == "brain"  # a named preset is kept
    browser.series = SECOND
    assert set(viewer.volume.sop_instance_uids) == _sops(second_series)
    assert viewer.slice_index == 4
    browser._table.selected_rows = [0]  # a click on the table's first row
    assert browser.series == first and browser._series.index == 1
    assert set(viewer.volume.sop_instance_uids) == _sops(files[:16])
    browser.series = SECOND  # the picker moves the table's selection too
    assert browser._table.selected_rows == [1]
    browser._table.selected_rows = []
    assert browser.series is None and browser._series.label == ALL_SERIES
    # the same from the constructor
    other = ImageViewer(files[16:])
    StudyBrowser(two_series, viewer=other).study = ct.study_uid
    assert len(other.volume) == 16
    with pytest.raises(InvalidInputError):
        browser.link("not a viewer")  # type: ignore[arg-type]


def test_reading_shows_progress_and_a_bad_series_keeps_the_view(frame: pl.DataFrame, files: list[Path],
                                                                tmp_path: Path) -> None:
    viewer = ImageViewer(files[:16])
    assert (viewer.progress.value, viewer.progress.total) == (16, 16)
    assert viewer.progress.status == "reading images 16/16: done" and not viewer.progress.visible
    viewer.show(files[16:])
    assert len(viewer.volume) == 12 and viewer.progress.total == 12 and viewer.slice_index == 6
    bad = tmp_path / "notes.dcm"
    bad.write_text("not DICOM")
    before = viewer.image
    with pytest.raises(DicomFileError):
        viewer.show([*files[:3], bad])
    assert len(viewer.volume) == 12 and viewer.image == before
    assert viewer.progress.visible and viewer.progress.status == "reading images 3/4: failed: DicomFileError"
    # through a browser: the error is shown, not raised from the picker
    broken = frame.with_columns(pl.when(pl.col("modality") == "MR").then(pl.lit(str(bad)))
                                .otherwise(pl.col("path")).alias("path"))
    browser = StudyBrowser(broken)
    browser.study = studies(modality="CT")[0].study_uid
    browser.link(viewer)
    assert len(viewer.volume) == 16 and browser.error is None
    browser.study = studies(modality="MR")[0].study_uid
    assert browser.error is not None and "DicomFileError" in browser.error
    assert browser._status.value == browser.error and len(viewer.volume) == 16


def test_tables_hold_whole_identifiers(two_series: pl.DataFrame) -> None:
    browser = StudyBrowser(two_series)
    browser.study = studies(modality="CT")[0].study_uid
    shown = browser._table.df
    assert SECOND in shown["series_instance_uid"].to_list()
    # what the front end gets: every row, the UID as a whole string (no ellipsis, no downsampling)
    data = json.loads(browser._table._dt_args["data_json"])
    assert len(data) == shown.height == 2 and any(SECOND in row for row in data)
    assert "downsampling_warning" not in browser._table._dt_args or \
        not browser._table._dt_args["downsampling_warning"]
    assert "nowrap" in browser._table.classes
