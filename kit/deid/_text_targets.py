"""Where free-text PHI is scrubbed: HL7 v2, FHIR and DICOM (pure).

Each function takes the object and a scrubber (:class:`kit.deid.text.TextScrubber`) and
returns a :class:`Scrubbed`: a new object (the input is not changed), the replaced spans per
location (``"OBX(2)-5"``, ``"Composition.text.div"``, ``"ContentSequence[0].TextValue"``)
and the locations that hold text that could not be scrubbed (a non-text attachment).

* HL7 (:func:`scrub_hl7`): OBX-5 of OBX segments whose OBX-2 is ST, TX or FT, and NTE-3.
  Each atomic value is unescaped, scrubbed and escaped again with the message's delimiters;
  formatting escapes (``\\H\\``, ``\\N\\``, ``\\.in\\``, ...) stay as they were.
* FHIR (:func:`scrub_fhir`, resources as JSON dicts, Bundles and contained resources
  included): narrative ``text.div`` (parsed as XML; text, tails and ``title``/``alt``
  attributes scrubbed; serialised again, still well-formed XHTML in the XHTML namespace),
  ``DiagnosticReport.conclusion``, Annotation ``note[].text`` and ``authorString``, and
  ``text/plain`` attachments with inline ``data`` (DocumentReference content, DiagnosticReport
  presentedForm, ...): decoded, scrubbed, encoded, ``size`` and ``hash`` (SHA-1) updated.
  Attachments of other types with inline data are reported in ``skipped``.
* DICOM (:func:`scrub_dicom`): every LT, ST and UT element (free text by definition: SR
  ``TextValue``, ``ImageComments``, ``AdditionalPatientHistory``, ...) and the LO/SH free-text
  attributes of :data:`DICOM_TEXT_KEYWORDS`, in nested sequences too. Coded and structural
  LO/SH values (code meanings, manufacturer, body part) are kept. A value longer than its
  VR allows after replacement is cut at the VR's maximum.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from kit.errors import InvalidInputError
from kit.hl7.message import Message, Segment, escape, unescape

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from kit.deid.text import Span, TextScrubber

__all__ = ["DICOM_TEXT_KEYWORDS", "Scrubbed", "scrub_dicom", "scrub_fhir", "scrub_hl7"]

T = TypeVar("T")

#: LO/SH attributes holding free text (LT, ST and UT are all scrubbed).
DICOM_TEXT_KEYWORDS = frozenset({
    "StudyDescription", "SeriesDescription", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription", "ReasonForStudy",
    "ReasonForTheRequestedProcedure", "AdmittingDiagnosesDescription", "ProtocolName",
    "MedicalAlerts", "Allergies", "AcquisitionDeviceProcessingDescription",
    "ResultsComments", "InterpretationText", "InterpretationDiagnosisDescription",
    "StudyComments", "VisitComments", "ServiceEpisodeDescription"})
_DICOM_FREE_VRS = frozenset({"LT", "ST", "UT"})
_DICOM_MAX = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
_HL7_TEXT_TYPES = frozenset({"ST", "TX", "FT"})
_XHTML = "http://www.w3.org/1999/xhtml"
_XML_DECL = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_MAX_DEPTH = 64


@dataclasses.dataclass(frozen=True)
class Scrubbed(Generic[T]):
    """A scrubbed copy of an object and what was replaced where (no PHI values).

    ``spans`` maps a location to the spans replaced in its text (offsets into the original
    text at that location); ``skipped`` lists locations holding content that could not be
    scrubbed (e.g. a PDF attachment), left as they were.
    """

    value: T
    spans: dict[str, tuple[Span, ...]]
    skipped: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """Number of replaced spans."""
        return sum(len(v) for v in self.spans.values())


class _Report:
    def __init__(self, scrubber: TextScrubber) -> None:
        self.scrubber = scrubber
        self.spans: dict[str, tuple[Span, ...]] = {}
        self.skipped: list[str] = []

    def text(self, value: str, where: str) -> str:
        result = self.scrubber.scrub(value)
        if result.spans:
            self.spans[where] = self.spans.get(where, ()) + result.spans
        return result.text


# -- HL7 -----------------------------------------------------------------------------------------

def _hl7_atomic(raw: str, msg: Message, report: _Report, where: str) -> str:
    """Scrub one escaped atomic value; formatting escape sequences are kept as separators."""
    e = msg.encoding.escape
    textual = {"F", "S", "T", "R", "E", "P", ".br"}  # escapes that stand for characters
    out: list[str] = []
    piece_start = 0
    pattern = re.compile(re.escape(e) + "[^" + re.escape(e) + "]*" + re.escape(e))
    pieces: list[tuple[bool, str]] = []
    for m in pattern.finditer(raw):
        body = m.group()[1:-1]
        resolved = body.startswith(".sp") and unescape(m.group(), msg.encoding) != m.group()
        if body in textual or body.startswith("X") or resolved:
            continue
        pieces.append((True, raw[piece_start:m.start()]))
        pieces.append((False, m.group()))
        piece_start = m.end()
    pieces.append((True, raw[piece_start:]))
    for is_text, piece in pieces:
        if is_text and piece:
            out.append(escape(report.text(unescape(piece, msg.encoding), where), msg.encoding))
        else:
            out.append(piece)
    return "".join(out)


def _hl7_field(raw: str, msg: Message, report: _Report, where: str) -> str:
    enc = msg.encoding
    return enc.repetition.join(
        enc.component.join(
            enc.subcomponent.join(_hl7_atomic(s, msg, report, where) for s in comp.split(enc.subcomponent))
            for comp in rep.split(enc.component))
        for rep in raw.split(enc.repetition))


def scrub_hl7(message: Message, scrubber: TextScrubber) -> Scrubbed[Message]:
    """A copy of ``message`` with the text of OBX (ST/TX/FT) values and NTE comments scrubbed.

    Returns
    -------
    Scrubbed
        ``value`` is the new :class:`~kit.hl7.message.Message`; locations are terser paths
        (``"OBX(2)-5"``, ``"NTE(1)-3"``).
    """
    if not isinstance(message, Message):
        raise InvalidInputError(f"expected kit.hl7.Message, got {type(message).__name__}")
    report = _Report(scrubber)
    seen: dict[str, int] = {}
    segments: list[Segment] = []
    for seg in message.segments():
        seen[seg.name] = seen.get(seg.name, 0) + 1
        where = f"{seg.name}({seen[seg.name]})"
        fields = list(seg.fields)
        if seg.name == "OBX" and seg.field(2).split(message.encoding.component)[0].strip() in _HL7_TEXT_TYPES:
            if len(fields) >= 5:
                fields[4] = _hl7_field(fields[4], message, report, f"{where}-5")
        elif seg.name == "NTE" and len(fields) >= 3:
            fields[2] = _hl7_field(fields[2], message, report, f"{where}-3")
        segments.append(Segment(seg.name, tuple(fields)) if fields != list(seg.fields) else seg)
    return Scrubbed(Message(tuple(segments), message.encoding), report.spans)


# -- FHIR ----------------------------------------------------------------------------------------

def _xhtml(div: str, report: _Report, where: str) -> str:
    if _XML_DECL.search(div):
        raise InvalidInputError("narrative holds a DOCTYPE or ENTITY declaration (FHIR forbids them)",
                                source=where)
    try:
        root = ET.fromstring(div)
    except ET.ParseError as exc:
        raise InvalidInputError(f"narrative is not well-formed XHTML: {exc}", source=where) from exc
    for el in root.iter():
        if el.text:
            el.text = report.text(el.text, where)
        if el.tail and el is not root:
            el.tail = report.text(el.tail, where)
        for attr in ("title", "alt"):
            if el.get(attr):
                el.set(attr, report.text(el.get(attr) or "", where))
    # unqualified XHTML names with one xmlns on the root (ElementTree would write "ns0:" prefixes)
    prefix = f"{{{_XHTML}}}"
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith(prefix):
            el.tag = el.tag[len(prefix):]
    if root.tag == "div":
        root.set("xmlns", _XHTML)
    try:
        return ET.tostring(root, encoding="unicode")
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"narrative cannot be written back: {exc}", source=where) from exc


def _attachment(att: dict[str, Any], report: _Report, where: str) -> None:
    ctype = att.get("contentType")
    if isinstance(att.get("title"), str):
        att["title"] = report.text(att["title"], f"{where}.title")
    if not isinstance(att.get("data"), str):
        return
    mime, _, params = str(ctype or "").partition(";")
    if mime.strip().lower() != "text/plain":
        report.skipped.append(f"{where}.data")
        return
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"')
    try:
        raw = base64.b64decode(att["data"], validate=True)
        text = raw.decode(charset)
    except (binascii.Error, ValueError, LookupError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInputError(f"text/plain attachment cannot be decoded: {exc}", source=where) from exc
    scrubbed = report.text(text, f"{where}.data")
    try:
        data = scrubbed.encode(charset)
    except (UnicodeError, LookupError):
        data = scrubbed.encode("utf-8")
        att["contentType"] = "text/plain; charset=utf-8"
    if data != raw:
        att["data"] = base64.b64encode(data).decode("ascii")
        if "size" in att:
            att["size"] = len(data)
        if "hash" in att:
            att["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")  # noqa: S324


def _fhir_walk(node: Any, path: str, rtype: str, report: _Report, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"FHIR content nested deeper than {_MAX_DEPTH} levels", source=path)
    if isinstance(node, list):
        for i, item in enumerate(node):
            _fhir_walk(item, f"{path}[{i}]", rtype, report, depth + 1)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("resourceType"), str):
        rtype = node["resourceType"]
        path = rtype if not path else path
    narrative = node.get("text")
    if isinstance(narrative, dict) and isinstance(narrative.get("div"), str):
        narrative["div"] = _xhtml(narrative["div"], report, f"{path}.text.div")
    if rtype == "DiagnosticReport" and isinstance(node.get("conclusion"), str) and "resourceType" in node:
        node["conclusion"] = report.text(node["conclusion"], f"{path}.conclusion")
    notes = node.get("note")
    for i, note in enumerate(notes if isinstance(notes, list) else []):
        if isinstance(note, dict):
            for key in ("text", "authorString"):
                if isinstance(note.get(key), str):
                    note[key] = report.text(note[key], f"{path}.note[{i}].{key}")
    if ("contentType" in node or isinstance(node.get("data"), str)) and "origin" not in node:
        _attachment(node, report, path)
    for key, value in node.items():
        if key != "text" and isinstance(value, dict | list):
            _fhir_walk(value, f"{path}.{key}", rtype, report, depth + 1)


def scrub_fhir(resource: Mapping[str, Any], scrubber: TextScrubber) -> Scrubbed[dict[str, Any]]:
    """A copy of a FHIR resource (or Bundle) with its free text scrubbed.

    Raises
    ------
    kit.errors.InvalidInputError
        Not a resource dict, a narrative that is not well-formed XHTML, a text attachment
        that does not decode, or content nested deeper than 64 levels.
    """
    if not isinstance(resource, Mapping) or not isinstance(resource.get("resourceType"), str):
        raise InvalidInputError("expected a FHIR resource (a dict with resourceType)")
    out = copy.deepcopy(dict(resource))
    report = _Report(scrubber)
    _fhir_walk(out, "", "", report, 0)
    return Scrubbed(out, report.spans, tuple(report.skipped))


# -- DICOM ---------------------------------------------------------------------------------------

def _dicom_walk(ds: Dataset, path: str, report: _Report, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise InvalidInputError(f"DICOM sequences nested deeper than {_MAX_DEPTH} levels", source=path)
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        where = f"{path}{name}"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or ()):
                _dicom_walk(item, f"{where}[{i}].", report, depth + 1)
            continue
        free = elem.VR in _DICOM_FREE_VRS
        if not (free or (elem.VR in ("LO", "SH") and elem.keyword in DICOM_TEXT_KEYWORDS)):
            continue
        if elem.value is None or elem.value == "":
            continue
        limit = _DICOM_MAX.get(elem.VR)
        values = list(elem.value) if elem.VM > 1 and not isinstance(elem.value, str) else [elem.value]
        if not all(isinstance(v, str) for v in values):
            report.skipped.append(where)
            continue
        new = [report.text(v, where) for v in values]
        new = [v[:limit] if limit else v for v in new]
        if new != values:
            elem.value = new if len(new) > 1 else new[0]


def scrub_dicom(dataset: Dataset, scrubber: TextScrubber) -> Scrubbed[Dataset]:
    """A copy of a DICOM dataset with its free-text attributes and SR TEXT values scrubbed.

    Locations are keyword paths (``"ContentSequence[0].TextValue"``).
    """
    from pydicom.dataset import Dataset as _Dataset

    if not isinstance(dataset, _Dataset):
        raise InvalidInputError(f"expected a pydicom Dataset, got {type(dataset).__name__}")
    out = copy.deepcopy(dataset)
    report = _Report(scrubber)
    try:
        _dicom_walk(out, "", report, 0)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise InvalidInputError(f"cannot read the dataset's text attributes: {exc}") from exc
    return Scrubbed(out, report.spans, tuple(report.skipped))
