"""Build HL7 v2 messages: ACK, ADT, ORM, ORU^R01, SIU, MDM (pure).

The builders take the typed dataclasses of :mod:`kit.hl7.typed`, so
``parse_message(build_x(obj)).typed() == obj``. Text is written by hand here
(hl7apy's object model is slow and drops nothing we need to keep), every value
escaped with :func:`kit.hl7.message.escape`; ``validate=True`` re-parses the
result with hl7apy (``find_groups=True``, strict validation against the v2
message structure of the message's version) and raises
:class:`~kit.errors.HL7ParseError` if hl7apy rejects it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid

from kit.errors import HL7ParseError
from kit.hl7.message import STANDARD_ENCODING, Encoding, Message, escape
from kit.hl7.typed import (
    AckCode,
    AdtEvent,
    Appointment,
    Document,
    Header,
    ObservationResult,
    Order,
    OrderMessage,
    PatientInfo,
    ResultReport,
    Visit,
    format_dtm,
)

__all__ = [
    "MAX_ACK_TEXT",
    "MAX_ECHO",
    "AckCode",
    "AckError",
    "build_ack",
    "build_adt",
    "build_mdm",
    "build_orm",
    "build_oru_r01",
    "build_siu",
    "validate_er7",
]


@dataclasses.dataclass(frozen=True)
class AckError:
    """What went wrong, for the ERR segment of a negative ACK.

    Parameters
    ----------
    code : int
        HL7 table 0357 error code: 100 segment sequence error, 101 required
        field missing, 102 data type error, 103 table value not found, 200
        unsupported message type, 201 unsupported event code, 202 unsupported
        processing id, 203 unsupported version id, 204 unknown key identifier,
        205 duplicate key, 206 application record locked, 207 application
        internal error (default).
    text : str
        Human-readable description (ERR-8 in v2.5+, ELD-4.2 before).
    segment : str or None
        Segment id where the error is (e.g. ``"PID"``).
    sequence : int
        Which occurrence of that segment (1-based).
    field : int or None
        Field number within the segment.
    """

    code: int = 207
    text: str = ""
    segment: str | None = None
    sequence: int = 1
    field: int | None = None

    _TEXTS = {0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing",
              102: "Data type error", 103: "Table value not found", 200: "Unsupported message type",
              201: "Unsupported event code", 202: "Unsupported processing id",
              203: "Unsupported version id", 204: "Unknown key identifier", 205: "Duplicate key",
              206: "Application record locked", 207: "Application internal error"}

    def __post_init__(self) -> None:
        if self.code not in self._TEXTS:
            raise ValueError(f"unknown HL7 table 0357 error code {self.code}")
        if self.sequence < 1 or (self.field is not None and self.field < 1):
            raise ValueError("sequence and field are 1-based")

    @property
    def code_text(self) -> str:
        """The table 0357 text of ``code``."""
        return self._TEXTS[self.code]

    @classmethod
    def from_exception(cls, exc: BaseException) -> AckError:
        """An error for a failure: HL7ParseError keeps its segment/field (code 100/102), others 207."""
        if isinstance(exc, HL7ParseError):
            return cls(102 if exc.field else 100, str(exc), exc.segment, 1, exc.field)
        return cls(207, str(exc) or type(exc).__name__)


#: Longest value copied from the acknowledged message into an ACK (MSH-10 / MSA-2 length in v2.7).
MAX_ECHO = 199
#: Longest free text (MSA-3, ERR-8) in an ACK.
MAX_ACK_TEXT = 250


def _ts(when: dt.datetime | None) -> str:
    return format_dtm(when if when is not None else dt.datetime.now().astimezone())


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = version.split(".")[:3]
    if all(0 < len(p) <= 4 and p.isascii() and p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return (2, 5)


def build_ack(message: Message | None, code: AckCode = AckCode.AA, text: str | None = None,
              error: AckError | BaseException | None = None, *, control_id: str | None = None,
              timestamp: dt.datetime | None = None, sending_application: str | None = None,
              sending_facility: str | None = None) -> str:
    """The acknowledgement of ``message`` as ER7 text (segments ended by CR).

    Parameters
    ----------
    message : Message or None
        The message being acknowledged; None when it could not even be parsed
        (MSA-2 is then empty and the header defaults are used).
    code : AckCode
        MSA-1.
    text : str, optional
        MSA-3 text message.
    error : AckError or exception, optional
        For AE/AR/CE/CR: an ERR segment with the error code and location.
        An exception is converted with :meth:`AckError.from_exception`. When
        ``code`` is negative and no error is given, code 207 with ``text``.
    control_id : str, optional
        MSH-10 of the ACK (default: a fresh random id of 20 characters).
    timestamp : datetime, optional
        MSH-7 (default: now).
    sending_application, sending_facility : str, optional
        MSH-3/4 of the ACK; default: the original's receiving application/facility.

    Returns
    -------
    str
        MSH (sender and receiver swapped), MSA and, for negative codes, ERR.
        Whatever a peer sent is echoed bounded: values copied from ``message``
        are cut to :data:`MAX_ECHO` characters and texts to :data:`MAX_ACK_TEXT`
        (before escaping), so an ACK is a few kilobytes at most.
    """
    if not isinstance(code, AckCode):
        code = AckCode(code)
    enc = message.encoding if message is not None else STANDARD_ENCODING
    version = (message.version if message is not None else "") or "2.5.1"
    trigger = message.trigger if message is not None else ""

    def esc(value: str, limit: int = MAX_ECHO) -> str:
        return escape(value[:limit], enc)

    f, c = enc.field, enc.component
    msh = [
        "MSH", enc.msh2,
        esc(sending_application if sending_application is not None
            else (message.receiving_application if message else "KIT")),
        esc(sending_facility if sending_facility is not None
            else (message.receiving_facility if message else "")),
        esc(message.sending_application if message else ""),
        esc(message.sending_facility if message else ""),
        _ts(timestamp), "",
        (c.join(("ACK", esc(trigger), "ACK") if _version_tuple(version) >= (2, 4) else ("ACK", esc(trigger)))
         if trigger else "ACK"),
        esc(control_id if control_id is not None else uuid.uuid4().hex[:20]),
        esc((message.processing_id if message else "") or "P"),
        esc(version),
    ]
    segments = [f.join(msh)]
    msa = ["MSA", code.value, esc(message.control_id if message else "")]
    if text:
        msa.append(esc(text, MAX_ACK_TEXT))
    segments.append(f.join(msa))
    if not code.is_positive:
        if error is None:
            error = AckError(207, text or "")
        elif not isinstance(error, AckError):
            error = AckError.from_exception(error)
        segments.append(_err(error, enc, version))
    return "".join(s + "\r" for s in segments)


def _err(error: AckError, enc: Encoding, version: str) -> str:
    f, c, s = enc.field, enc.component, enc.subcomponent
    seg, fld = escape((error.segment or "")[:MAX_ECHO], enc), str(error.field or "")
    text = (error.text or "")[:MAX_ACK_TEXT]
    if _version_tuple(version) < (2, 5):  # ERR-1 error code and location (ELD)
        eld = c.join((seg, str(error.sequence) if seg else "", fld,
                      s.join((str(error.code), escape(text or error.code_text, enc), "HL70357"))))
        return f.join(("ERR", eld))
    location = c.join((seg, str(error.sequence), fld)) if seg else ""
    code = c.join((str(error.code), escape(error.code_text, enc), "HL70357"))
    return f.join(("ERR", "", location, code, "E", "", "", "", escape(text, enc)))


# -- writers over the typed dataclasses ----------------------------------------------------------
Fields = list[str]


def _c(*components: str) -> str:
    """One field from its component values (escaped, trailing empties trimmed)."""
    parts = [escape(c) for c in components]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def _seg(name: str, *fields: str) -> str:
    values = list(fields)
    while values and not values[-1]:
        values.pop()
    return "|".join((name, *values))


def _msh(header: Header, message_type: str, structure: str) -> str:
    code, _, trigger = message_type.partition("^")
    if _version_tuple(header.version) < (2, 4):  # MSH-9.3 (message structure) came with v2.4
        structure = ""
    return _seg("MSH", "^~\\&", _c(header.sending_application), _c(header.sending_facility),
                _c(header.receiving_application), _c(header.receiving_facility), format_dtm(header.timestamp),
                "", _c(code, trigger, structure), _c(header.control_id), _c(header.processing_id),
                _c(header.version))


def _pid(p: PatientInfo) -> str:
    return _seg("PID", "1", "", _c(p.patient_id, "", "", p.assigning_authority, p.identifier_type), "",
                _c(p.family, p.given), "", format_dtm(p.birth_date), _c(p.sex), "", "",
                _c(p.street, "", p.city, p.state, p.postal_code, p.country), "", _c(p.phone))


def _pv1(v: Visit) -> str:
    return _seg("PV1", "1", _c(v.patient_class), _c(v.location, v.room, v.bed), "", "", "",
                _c(v.attending_doctor_id, v.attending_doctor_family, v.attending_doctor_given), "", "",
                _c(v.hospital_service), "", "", "", "", "", "", "", "", _c(v.visit_number),
                *([""] * 24), format_dtm(v.admit_time), format_dtm(v.discharge_time))


def _orc(o: Order) -> str:
    return _seg("ORC", _c(o.order_control), _c(o.placer_order_number), _c(o.filler_order_number), "",
                _c(o.order_status), "", "", "", format_dtm(o.ordered_time))


def _obr(o: Order, set_id: int) -> str:
    f = [""] * 25
    f[0], f[1], f[2] = str(set_id), _c(o.placer_order_number), _c(o.filler_order_number)
    f[3] = _c(o.service_code, o.service_text, o.service_system)
    f[6], f[17] = format_dtm(o.observation_time), _c(o.accession_number)
    f[23], f[24] = _c(o.modality), _c(o.result_status)
    return _seg("OBR", *f)


def _obx(r: ObservationResult) -> str:
    value = "~".join("^".join("&".join(escape(s) for s in comp.split("&")) for comp in rep.split("^"))
                     for rep in r.value.split("~")) if r.value else ""
    flags = "~".join(escape(f) for f in r.abnormal_flags.split("~")) if r.abnormal_flags else ""
    return _seg("OBX", str(r.set_id), _c(r.value_type), _c(r.code, r.text, r.system), _c(r.sub_id), value,
                _c(r.units), _c(r.reference_range), flags, "", "", _c(r.status), "", "",
                format_dtm(r.observation_time))


def _orders(orders: tuple[Order, ...], with_results: bool) -> list[str]:
    out: list[str] = []
    for i, o in enumerate(orders, 1):
        out += [_orc(o), _obr(o, i)]
        if with_results:
            out += [_obx(r) for r in o.observations]
        if o.study_instance_uid:  # after the group's OBXs: hl7apy loses the group otherwise
            out.append(_seg("ZDS", _c(o.study_instance_uid, "", "Application", "DICOM")))
    return out


def _join(segments: list[str]) -> str:
    return "".join(s + "\r" for s in segments)


def write_adt(e: AdtEvent) -> str:
    """ER7 text of an ADT event."""
    structure = {"A01": "ADT_A01", "A04": "ADT_A01", "A08": "ADT_A01", "A13": "ADT_A01",
                 "A02": "ADT_A02", "A03": "ADT_A03", "A11": "ADT_A09", "A40": "ADT_A39"}.get(e.trigger, "")
    segs = [_msh(e.header, e.message_type, structure),
            _seg("EVN", _c(e.trigger), format_dtm(e.event_time)), _pid(e.patient)]
    if e.prior_patient_id:
        segs.append(_seg("MRG", _c(e.prior_patient_id)))
    if e.visit is not None:
        segs.append(_pv1(e.visit))
    return _join(segs)


def write_orm(m: OrderMessage) -> str:
    """ER7 text of an ORM^O01 / OML^O21."""
    structure = "ORM_O01" if m.message_type == "ORM^O01" else "OML_O21"
    segs = [_msh(m.header, m.message_type, structure), _pid(m.patient)]
    if m.visit is not None:
        segs.append(_pv1(m.visit))
    return _join(segs + _orders(m.orders, with_results=False))


def write_oru(r: ResultReport) -> str:
    """ER7 text of an ORU^R01."""
    segs = [_msh(r.header, "ORU^R01", "ORU_R01"), _pid(r.patient)]
    if r.visit is not None:
        segs.append(_pv1(r.visit))
    return _join(segs + _orders(r.orders, with_results=True))


_SIU_EVENT_REASONS = {"S12": "New appointment", "S13": "Rescheduled", "S14": "Modified",
                      "S15": "Cancelled", "S26": "No-show"}


def write_siu(a: Appointment) -> str:
    """ER7 text of an SIU^S12-S15/S26."""
    duration = str(a.duration_minutes) if a.duration_minutes is not None else ""
    timing = _c("", "", "", format_dtm(a.start), format_dtm(a.end))
    sch = [""] * 27
    sch[0], sch[1] = _c(a.placer_appointment_id), _c(a.filler_appointment_id)
    sch[5] = _c(a.trigger, _SIU_EVENT_REASONS[a.trigger], "HL7")  # SCH-6, required
    sch[15] = sch[19] = _c(a.header.sending_application)  # SCH-16/20 contact, entered by: required
    sch[6], sch[7] = _c("", a.reason), _c(a.appointment_type)
    sch[8], sch[9] = duration, "min" if duration else ""
    sch[10], sch[24], sch[26] = timing, _c(a.status), _c(a.accession_number)
    segs = [_msh(a.header, a.message_type, "SIU_S12"), _seg("SCH", *sch)]
    if a.patient is not None:
        segs.append(_pid(a.patient))
    segs.append(_seg("RGS", "1"))
    start = format_dtm(a.start)
    if a.service_code or a.service_text:
        segs.append(_seg("AIS", "1", "", _c(a.service_code, a.service_text), start, "", "", duration,
                         "min" if duration else ""))
    if a.resource_id or a.resource_type:
        segs.append(_seg("AIG", "1", "", _c(a.resource_id), _c(a.resource_type), "", "", "", start))
    if a.location:
        segs.append(_seg("AIL", "1", "", _c(a.location), "", "", start))
    if a.personnel_id:
        segs.append(_seg("AIP", "1", "", _c(a.personnel_id), "", "", start))
    return _join(segs)


def write_mdm(d: Document) -> str:
    """ER7 text of an MDM^T02/T04."""
    txa = [""] * 19
    txa[0], txa[1], txa[3] = "1", _c(d.document_type), format_dtm(d.activity_time)
    txa[11], txa[14] = _c(d.unique_document_number), _c(d.accession_number)
    txa[16], txa[18] = _c(d.completion_status), _c(d.availability_status)
    segs = [_msh(d.header, d.message_type, "MDM_T02"),
            _seg("EVN", _c(d.trigger), format_dtm(d.activity_time)),
            _pid(d.patient), _pv1(d.visit), _seg("TXA", *txa)]
    if d.text:
        segs += [_seg("OBX", str(i), "TX", _c(d.document_type or "TX", "Document text"), "", escape(line),
                      "", "", "", "", "", "F")
                 for i, line in enumerate(d.text.split("\n"), 1)]
    return _join(segs)


def _finish(text: str, validate: bool) -> str:
    if validate:
        validate_er7(text)
    return text


def build_adt(event: AdtEvent, *, validate: bool = False) -> str:
    """ADT^A01/A02/A03/A04/A08/A11/A13/A40 for ``event``: MSH, EVN, PID, [MRG], [PV1]."""
    return _finish(write_adt(event), validate)


def build_orm(order: OrderMessage, *, validate: bool = False) -> str:
    """ORM^O01 (or OML^O21 per ``order.message_type``): MSH, PID, [PV1], then ORC, OBR[, ZDS] per order."""
    return _finish(write_orm(order), validate)


def build_oru_r01(report: ResultReport, *, validate: bool = False) -> str:
    """ORU^R01: MSH, PID, [PV1], then per order ORC, OBR[, ZDS] and its OBX results."""
    return _finish(write_oru(report), validate)


def build_siu(appointment: Appointment, *, validate: bool = False) -> str:
    """SIU^S12-S15/S26: MSH, SCH, [PID], RGS, then AIS, AIG, AIL, AIP as filled in."""
    return _finish(write_siu(appointment), validate)


def build_mdm(document: Document, *, validate: bool = False) -> str:
    """MDM^T02/T04: MSH, EVN, PID, PV1, TXA and the text as one OBX|TX per line."""
    return _finish(write_mdm(document), validate)


def validate_er7(text: str) -> None:
    """Validate ER7 text with hl7apy against its version's message structure.

    hl7apy models the ORM^O01 choice group ``<OBR|RQD|RQ1|RXO|ODS|ODT>`` as if
    every member were required; that one false error ("Missing required child
    ..._SUPPGRP.RQD" etc.) is ignored, every other error is reported.

    Raises
    ------
    kit.errors.HL7ParseError
        hl7apy could not parse it, or strict validation failed (all errors in the message).
    """
    import tempfile

    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message as hl7apy_parse
    from hl7apy.validation import Validator

    try:
        msg = hl7apy_parse(text.replace("\n", "\r"), validation_level=VALIDATION_LEVEL.STRICT,
                           find_groups=True)
    except Exception as exc:  # hl7apy raises many unrelated types
        raise HL7ParseError(f"hl7apy could not parse the message: {exc}") from exc
    with tempfile.NamedTemporaryFile("r", suffix=".txt", encoding="utf-8") as report:
        try:
            Validator.validate(msg, reference=msg.reference, report_file=report.name)
            return
        except Exception as exc:
            first: Exception = exc
        lines = report.read().splitlines()
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    real = [e for e in errors if not re.match(r"Missing required child \w+_SUPPGRP\.\w+\Z", e)]
    if real or not errors:
        raise HL7ParseError("hl7apy validation failed: " + "; ".join(real or [str(first)])) from first
