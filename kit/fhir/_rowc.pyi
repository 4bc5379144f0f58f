"""Types of kit.fhir._rowc (kit/fhir/_rowc.c): the Observation row of the FHIR frames' fast path in C."""

from collections.abc import Callable
from typing import Any

def configure(classes: tuple[type, ...], fallback: Callable[[Any], tuple[Any, ...]],
              patient_ref: Callable[[str], Any], pref: dict[str, Any], /) -> None: ...
def observation(o: Any, /) -> tuple[Any, ...]: ...
