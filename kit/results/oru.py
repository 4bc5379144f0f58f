"""An analysis result as an HL7 v2 ORU^R01 (pure).

:func:`encode_oru` writes MSH, PID, ORC and OBR with :func:`kit.hl7.build.build_oru_r01`
and the OBX segments here, then validates the whole message with hl7apy
(strict, :func:`kit.hl7.build.validate_er7`). The OBXs are written here because
:class:`kit.hl7.typed.ObservationResult` has no OBX-6 components, OBX-17 or
OBX-19, and splits a value on ``^`` (a CE value's display text or a line of
conclusion may contain any delimiter; here every component is escaped alone).

Layout (choices the standard leaves open):

* **MSH-18** is ``UNICODE UTF-8`` when the message holds any non-ASCII
  character (a patient's name, say): the MLLP sender writes UTF-8, and a
  receiver that assumes ASCII or Latin-1 would garble it unannounced.
* **MSH-10** is :func:`control_id`: 20 hex characters of SHA-256 over the
  ``result_id``; MSH-7 is ``result.created``. The same result always gives the
  same message, byte for byte, so a listener that de-duplicates by sender,
  control id and content (kit's :class:`~kit.hl7.mllp.MLLPListener`) stores a
  resend once.
* **PID-3** is the MRN (type ``MR``); PID-5 the DICOM patient name
  (``Family^Given``), or the HL7 null ``""`` when unknown (PID-5 is required).
* **ORC/OBR.** ORC-1 ``RE``; ORC-2/OBR-2 (placer) and OBR-18 the accession
  number; ORC-3/OBR-3 (filler order number) the ``result_id``; OBR-4 the report
  code (LOINC 18748-4); OBR-7 the time; OBR-24 ``RAD``; OBR-25 ``F``. Without
  an accession number :mod:`kit.hl7.frames` falls back to the filler number.
* **StudyInstanceUID** in a ZDS segment after the OBXs (``<uid>^^Application^DICOM``,
  as IHE Radiology's ZDS), which :mod:`kit.hl7.frames` reads as ``study_instance_uid``.
* **OBX per finding.** Findings are numbered 1.. in the result's order
  (measurements, then labels) and that number is OBX-4 (sub-id) of every OBX
  of the finding. A measurement: ``NM``, OBX-3 its name code, OBX-5 the value
  (positional decimal), OBX-6 ``<ucum>^<unit>^UCUM``;
  then its ``finding`` (DCM 121071 "Finding") and ``finding_site`` (SCT
  363698007 "Finding site") as ``CE`` OBXs. A label: ``CE``, OBX-3 its name,
  OBX-5 its value code; its score in the next OBX, ``NM`` coded ``score^Confidence
  score^99KIT``, unit UCUM ``1``.
* **Every OBX:** OBX-11 ``F``, OBX-14 and OBX-19 (time of the analysis) the
  result's time, OBX-17 (observation method) ``<algorithm name>^<version>``.
* **Conclusion:** ``TX`` OBXs coded LOINC 19005-8 (imaging impression), one per
  line; OBX-4 is the line number. hl7apy allows 199 characters per value, so a
  longer line is cut (before a space where one is near) into several OBXs with
  the same OBX-4: concatenate those, join the lines with LF
  (:func:`oru_conclusion` does) to get the conclusion back exactly.
* **Limits.** hl7apy's limit of 199 characters (after escaping) per component:
  display texts are cut to fit; codes, identifiers and numbers are never cut:
  one that does not fit raises :class:`~kit.errors.InvalidInputError`. A number
  beyond NM's reach (over 199 digits written out, e.g. ``1e300`` or ``1e-250``)
  is written exactly as ``ST`` in Python's notation (``1e+300``): HL7 NM has no exponent.
"""

from __future__ import annotations

import decimal
import hashlib
from typing import Final

import polars as pl

from kit.errors import HL7ParseError, InvalidInputError
from kit.hl7.build import build_oru_r01, validate_er7
from kit.hl7.frames import to_frames
from kit.hl7.message import escape
from kit.hl7.typed import Header, Order, PatientInfo, ResultReport, format_dtm
from kit.results.model import AnalysisResult, Code

__all__ = [
    "CONCLUSION_CODE",
    "FINDING_CODE",
    "FINDING_SITE_CODE",
    "MAX_COMPONENT",
    "SCORE_CODE",
    "control_id",
    "encode_oru",
    "oru_conclusion",
    "read_oru",
]

#: Longest component hl7apy accepts (after escaping).
MAX_COMPONENT: Final = 199
#: OBX-3 of the conclusion lines: LOINC 19005-8 (imaging study impression, narrative).
CONCLUSION_CODE: Final = Code("19005-8", "LN", "Imaging study Impression")
#: OBX-3 of a measurement's ``finding``.
FINDING_CODE: Final = Code("121071", "DCM", "Finding")
#: OBX-3 of a measurement's ``finding_site``.
FINDING_SITE_CODE: Final = Code("363698007", "SCT", "Finding site")
#: OBX-3 of a label's score.
SCORE_CODE: Final = Code("score", "99KIT", "Confidence score")
_REPORT_CODE: Final = Code("18748-4", "LN", "Diagnostic imaging study")


def control_id(result: AnalysisResult) -> str:
    """MSH-10 of ``result``'s ORU: 20 hex characters of SHA-256 over its ``result_id``."""
    return hashlib.sha256(f"kit-oru/{result.result_id}".encode()).hexdigest()[:20].upper()


def _fit(value: str, where: str) -> str:
    """``value`` escaped; a value longer than :data:`MAX_COMPONENT` raises (never cut)."""
    out = escape(value)
    if len(out) > MAX_COMPONENT:
        raise InvalidInputError(f"{where}: {len(out)} characters after HL7 escaping, more than the "
                                f"{MAX_COMPONENT} a component may hold", source=where)
    return out


def _cut(value: str) -> str:
    """``value`` escaped and cut to :data:`MAX_COMPONENT` (display texts only)."""
    out, size = [], 0
    for ch in value:
        e = escape(ch)
        if size + len(e) > MAX_COMPONENT:
            break
        out.append(e)
        size += len(e)
    return "".join(out)


def _ce(code: Code, where: str) -> str:
    return f"{_fit(code.value, where)}^{_cut(code.meaning)}^{_fit(code.scheme, where)}"


def _number(value: float) -> tuple[str, str]:
    """(OBX-2, OBX-5) of a number: NM written out, or ST in Python's exact notation beyond NM's reach."""
    text = format(decimal.Decimal(repr(value)), "f")
    if len(text) > MAX_COMPONENT:
        return "ST", repr(value)
    return "NM", text


def _pieces(line: str) -> list[str]:
    """``line`` escaped, in pieces of at most MAX_COMPONENT, cut before a space where one is near."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for ch in line:
        e = escape(ch)
        if size + len(e) > MAX_COMPONENT:
            raw = "".join(current)
            cut = max(raw.rfind(" ", len(raw) - 60), 0)  # a space within the last 60 characters
            if cut <= 0:
                cut = len(raw)
            pieces.append(raw[:cut])
            current = [raw[cut:]] if cut < len(raw) else []
            size = len(current[0]) if current else 0
        current.append(e)
        size += len(e)
    pieces.append("".join(current))
    return pieces


def _obx(n: int, value_type: str, code: Code, sub_id: str, value: str, units: str, tail: list[str],
         where: str) -> str:
    fields = ["OBX", str(n), value_type, _ce(code, where), sub_id, value, units, "", "", "", "", "F", "", "",
              *tail]
    return "|".join(fields)


def _obx_lines(result: AnalysisResult) -> list[str]:
    alg = result.algorithm
    when = format_dtm(result.created)
    method = f"{_fit(alg.name, 'Algorithm.name')}^{_fit(alg.version, 'Algorithm.version')}"
    tail = [when, "", "", method, "", when]  # OBX-14 .. OBX-19
    lines: list[str] = []

    def add(value_type: str, code: Code, sub_id: str, value: str, units: str, where: str) -> None:
        lines.append(_obx(len(lines) + 1, value_type, code, sub_id, value, units, tail, where))

    finding = 0
    for i, m in enumerate(result.measurements, 1):
        finding += 1
        where = f"measurements[{i - 1}]"
        kind, value = _number(m.value)
        add(kind, m.name, str(finding), value, f"{_fit(m.unit.value, where)}^{_cut(m.unit.meaning)}^UCUM",
            where)
        if m.finding is not None:
            add("CE", FINDING_CODE, str(finding), _ce(m.finding, where), "", where)
        if m.finding_site is not None:
            add("CE", FINDING_SITE_CODE, str(finding), _ce(m.finding_site, where), "", where)
    for i, lb in enumerate(result.labels, 1):
        finding += 1
        where = f"labels[{i - 1}]"
        add("CE", lb.name, str(finding), _ce(lb.value, where), "", where)
        if lb.score is not None:
            kind, value = _number(lb.score)
            add(kind, SCORE_CODE, str(finding), value, "1^^UCUM", where)
    if result.conclusion:
        for number, line in enumerate(result.conclusion.split("\n"), 1):
            for piece in _pieces(line):
                add("TX", CONCLUSION_CODE, str(number), piece, "", "conclusion")
    return lines


def encode_oru(result: AnalysisResult, *, sending_application: str = "KIT", sending_facility: str = "KIT",
               receiving_application: str = "", receiving_facility: str = "", version: str = "2.5.1",
               validate: bool = True) -> str:
    """The ORU^R01 of ``result`` as ER7 text (segments ended by CR); see the module docstring.

    Parameters
    ----------
    result : AnalysisResult
        The result.
    sending_application, sending_facility, receiving_application, receiving_facility : str
        MSH-3 to MSH-6.
    version : str
        MSH-12.
    validate : bool
        Validate with hl7apy (strict) before returning (default).

    Returns
    -------
    str
        The message; the same result gives the same text (MSH-10 :func:`control_id`,
        MSH-7 ``result.created``).

    Raises
    ------
    kit.errors.InvalidInputError
        A code, identifier or number does not fit HL7 v2 (see the module docstring).
    kit.errors.HL7ParseError
        hl7apy rejects the message (with ``validate``).
    """
    if not isinstance(result, AnalysisResult):
        raise InvalidInputError(f"encode_oru needs an AnalysisResult, not {type(result).__name__}")
    s = result.subject
    family, _, rest = (s.patient_name or "").partition("^")
    given = rest.split("^", 1)[0]
    _fit(s.patient_id, "Subject.patient_id")
    _fit(family, "Subject.patient_name")
    _fit(given, "Subject.patient_name")
    accession = s.accession_number or ""
    _fit(accession, "Subject.accession_number")
    header = Header(control_id(result), result.created, sending_application, sending_facility,
                    receiving_application, receiving_facility, version)
    patient = PatientInfo(s.patient_id, family or '""', given, s.patient_birth_date, s.patient_sex or "",
                          identifier_type="MR")
    order = Order(placer_order_number=accession, filler_order_number=result.result_id,
                  accession_number=accession, order_control="RE", order_status="CM",
                  service_code=_REPORT_CODE.value, service_text=_REPORT_CODE.meaning,
                  service_system=_REPORT_CODE.scheme, ordered_time=result.created,
                  observation_time=result.created, result_status="F", modality="RAD",
                  study_instance_uid=s.study_instance_uid)
    segments = build_oru_r01(ResultReport(header, patient, (order,))).split("\r")
    at = next(i for i, seg in enumerate(segments) if seg.startswith("OBR|")) + 1
    segments[at:at] = _obx_lines(result)
    if not all(seg.isascii() for seg in segments):  # say so (MSH-18): the sender writes UTF-8
        segments[0] += "||||||UNICODE UTF-8"
    text = "\r".join(segments)
    if validate:
        validate_er7(text)
    return text


def read_oru(text: str) -> pl.DataFrame:
    """The ``results`` table (:mod:`kit.hl7.frames`) of one ORU^R01: one row per OBX.

    Raises
    ------
    kit.errors.HL7ParseError
        The text is not one readable ORU^R01 (frames put it in ``skipped``).
    """
    frames = to_frames([text], tables=["messages", "results"])
    skipped = frames["skipped"]
    if skipped.height:
        raise HL7ParseError(f"not a readable ORU^R01: {skipped['reason'][0]}")
    types = frames["messages"]["message_type"].to_list()
    if types != ["ORU^R01"]:
        raise HL7ParseError(f"expected one ORU^R01, got {types}")
    return frames["results"]


def oru_conclusion(results: pl.DataFrame) -> str | None:
    """The conclusion :func:`encode_oru` wrote, from a ``results`` table (:func:`read_oru`): exact.

    The TX rows coded :data:`CONCLUSION_CODE` (with system ``LN``), grouped by
    OBX-4 (line number): pieces concatenated, lines joined by LF. None when there are none.
    """
    rows = results.filter((pl.col("observation_code") == CONCLUSION_CODE.value)
                          & (pl.col("observation_system") == CONCLUSION_CODE.scheme)
                          & (pl.col("value_type") == "TX")).sort("set_id")
    if rows.height == 0:
        return None
    lines: dict[str, list[str]] = {}
    for sub_id, value in zip(rows["observation_sub_id"].to_list(), rows["value"].to_list(), strict=True):
        lines.setdefault(sub_id or "", []).append(value or "")
    return "\n".join("".join(p) for p in lines.values())
