"""The leak scan run after every de-identification: no identifying value of the input survives.

:func:`check_deidentified` collects the identifying values of the *input* data set and looks
for each of them in every value of the *output*: every element of every VR, in nested
sequences at any depth, in the File Meta and in private blocks, and in the raw bytes of
binary values (OB, OW, UN, ...; the pixel data excepted: burned-in text is not bytes of a
name, see :func:`kit.dicom.deid.burned_in_reason`). A hit raises :class:`DeidLeakError`;
:meth:`kit.dicom.deid.Deidentifier.files` then writes nothing for that file.

Identifying values of the input (hand-written: no library ships such a scan):

* every person name (any PN element, anywhere): the whole name, each component group and
  each name component of 3 bytes or more (titles such as ``Dr`` or ``MD`` excepted);
* identifiers: PatientID and other patient ids, issuer, accession number, study/procedure
  step/admission ids, device serial numbers, clinical trial subject ids;
* places and devices: institution name/address/department, station names, every AE title
  (File Meta SourceApplicationEntityTitle included), addresses, telephone numbers,
  locations;
* the birth date as people write it (:func:`_date_spellings`: ``19710723``, ``1971-7-23``,
  ``23/07/1971``, ``7/23/71``, ``23.07.1971``, ``23-Jul-1971``, ``July 23, 1971``, ``23rd July
  1971``, ...);
* every UID that identifies an instance (every UI value except well-known DICOM UIDs and
  class / transfer syntax / coding scheme UIDs, see :func:`is_instance_uid`).

Matching is case-insensitive and bounded by non-alphanumerics (``Rossi`` is found in
``Patient Rossi Chiara`` but not in ``Rossini``; a UID is not found inside a longer UID);
values made only of digits need 6 digits or more, name components 3 bytes or more, other
values 4 bytes or more, so short numbers and codes in the output do not raise false alarms.
Findings name where the value was found and what kind of value it is, never the value itself
(an error message must not carry PHI).

The scan is linear in the size of the output: one compiled alternation of literals per kind.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary

from kit.errors import VerificationError

__all__ = ["DeidLeakError", "Identifiers", "check_deidentified", "find_leaks", "identifiers",
           "is_instance_uid"]

#: UI attributes that name a definition (class, syntax, scheme, creator), not an instance
_DEFINITION_WORDS = ("SOPClass", "TransferSyntax", "CodingScheme", "ImplementationClass",
                     "MappingResource", "ContextGroupExtensionCreator", "PrivateInformationCreator",
                     "ApplicationContext")
_IDENTIFYING = frozenset({
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID",
    "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID", "AdmissionID",
    "MedicalRecordLocator", "DeviceSerialNumber", "PlateID", "CassetteID", "DetectorID",
    "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID", "StationName", "ScheduledStationName",
    "PerformedStationName", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation", "PatientBirthName",
    "PatientMotherBirthName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PersonAddress", "PersonTelephoneNumbers", "PersonTelecomInformation", "CurrentPatientLocation",
    "PatientInstitutionResidence", "RegionOfResidence", "PerformedLocation",
    "ScheduledProcedureStepLocation", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "OtherPatientNames",
})
_TITLES = frozenset({"mr", "mrs", "ms", "miss", "dr", "md", "phd", "jr", "sr", "ii", "iii", "iv",
                     "prof", "anon", "rn", "dds", "msc", "bsc"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_BIRTH_DATE = 0x00100030


class DeidLeakError(VerificationError):
    """A de-identified data set still holds identifying values of its input.

    ``differences`` (and ``findings``) say where and what kind, never the value.
    """

    @property
    def findings(self) -> list[str]:
        """Where each leaked value was found (``(0040,A730)[0].(0040,A160) TextValue: ...``)."""
        return list(self.differences)


def is_instance_uid(tag: int, value: str) -> bool:
    """Whether the UID ``value`` of attribute ``tag`` identifies something (and must be remapped).

    Well-known DICOM UIDs (``1.2.840.10008.*``, pydicom's UID dictionary) and the UIDs of
    attributes that name a definition (SOP class, transfer syntax, coding scheme,
    implementation class, mapping resource, ...) do not; every other UID does, wherever it is.
    """
    v = str(value).strip().rstrip("\x00")
    if not v or v.startswith("1.2.840.10008.") or v in UID_dictionary:
        return False
    keyword = keyword_for_tag(tag) if tag >> 16 & 1 == 0 else ""
    return not (keyword and any(word in keyword for word in _DEFINITION_WORDS))


class Identifiers:
    """The identifying values of one input data set (see the module docstring).

    Parameters
    ----------
    texts : dict of str to str
        Needle (any case) -> its kind (``"patient name"``, ``"birth date"``, ...).
    uids : iterable of str
        Instance UIDs of the input.
    """

    def __init__(self, texts: dict[str, str], uids: Iterable[str]) -> None:
        self.texts = {k.lower(): v for k, v in texts.items()}
        self.uids = frozenset(uids)
        self._text_re = _alternation(self.texts, r"[^\W_]")
        self._bytes_re = _bytes_alternation(self.texts)
        self._uid_re = _alternation(self.uids, r"[0-9.]")

    def __repr__(self) -> str:  # never the values
        return f"Identifiers({len(self.texts)} values, {len(self.uids)} UIDs)"

    def search_text(self, text: str) -> str | None:
        """The kind of the first identifying value in ``text``, or ``None``."""
        found = self._text_re.search(text) if self._text_re else None
        if found:
            return self.texts.get(found.group(0).lower(), "identifying value")
        if self._uid_re and self._uid_re.search(text):
            return "UID"
        return None

    def search_bytes(self, data: bytes) -> str | None:
        """The kind of the first identifying value in raw bytes, or ``None``."""
        if self._bytes_re and self._bytes_re.search(data):
            return "identifying value (raw bytes)"
        if self._uid_re and self._uid_re.search(data.decode("latin_1")):
            return "UID"
        return None


def _alternation(needles: Iterable[str], edge: str) -> re.Pattern[str] | None:
    words = sorted(set(needles), key=len, reverse=True)
    if not words:
        return None
    body = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!{edge})(?:{body})(?!{edge})", re.IGNORECASE)


def _bytes_alternation(needles: Iterable[str]) -> re.Pattern[bytes] | None:
    encoded: set[bytes] = set()
    for w in needles:
        for codec in ("utf_8", "latin_1", "utf_16_le"):
            try:
                encoded.add(w.encode(codec))
            except UnicodeEncodeError:
                continue
    if not encoded:
        return None
    body = b"|".join(re.escape(w) for w in sorted(encoded, key=len, reverse=True))
    return re.compile(rb"(?<![0-9A-Za-z])(?:" + body + rb")(?![0-9A-Za-z])", re.IGNORECASE)


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [v for v in value if v is not None]
    return [value]


def _add(texts: dict[str, str], value: str, kind: str, shortest: int = 4) -> None:
    v = value.strip().strip("\x00").strip()
    if not v:
        return
    if v.isdigit() and len(v) < 6:
        return
    if len(v.encode("utf_8")) < shortest or v.lower().rstrip(".") in _TITLES:
        return
    texts.setdefault(v.lower(), kind)


def _add_name(texts: dict[str, str], name: str, kind: str) -> None:
    _add(texts, name, kind, 3)
    for group in name.split("="):
        _add(texts, group, kind, 3)
        parts = [p for p in re.split(r"[\^\s,.]+", group) if p]
        _add(texts, " ".join(parts), kind, 3)
        _add(texts, " ".join(reversed(parts)), kind, 3)
        for part in parts:
            _add(texts, part, kind, 3)


def _add_birth_date(texts: dict[str, str], value: str) -> None:
    s = value.strip()
    try:
        d = dt.date(int(s[:4]), int(s[4:6]), int(s[6:8])) if len(s) >= 8 and s[:8].isdigit() else None
    except ValueError:
        d = None
    if d is None:
        _add(texts, s, "birth date")
        return
    for spelled in _date_spellings(d):
        texts.setdefault(spelled.lower(), "birth date")


def _date_spellings(d: dt.date) -> set[str]:
    """How a date is written by hand: digits in every order with ``- / .`` or a space, padded or
    not, the year in four digits or two (``14.3.58`` excepted: a UID could hold it); run
    together (``19580314``, ``14031958``, ``03141958``); the month named in full or in three
    letters (``14 Mar 1958``, ``14-Mar-1958``, ``March 14, 1958``, ``14th March 1958``)."""
    y4, y2 = f"{d.year:04d}", f"{d.year % 100:02d}"
    month = _MONTHS[d.month - 1]
    suffix = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}.get(d.day, "th")
    m0, d0 = f"{d.month:02d}", f"{d.day:02d}"
    out = {y4 + m0 + d0, d0 + m0 + y4, m0 + d0 + y4}
    for mm in {m0, str(d.month)}:
        for dd in {d0, str(d.day)}:
            for sep in "-/. ":
                out.add(sep.join((y4, mm, dd)))
                for year in (y4, y2):
                    if sep == "." and year == y2 and not (mm[0] == "0" or dd[0] == "0"):
                        continue
                    out.add(sep.join((dd, mm, year)))
                    out.add(sep.join((mm, dd, year)))
    for name in (month, month[:3]):
        for dd in {d0, str(d.day)}:
            for year in (y4, y2):
                out.update((f"{dd} {name} {year}", f"{dd}-{name}-{year}", f"{dd}/{name}/{year}"))
            out.update((f"{name} {dd}, {y4}", f"{name} {dd} {y4}", f"{dd}{suffix} {name} {y4}",
                        f"{name} {dd}{suffix}, {y4}", f"{name} {dd}{suffix} {y4}", f"{dd}{name}{y4}"))
    return out


def _walk(ds: Dataset, path: str = "") -> Iterator[tuple[str, int, str, Any]]:
    """(path, tag, VR, value) of every element of ``ds`` and its File Meta, depth first."""
    meta = getattr(ds, "file_meta", None) if not path else None
    for source in ((meta, ds) if meta is not None else (ds,)):
        for elem in source:
            tag = int(elem.tag)
            where = f"{path}({tag >> 16:04X},{tag & 0xFFFF:04X})"
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or ()):
                    yield from _walk(item, f"{where}[{i}].")
                continue
            yield where, tag, str(elem.VR), elem.value


def identifiers(ds: Dataset) -> Identifiers:
    """Collect the identifying values of an input data set (see the module docstring)."""
    texts: dict[str, str] = {}
    uids: set[str] = set()
    for _, tag, vr, value in _walk(ds):
        keyword = keyword_for_tag(tag) if tag >> 16 & 1 == 0 else ""
        for v in _values(value):
            if vr == "PN":
                _add_name(texts, str(v), "patient name" if tag == 0x00100010 else "person name")
            elif vr == "UI":
                if is_instance_uid(tag, str(v)):
                    uids.add(str(v).strip().rstrip("\x00"))
            elif tag == _BIRTH_DATE:
                _add_birth_date(texts, str(v))
            elif vr == "AE" or keyword in _IDENTIFYING:
                text = v.decode("latin_1") if isinstance(v, bytes) else str(v)
                _add(texts, text, "identifier" if "ID" in keyword or "Number" in keyword
                     else "place, device or contact")
    return Identifiers(texts, uids)


def find_leaks(ident: Identifiers, out: Dataset) -> list[str]:
    """Where ``out`` (File Meta, nested, private, raw bytes) holds a value of ``ident``."""
    findings: list[str] = []
    for where, tag, vr, value in _walk(out):
        if tag in _PIXEL_TAGS:
            continue
        kind = None
        for v in _values(value):
            if isinstance(v, (bytes, bytearray)):
                kind = ident.search_bytes(bytes(v))
            elif isinstance(v, Sequence):
                continue
            else:
                kind = ident.search_text(str(v))
            if kind:
                break
        if kind:
            name = keyword_for_tag(tag) or ("private" if tag >> 16 & 1 else vr)
            findings.append(f"{where} {name}: {kind}")
    return findings


def check_deidentified(original: Dataset, clean: Dataset) -> None:
    """Raise :class:`DeidLeakError` if ``clean`` holds an identifying value of ``original``."""
    findings = find_leaks(identifiers(original), clean)
    if findings:
        raise DeidLeakError("de-identified output still holds identifying values of the input "
                            f"({len(findings)} found; values not shown)", differences=findings)
