"""A demonstration detector for the sample clips' synthetic polyp, by colour thresholding (pure).

**Not a polyp detector.** The sample cohort's endoscopy clips
(:mod:`kit.examples.endoscopy`) are drawn by hand: a reddish lumen with one
paler, yellower blob standing for a polyp. :func:`demo_detector` finds that
blob and nothing else: it keeps the pixels whose green/red ratio lies in the
blob's band and whose red is bright enough (the lumen's folds are redder, the
specular highlights near white), erodes them once, labels the 4-connected
pieces (:func:`kit.results.analysis.components`, numpy only) and boxes the
largest one if it is big enough. On a real endoscopy video it will find pale mucosa,
bubbles and instrument reflections, and miss real polyps. It is here so the
notebook and the widgets have a ``detector(frame) -> list[Detection]`` to
show; a researcher passes their own model's function in its place.

Written by hand (there is nothing to stand on for a made-up blob): the two
thresholds and the box; the labelling is :mod:`kit.results.analysis`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import numpy as np

from kit.endoscopy.detections import Detection
from kit.endoscopy.frame import Frame
from kit.errors import InvalidInputError
from kit.results.analysis import components
from kit.results.model import Algorithm

__all__ = ["ALGORITHM", "DemoDetector", "demo_detector"]

_NAME, _VERSION = "kit-demo-blob-detector", "1.0"


@dataclasses.dataclass(frozen=True)
class DemoDetector:
    """The thresholds of the demonstration detector (see the module docstring); call it on a frame.

    Parameters
    ----------
    green_red_min, green_red_max : float
        The band of green/red ratio kept (the sample polyp lies near 0.6; the lumen near 0.44).
    red_min : float
        Darkest red kept (0-255): the shaded lumen is left out.
    min_pixels : int
        Smallest piece (after the erosion) reported as a finding.
    label : str
        The detections' label.
    """

    green_red_min: float = 0.5
    green_red_max: float = 0.78
    red_min: float = 140.0
    min_pixels: int = 150
    label: str = "polyp"

    def __post_init__(self) -> None:
        if not 0 <= self.green_red_min < self.green_red_max or not 0 <= self.red_min <= 255 \
                or self.min_pixels < 1:
            raise InvalidInputError("DemoDetector: 0 <= green_red_min < green_red_max, red_min in 0..255, "
                                    "min_pixels >= 1", source="detector")

    @property
    def algorithm(self) -> Algorithm:
        """This detector as an :class:`~kit.results.model.Algorithm` (name, version, thresholds)."""
        return Algorithm(_NAME, _VERSION, {
            "green_red_min": self.green_red_min, "green_red_max": self.green_red_max,
            "red_min": self.red_min, "min_pixels": self.min_pixels})

    def __call__(self, frame: Frame) -> list[Detection]:
        """At most one detection: the box of the largest blob-coloured piece of ``frame``.

        The score is the share of the box the piece fills (a round blob fills about
        0.75 of its box), as a plain measure of how blob-like it is, not a probability.
        """
        if not isinstance(frame, Frame):
            raise InvalidInputError(f"the detector takes a Frame, not {type(frame).__name__}",
                                    source="detector")
        rgb = frame.image.astype(np.float32)
        red, green = rgb[..., 0], rgb[..., 1]
        ratio = green / (red + 1.0)
        mask = (ratio > self.green_red_min) & (ratio < self.green_red_max) & (red > self.red_min)
        if int(mask.sum()) < self.min_pixels:
            return []
        # eroded once: a thin bridge of pale pixels no longer joins the blob to the tissue beside it
        core = mask.copy()
        core[1:] &= mask[:-1]
        core[:-1] &= mask[1:]
        core[:, 1:] &= mask[:, :-1]
        core[:, :-1] &= mask[:, 1:]
        labels = components(core[None])[0]
        ids, counts = np.unique(labels[labels >= 0], return_counts=True)
        if ids.size == 0:
            return []
        best = int(np.argmax(counts))
        if int(counts[best]) < self.min_pixels:
            return []
        rows, cols = np.nonzero(labels == ids[best])
        x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
        score = round(float(counts[best]) / float((x1 - x0) * (y1 - y0)), 3)
        height, width = mask.shape
        box = (max(0, x0 - 1), max(0, y0 - 1), min(width, x1 + 1), min(height, y1 + 1))  # the eroded rim back
        return [Detection(frame.index, self.label, score=score, box=box, time=frame.timestamp)]


#: The demonstration detector with its default thresholds: ``demo_detector(frame) -> list[Detection]``.
demo_detector: Final = DemoDetector()
#: :func:`demo_detector` as an Algorithm, for :func:`kit.endoscopy.detections.detections_result`.
ALGORITHM: Final = demo_detector.algorithm
