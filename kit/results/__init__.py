"""Analysis results and their round trip: one result to DICOM SR/SEG, FHIR and HL7 ORU^R01.

:mod:`kit.results.model` is the result itself (pure data). :mod:`kit.results.fhir`
turns it into Observations and a DiagnosticReport (and has the helpers
:func:`observation` and :func:`diagnostic_report` for simple cases);
:mod:`kit.results.oru` into an HL7 ORU^R01.
"""

from kit.results.fhir import (
    diagnostic_report,
    encode_bundle,
    encode_fhir,
    observation,
    transaction_bundle,
)
from kit.results.model import (
    SCHEMES,
    Algorithm,
    AnalysisResult,
    BoundingBox,
    Code,
    Label,
    Measurement,
    Region,
    Subject,
)
from kit.results.oru import control_id, encode_oru, oru_conclusion, read_oru

__all__ = [
    "SCHEMES",
    "Algorithm",
    "AnalysisResult",
    "BoundingBox",
    "Code",
    "Label",
    "Measurement",
    "Region",
    "Subject",
    "control_id",
    "diagnostic_report",
    "encode_bundle",
    "encode_fhir",
    "encode_oru",
    "observation",
    "oru_conclusion",
    "read_oru",
    "transaction_bundle",
]
