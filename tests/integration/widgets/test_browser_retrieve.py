"""StudyBrowser over a PACS query: the linked viewer shows what it retrieves through PacsClient (C-GET)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kit.dicom.dimse import PacsClient
from kit.errors import InvalidInputError
from kit.stack import Stack
from kit.widgets import ImageViewer, StudyBrowser


@pytest.fixture(scope="module")
def pacs() -> Iterator[PacsClient]:
    with Stack.ephemeral(services=("pacs",)) as stack:
        yield PacsClient.from_settings(stack.client_settings())


def test_the_viewer_shows_the_retrieved_series(pacs: PacsClient, tmp_path: Path) -> None:
    series = pacs.find("SERIES", patient_id="MRN1001")
    assert "path" not in series.columns and series.height >= 2
    with pytest.raises(InvalidInputError, match="dest"):
        StudyBrowser(series, client=pacs)
    browser = StudyBrowser(series, client=pacs, dest=tmp_path / "browse")
    ct = series.filter(pl.col("modality") == "CT").row(0, named=True)
    browser.study = ct["study_instance_uid"]
    viewer = browser.link(ImageViewer(browser.series_paths(), preset="lung"))
    images = pacs.find("IMAGE", study_instance_uid=ct["study_instance_uid"],
                       series_instance_uid=ct["series_instance_uid"])
    assert sorted(viewer.volume.sop_instance_uids) == sorted(images["sop_instance_uid"])
    assert browser.progress.status.startswith(f"retrieving series {ct['series_instance_uid']}")
    assert all(p.is_relative_to(tmp_path / "browse") for p in browser.selected_paths)
    # the other study: retrieved once, shown; going back uses what is on disk
    other = series.filter(pl.col("study_instance_uid") != ct["study_instance_uid"]).row(0, named=True)
    browser.study = other["study_instance_uid"]
    assert browser.error is None, browser.error
    assert viewer.volume.modality == other["modality"]
    on_disk = sorted((tmp_path / "browse").rglob("*.dcm"))
    browser.study = ct["study_instance_uid"]
    assert sorted((tmp_path / "browse").rglob("*.dcm")) == on_disk
    assert sorted(viewer.volume.sop_instance_uids) == sorted(images["sop_instance_uid"])
