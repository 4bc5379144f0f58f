"""One decoded video frame, the unit every endoscopy module passes around (pure)."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

from kit.errors import KitError

__all__ = ["Frame"]


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame: RGB pixels and when it was shown.

    Parameters
    ----------
    index : int
        Position in the stream as the source saw it, from 0; gaps mean dropped frames.
    timestamp : float
        Presentation time in seconds from the start of the stream.
    image : numpy.ndarray
        ``uint8`` array of shape ``(height, width, 3)``, RGB.
    received : float
        ``time.monotonic()`` when the source decoded it (0.0 when unknown).
    """

    index: int
    timestamp: float
    image: NDArray[np.uint8]
    received: float = 0.0

    def __post_init__(self) -> None:
        if self.index < 0:
            raise KitError(f"frame index must be >= 0, got {self.index}")
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise KitError(
                f"frame image must be uint8 (height, width, 3), got {img.dtype} {img.shape}")

    @property
    def height(self) -> int:
        """Rows of pixels."""
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        """Columns of pixels."""
        return int(self.image.shape[1])
