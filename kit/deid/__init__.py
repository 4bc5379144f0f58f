"""De-identification across DICOM, FHIR and HL7 (pure).

:mod:`kit.deid.text` scrubs PHI from free text: the cohort's known identifiers exactly, then
an offline detection library (Presidio's pattern recognizers plus kit's), applied to HL7
OBX/NTE text, FHIR narrative, conclusions, notes and text attachments, and DICOM text
attributes and SR TEXT values.
"""

from kit.deid.text import (
    KnownIdentifiers,
    Scrubbed,
    ScrubResult,
    TextScrubber,
    known_from_fhir,
    known_from_hl7,
    scrub_dicom,
    scrub_fhir,
    scrub_hl7,
)

__all__ = [
    "KnownIdentifiers",
    "ScrubResult",
    "Scrubbed",
    "TextScrubber",
    "known_from_fhir",
    "known_from_hl7",
    "scrub_dicom",
    "scrub_fhir",
    "scrub_hl7",
]
