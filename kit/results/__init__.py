"""Analysis results and their round trip: one result to DICOM SR/SEG, FHIR and HL7 ORU^R01.

:mod:`kit.results.model` is the result itself (pure data). :mod:`kit.results.fhir`
turns it into Observations and a DiagnosticReport (and has the helpers
:func:`observation` and :func:`diagnostic_report` for simple cases);
:mod:`kit.results.oru` into an HL7 ORU^R01; :mod:`kit.results.sr` and
:mod:`kit.results.seg` into a DICOM TID 1500 SR and a SEG (highdicom), and
:mod:`kit.results.readback` reads SR/SEG (kit's or another tool's) back.
:func:`kit.results.deliver.deliver` (I/O, imported on its own) sends a result
to every configured target and verifies each by reading it back;
:func:`analyse_ct` is the small lesion finder ``kit demo`` ships with.
"""

from kit.results.analysis import analyse_ct
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
from kit.results.readback import differences, read_seg, read_sr, seg_segments_frame, sr_measurements_frame
from kit.results.seg import encode_seg
from kit.results.sr import encode_sr

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
    "analyse_ct",
    "control_id",
    "diagnostic_report",
    "differences",
    "encode_bundle",
    "encode_fhir",
    "encode_oru",
    "encode_seg",
    "encode_sr",
    "observation",
    "oru_conclusion",
    "read_oru",
    "read_seg",
    "read_sr",
    "seg_segments_frame",
    "sr_measurements_frame",
    "transaction_bundle",
]
