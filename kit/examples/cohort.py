"""The synthetic sample cohort as plain data (pure: no files, no sockets).

Every generator (DICOM, FHIR, HL7, endoscopy) reads this one definition, so the
same MRNs, accession numbers and StudyInstanceUIDs appear in every system and a
researcher can join PACS, FHIR and HL7 frames on them. Everything is fixed or
derived deterministically from the definition: regenerating gives the same
identifiers.

All people, dates and findings here are invented.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from pydicom.uid import generate_uid

__all__ = [
    "COHORT",
    "ENDOSCOPY_AET",
    "Lesion",
    "Patient",
    "Study",
    "UID_PREFIX",
    "derived_uid",
    "patient",
    "studies",
]

#: DICOM UID root for everything the sample cohort contains (a 2.25 UUID-style root
#: is not needed: pydicom's own prefix plus deterministic entropy is unique enough).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
#: Station AE title of the synthetic endoscopy tower.
ENDOSCOPY_AET = "ENDO1"


def derived_uid(*parts: str) -> str:
    """Deterministic DICOM UID from the given parts (same parts, same UID)."""
    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["kit-sample-cohort", *parts]))


@dataclasses.dataclass(frozen=True)
class Lesion:
    """A spherical synthetic lesion in a CT volume (voxel coordinates).

    ``center`` is (slice, row, column); ``radius_mm`` its radius; ``hu`` its
    attenuation above the surrounding soft tissue (~40 HU).
    """

    center: tuple[int, int, int]
    radius_mm: float
    hu: int


@dataclasses.dataclass(frozen=True)
class Study:
    """One imaging or endoscopy study of a patient.

    ``modality`` is CT, MR or ES (endoscopy: VL images plus a video clip).
    """

    key: str
    mrn: str
    accession: str
    modality: str
    date: dt.date
    time: dt.time
    description: str
    body_part: str
    lesion: Lesion | None = None
    #: scheduled (worklist) studies have no images yet
    scheduled: bool = False

    @property
    def study_uid(self) -> str:
        """StudyInstanceUID, deterministic from the study key."""
        return derived_uid(self.key, "study")

    def series_uid(self, number: int = 1) -> str:
        """SeriesInstanceUID of the study's series ``number``."""
        return derived_uid(self.key, "series", str(number))

    def instance_uid(self, series: int, instance: int) -> str:
        """SOPInstanceUID of image ``instance`` in series ``series``."""
        return derived_uid(self.key, "instance", str(series), str(instance))


@dataclasses.dataclass(frozen=True)
class Patient:
    """A synthetic patient. ``mrn`` is the join key across every system."""

    mrn: str
    family: str
    given: str
    sex: str  # "M" / "F" / "O" as in DICOM and HL7 v2
    birth_date: dt.date
    phone: str
    city: str
    studies: tuple[Study, ...]

    @property
    def dicom_name(self) -> str:
        """PatientName in DICOM PN form (``Family^Given``)."""
        return f"{self.family}^{self.given}"

    @property
    def fhir_gender(self) -> str:
        """FHIR administrative gender."""
        return {"M": "male", "F": "female"}.get(self.sex, "other")


def _study(mrn: str, n: int, modality: str, date: str, time: str, desc: str, part: str,
           lesion: Lesion | None = None, scheduled: bool = False) -> Study:
    key = f"{mrn}-{modality}{n}"
    accession = f"ACC{mrn[-4:]}{n:02d}"
    return Study(key, mrn, accession, modality, dt.date.fromisoformat(date),
                 dt.time.fromisoformat(time), desc, part, lesion, scheduled)


def _patient(mrn: str, family: str, given: str, sex: str, birth: str, phone: str, city: str,
             *studies: Study) -> Patient:
    return Patient(mrn, family, given, sex, dt.date.fromisoformat(birth), phone, city, studies)


#: The cohort: six patients. Every patient has a chest CT (four with a lesion the
#: simple analysis in the notebooks can find); two have a brain MR; three have an
#: endoscopy (colonoscopy/gastroscopy) with still images and a clip; two have a
#: scheduled study that shows up in the modality worklist.
COHORT: tuple[Patient, ...] = (
    _patient("MRN1001", "Moreau", "Alice", "F", "1958-03-14", "+41 21 555 0101", "Lausanne",
             _study("MRN1001", 1, "CT", "2026-01-12", "09:14:00", "CT CHEST W/O CONTRAST", "CHEST",
                    Lesion((9, 40, 80), 9.0, 90)),
             _study("MRN1001", 2, "ES", "2026-02-03", "10:30:00", "COLONOSCOPY", "COLON")),
    _patient("MRN1002", "Keller", "Bruno", "M", "1947-11-02", "+41 44 555 0102", "Zurich",
             _study("MRN1002", 1, "CT", "2026-01-15", "14:02:30", "CT CHEST W/O CONTRAST", "CHEST",
                    Lesion((6, 78, 44), 6.0, 70)),
             _study("MRN1002", 2, "MR", "2026-01-20", "08:45:00", "MR BRAIN W/O CONTRAST", "HEAD")),
    _patient("MRN1003", "Rossi", "Chiara", "F", "1971-07-23", "+41 91 555 0103", "Lugano",
             _study("MRN1003", 1, "CT", "2026-02-01", "11:20:00", "CT CHEST W/O CONTRAST", "CHEST"),
             _study("MRN1003", 2, "ES", "2026-02-10", "13:15:00", "GASTROSCOPY", "STOMACH"),
             _study("MRN1003", 3, "CT", "2026-12-01", "09:00:00", "CT ABDOMEN WITH CONTRAST",
                    "ABDOMEN", scheduled=True)),
    _patient("MRN1004", "Meier", "Daniel", "M", "1983-05-30", "+41 31 555 0104", "Bern",
             _study("MRN1004", 1, "CT", "2026-02-14", "16:40:00", "CT CHEST W/O CONTRAST", "CHEST",
                    Lesion((11, 64, 90), 12.0, 110))),
    _patient("MRN1005", "Dubois", "Emma", "F", "1990-12-08", "+41 22 555 0105", "Geneva",
             _study("MRN1005", 1, "CT", "2026-03-02", "07:55:00", "CT CHEST W/O CONTRAST", "CHEST"),
             _study("MRN1005", 2, "MR", "2026-03-05", "12:10:00", "MR BRAIN WITH CONTRAST", "HEAD"),
             _study("MRN1005", 3, "MR", "2026-12-02", "15:30:00", "MR KNEE", "KNEE",
                    scheduled=True)),
    _patient("MRN1006", "Huber", "Felix", "M", "1962-09-17", "+41 61 555 0106", "Basel",
             _study("MRN1006", 1, "CT", "2026-03-09", "10:05:00", "CT CHEST W/O CONTRAST", "CHEST",
                    Lesion((8, 50, 50), 8.0, 85)),
             _study("MRN1006", 2, "ES", "2026-03-12", "09:40:00", "COLONOSCOPY", "COLON")),
)


def patient(mrn: str) -> Patient:
    """The cohort patient with this MRN (``KeyError`` if there is none)."""
    for p in COHORT:
        if p.mrn == mrn:
            return p
    raise KeyError(mrn)


def studies(*, modality: str | None = None, scheduled: bool | None = False) -> list[Study]:
    """All studies in the cohort, optionally of one modality.

    ``scheduled=False`` (default) gives studies that have been performed,
    ``True`` only worklist entries, ``None`` both.
    """
    return [s for p in COHORT for s in p.studies
            if (modality is None or s.modality == modality)
            and (scheduled is None or s.scheduled == scheduled)]
