"""ipywidgets views of an analysis result: the mask over the images, and a review before sending.

Only wiring: the pixels come from :mod:`kit.dicom.pixels` (window, PNG), the
tables from :class:`~kit.results.model.AnalysisResult`'s frames (shown by
itables, :func:`kit.widgets.tables.data_table`), and sending is a callback
(e.g. :meth:`kit.hub.Hub.send_results`). Both widgets build and update without
a browser, so tests and nbval drive them through attributes::

    overlay = MaskOverlay(volume, result)          # slice slider, mask in colour
    review = ResultReview(result, send=functools.partial(hub.send_results, sources=sources))
    review.conclusion = "Nodule, follow-up CT in 3 months."
    review.targets = ("sr", "observation")
    report = review.send()                         # what the Send button does
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import ipywidgets as w
import numpy as np
import numpy.typing as npt
import polars as pl

from kit.dicom.pixels import Volume, load_series, to_png, window
from kit.errors import InvalidInputError, KitError
from kit.results.deliver import TARGETS
from kit.results.model import AnalysisResult, Region
from kit.widgets.dicom import ImageViewer
from kit.widgets.progress import ProgressBar
from kit.widgets.tables import data_table, set_table

__all__ = ["MaskOverlay", "ResultReview"]

#: Colours of the regions' masks, in order (RGB).
PALETTE: Final = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255))

#: The callback a review sends with: ``send(result, targets=(...))``, returning a
#: DeliveryReport (anything with ``.frame``) or a frame.
SendCallback = Callable[..., Any]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _regions(source: AnalysisResult | Region | Sequence[Region]) -> tuple[Region, ...]:
    if isinstance(source, AnalysisResult):
        return source.regions
    if isinstance(source, Region):
        return (source,)
    regions = tuple(source)
    if any(not isinstance(r, Region) for r in regions):
        raise InvalidInputError("MaskOverlay needs an AnalysisResult, a Region or Regions")
    return regions


class MaskOverlay(ImageViewer):
    """A slice viewer with the result's masks drawn as translucent colour layers.

    Parameters
    ----------
    source : Volume or iterable of path
        The series the masks lie on (as for :class:`~kit.widgets.ImageViewer`).
    regions : AnalysisResult, Region or sequence of Region
        The masks; each mask frame is placed on the slice whose SOP Instance
        UID is its ``source_instances`` entry.
    preset : str, optional
        Initial window preset.
    opacity : float
        Initial opacity of the masks, 0 (hidden) to 1.

    Attributes
    ----------
    masks : numpy.ndarray
        ``int8 [slices, rows, cols]``: -1 outside every mask, else the index of
        the region drawn there (a later region over an earlier one).
    opacity : float
        Settable; redraws.

    Raises
    ------
    kit.errors.InvalidInputError
        A mask lies on an image that is not in the series, or differs in size.
    """

    def __init__(self, source: Volume | Iterable[str | Path],
                 regions: AnalysisResult | Region | Sequence[Region], *, preset: str | None = None,
                 opacity: float = 0.45) -> None:
        volume = source if isinstance(source, Volume) else load_series(source)
        if volume.is_rgb:
            raise InvalidInputError("MaskOverlay draws on greyscale series")
        self.regions = _regions(regions)
        self.masks = self._place(volume, self.regions)
        self._opacity = w.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05, description="Mask",
                                      continuous_update=False)
        super().__init__(volume, preset=preset)
        legend = w.HBox([w.Label(f"■ {r.label}", style={"text_color": _hex(PALETTE[i % len(PALETTE)])})
                         for i, r in enumerate(self.regions)])
        shown: tuple[w.Widget, ...] = tuple(self.children)  # type: ignore[has-type]
        self.children = (*shown[:-2], self._opacity, legend, *shown[-2:])
        self._opacity.observe(self._on_view, names="value")
        covered = (self.masks >= 0).sum(axis=(1, 2))
        if covered.any():
            self.slice_index = int(np.argmax(covered))  # start where the most of the masks are
        self._render()

    def _accept(self, volume: Volume) -> None:
        """Another series can be shown only if every mask lies on it (then they are placed on it)."""
        if volume.is_rgb:
            raise InvalidInputError("MaskOverlay draws on greyscale series")
        self.masks = self._place(volume, self.regions)

    @staticmethod
    def _place(volume: Volume, regions: Sequence[Region]) -> npt.NDArray[np.int8]:
        where: dict[str, int] = {}
        for k, uid in enumerate(volume.sop_instance_uids):
            where.setdefault(uid, k)
        plane = volume.array.shape[1:3]
        masks = np.full((len(volume), *plane), -1, dtype=np.int8)
        for n, region in enumerate(regions):
            if region.mask.shape[1:] != plane:
                raise InvalidInputError(f"region {region.label!r}: mask {region.mask.shape[1:]} "
                                        f"on images {plane}")
            for frame, uid in zip(region.mask, region.source_instances, strict=True):
                if uid not in where:
                    raise InvalidInputError(f"region {region.label!r} lies on image {uid}, "
                                            "which is not in this series")
                masks[where[uid]][frame] = n
        return masks

    def __repr__(self) -> str:
        shape = "x".join(str(n) for n in self.volume.array.shape)
        return (f"MaskOverlay({self.volume.modality} {shape}, slice={self.slice_index}, "
                f"regions={[r.label for r in self.regions]}, opacity={self.opacity:g})")

    @property
    def opacity(self) -> float:
        return float(self._opacity.value)

    @opacity.setter
    def opacity(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise InvalidInputError(f"opacity {value} outside 0..1")
        self._opacity.value = value

    def overlay(self) -> npt.NDArray[np.uint8]:
        """The RGB image shown now: the windowed slice, the masks blended in at :attr:`opacity`."""
        grey = window(self.volume.array[self.slice_index], self.center, self.width)
        rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1).astype(np.float64)
        labels = self.masks[self.slice_index]
        alpha = self.opacity
        for n in range(len(self.regions)):
            on = labels == n
            if on.any():
                rgb[on] = (1 - alpha) * rgb[on] + alpha * np.asarray(PALETTE[n % len(PALETTE)], dtype=float)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

    def _render(self) -> None:
        self._image.value = to_png(self.overlay())
        k = self.slice_index
        self._info.value = (f"slice {k + 1}/{len(self.volume)} · position {self.volume.positions[k]:.1f} mm"
                            f" · mask {int((self.masks[k] >= 0).sum())} px · "
                            f"SOP {self.volume.sop_instance_uids[k]}")


class ResultReview(w.VBox):
    """Review a result before it is sent: findings, an editable conclusion, targets, Send.

    Parameters
    ----------
    result : AnalysisResult
        The result to review.
    send : callable, optional
        Called as ``send(result, targets=(...))`` by :meth:`send` (the Send
        button), e.g. ``functools.partial(hub.send_results, sources=sources)``;
        returns a :class:`~kit.results.deliver.DeliveryReport` (or a frame),
        shown as the verification table (``table``). Without it the button is
        disabled.
    targets : iterable of str, optional
        The targets ticked at first (default all of ``TARGETS``).

    Attributes
    ----------
    result : AnalysisResult
        The result as reviewed: editing the conclusion replaces it with a new,
        validated result (``dataclasses.replace``; same ``result_id``).
    conclusion : str
        The conclusion text (settable, as typing in the box).
    targets : tuple of str
        The ticked targets, in ``TARGETS`` order (settable).
    report : object or None
        What the last send returned.
    frame : polars.DataFrame or None
        The last verification table.
    error : str or None
        The last error (an invalid conclusion, or the send's KitError), shown
        in the widget instead of raised.
    findings : dict of str to itables.widget.ITable
        The result's ``"measurements"``, ``"labels"`` and ``"regions"`` tables
        (those it has).
    table : itables.widget.ITable
        The verification table of the last send (hidden before the first).
    progress : ProgressBar
        Shown while the send callback runs.
    """

    def __init__(self, result: AnalysisResult, send: SendCallback | None = None, *,
                 targets: Iterable[str] | None = None) -> None:
        if not isinstance(result, AnalysisResult):
            raise InvalidInputError(f"ResultReview needs an AnalysisResult, not {type(result).__name__}")
        self._result = result
        self._send = send
        self.report: Any = None
        self.frame: pl.DataFrame | None = None
        self.error: str | None = None
        self.findings = self._findings(result)
        title = (f"{result.algorithm.name} {result.algorithm.version} · "
                 f"patient {result.subject.patient_id} · result {result.result_id}")
        self._conclusion = w.Textarea(value=result.conclusion or "", description="Conclusion",
                                      layout=w.Layout(width="95%", height="5em"))
        self._boxes = {t: w.Checkbox(value=True, description=t, indent=False,
                                     layout=w.Layout(width="auto")) for t in TARGETS}
        self._button = w.Button(description="Send", button_style="primary", icon="paper-plane",
                                disabled=send is None, tooltip="send to the ticked targets and verify")
        self._status = w.Label()
        self.progress = ProgressBar()
        self.table = data_table(pl.DataFrame({"target": [], "status": []}, schema={"target": pl.String,
                                                                                 "status": pl.String}))
        self.table.layout.display = "none"
        super().__init__([w.Label(title, style={"font_weight": "bold"}), *self.findings.values(),
                          self._conclusion, w.HBox([w.Label("Targets"), *self._boxes.values(), self._button]),
                          self.progress, self._status, self.table])
        if targets is not None:
            self.targets = tuple(targets)
        self._conclusion.observe(self._on_conclusion, names="value")
        self._button.on_click(lambda _button: self.send())

    # state
    def __repr__(self) -> str:
        sent = "not sent" if self.frame is None else \
            ", ".join(f"{t}={s}" for t, s in self.frame.select("target", "status").iter_rows())
        return (f"ResultReview({self._result.result_id}, {len(self._result.measurements)} measurements, "
                f"targets={list(self.targets)}, {sent})")

    @property
    def result(self) -> AnalysisResult:
        return self._result

    @property
    def conclusion(self) -> str:
        return str(self._conclusion.value)

    @conclusion.setter
    def conclusion(self, text: str) -> None:
        self._conclusion.value = text

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t, box in self._boxes.items() if box.value)

    @targets.setter
    def targets(self, chosen: Iterable[str]) -> None:
        wanted = set(chosen)
        unknown = sorted(wanted - set(TARGETS))
        if unknown:
            raise InvalidInputError(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
        for t, box in self._boxes.items():
            box.value = t in wanted

    def send(self) -> Any:
        """Call the send callback with the reviewed result and the ticked targets; show its table.

        Returns
        -------
        object or None
            What the callback returned; None when it raised a KitError (the
            error is shown in the widget and kept in :attr:`error`) or nothing
            was sent (no target ticked, no callback).
        """
        if self._send is None:
            return self._fail("no send callback: nothing to send with")
        targets = self.targets
        if not targets:
            return self._fail("no target ticked")
        self._status.value = ""
        try:
            with self.progress.task(f"sending to {', '.join(targets)}", total=len(targets)) as tick:
                report = self._send(self._result, targets=targets)
                tick(len(targets))
        except KitError as exc:
            return self._fail(f"{type(exc).__name__}: {exc}")
        frame = report if isinstance(report, pl.DataFrame) else getattr(report, "frame", None)
        if not isinstance(frame, pl.DataFrame):
            return self._fail(f"the send callback returned {type(report).__name__}, not a report with .frame")
        self.report, self.frame, self.error = report, frame, None
        # The targets now hold this text under identifiers derived from result_id: an edit would
        # have to be a new result, never a silent change of what was sent.
        self._conclusion.disabled = True
        counts = list(frame.group_by("status").len().sort("status").iter_rows()) \
            if "status" in frame.columns else []
        self._status.style.text_color = None
        self._status.value = "sent: " + (", ".join(f"{n} {s}" for s, n in counts) or "nothing")
        set_table(self.table, frame)
        self.table.layout.display = None
        return report

    # wiring
    def _fail(self, message: str) -> None:
        self.error = message
        self._status.style.text_color = "#b00020"
        self._status.value = message
        return None

    def _on_conclusion(self, change: dict[str, Any]) -> None:
        text = str(change["new"]).strip() or None
        if self.report is not None:
            self._fail(f"not taken: result {self._result.result_id} was sent with the old conclusion; "
                       "build a new AnalysisResult (new result_id) to amend it")
            return
        try:
            self._result = dataclasses.replace(self._result, conclusion=text)
        except KitError as exc:  # an invalid edit keeps the last valid result
            self._fail(f"conclusion not taken: {exc}")
            return
        self.error = None
        self._status.value = ""

    @staticmethod
    def _findings(result: AnalysisResult) -> dict[str, Any]:
        tables: dict[str, Any] = {}
        if result.measurements:
            tables["measurements"] = data_table(result.measurements_frame().select(
                "name", "value", "unit", "finding", "finding_site", "region"), caption="measurements")
        if result.labels:
            tables["labels"] = data_table(result.labels_frame().select("name", "value", "score", "region"),
                                          caption="labels")
        if result.regions:
            tables["regions"] = data_table(pl.DataFrame(
                [{"region": r.label, "kind": r.kind.meaning, "images": len(r.source_instances),
                  "voxels": int(r.mask.sum())} for r in result.regions]), caption="regions")
        return tables
