"""kit.hl7: HL7 v2 messages, frames and (in :mod:`kit.hl7.mllp`, :mod:`kit.hl7.sender`) MLLP transport.

Pure modules: :mod:`kit.hl7.message` (parse, escapes, terser access),
:mod:`kit.hl7.typed` (typed dataclasses per message type), :mod:`kit.hl7.build`
(ACK and message builders), :mod:`kit.hl7.frames` (polars tables, fast file path).
"""

from kit.hl7.build import (
    AckError,
    build_ack,
    build_adt,
    build_mdm,
    build_orm,
    build_oru_r01,
    build_siu,
    validate_er7,
)
from kit.hl7.frames import read_file, to_frames
from kit.hl7.message import Encoding, Message, Segment, escape, parse_message, split_messages, unescape
from kit.hl7.typed import (
    Ack,
    AckCode,
    AdtEvent,
    Appointment,
    Document,
    Generic,
    Header,
    ObservationResult,
    Order,
    OrderMessage,
    PatientInfo,
    ResultReport,
    TypedMessage,
    Visit,
)

__all__ = [
    "Ack",
    "AckCode",
    "AckError",
    "AdtEvent",
    "Appointment",
    "Document",
    "Encoding",
    "Generic",
    "Header",
    "Message",
    "ObservationResult",
    "Order",
    "OrderMessage",
    "PatientInfo",
    "ResultReport",
    "Segment",
    "TypedMessage",
    "Visit",
    "build_ack",
    "build_adt",
    "build_mdm",
    "build_orm",
    "build_oru_r01",
    "build_siu",
    "escape",
    "parse_message",
    "read_file",
    "split_messages",
    "to_frames",
    "unescape",
    "validate_er7",
]
