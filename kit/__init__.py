"""kit: a research integration kit for hospitals.

Pull data from a PACS (DIMSE, DICOMweb), an EHR (FHIR R4), HL7 v2 feeds (MLLP)
and endoscopy systems into polars DataFrames, and send analysis results back.
Everything also runs offline against the embedded stack (``kit serve``) and its
synthetic sample cohort (:mod:`kit.examples`).

The top level re-exports the settings and the error tree; each protocol lives
in its own subpackage (:mod:`kit.dicom`, :mod:`kit.fhir`, :mod:`kit.hl7`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kit.errors import (
    ConfigError,
    InvalidInputError,
    KitError,
    PeerError,
    VerificationError,
)

if TYPE_CHECKING:
    from kit.config import Settings, load_settings

__all__ = [
    "ConfigError",
    "InvalidInputError",
    "KitError",
    "PeerError",
    "Settings",
    "VerificationError",
    "load_settings",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # kit.config (tomllib, ipaddress, the settings classes) on first use: `kit --help` and the
    # modules that only need kit.errors do not pay for it
    if name in ("Settings", "load_settings", "config"):
        import importlib

        module = importlib.import_module("kit.config")
        return module if name == "config" else getattr(module, name)
    raise AttributeError(f"module 'kit' has no attribute {name!r}")
