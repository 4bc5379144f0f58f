"""The synthetic HL7 v2 feed of the sample cohort (deterministic).

:func:`feed` gives the messages, :func:`generate` writes them to
``out_dir/hl7/feed.hl7`` (segments separated by CR, messages by a newline).
Everything derives from :mod:`kit.examples.cohort`: the same MRNs, accession
numbers and StudyInstanceUIDs as the DICOM and FHIR samples, fixed timestamps.

Per patient: ADT^A04 (registration), ADT^A01 (admission on the first CT day),
ADT^A08 (an update). Per study: ORM^O01 (accession number in OBR-18 and as the
filler order number, StudyInstanceUID in ZDS-1). Per performed study:
ORU^R01 with the report text (with characters that must be escaped) and, for
CT with a lesion, the lesion size (NM, mm, with range and flag). Per patient a
laboratory ORU^R01 (haemoglobin, creatinine, CRP: NM with units, ranges and
abnormal flags). Per CT study an MDM^T02 with the report. SIU: S12 for the two
scheduled studies, an overlapping S12 on the same CT room (a scheduling
conflict), S13 (rescheduled), S14 (modified), S12 + S15 (a cancellation) and
S26 (a no-show).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

from kit.examples.cohort import COHORT, Patient, Study
from kit.hl7.build import build_adt, build_mdm, build_orm, build_oru_r01, build_siu
from kit.hl7.typed import (
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
)

__all__ = ["FACILITY", "feed", "generate"]

#: Sending facility of every message in the feed.
FACILITY = "KITHOSP"

_CITY = {"Lausanne": ("1005", "VD"), "Zurich": ("8001", "ZH"), "Lugano": ("6900", "TI"),
         "Bern": ("3011", "BE"), "Geneva": ("1201", "GE"), "Basel": ("4051", "BS")}
_ROOMS = {"CT": "CT1", "MR": "MR1", "ES": "ENDO1"}


class _Ids:
    def __init__(self) -> None:
        self.n = 0

    def header(self, app: str, when: dt.datetime) -> Header:
        self.n += 1
        return Header(f"KIT{self.n:06d}", when, app, FACILITY, "KIT", "RESEARCH")


def _pid(p: Patient) -> PatientInfo:
    postal, state = _CITY.get(p.city, ("", ""))
    return PatientInfo(p.mrn, p.family, p.given, p.birth_date, p.sex, FACILITY, "MR",
                       f"Rue {int(p.mrn[-2:])}", p.city, state, postal, "CH", p.phone)


def _at(study: Study, minutes: int = 0) -> dt.datetime:
    return dt.datetime.combine(study.date, study.time) + dt.timedelta(minutes=minutes)


def _order(study: Study, control: str = "NW", status: str = "SC") -> Order:
    code = study.description.split()[0] + study.body_part[:4]
    return Order(f"PL{study.accession}", study.accession, study.accession, control, status, code,
                 study.description, "L", _at(study, -24 * 60), None, "", study.modality, study.study_uid)


def _report_text(study: Study) -> str:
    if study.lesion is not None:
        return (f"{study.description}\nFindings: a {study.lesion.radius_mm * 2:.0f} mm nodule "
                f"(density > soft tissue, {study.lesion.hu} HU) | follow-up advised.\n"
                "Impression: nodule; compare with prior & re-image in 3 months ~ per protocol.")
    return f"{study.description}\nFindings: no focal abnormality. \\ normal study.\nImpression: normal."


def _radiology(ids: _Ids, p: Patient, study: Study) -> str:
    when = _at(study, 90)
    obs = [ObservationResult(1, "TX", "59776-5", "Procedure findings", "LN", _report_text(study),
                               status="F", observation_time=when)]
    if study.lesion is not None:
        size = study.lesion.radius_mm * 2
        obs.append(ObservationResult(2, "NM", "21889-1", "Size Tumor", "LN", f"{size:.1f}", "mm",
                                     "0-5", "H" if size > 5 else "N", "F", when))
    order = Order(f"PL{study.accession}", study.accession, study.accession, "RE", "CM",
                  study.description.split()[0] + study.body_part[:4], study.description, "L",
                  _at(study, -24 * 60), _at(study), "F", study.modality, study.study_uid, tuple(obs))
    return build_oru_r01(ResultReport(ids.header("RIS", when), _pid(p), (order,)))


def _lab(ids: _Ids, p: Patient, index: int) -> str:
    first = p.studies[0]
    when = _at(first, -120)
    k = int(p.mrn[-1])
    hb = 11.5 + k * 0.6 if p.sex == "F" else 12.5 + k * 0.7
    hb_range, hb_low = ("12.0-16.0", 12.0) if p.sex == "F" else ("13.5-17.5", 13.5)
    crea = 60 + k * 9
    crp = [2.1, 14.8, 0.6, 31.0, 4.9, 7.7][index % 6]
    obs = (
        ObservationResult(1, "NM", "718-7", "Hemoglobin [Mass/volume] in Blood", "LN", f"{hb:.1f}", "g/dL",
                          hb_range, "L" if hb < hb_low else "N", "F", when),
        ObservationResult(2, "NM", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "LN",
                          f"{crea}", "umol/L", "45-110", "H" if crea > 110 else "N", "F", when),
        ObservationResult(3, "NM", "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "LN",
                          f"{crp}", "mg/L", "<5", "H" if crp >= 5 else "N", "F", when),
        ObservationResult(4, "ST", "8251-1", "Service comment", "LN",
                          "Sample OK; haemolysis index < 1 | lipaemia & icterus: none", status="F",
                          observation_time=when),
    )
    order = Order(f"LABP{p.mrn[-4:]}", f"LAB{p.mrn[-4:]}01", "", "RE", "CM", "24323-8",
                  "Comprehensive metabolic panel", "LN", when, when, "F", "LAB", "", obs)
    return build_oru_r01(ResultReport(ids.header("LIS", _at(first, -60)), _pid(p), (order,)))


def _siu(ids: _Ids, trigger: str, p: Patient, appt: str, accession: str, start: dt.datetime,
         minutes: int, modality: str, code: str, text: str, status: str, sent: dt.datetime) -> str:
    return build_siu(Appointment(
        ids.header("SCHED", sent), trigger, appt, f"F{appt}", _pid(p), start,
        start + dt.timedelta(minutes=minutes), status, text, "ROUTINE", accession, code, text,
        f"{modality}-SCANNER-1", modality, _ROOMS.get(modality, modality), "DR-RAD-01"))


def _schedule(ids: _Ids) -> list[str]:
    by_mrn = {p.mrn: p for p in COHORT}
    sent = dt.datetime(2026, 11, 2, 8, 0)
    out = []
    for p in COHORT:
        for s in p.studies:
            if s.scheduled:
                code = s.description.split()[0] + s.body_part[:4]
                out.append(_siu(ids, "S12", p, f"APT{s.accession}", s.accession, _at(s), 30 if s.modality ==
                                "CT" else 45, s.modality, code, s.description, "Booked", sent))
    ct = next(s for s in by_mrn["MRN1003"].studies if s.scheduled)
    mr = next(s for s in by_mrn["MRN1005"].studies if s.scheduled)
    p6, p2, p4 = by_mrn["MRN1006"], by_mrn["MRN1002"], by_mrn["MRN1004"]
    out += [
        # conflict: same CT room, overlapping the 09:00-09:30 slot
        _siu(ids, "S12", p6, "APTACC100690", "ACC100690", _at(ct, 15), 30, "CT", "CTCHES",
             "CT CHEST FOLLOW-UP", "Booked", sent + dt.timedelta(minutes=5)),
        _siu(ids, "S13", by_mrn["MRN1005"], f"APT{mr.accession}", mr.accession, _at(mr, 30), 45, "MR",
             "MRKNEE", mr.description, "Booked", sent + dt.timedelta(hours=1)),
        _siu(ids, "S14", by_mrn["MRN1003"], f"APT{ct.accession}", ct.accession, _at(ct), 30, "CT",
             "CTABDO", "CT ABDOMEN WITH CONTRAST (renal function checked)", "Booked",
             sent + dt.timedelta(hours=2)),
        _siu(ids, "S12", p2, "APTACC100290", "ACC100290", dt.datetime(2026, 12, 2, 10, 0), 45, "MR",
             "MRHEAD", "MR BRAIN FOLLOW-UP", "Booked", sent + dt.timedelta(hours=3)),
        _siu(ids, "S15", p2, "APTACC100290", "ACC100290", dt.datetime(2026, 12, 2, 10, 0), 45, "MR",
             "MRHEAD", "MR BRAIN FOLLOW-UP", "Cancelled", sent + dt.timedelta(hours=4)),
        _siu(ids, "S12", p4, "APTACC100490", "ACC100490", dt.datetime(2026, 11, 20, 14, 0), 30, "CT",
             "CTCHES", "CT CHEST FOLLOW-UP", "Booked", sent + dt.timedelta(hours=5)),
        _siu(ids, "S26", p4, "APTACC100490", "ACC100490", dt.datetime(2026, 11, 20, 14, 0), 30, "CT",
             "CTCHES", "CT CHEST FOLLOW-UP", "Noshow", dt.datetime(2026, 11, 20, 15, 0)),
    ]
    return out


def feed() -> Iterator[str]:
    """The feed's messages as ER7 text (segments ended by CR), in a fixed order."""
    ids = _Ids()
    for index, p in enumerate(COHORT):
        first = p.studies[0]
        registered = _at(first, -3 * 24 * 60)
        info = _pid(p)
        yield build_adt(AdtEvent(ids.header("ADT", registered), "A04", info, registered, Visit("O")))
        admit = _at(first, -30)
        visit = Visit("I", "RAD", "R1", "1", "DR-RAD-01", "Radiologist", "Rita", "RAD", f"V{p.mrn[-4:]}01",
                      admit)
        yield build_adt(AdtEvent(ids.header("ADT", admit), "A01", info, admit, visit))
        yield build_adt(AdtEvent(ids.header("ADT", admit + dt.timedelta(minutes=5)), "A08", info,
                                 admit + dt.timedelta(minutes=5), visit))
        yield _lab(ids, p, index)
        for s in p.studies:
            ordered = _at(s, -24 * 60)
            yield build_orm(OrderMessage(ids.header("RIS", ordered), info, (_order(s),), visit))
            if s.scheduled:
                continue
            yield _radiology(ids, p, s)
            if s.modality == "CT":
                yield build_mdm(Document(
                    ids.header("RIS", _at(s, 120)), "T02", info, f"DOC{s.accession}", "RAD",
                    _at(s, 120), "AU", "AV", s.accession, _report_text(s), visit))
    yield from _schedule(ids)


def generate(out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/hl7/feed.hl7`` and return the paths written.

    Parameters
    ----------
    out_dir : str or Path
        The sample data directory (created if needed).

    Returns
    -------
    list of Path
        ``[out_dir/hl7/feed.hl7]``.
    """
    path = Path(out_dir) / "hl7" / "feed.hl7"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(m + "\n" for m in feed())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data, encoding="utf-8", newline="")
    tmp.replace(path)
    return [path]
