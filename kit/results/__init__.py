"""Analysis results and their round trip: one result to DICOM SR/SEG, FHIR and HL7 ORU^R01.

:mod:`kit.results.model` is the result itself (pure data); encoders and the
delivery that sends and reads back build on it.
"""

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
]
