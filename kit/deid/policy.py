"""What the FHIR and HL7 de-identifiers share: options, date shifting, the free-text seam (pure).

* :class:`DeidPolicy`: the choices (birth date removed or reduced to a year).
* :func:`shift_date_text`: a date or date-time as FHIR or HL7 writes it, moved by whole
  days, keeping its precision and everything after the date (time of day, fraction,
  time zone) as written. A partial date moves with the middle of its period
  (``2026-03`` -> the month of 15 March + shift; ``2026`` -> the year of 2 July +
  shift). A value that is not a date of that syntax gives ``None`` (the caller drops
  it: a date that cannot be shifted cannot be kept).
* :class:`PatientFacts`: what the cohort's records say about a patient (names,
  birth dates, phone numbers, addresses, identifiers), gathered from FHIR Patient,
  HL7 PID and DICOM headers before anything is de-identified.
* The free-text seam: free text (FHIR narrative, markdown, ``conclusion``,
  ``note``, ``description``, inline attachments; HL7 OBX text values, NTE) is not
  scrubbed here. A :data:`TextScrubber` -- ``scrub(text, field) -> text`` with the
  :class:`TextField` naming where the text is, whose patient, and that patient's
  :class:`PatientFacts` -- is called for each value when one is given;
  :func:`default_scrubber` finds ``kit.deid.text.scrub_field`` when that module
  exists (the PHI scrubber), else there is none and free text is kept as it is.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import importlib
import re
from collections.abc import Callable, Iterable

from kit.errors import ConfigError

__all__ = [
    "BirthDate",
    "DeidPolicy",
    "PatientFacts",
    "TextField",
    "TextScrubber",
    "default_scrubber",
    "merge_facts",
    "shift_date_text",
]


class BirthDate(enum.StrEnum):
    """What happens to a birth date (DICOM always empties Patient's Birth Date)."""

    #: removed (FHIR ``birthDate``, HL7 PID-7); the default, as in DICOM
    REMOVE = "remove"
    #: only the year is kept, of the birth date moved by the patient's shift (so ages at
    #: the shifted events stay right to within a year)
    YEAR = "year"


@dataclasses.dataclass(frozen=True)
class DeidPolicy:
    """Choices of the FHIR and HL7 de-identification.

    Attributes
    ----------
    birth_date : BirthDate
        ``REMOVE`` (default) or ``YEAR``.
    """

    birth_date: BirthDate = BirthDate.REMOVE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "birth_date", BirthDate(self.birth_date))
        except ValueError as exc:
            raise ConfigError("deid.birth_date", "is 'remove' or 'year'") from exc


@dataclasses.dataclass(frozen=True)
class PatientFacts:
    """What the records say about one patient, for exact replacement in free text.

    Attributes
    ----------
    mrn : str
        The original MRN (the key of the patient's pseudonym and date shift).
    names, birth_dates, phones, addresses, identifiers : tuple of str
        Each as written in some record (names as ``Family^Given`` or ``Given Family``,
        dates ISO ``YYYY-MM-DD``).
    """

    mrn: str
    names: tuple[str, ...] = ()
    birth_dates: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "mrn":
                if not isinstance(v, str):
                    raise ConfigError("deid.facts", "mrn is a string")
                continue
            clean = tuple(dict.fromkeys(s for s in v if isinstance(s, str) and s.strip()))
            object.__setattr__(self, f.name, clean)

    def merge(self, other: PatientFacts) -> PatientFacts:
        """Both sets of facts in one (``other.mrn`` must be the same)."""
        if other.mrn != self.mrn:
            raise ConfigError("deid.facts", "facts of two patients cannot merge")
        return PatientFacts(self.mrn, *(getattr(self, f.name) + getattr(other, f.name)
                                        for f in dataclasses.fields(self) if f.name != "mrn"))


def merge_facts(*books: Iterable[PatientFacts]) -> dict[str, PatientFacts]:
    """One :class:`PatientFacts` per MRN from any number of sources."""
    out: dict[str, PatientFacts] = {}
    for book in books:
        for facts in book:
            known = out.get(facts.mrn)
            out[facts.mrn] = facts if known is None else known.merge(facts)
    return out


@dataclasses.dataclass(frozen=True)
class TextField:
    """Where a free-text value handed to a :data:`TextScrubber` is.

    Attributes
    ----------
    system : str
        ``"fhir"`` or ``"hl7"``.
    path : str
        ``"DiagnosticReport.conclusion"``, ``"Observation.note.text"``, ``"OBX-5"``, ``"NTE-3"``.
    kind : str
        ``"string"``, ``"markdown"``, ``"xhtml"`` (FHIR narrative ``div``), ``"base64"``
        (an Attachment's ``data``) or ``"text"`` (HL7, unescaped).
    facts : PatientFacts or None
        The patient the text belongs to, when known.
    """

    system: str
    path: str
    kind: str
    facts: PatientFacts | None = None


#: ``scrub(text, field) -> text``: the free-text PHI scrubber's entry point
TextScrubber = Callable[[str, TextField], str]


def default_scrubber() -> TextScrubber | None:
    """``kit.deid.text.scrub_field`` if that module exists and has it, else ``None``."""
    try:
        module = importlib.import_module("kit.deid.text")
    except ImportError:
        return None
    hook = getattr(module, "scrub_field", None)
    return hook if callable(hook) else None


_FHIR_DATE = re.compile(r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2}))?)?")
_FHIR_TIME = re.compile(r"T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?")
_HL7_DATE = re.compile(r"([0-9]{4})(?:([0-9]{2})(?:([0-9]{2}))?)?")
_HL7_TIME = re.compile(r"(?:[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,4})?)?)?)?(?:[+-][0-9]{4})?")


def shift_date_text(value: str, shift: dt.timedelta, *, syntax: str) -> str | None:
    """``value`` moved by ``shift`` (whole days), precision and time part kept; ``None`` if invalid.

    Parameters
    ----------
    value : str
        A FHIR ``date``/``dateTime``/``instant`` (``syntax="fhir"``) or an HL7 DT/DTM/TS
        (``syntax="hl7"``).
    shift : datetime.timedelta
        Whole days (the patient's shift).
    syntax : str
        ``"fhir"`` or ``"hl7"``.

    Returns
    -------
    str or None
        The shifted value, or ``None`` when ``value`` is not a date of that syntax or
        the shifted date is out of range.
    """
    date_re, time_re = (_FHIR_DATE, _FHIR_TIME) if syntax == "fhir" else (_HL7_DATE, _HL7_TIME)
    if not isinstance(value, str) or not value.isascii():
        return None
    m = date_re.match(value)
    if m is None:
        return None
    tail = value[m.end():]
    year, month, day = m.groups()
    if tail and (day is None or time_re.fullmatch(tail) is None):
        return None
    try:
        if day is not None:
            moved = dt.date(int(year), int(month), int(day)) + shift
        elif month is not None:
            moved = dt.date(int(year), int(month), 15) + shift
        else:
            moved = dt.date(int(year), 7, 2) + shift
    except (ValueError, OverflowError):
        return None
    sep = "-" if syntax == "fhir" else ""
    text = f"{moved.year:04d}"
    if month is not None:
        text += f"{sep}{moved.month:02d}"
    if day is not None:
        text += f"{sep}{moved.day:02d}"
    return text + tail
