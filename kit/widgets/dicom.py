"""ipywidgets views of DICOM studies: a study browser and a slice viewer.

Only wiring: the pixels come from :mod:`kit.dicom.pixels` (load, window, PNG)
and the study list from a frame (e.g. :func:`kit.dicom.index` output). The
widgets build and update without a browser, so tests and nbval can drive them
through their attributes::

    browser = StudyBrowser(frame)
    browser.on_select(lambda paths: print(len(paths), "files"))
    viewer = ImageViewer(browser.selected_paths)
    viewer.preset = "lung"; viewer.slice_index = 9
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np
import polars as pl

from kit.dicom.pixels import WINDOW_PRESETS, Volume, Window, load_series, to_png, window
from kit.errors import InvalidInputError

__all__ = ["ImageViewer", "StudyBrowser"]

_STUDY_LABEL = ("patient_id", "patient_name", "study_date", "modality", "study_description")
_SERIES_COLUMNS = ("series_number", "modality", "series_description", "series_instance_uid")


def _html_table(df: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
                   + "</tr>" for row in df.iter_rows())
    return f"<table class='kit-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class StudyBrowser(w.VBox):
    """Pick a study (and optionally one series) from a frame of DICOM files.

    Parameters
    ----------
    frame : polars.DataFrame
        One row per file with at least ``study_instance_uid`` and ``path``;
        shown when present: ``patient_id``, ``patient_name``, ``study_date``,
        ``modality``, ``study_description``, ``series_instance_uid``,
        ``series_number``, ``series_description``.

    Attributes
    ----------
    study : str
        StudyInstanceUID of the chosen study (settable).
    series : str or None
        SeriesInstanceUID of the chosen series, None for all (settable).
    selected_paths : list of Path
        The files of the chosen study/series, sorted.
    """

    def __init__(self, frame: pl.DataFrame) -> None:
        missing = {"study_instance_uid", "path"} - set(frame.columns)
        if missing:
            raise InvalidInputError(f"StudyBrowser needs columns {sorted(missing)}")
        if frame.is_empty():
            raise InvalidInputError("StudyBrowser needs at least one file")
        self._frame = frame
        self._callbacks: list[Callable[[list[Path]], Any]] = []
        self._refreshing = False
        label_cols = [c for c in _STUDY_LABEL if c in frame.columns]
        sort_cols: list[str] = [c for c in ("patient_id", "study_date") if c in frame.columns]
        studies = (frame.group_by("study_instance_uid", maintain_order=True)
                   .agg([pl.col(c).first() for c in label_cols] + [pl.len().alias("files")])
                   .sort(sort_cols or ["study_instance_uid"]))
        options = [(" | ".join(str(r[c]) for c in label_cols) or r["study_instance_uid"],
                    r["study_instance_uid"]) for r in studies.iter_rows(named=True)]
        self._study = w.Dropdown(options=options, description="Study", layout=w.Layout(width="95%"))
        self._series = w.Dropdown(description="Series", layout=w.Layout(width="95%"))
        self._table = w.HTML()
        super().__init__([self._study, self._series, self._table])
        self._refresh_series()
        self._study.observe(self._on_study, names="value")
        self._series.observe(self._on_series, names="value")

    # state
    @property
    def study(self) -> str:
        return str(self._study.value)

    @study.setter
    def study(self, uid: str) -> None:
        self._study.value = uid

    @property
    def series(self) -> str | None:
        value = self._series.value
        return None if value is None else str(value)

    @series.setter
    def series(self, uid: str | None) -> None:
        self._series.value = uid

    def __repr__(self) -> str:
        return (f"StudyBrowser(study={self.study!r}, series={self.series!r}, "
                f"files={len(self.selected_paths)})")

    @property
    def selected_paths(self) -> list[Path]:
        rows = self._frame.filter(pl.col("study_instance_uid") == self.study)
        if self.series is not None:
            rows = rows.filter(pl.col("series_instance_uid") == self.series)
        return sorted(Path(p) for p in rows["path"].to_list())

    def on_select(self, callback: Callable[[list[Path]], Any]) -> None:
        """Call ``callback(selected_paths)`` whenever the study or series changes."""
        self._callbacks.append(callback)

    # wiring
    def _study_rows(self) -> pl.DataFrame:
        return self._frame.filter(pl.col("study_instance_uid") == self.study)

    def _refresh_series(self) -> None:
        rows = self._study_rows()
        if "series_instance_uid" not in rows.columns:
            self._series.options = [("(all)", None)]
            self._table.value = _html_table(pl.DataFrame({"files": [rows.height]}))
            return
        cols = [c for c in _SERIES_COLUMNS if c in rows.columns and c != "series_instance_uid"]
        table = (rows.group_by("series_instance_uid", maintain_order=True)
                 .agg([pl.col(c).first() for c in cols] + [pl.len().alias("files")])
                 .sort(cols[:1] or ["series_instance_uid"]))
        table = table.select([*cols, "files", "series_instance_uid"])
        labels = [(" | ".join(str(r[c]) for c in cols) or r["series_instance_uid"], r["series_instance_uid"])
                  for r in table.iter_rows(named=True)]
        self._series.options = [("(all series)", None), *labels]
        self._series.value = None
        self._table.value = _html_table(table)

    def _notify(self) -> None:
        paths = self.selected_paths
        for callback in self._callbacks:
            callback(paths)

    def _on_study(self, _change: dict[str, Any]) -> None:
        self._refreshing = True  # resetting the series list is part of this one selection
        try:
            self._refresh_series()
        finally:
            self._refreshing = False
        self._notify()

    def _on_series(self, _change: dict[str, Any]) -> None:
        if not self._refreshing:
            self._notify()


class ImageViewer(w.VBox):
    """Slice viewer with window/level for one series.

    Parameters
    ----------
    source : Volume or iterable of path
        A loaded :class:`~kit.dicom.pixels.Volume`, or the files of one series.
    preset : str or None
        Initial window preset (a key of ``WINDOW_PRESETS``); default: the
        images' own window, else their value range.

    Attributes
    ----------
    volume : Volume
        The pixels shown.
    slice_index, center, width, preset
        Current state (settable; setting updates the widgets and the image).
    image : bytes
        PNG of what is shown now.
    """

    def __init__(self, source: Volume | Iterable[str | Path], *, preset: str | None = None) -> None:
        self.volume = source if isinstance(source, Volume) else load_series(source)
        vol = self.volume
        lo, hi = (0.0, 255.0) if vol.is_rgb else (float(np.min(vol.array)), float(np.max(vol.array)))
        start = vol.default_window or Window((lo + hi) / 2, max(hi - lo, 1.0))
        n = len(vol)
        self._syncing = False
        self._slice = w.IntSlider(value=n // 2, min=0, max=n - 1, description="Slice",
                                  continuous_update=False)
        span = max(hi - lo, 1.0)
        self._center = w.FloatSlider(value=start.center, min=min(lo, start.center, -1024.0),
                                     max=max(hi, start.center, 1024.0), step=1.0, description="Center",
                                     continuous_update=False)
        self._width = w.FloatSlider(value=start.width, min=1.0, max=max(2 * span, start.width, 4000.0),
                                    step=1.0, description="Width", continuous_update=False)
        self._preset = w.Dropdown(options=["(image)", *WINDOW_PRESETS, "(custom)"], value="(image)",
                                  description="Preset")
        self._image = w.Image(format="png")
        self._info = w.HTML()
        controls: list[Any] = [self._slice]
        if not vol.is_rgb:
            controls += [w.HBox([self._preset, self._center, self._width])]
        super().__init__([self._image, *controls, self._info])
        self._start = start
        self._slice.observe(self._on_view, names="value")
        self._center.observe(self._on_window, names="value")
        self._width.observe(self._on_window, names="value")
        self._preset.observe(self._on_preset, names="value")
        if preset is not None:
            self.preset = preset
        self._render()

    # state
    def __repr__(self) -> str:
        shape = "x".join(str(n) for n in self.volume.array.shape)
        return (f"ImageViewer({self.volume.modality} {shape}, slice={self.slice_index}, "
                f"center={self.center:g}, width={self.width:g}, preset={self.preset!r})")

    @property
    def slice_index(self) -> int:
        return int(self._slice.value)

    @slice_index.setter
    def slice_index(self, index: int) -> None:
        if not 0 <= index < len(self.volume):
            raise InvalidInputError(f"slice {index} outside 0..{len(self.volume) - 1}")
        self._slice.value = index

    @property
    def center(self) -> float:
        return float(self._center.value)

    @center.setter
    def center(self, value: float) -> None:
        self._center.value = value

    @property
    def width(self) -> float:
        return float(self._width.value)

    @width.setter
    def width(self, value: float) -> None:
        self._width.value = value

    @property
    def preset(self) -> str:
        return str(self._preset.value)

    @preset.setter
    def preset(self, name: str) -> None:
        if name not in self._preset.options:
            raise InvalidInputError(f"unknown window preset {name!r}: one of {list(WINDOW_PRESETS)}")
        self._preset.value = name

    @property
    def image(self) -> bytes:
        return bytes(self._image.value)

    # wiring
    def _render(self) -> None:
        plane = self.volume.array[self.slice_index]
        shown = plane if self.volume.is_rgb else window(plane, self.center, self.width)
        self._image.value = to_png(np.asarray(shown, dtype=np.uint8))
        k = self.slice_index
        self._info.value = html.escape(
            f"slice {k + 1}/{len(self.volume)} · position {self.volume.positions[k]:.1f} mm · "
            f"SOP {self.volume.sop_instance_uids[k]}")

    def _on_view(self, _change: dict[str, Any]) -> None:
        self._render()

    def _on_window(self, _change: dict[str, Any]) -> None:
        if not self._syncing:
            self._syncing = True
            try:
                self._preset.value = "(custom)"
            finally:
                self._syncing = False
        self._render()

    def _on_preset(self, change: dict[str, Any]) -> None:
        if self._syncing or change["new"] == "(custom)":
            return
        chosen = self._start if change["new"] == "(image)" else WINDOW_PRESETS[change["new"]]
        self._syncing = True  # the slider observers render but leave the preset alone
        try:
            self._center.value = chosen.center
            self._width.value = chosen.width
        finally:
            self._syncing = False
        self._render()
