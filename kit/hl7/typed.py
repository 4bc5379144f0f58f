"""Typed views of common HL7 v2 messages: small frozen dataclasses (pure).

:func:`typed` (also :meth:`kit.hl7.message.Message.typed`) maps a parsed
message to one of:

=============================================  =====================
ADT^A01 A02 A03 A04 A08 A11 A13 A40             :class:`AdtEvent`
ORM^O01, OML^O21                                :class:`OrderMessage`
ORU^R01                                         :class:`ResultReport`
SIU^S12 S13 S14 S15 S26 (SCH-1 or SCH-2 id)     :class:`Appointment`
MDM^T02 T04                                     :class:`Document`
ACK                                             :class:`Ack`
anything else                                   :class:`Generic`
=============================================  =====================

The builders of :mod:`kit.hl7.build` take the same dataclasses, so
``parse_message(build_adt(e)).typed() == e``. Timestamps are ``datetime``
(timezone-aware when the message gives an offset; precision 100 µs as HL7 DTM
allows four fractional digits), dates ``date``. Missing values are ``""`` or None.

:func:`typed` raises only :class:`~kit.errors.HL7ParseError` (e.g. an appointment
that ends before it starts); a message it does not model is ``Generic``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re

from kit.errors import HL7ParseError
from kit.hl7.message import Message

__all__ = [
    "ADT_TRIGGERS",
    "Ack",
    "AckCode",
    "AdtEvent",
    "Appointment",
    "Document",
    "Generic",
    "Header",
    "ObservationResult",
    "Order",
    "OrderMessage",
    "PatientInfo",
    "ResultReport",
    "SIU_TRIGGERS",
    "TypedMessage",
    "Visit",
    "format_dtm",
    "parse_dtm",
    "typed",
]

ADT_TRIGGERS = frozenset({"A01", "A02", "A03", "A04", "A08", "A11", "A13", "A40"})
SIU_TRIGGERS = frozenset({"S12", "S13", "S14", "S15", "S26"})
MDM_TRIGGERS = frozenset({"T02", "T04"})

_DTM = re.compile(r"([0-9]{4})([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?([0-9]{2})?(?:\.([0-9]{1,6}))?"
                  r"([+-][0-9]{4})?\Z")


def parse_dtm(value: str) -> dt.datetime | None:
    """An HL7 DTM/TS (``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]``) as datetime; None if empty or invalid."""
    m = _DTM.match(value.strip())
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, offset = m.groups()
    try:
        tz = None
        if offset:
            sign = -1 if offset[0] == "-" else 1
            tz = dt.timezone(sign * dt.timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        return dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                           int(second or 0), int((frac or "0").ljust(6, "0")), tzinfo=tz)
    except ValueError:
        return None


def parse_dt(value: str) -> dt.date | None:
    """An HL7 DT (``YYYYMMDD``, or a DTM whose date part is used); None if empty or invalid."""
    parsed = parse_dtm(value)
    return parsed.date() if parsed is not None else None


def format_dtm(value: dt.datetime | dt.date | None) -> str:
    """HL7 DTM text: ``YYYYMMDDHHMMSS[.SSSS][+ZZZZ]`` (dates ``YYYYMMDD``); ``""`` for None."""
    if value is None:
        return ""
    if not isinstance(value, dt.datetime):
        return value.strftime("%Y%m%d")
    text = value.strftime("%Y%m%d%H%M%S")
    if value.microsecond:
        text += f".{value.microsecond // 100:04d}"
    offset = value.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds() // 60)
        sign = "-" if minutes < 0 else "+"
        text += f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    return text


class AckCode(enum.Enum):
    """MSA-1 acknowledgement codes (HL7 table 0008)."""

    AA = "AA"  #: original mode: application accept
    AE = "AE"  #: original mode: application error
    AR = "AR"  #: original mode: application reject
    CA = "CA"  #: enhanced mode: commit accept
    CE = "CE"  #: enhanced mode: commit error
    CR = "CR"  #: enhanced mode: commit reject

    @property
    def is_positive(self) -> bool:
        """True for AA and CA."""
        return self in (AckCode.AA, AckCode.CA)


@dataclasses.dataclass(frozen=True)
class Header:
    """The MSH fields every message has (the message type lives on the typed class)."""

    control_id: str
    timestamp: dt.datetime | None = None
    sending_application: str = "KIT"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    version: str = "2.5.1"
    processing_id: str = "P"

    def __post_init__(self) -> None:
        if not self.control_id:
            raise ValueError("MSH-10 control id must not be empty")

    @classmethod
    def of(cls, message: Message) -> Header:
        """The header of a parsed message."""
        return cls(message.control_id or "?", parse_dtm(message.get("MSH-7")), message.sending_application,
                   message.sending_facility, message.receiving_application, message.receiving_facility,
                   message.version, message.processing_id)


@dataclasses.dataclass(frozen=True)
class PatientInfo:
    """PID: ``patient_id`` is PID-3's first identifier (the MRN), the cross-system join key."""

    patient_id: str
    family: str = ""
    given: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    assigning_authority: str = ""
    identifier_type: str = "MR"
    street: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    phone: str = ""

    def __post_init__(self) -> None:
        if not self.patient_id:
            raise ValueError("PID-3 patient identifier must not be empty")

    @classmethod
    def of(cls, m: Message) -> PatientInfo | None:
        """PID of ``m`` (first occurrence), or None without PID or PID-3."""
        pid = m.segment("PID")
        if pid is None or not m.get("PID-3.1"):
            return None
        return cls(m.get("PID-3.1"), m.get("PID-5.1.1"), m.get("PID-5.2"), parse_dt(m.get("PID-7")),
                   m.get("PID-8"), m.get("PID-3.4.1"), m.get("PID-3.5"), m.get("PID-11.1.1"),
                   m.get("PID-11.3"), m.get("PID-11.4"), m.get("PID-11.5"), m.get("PID-11.6"),
                   m.get("PID-13.1"))


@dataclasses.dataclass(frozen=True)
class Visit:
    """PV1: patient class, location, attending doctor, visit number, admit/discharge."""

    patient_class: str = "O"
    location: str = ""
    room: str = ""
    bed: str = ""
    attending_doctor_id: str = ""
    attending_doctor_family: str = ""
    attending_doctor_given: str = ""
    hospital_service: str = ""
    visit_number: str = ""
    admit_time: dt.datetime | None = None
    discharge_time: dt.datetime | None = None

    @classmethod
    def of(cls, m: Message) -> Visit | None:
        """PV1 of ``m``, or None."""
        if m.segment("PV1") is None:
            return None
        return cls(m.get("PV1-2"), m.get("PV1-3.1"), m.get("PV1-3.2"), m.get("PV1-3.3"), m.get("PV1-7.1"),
                   m.get("PV1-7.2.1"), m.get("PV1-7.3"), m.get("PV1-10"), m.get("PV1-19.1"),
                   parse_dtm(m.get("PV1-44")), parse_dtm(m.get("PV1-45")))


@dataclasses.dataclass(frozen=True)
class ObservationResult:
    """One OBX. ``value`` is OBX-5 as text (components joined by ``^``, repetitions by ``~``)."""

    set_id: int
    value_type: str
    code: str
    text: str = ""
    system: str = ""
    value: str = ""
    units: str = ""
    reference_range: str = ""
    abnormal_flags: str = ""
    status: str = "F"
    observation_time: dt.datetime | None = None
    sub_id: str = ""

    def __post_init__(self) -> None:
        if self.set_id < 1:
            raise ValueError("OBX-1 set id is 1-based")
        if not self.value_type:
            raise ValueError("OBX-2 value type must not be empty")

    @property
    def numeric(self) -> float | None:
        """The value as a number for NM results, else None."""
        if self.value_type != "NM":
            return None
        try:
            return float(self.value)
        except ValueError:
            return None


@dataclasses.dataclass(frozen=True)
class Order:
    """ORC + OBR (+ ZDS), with the OBX results that follow the OBR in an ORU.

    ``accession_number`` is OBR-18 (placer field 1, where IHE radiology puts it);
    ``study_instance_uid`` is ZDS-1.1 when a ZDS segment follows the OBR.
    """

    placer_order_number: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    order_control: str = "NW"
    order_status: str = ""
    service_code: str = ""
    service_text: str = ""
    service_system: str = ""
    ordered_time: dt.datetime | None = None
    observation_time: dt.datetime | None = None
    result_status: str = ""
    modality: str = ""
    study_instance_uid: str = ""
    observations: tuple[ObservationResult, ...] = ()


@dataclasses.dataclass(frozen=True)
class AdtEvent:
    """ADT^A01/A02/A03/A04/A08/A11/A13/A40; ``prior_patient_id`` is MRG-1 (A40 merges)."""

    header: Header
    trigger: str
    patient: PatientInfo
    event_time: dt.datetime | None = None
    visit: Visit | None = None
    prior_patient_id: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"A\d\d", self.trigger):
            raise ValueError(f"not an ADT trigger event: {self.trigger!r}")

    @property
    def message_type(self) -> str:
        """``"ADT^A01"`` etc."""
        return f"ADT^{self.trigger}"


@dataclasses.dataclass(frozen=True)
class OrderMessage:
    """ORM^O01 or OML^O21: a patient and one or more orders."""

    header: Header
    patient: PatientInfo
    orders: tuple[Order, ...]
    visit: Visit | None = None
    message_type: str = "ORM^O01"

    def __post_init__(self) -> None:
        if self.message_type not in ("ORM^O01", "OML^O21"):
            raise ValueError(f"order message type must be ORM^O01 or OML^O21, not {self.message_type!r}")


@dataclasses.dataclass(frozen=True)
class ResultReport:
    """ORU^R01: a patient and orders, each with its OBX results."""

    header: Header
    patient: PatientInfo
    orders: tuple[Order, ...]
    visit: Visit | None = None

    @property
    def message_type(self) -> str:
        """``"ORU^R01"``."""
        return "ORU^R01"

    @property
    def results(self) -> tuple[ObservationResult, ...]:
        """All OBX results, in order."""
        return tuple(o for order in self.orders for o in order.observations)


@dataclasses.dataclass(frozen=True)
class Appointment:
    """SIU^S12 (new), S13 (rescheduled), S14 (modified), S15 (cancelled), S26 (no-show).

    ``placer_appointment_id`` is SCH-1.1 and ``filler_appointment_id`` SCH-2.1; at
    least one is required (many scheduling systems send only the filler id);
    :attr:`appointment_id` is the placer id, else the filler id. Start and end come
    from SCH-11.4/.5 (else AIS/AIL/AIG start plus duration);
    ``accession_number`` is SCH-27.1 (filler order number), ``location`` AIL-3.1,
    ``resource_id``/``resource_type`` AIG-3.1/AIG-4.1 (e.g. the modality).
    """

    header: Header
    trigger: str
    placer_appointment_id: str
    filler_appointment_id: str = ""
    patient: PatientInfo | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    status: str = ""
    reason: str = ""
    appointment_type: str = ""
    accession_number: str = ""
    service_code: str = ""
    service_text: str = ""
    resource_id: str = ""
    resource_type: str = ""
    location: str = ""
    personnel_id: str = ""

    def __post_init__(self) -> None:
        if self.trigger not in SIU_TRIGGERS:
            raise ValueError(f"SIU trigger must be one of {sorted(SIU_TRIGGERS)}, not {self.trigger!r}")
        if not self.placer_appointment_id and not self.filler_appointment_id:
            raise ValueError("SCH-1 placer and SCH-2 filler appointment ids are both empty")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("appointment ends before it starts")

    @property
    def message_type(self) -> str:
        """``"SIU^S12"`` etc."""
        return f"SIU^{self.trigger}"

    @property
    def appointment_id(self) -> str:
        """The id the appointment is known by: SCH-1 placer id, else SCH-2 filler id."""
        return self.placer_appointment_id or self.filler_appointment_id

    @property
    def duration_minutes(self) -> int | None:
        """End minus start in whole minutes, or None."""
        if self.start is None or self.end is None:
            return None
        return int((self.end - self.start).total_seconds() // 60)


@dataclasses.dataclass(frozen=True)
class Document:
    """MDM^T02 (original document) / T04 (status change): TXA and the text from OBX|TX lines."""

    header: Header
    trigger: str
    patient: PatientInfo
    unique_document_number: str
    document_type: str = ""
    activity_time: dt.datetime | None = None
    completion_status: str = ""
    availability_status: str = ""
    accession_number: str = ""
    text: str = ""
    visit: Visit = dataclasses.field(default_factory=Visit)

    def __post_init__(self) -> None:
        if self.trigger not in MDM_TRIGGERS:
            raise ValueError(f"MDM trigger must be T02 or T04, not {self.trigger!r}")
        if not self.unique_document_number:
            raise ValueError("TXA-12 unique document number must not be empty")

    @property
    def message_type(self) -> str:
        """``"MDM^T02"`` etc."""
        return f"MDM^{self.trigger}"


@dataclasses.dataclass(frozen=True)
class Ack:
    """An acknowledgement: MSA-1 code, MSA-2 acknowledged control id, MSA-3 text, ERR details."""

    header: Header
    code: AckCode
    control_id: str
    text: str = ""
    error_code: int | None = None
    error_text: str = ""
    error_segment: str = ""
    error_field: int | None = None
    #: ERR-4 (v2.5 and later): E error, F fatal, W warning, I information; "" when not given
    error_severity: str = ""

    @property
    def message_type(self) -> str:
        """``"ACK"``."""
        return "ACK"

    @property
    def is_positive(self) -> bool:
        """True for AA/CA."""
        return self.code.is_positive


@dataclasses.dataclass(frozen=True)
class Generic:
    """Any other message: only the header and the type are typed; use the ``Message`` for the rest."""

    header: Header
    message_type: str


TypedMessage = AdtEvent | OrderMessage | ResultReport | Appointment | Document | Ack | Generic


def _int(value: str) -> int | None:
    """A non-negative integer of at most 9 ASCII digits, else None."""
    v = value.strip()
    return int(v) if 0 < len(v) <= 9 and v.isascii() and v.isdigit() else None


def _obx(m: Message, index: int) -> ObservationResult:
    path = f"OBX({index})"
    return ObservationResult(
        _int(m.get(f"{path}-1")) or index, m.get(f"{path}-2") or "ST", m.get(f"{path}-3.1"),
        m.get(f"{path}-3.2"), m.get(f"{path}-3.3"), _obx_value(m, index), m.get(f"{path}-6.1"),
        m.get(f"{path}-7"), "~".join(m.get(f"{path}-8({r})") for r in range(1, len(m.repetitions(
            f"{path}-8")) + 1)), m.get(f"{path}-11"), parse_dtm(m.get(f"{path}-14")), m.get(f"{path}-4"))


def _obx_value(m: Message, index: int) -> str:
    count = len(m.repetitions(f"OBX({index})-5"))
    return "~".join(m.get(f"OBX({index})-5({r})") for r in range(1, count + 1))


def _orders(m: Message) -> tuple[Order, ...]:
    """ORC/OBR/ZDS/OBX groups in order: an ORC opens a group, an OBR without a preceding ORC too."""
    groups: list[dict[str, int | list[int]]] = []
    counts: dict[str, int] = {}
    for seg in m.segments():
        n = counts[seg.name] = counts.get(seg.name, 0) + 1
        if seg.name == "ORC" or (seg.name == "OBR" and (not groups or "OBR" in groups[-1])):
            groups.append({"obx": []})
        if not groups:
            continue
        if seg.name in ("ORC", "OBR", "ZDS"):
            groups[-1].setdefault(seg.name, n)
        elif seg.name == "OBX":
            obx = groups[-1]["obx"]
            assert isinstance(obx, list)
            obx.append(n)
    out = []
    for g in groups:
        orc = f"ORC({g['ORC']})" if "ORC" in g else None
        obr = f"OBR({g['OBR']})" if "OBR" in g else None

        def get(seg: str | None, rest: str) -> str:
            return m.get(f"{seg}-{rest}") if seg else ""

        obx = g["obx"]
        assert isinstance(obx, list)
        out.append(Order(
            get(obr, "2.1") or get(orc, "2.1"), get(obr, "3.1") or get(orc, "3.1"), get(obr, "18.1"),
            get(orc, "1"), get(orc, "5"), get(obr, "4.1"), get(obr, "4.2"), get(obr, "4.3"),
            parse_dtm(get(orc, "9")), parse_dtm(get(obr, "7")), get(obr, "25"), get(obr, "24"),
            m.get(f"ZDS({g['ZDS']})-1.1") if "ZDS" in g else "",
            tuple(_obx(m, i) for i in obx)))
    return tuple(out)


def _appointment(m: Message, header: Header) -> Appointment:
    start = parse_dtm(m.get("SCH-11.4")) or parse_dtm(m.get("AIS-4")) or parse_dtm(m.get("AIL-6")) \
        or parse_dtm(m.get("AIG-8"))
    end = parse_dtm(m.get("SCH-11.5"))
    if end is None and start is not None:
        minutes = _int(m.get("AIS-7")) or _int(m.get("SCH-9"))
        if minutes is not None:
            try:
                end = start + dt.timedelta(minutes=minutes)
            except OverflowError as exc:
                raise HL7ParseError(f"appointment duration of {minutes} minutes is out of range",
                                    segment="AIS", field=7) from exc
    return Appointment(
        header, m.trigger, m.get("SCH-1.1"), m.get("SCH-2.1"), PatientInfo.of(m), start, end,
        m.get("SCH-25.1"), m.get("SCH-7.2") or m.get("SCH-7.1"), m.get("SCH-8.1"), m.get("SCH-27.1"),
        m.get("AIS-3.1"), m.get("AIS-3.2"), m.get("AIG-3.1"), m.get("AIG-4.1"), m.get("AIL-3.1"),
        m.get("AIP-3.1"))


def _document(m: Message, header: Header, patient: PatientInfo) -> Document:
    lines = [_obx_value(m, i) for i in range(1, len(m.segments("OBX")) + 1)]
    return Document(header, m.trigger, patient, m.get("TXA-12.1") or "?", m.get("TXA-2"),
                    parse_dtm(m.get("TXA-4")), m.get("TXA-17"), m.get("TXA-19"), m.get("TXA-15.1"),
                    "\n".join(lines), Visit.of(m) or Visit())


def _ack(m: Message, header: Header) -> Ack:
    try:
        code = AckCode(m.get("MSA-1"))
    except ValueError:
        return Ack(header, AckCode.AR, m.get("MSA-2"), f"invalid MSA-1 {m.get('MSA-1')!r}")
    if m.get("ERR-3.1"):  # v2.5+
        return Ack(header, code, m.get("MSA-2"), m.get("MSA-3"), _int(m.get("ERR-3.1")),
                   m.get("ERR-8") or m.get("ERR-3.2"), m.get("ERR-2.1"), _int(m.get("ERR-2.3")),
                   m.get("ERR-4")[:1])
    if m.get("ERR-1"):  # ELD before v2.5
        return Ack(header, code, m.get("MSA-2"), m.get("MSA-3"), _int(m.get("ERR-1.4.1")),
                   m.get("ERR-1.4.2"), m.get("ERR-1.1"), _int(m.get("ERR-1.3")))
    return Ack(header, code, m.get("MSA-2"), m.get("MSA-3"))


def typed(m: Message) -> TypedMessage:
    """The typed view of ``m`` (see the module table); ``Generic`` for other types or missing PID.

    Raises
    ------
    kit.errors.HL7ParseError
        The message has the modelled type but values that no valid object can hold
        (an appointment ending before it starts, a duration out of range).
    """
    try:
        return _typed(m)
    except (ValueError, OverflowError) as exc:  # the dataclasses' own validation
        raise HL7ParseError(f"{m.message_type} {m.control_id!r}: {exc}") from exc


def _typed(m: Message) -> TypedMessage:
    header = Header.of(m)
    code, trigger = m.message_code, m.trigger
    patient = PatientInfo.of(m)
    if code == "ACK" or (m.segment("MSA") is not None and code in ("ACK", "")):
        return _ack(m, header)
    if code == "SIU" and trigger in SIU_TRIGGERS and (m.get("SCH-1.1") or m.get("SCH-2.1")):
        return _appointment(m, header)
    if patient is None:
        return Generic(header, m.message_type)
    if code == "ADT" and trigger in ADT_TRIGGERS:
        return AdtEvent(header, trigger, patient, parse_dtm(m.get("EVN-2")), Visit.of(m), m.get("MRG-1.1"))
    if m.message_type in ("ORM^O01", "OML^O21"):
        return OrderMessage(header, patient, _orders(m), Visit.of(m), m.message_type)
    if m.message_type == "ORU^R01":
        return ResultReport(header, patient, _orders(m), Visit.of(m))
    if code == "MDM" and trigger in MDM_TRIGGERS and m.get("TXA-12.1"):
        return _document(m, header, patient)
    return Generic(header, m.message_type)
