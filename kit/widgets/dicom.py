"""ipywidgets views of DICOM studies: a study browser and a slice viewer that follows it.

Only wiring: the pixels come from :mod:`kit.dicom.pixels` (load, window, PNG),
the study list from a frame (e.g. :func:`kit.dicom.index` output, or a PACS
query frame with a client to retrieve through) and the series table from
itables (:func:`kit.widgets.tables.data_table`). The widgets build and update
without a browser, so tests and nbval drive them through their attributes::

    browser = StudyBrowser(frame)
    viewer = ImageViewer(browser.series_paths(), preset="lung")
    browser.link(viewer)          # the viewer now shows what the browser selects
    browser.series = browser.series_uids[1]; viewer.slice_index = 9
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final, Protocol

import ipywidgets as w
import numpy as np
import polars as pl
from pydicom import Dataset

from kit.dicom.pixels import WINDOW_PRESETS, Volume, Window, _read, load_series, to_png, window
from kit.errors import InvalidInputError, KitError
from kit.widgets.progress import ProgressBar
from kit.widgets.tables import data_table, set_table

__all__ = ["ALL_SERIES", "ImageViewer", "RetrieveClient", "StudyBrowser"]

_STUDY_LABEL = ("patient_id", "patient_name", "study_date", "modality", "study_description")
_SERIES_COLUMNS = ("series_number", "modality", "series_description", "series_instance_uid")

#: The series picker's first entry: every series of the study.
ALL_SERIES: Final = "(all series)"
# the picker's value for ALL_SERIES: ipywidgets shows a blank picker for the value None
_ALL: Final = ""


class RetrieveClient(Protocol):
    """What :class:`StudyBrowser` retrieves with: :class:`~kit.dicom.dimse.PacsClient` or
    :class:`~kit.dicom.web.DicomWebClient` (``get`` returns a frame with ``path``)."""

    def get(self, *, study_uid: str, series_uid: str | None = ...,
            dest: str | os.PathLike[str]) -> pl.DataFrame: ...


class StudyBrowser(w.VBox):
    """Pick a study (and optionally one series) from a frame of DICOM files or of a PACS query.

    Parameters
    ----------
    frame : polars.DataFrame
        One row per file (or per series/instance of a PACS query) with at
        least ``study_instance_uid``, and ``path`` unless ``client`` is given.
        Shown when present: ``patient_id``, ``patient_name``, ``study_date``,
        ``modality``, ``study_description``, ``series_instance_uid``,
        ``series_number``, ``series_description``.
    viewer : ImageViewer, optional
        Link this viewer now (see :meth:`link`).
    client : PacsClient or DicomWebClient, optional
        Retrieve the selected study/series through it (C-GET or WADO-RS) into
        ``dest``, once each; then ``frame`` needs no ``path`` column.
    dest : path, optional
        Folder for what ``client`` retrieves (required with ``client``).

    Attributes
    ----------
    study : str
        StudyInstanceUID of the chosen study (settable).
    series : str or None
        SeriesInstanceUID of the chosen series, None for all (settable); the
        picker shows ``"(all series)"`` for None.
    series_uids : list of str
        The chosen study's series, in the table's order.
    selected_paths : list of Path
        The files of the chosen study/series, sorted (retrieved first with a client).
    progress : ProgressBar
        Shown while a retrieve runs.
    error : str or None
        The last error of a linked view (a failed retrieve or load), shown
        under the table instead of raised from the picker.
    """

    def __init__(self, frame: pl.DataFrame, *, viewer: ImageViewer | None = None,
                 client: RetrieveClient | None = None, dest: str | os.PathLike[str] | None = None) -> None:
        needed = {"study_instance_uid"} if client is not None else {"study_instance_uid", "path"}
        missing = needed - set(frame.columns)
        if missing:
            raise InvalidInputError(f"StudyBrowser needs columns {sorted(missing)}")
        if frame.is_empty():
            raise InvalidInputError("StudyBrowser needs at least one file")
        if client is not None and dest is None:
            raise InvalidInputError("StudyBrowser with a client needs dest, the folder to retrieve into")
        self._frame = frame
        self._client = client
        self._dest = Path(dest) if dest is not None else None
        self._retrieved: dict[tuple[str, str], list[Path]] = {}
        self._callbacks: list[Callable[[list[Path]], Any]] = []
        self._viewers: list[ImageViewer] = []
        self._refreshing = False
        self.error: str | None = None
        label_cols = [c for c in _STUDY_LABEL if c in frame.columns]
        sort_cols: list[str] = [c for c in ("patient_id", "study_date") if c in frame.columns]
        studies = (frame.group_by("study_instance_uid", maintain_order=True)
                   .agg([pl.col(c).first() for c in label_cols] + [pl.len().alias("files")])
                   .sort(sort_cols or ["study_instance_uid"]))
        options = [(" | ".join(str(r[c]) for c in label_cols) or r["study_instance_uid"],
                    r["study_instance_uid"]) for r in studies.iter_rows(named=True)]
        self._study = w.Dropdown(options=options, description="Study", layout=w.Layout(width="95%"))
        self._series = w.Dropdown(description="Series", layout=w.Layout(width="95%"))
        self._series_table = pl.DataFrame()
        self._table = data_table(pl.DataFrame({"files": [0]}), select=True)
        self.progress = ProgressBar()
        self._status = w.Label(style={"text_color": "#b00020"})
        super().__init__([self._study, self._series, self._table, self.progress, self._status])
        self._refresh_series()
        self._study.observe(self._on_study, names="value")
        self._series.observe(self._on_series, names="value")
        self._table.observe(self._on_row, names="selected_rows")
        if viewer is not None:
            self.link(viewer)

    # state
    @property
    def study(self) -> str:
        return str(self._study.value)

    @study.setter
    def study(self, uid: str) -> None:
        if uid not in [v for _, v in self._study.options]:
            raise InvalidInputError(f"no study {uid!r} in the frame")
        self._study.value = uid

    @property
    def series(self) -> str | None:
        value = self._series.value
        return None if value in (None, _ALL) else str(value)

    @series.setter
    def series(self, uid: str | None) -> None:
        value = _ALL if uid is None else uid
        if value not in [v for _, v in self._series.options]:
            raise InvalidInputError(f"no series {uid!r} in study {self.study}")
        self._series.value = value

    @property
    def series_uids(self) -> list[str]:
        if "series_instance_uid" not in self._series_table.columns:
            return []
        return [str(u) for u in self._series_table["series_instance_uid"]]

    @property
    def table(self) -> pl.DataFrame:
        """The chosen study's series as shown in the table (one row per series, UIDs whole)."""
        return self._series_table

    def __repr__(self) -> str:
        return (f"StudyBrowser(study={self.study!r}, series={self.series!r}, "
                f"files={self._count()})")

    @property
    def selected_paths(self) -> list[Path]:
        return self._paths(self.series)

    def series_paths(self, series_uid: str | None = None) -> list[Path]:
        """The files of one series: ``series_uid``, else the chosen one, else the study's first.

        This is what a linked viewer shows: a viewer shows one series, so with
        ``"(all series)"`` chosen it shows the first series in the table.
        """
        uid = series_uid or self.series or (self.series_uids[0] if self.series_uids else None)
        return self._paths(uid)

    def on_select(self, callback: Callable[[list[Path]], Any]) -> None:
        """Call ``callback(selected_paths)`` whenever the study or series changes."""
        self._callbacks.append(callback)

    def link(self, viewer: ImageViewer) -> ImageViewer:
        """Make ``viewer`` show the chosen series now and after every change of study or series.

        A failed retrieve or load is shown in the browser (:attr:`error`) and the
        viewer keeps what it showed. Returns the viewer.
        """
        if not isinstance(viewer, ImageViewer):
            raise InvalidInputError(f"StudyBrowser.link needs an ImageViewer, not {type(viewer).__name__}")
        self._viewers.append(viewer)
        self._show(viewer)
        return viewer

    # wiring
    def _count(self) -> int:
        if self._client is None:
            return len(self.selected_paths)
        rows = self._study_rows()
        if self.series is not None:
            rows = rows.filter(pl.col("series_instance_uid") == self.series)
        return rows.height

    def _study_rows(self) -> pl.DataFrame:
        return self._frame.filter(pl.col("study_instance_uid") == self.study)

    def _paths(self, series_uid: str | None) -> list[Path]:
        if self._client is not None:
            return self._retrieve(self.study, series_uid)
        rows = self._study_rows()
        if series_uid is not None:
            rows = rows.filter(pl.col("series_instance_uid") == series_uid)
        return sorted(Path(p) for p in rows["path"].to_list())

    def _retrieve(self, study: str, series_uid: str | None) -> list[Path]:
        key = (study, series_uid or "")
        if key not in self._retrieved:
            assert self._client is not None and self._dest is not None
            folder = self._dest / study / (series_uid or "all")
            what = f"series {series_uid}" if series_uid else f"study {study}"
            with self.progress.task(f"retrieving {what}") as tick:
                got = self._client.get(study_uid=study, series_uid=series_uid, dest=folder)
                tick(1)
            self._retrieved[key] = sorted(Path(p) for p in got["path"].to_list())
        return self._retrieved[key]

    def _refresh_series(self) -> None:
        rows = self._study_rows()
        self._refreshing = True
        try:
            if "series_instance_uid" not in rows.columns:
                self._series_table = pl.DataFrame({"files": [rows.height]})
                self._series.options = [(ALL_SERIES, _ALL)]
            else:
                cols = [c for c in _SERIES_COLUMNS if c in rows.columns and c != "series_instance_uid"]
                table = (rows.group_by("series_instance_uid", maintain_order=True)
                         .agg([pl.col(c).first() for c in cols] + [pl.len().alias("files")])
                         .sort(cols[:1] or ["series_instance_uid"]))
                self._series_table = table.select([*cols, "files", "series_instance_uid"])
                labels = [(" | ".join(str(r[c]) for c in cols) or r["series_instance_uid"],
                           r["series_instance_uid"]) for r in self._series_table.iter_rows(named=True)]
                self._series.options = [(ALL_SERIES, _ALL), *labels]
            self._series.value = _ALL
            set_table(self._table, self._series_table)
        finally:
            self._refreshing = False

    def _notify(self) -> None:
        self.error = None
        self._status.value = ""
        for viewer in self._viewers:
            self._show(viewer)
        if self._callbacks:
            paths = self.selected_paths
            for callback in self._callbacks:
                callback(paths)

    def _show(self, viewer: ImageViewer) -> None:
        try:
            viewer.show(self.series_paths())
        except KitError as exc:
            self.error = f"cannot show the series: {type(exc).__name__}: {exc}"
            self._status.value = self.error

    def _on_study(self, _change: dict[str, Any]) -> None:
        self._refresh_series()  # resetting the series list is part of this one selection
        self._notify()

    def _on_series(self, _change: dict[str, Any]) -> None:
        if self._refreshing:
            return
        self._refreshing = True
        try:  # the table follows the picker
            uids = self.series_uids
            self._table.selected_rows = [uids.index(self.series)] if self.series in uids else []
        finally:
            self._refreshing = False
        self._notify()

    def _on_row(self, change: dict[str, Any]) -> None:
        if self._refreshing:
            return
        rows, uids = list(change["new"] or []), self.series_uids
        if len(rows) == 1 and 0 <= rows[0] < len(uids):
            self.series = uids[rows[0]]  # the picker follows the table (and notifies)
        elif not rows:
            self.series = None


class ImageViewer(w.VBox):
    """Slice viewer with window/level for one series; :meth:`show` puts another series in it.

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
    progress : ProgressBar
        Shown while :meth:`show` reads a series.
    """

    def __init__(self, source: Volume | Iterable[str | Path], *, preset: str | None = None) -> None:
        self.progress = ProgressBar()
        self.volume = self._load(source)
        self._syncing = False
        self._slice = w.IntSlider(value=0, min=0, max=0, description="Slice", continuous_update=False)
        self._center = w.FloatSlider(step=1.0, description="Center", continuous_update=False)
        self._width = w.FloatSlider(step=1.0, description="Width", continuous_update=False)
        self._preset = w.Dropdown(options=["(image)", *WINDOW_PRESETS, "(custom)"], value="(image)",
                                  description="Preset")
        self._window = w.HBox([self._preset, self._center, self._width])
        self._image = w.Image(format="png")
        self._info = w.Label()
        super().__init__([self._image, self._slice, self._window, self._info, self.progress])
        self._start = self._fit(self.volume)
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

    def show(self, source: Volume | Iterable[str | Path]) -> None:
        """Show another series: the slice goes to its middle; a named window preset is kept,
        otherwise the new images' own window is used.

        Raises
        ------
        DicomFileError, InvalidInputError
            As :func:`~kit.dicom.pixels.load_series`; the viewer keeps what it showed.
        """
        volume = self._load(source)
        self._accept(volume)
        preset = self.preset
        self.volume = volume
        self._start = self._fit(volume)
        if preset in WINDOW_PRESETS:
            self.preset = preset
        self._render()

    # wiring
    def _load(self, source: Volume | Iterable[str | Path]) -> Volume:
        if isinstance(source, Volume):
            return source
        items = list(source)
        datasets: list[Dataset] = []
        with self.progress.task("reading images", total=len(items)) as tick:
            for item in items:
                datasets.append(_read(item))
                tick(1)
        return load_series(datasets)

    def _accept(self, volume: Volume) -> None:
        """Check ``volume`` can be shown (a subclass's hook); raise InvalidInputError if not."""

    def _fit(self, vol: Volume) -> Window:
        """Set the sliders' ranges and values for ``vol`` without rendering; its starting window."""
        lo, hi = (0.0, 255.0) if vol.is_rgb else (float(np.min(vol.array)), float(np.max(vol.array)))
        start = vol.default_window or Window((lo + hi) / 2, max(hi - lo, 1.0))
        span = max(hi - lo, 1.0)
        self._syncing = True  # one render after, not one per slider
        try:
            n = len(vol)
            self._slice.max = max(n - 1, self._slice.value)
            self._slice.value = n // 2
            self._slice.max = n - 1
            self._center.min, self._center.max = -1e9, 1e9
            self._center.value = start.center
            self._center.min = min(lo, start.center, -1024.0)
            self._center.max = max(hi, start.center, 1024.0)
            self._width.min, self._width.max = 1.0, 1e9
            self._width.value = start.width
            self._width.max = max(2 * span, start.width, 4000.0)
            self._preset.value = "(image)"
            self._window.layout.display = "none" if vol.is_rgb else None
        finally:
            self._syncing = False
        return start

    def _render(self) -> None:
        plane = self.volume.array[self.slice_index]
        shown = plane if self.volume.is_rgb else window(plane, self.center, self.width)
        self._image.value = to_png(np.asarray(shown, dtype=np.uint8))
        k = self.slice_index
        self._info.value = (f"slice {k + 1}/{len(self.volume)} · position {self.volume.positions[k]:.1f} mm"
                            f" · SOP {self.volume.sop_instance_uids[k]}")

    def _on_view(self, _change: dict[str, Any]) -> None:
        if not self._syncing:
            self._render()

    def _on_window(self, _change: dict[str, Any]) -> None:
        if self._syncing:
            return
        self._syncing = True  # a moved slider makes the window a custom one
        try:
            self._preset.value = "(custom)"
        finally:
            self._syncing = False
        self._render()

    def _on_preset(self, change: dict[str, Any]) -> None:
        if self._syncing or change["new"] == "(custom)":
            return
        chosen = self._start if change["new"] == "(image)" else WINDOW_PRESETS[change["new"]]
        self._syncing = True  # the slider observers neither render nor touch the preset
        try:
            self._center.value = chosen.center
            self._width.value = chosen.width
        finally:
            self._syncing = False
        self._render()
