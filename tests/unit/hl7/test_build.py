"""Builders: ACK, ADT/ORM/ORU/SIU/MDM round trips through the parser, hl7apy validation."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import HL7ParseError
from kit.hl7.build import (
    AckCode,
    AckError,
    build_ack,
    build_adt,
    build_mdm,
    build_orm,
    build_oru_r01,
    build_siu,
    validate_er7,
)
from kit.hl7.message import parse_message
from kit.hl7.typed import (
    Ack,
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
    Visit,
)

H = Header("C1", dt.datetime(2026, 1, 12, 9, 14), "RIS", "HOSP", "KIT", "LAB")
P = PatientInfo("MRN1001", "Moreau", "Alice", dt.date(1958, 3, 14), "F", "HOSP", "MR", "Rue 1", "Lausanne",
                "VD", "1005", "CH", "+41 21 555 0101")
V = Visit("I", "RAD", "R1", "1", "D1", "Doc", "Rita", "RAD", "V1", dt.datetime(2026, 1, 12, 8))
ORDER = Order("PL1", "ACC1", "ACC1", "NW", "SC", "CTCHES", "CT CHEST", "L", dt.datetime(2026, 1, 11), None,
              "", "CT", "1.2.826.0.1.3680043.8.498.1")
OBS = (ObservationResult(1, "NM", "718-7", "Hb", "LN", "13.5", "g/dL", "12-16", "H", "F",
                         dt.datetime(2026, 1, 12, 10)),
       ObservationResult(2, "TX", "59776-5", "Findings", "LN", "9 mm nodule | a\\b ^ c & d ~ e\nline 2"))
TZ = dt.timezone(dt.timedelta(hours=1))

MESSAGES = [
    ("ADT^A01", build_adt, AdtEvent(H, "A01", P, dt.datetime(2026, 1, 12, 9, 0, tzinfo=TZ), V)),
    ("ADT^A40", build_adt, AdtEvent(H, "A40", P, dt.datetime(2026, 1, 12), None, "MRN0999")),
    ("ORM^O01", build_orm, OrderMessage(H, P, (ORDER,), V)),
    ("OML^O21", build_orm, OrderMessage(H, P, (ORDER,), None, "OML^O21")),
    ("ORU^R01", build_oru_r01, ResultReport(H, P, (dataclasses.replace(ORDER, observations=OBS),))),
    ("SIU^S12", build_siu, Appointment(H, "S12", "APT1", "FAPT1", P, dt.datetime(2026, 12, 1, 9),
                                       dt.datetime(2026, 12, 1, 9, 30), "Booked", "reason", "ROUTINE",
                                       "ACC1", "CTABDO", "CT ABDOMEN", "CT-1", "CT", "CT1", "DR1")),
    ("MDM^T02", build_mdm, Document(H, "T02", P, "DOC1", "RAD", dt.datetime(2026, 1, 12, 11), "AU", "AV",
                                    "ACC1", "Report\nFindings: 9 mm | nodule\n\nImpression: ^~&\\")),
]


@pytest.mark.parametrize(("kind", "builder", "obj"), MESSAGES, ids=[k for k, _, _ in MESSAGES])
def test_round_trip_and_hl7apy_validation(kind: str, builder: object, obj: object) -> None:
    assert callable(builder)
    text = builder(obj, validate=True)
    m = parse_message(text)
    assert m.message_type == kind
    assert m.typed() == obj


def test_multiple_orders_and_results_keep_their_groups() -> None:
    o2 = dataclasses.replace(ORDER, placer_order_number="PL2", filler_order_number="ACC2",
                             accession_number="ACC2", study_instance_uid="", observations=OBS[:1])
    report = ResultReport(H, P, (dataclasses.replace(ORDER, observations=OBS), o2))
    back = parse_message(build_oru_r01(report, validate=True)).typed()
    assert back == report
    assert isinstance(back, ResultReport) and [r.set_id for r in back.results] == [1, 2, 1]


def test_hl7apy_validation_catches_a_broken_message() -> None:
    text = build_siu(MESSAGES[5][2]).replace("S12^New appointment^HL7", "")
    with pytest.raises(HL7ParseError, match="SCH"):
        validate_er7(text)


def test_ack_accept() -> None:
    original = parse_message(build_adt(MESSAGES[0][2]))  # type: ignore[arg-type]
    text = build_ack(original, AckCode.AA, control_id="ACK1", timestamp=dt.datetime(2026, 1, 12, 9, 15))
    validate_er7(text)
    ack = parse_message(text)
    assert ack.message_type == "ACK^A01"
    # sender and receiver swapped
    assert (ack.sending_application, ack.sending_facility) == ("KIT", "LAB")
    assert (ack.receiving_application, ack.receiving_facility) == ("RIS", "HOSP")
    assert ack.version == original.version
    assert ack.segment("ERR") is None
    view = ack.typed()
    assert isinstance(view, Ack)
    assert (view.code, view.control_id, view.is_positive) == (AckCode.AA, "C1", True)


@pytest.mark.parametrize("version", ["2.5.1", "2.3"])
def test_ack_error_has_err_segment_with_code_and_location(version: str) -> None:
    original = parse_message(build_adt(dataclasses.replace(
        MESSAGES[0][2], header=dataclasses.replace(H, version=version))))  # type: ignore[type-var]
    text = build_ack(original, AckCode.AE, "PID-3 | missing",
                     AckError(101, "patient id missing", "PID", 1, 3), control_id="A2")
    if version != "2.3":  # hl7apy looks for a structure "ACK_A01" that v2.3 does not define
        validate_er7(text)
    else:
        assert parse_message(text).get("ERR-1.4.1") == "101"  # ELD before v2.5
    view = parse_message(text).typed()
    assert isinstance(view, Ack)
    assert view.code is AckCode.AE and not view.is_positive
    assert view.text == "PID-3 | missing"
    assert (view.error_code, view.error_segment, view.error_field) == (101, "PID", 3)
    assert view.error_text == "patient id missing"


def test_ack_reject_from_an_exception_and_without_a_message() -> None:
    exc = HL7ParseError("bad segment", segment="OBX", field=5)
    view = parse_message(build_ack(None, AckCode.AR, error=exc)).typed()
    assert isinstance(view, Ack)
    assert (view.code, view.control_id, view.error_code, view.error_segment) == (AckCode.AR, "", 102, "OBX")
    view = parse_message(build_ack(None, "AE", "boom")).typed()  # type: ignore[arg-type]
    assert isinstance(view, Ack) and view.error_code == 207
    with pytest.raises(ValueError):
        build_ack(None, "XX")  # type: ignore[arg-type]


def test_ack_keeps_the_original_delimiters() -> None:
    original = parse_message(build_adt(MESSAGES[0][2]).replace("|", "!"))  # type: ignore[arg-type]
    text = build_ack(original, AckCode.AA, "ok!fine")
    assert text.startswith("MSH!^~\\&!")
    assert parse_message(text).get("MSA-3") == "ok!fine"


def test_unknown_types_are_generic() -> None:
    m = parse_message("MSH|^~\\&|A|B|C|D|20260101||QBP^Q22^QBP_Q21|Q1|P|2.5\rQPD|x\r")
    assert m.typed() == Generic(Header("Q1", dt.datetime(2026, 1, 1), "A", "B", "C", "D", "2.5"), "QBP^Q22")


def test_invalid_dataclasses_refuse_construction() -> None:
    with pytest.raises(ValueError):
        PatientInfo("")
    with pytest.raises(ValueError):
        AdtEvent(H, "X01", P)
    with pytest.raises(ValueError):
        Appointment(H, "S12", "A", start=dt.datetime(2026, 1, 2), end=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        ObservationResult(0, "NM", "x")
    with pytest.raises(ValueError):
        AckError(999)


_free = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_atom = _free.filter(lambda s: s == s.strip() and s != "")
_time = st.one_of(st.none(), st.datetimes(dt.datetime(1900, 1, 1), dt.datetime(2100, 1, 1)).map(
    lambda d: d.replace(microsecond=d.microsecond // 100 * 100)))


@settings(max_examples=150, deadline=None)
@given(family=_free, given_=_free, city=_free, text=_free, value=_free, units=_free, when=_time,
       mrn=_atom)
def test_build_parse_round_trip_for_arbitrary_text(family: str, given_: str, city: str, text: str,
                                                   value: str, units: str, when: dt.datetime | None,
                                                   mrn: str) -> None:
    patient = PatientInfo(mrn, family, given_, None, "F", city=city)
    adt = AdtEvent(H, "A08", patient, when)
    assert parse_message(build_adt(adt)).typed() == adt
    obs = ObservationResult(1, "ST", "X", text, "L", value, units, observation_time=when)
    report = ResultReport(H, patient, (dataclasses.replace(ORDER, service_text=text, observations=(obs,)),))
    assert parse_message(build_oru_r01(report)).typed() == report
    doc = Document(H, "T02", patient, "D1", text=text + "\n" + value)
    assert parse_message(build_mdm(doc)).typed() == doc
