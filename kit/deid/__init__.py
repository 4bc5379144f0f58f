"""De-identification across DICOM, FHIR and HL7 (pure core).

* :mod:`kit.deid.pseudonyms`: one keyed pseudonym map (MRN, accession number, UIDs,
  per-patient date shift) shared by DICOM, FHIR and HL7; the re-identification map.
* :mod:`kit.deid.policy`: shared options, date shifting, the free-text scrubber seam.
* :mod:`kit.deid.fhir`: FHIR R4 resources, Bundles and NDJSON.
* :mod:`kit.deid.hl7`: HL7 v2 messages.
* :mod:`kit.deid.cohort`: a cohort from all three systems at once (no I/O).
* :mod:`kit.deid.text`: PHI scrubbed from free text: the cohort's known identifiers
  exactly, then an offline detection library (Presidio's pattern recognizers plus
  kit's), for HL7 OBX/NTE text, FHIR narrative, conclusions, notes and text
  attachments, DICOM text attributes and SR TEXT values.

The submodules are imported where used (the text scrubber loads Presidio).
"""

__all__ = ["cohort", "fhir", "hl7", "policy", "pseudonyms", "text"]
