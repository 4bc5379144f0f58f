"""De-identification across systems (pure core).

* :mod:`kit.deid.pseudonyms`: one keyed pseudonym map (MRN, accession number, UIDs,
  per-patient date shift) shared by DICOM, FHIR and HL7; the re-identification map.
* :mod:`kit.deid.policy`: shared options, date shifting, the free-text scrubber seam.
* :mod:`kit.deid.fhir`: FHIR R4 resources, Bundles and NDJSON.
* :mod:`kit.deid.hl7`: HL7 v2 messages.
* :mod:`kit.deid.cohort`: a cohort from all three systems at once (no I/O).
"""

__all__ = ["cohort", "fhir", "hl7", "policy", "pseudonyms"]
