"""C-FIND attribute matching (PS3.4 C.2.2.2) and Modality Worklist items (pure).

pynetdicom hands a C-FIND SCP the request identifier and leaves matching to the
application, and pydicom has no matcher, so the rules are written here by hand:

- universal matching: an empty value (or ``*``) matches everything and only asks
  for the attribute to be returned;
- single value matching: exact, trailing spaces ignored; person names (PN)
  compare case-insensitively, as Orthanc does by default;
- wildcard matching: ``*`` and ``?`` in AE/CS/LO/LT/PN/SH/ST/UC/UR/UT values,
  by a hand-written glob matcher in O(len(pattern) * len(value)) time at worst
  (a regex backtracks exponentially on patterns such as ``*a*a*a*a*b``);
- range matching: ``a-b``, ``-b``, ``a-`` for DA, TM and DT (a partial upper
  bound covers its whole period, so ``-10`` includes 10:59:59); a DA/TM/DT key
  that is neither a value nor a range of that VR raises
  :class:`~kit.errors.InvalidInputError` (never "matches everything"), and
  :func:`check_identifier` finds such keys before any matching;
- list of UID matching: backslash-separated UIDs (and, leniently, a list of
  values for any VR, e.g. ``CT\\MR`` for ModalitiesInStudy);
- sequence matching: an item of keys matches when any item of the candidate's
  sequence matches all of them;
- multi-valued candidate attributes (ModalitiesInStudy) match if any value does.

Date and time attributes are matched independently (no combined datetime
matching). The response carries only the requested keys (plus
QueryRetrieveLevel for Query/Retrieve).

:func:`worklist_items_from_cohort` turns the synthetic cohort's scheduled studies
(and its endoscopies) into Modality Worklist items.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from kit.dicom.query import QueryLevel, QueryModel
from kit.errors import InvalidInputError
from kit.examples.cohort import COHORT, ENDOSCOPY_AET, Study

__all__ = [
    "COMPUTED_KEYS",
    "LEVEL_KEYS",
    "MODALITY_WORKLIST_FIND",
    "STATION_AETS",
    "candidate_dataset",
    "check_identifier",
    "glob_match",
    "match_element",
    "match_value",
    "matches",
    "parse_range",
    "query_level",
    "response_identifier",
    "worklist_items_from_cohort",
]

#: SOP Class UID of the Modality Worklist Information Model - FIND.
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"


#: Attributes the store indexes, by the level they belong to (PS3.4 C.6.1.1 / C.6.2.1).
LEVEL_KEYS: Mapping[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"),
    QueryLevel.STUDY: ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                       "StudyDescription", "ReferringPhysicianName"),
    QueryLevel.SERIES: ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                        "SeriesDate", "SeriesTime", "BodyPartExamined"),
    QueryLevel.IMAGE: ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime"),
}

#: Attributes computed over the hierarchy, by the level at which they are answered.
COMPUTED_KEYS: Mapping[QueryLevel, tuple[str, ...]] = {
    QueryLevel.PATIENT: ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                         "NumberOfPatientRelatedInstances"),
    QueryLevel.STUDY: ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                       "ModalitiesInStudy", "SOPClassesInStudy"),
    QueryLevel.SERIES: ("NumberOfSeriesRelatedInstances",),
    QueryLevel.IMAGE: (),
}

#: Elements of an identifier that are never matched against.
_NOT_MATCHED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle",
                          "TimezoneOffsetFromUTC", "InstanceAvailability"})
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"})
_RANGE_WIDTH = {"DA": 8, "TM": 12, "DT": 20}


def query_level(identifier: Dataset, model: QueryModel) -> QueryLevel:
    """The identifier's QueryRetrieveLevel, checked against the model.

    Raises
    ------
    InvalidInputError
        Missing or unknown level, or a level the model does not have.
    """
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = QueryLevel(raw)
    except ValueError as exc:
        raise InvalidInputError(f"bad QueryRetrieveLevel {raw!r}") from exc
    if level not in model.levels:
        raise InvalidInputError(f"level {level.value} is not part of the {model.name} model")
    return level


# -- value matching -----------------------------------------------------------------


def _text(value: Any) -> str:
    return str(value if value is not None else "").rstrip(" \x00")


def _values(value: Any) -> list[Any]:
    """A candidate's value(s) as a list (empty for no value)."""
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [v for v in value if v is not None and _text(v) != ""]
    return [value]


def _digits(text: str, width: int, upper: bool) -> str:
    """Normalise a DA/TM/DT value to ``width`` digits; a partial value is padded to
    the start (lower bound) or the end (upper bound) of the period it names."""
    text = re.split(r"[+-]", text)[0]  # DT: drop a timezone offset
    text = re.sub(r"[^0-9]", "", text)[:width]
    return text + ("9" if upper else "0") * (width - len(text))


# One bound of a DA/TM/DT query (PS3.5 6.2; partial values name a period; ACR-NEMA
# separators tolerated). Fixed-width groups only: these cannot backtrack.
_BOUND = {
    "DA": r"\d{4}(?:\.?\d{2}(?:\.?\d{2})?)?",
    "TM": r"\d{2}(?::?\d{2}(?::?\d{2}(?:\.\d{1,6})?)?)?",
    "DT": r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?",
}
_SINGLE = {vr: re.compile(rf"({b})") for vr, b in _BOUND.items()}
_RANGE = {vr: re.compile(rf"({b})?-({b})?") for vr, b in _BOUND.items()}
# Field limits checked on the digits: (offset, width, low, high) per VR.
_FIELDS = {
    "DA": ((4, 2, 1, 12), (6, 2, 1, 31)),
    "TM": ((0, 2, 0, 23), (2, 2, 0, 59), (4, 2, 0, 60)),
    "DT": ((4, 2, 1, 12), (6, 2, 1, 31), (8, 2, 0, 23), (10, 2, 0, 59), (12, 2, 0, 60)),
}


def _check_bound(text: str, vr: str, query: str) -> None:
    digits = re.sub(r"[^0-9]", "", re.split(r"(?<=.)[+-]", text)[0])
    for offset, width, low, high in _FIELDS[vr]:
        part = digits[offset:offset + width]
        if len(part) == width and not low <= int(part) <= high:
            raise InvalidInputError(f"{vr} matching key {query!r}: {part} is out of range in {text!r}")


def parse_range(query: str, vr: str) -> tuple[str | None, str | None]:
    """The (low, high) bounds of a DA/TM/DT matching key; a single value is both bounds.

    Raises
    ------
    InvalidInputError
        The key is neither a value nor a range of values of that VR (``abc-def``,
        ``2026-13-45``, ``25:00``...): matching it would be meaningless.
    """
    text = query.strip()
    # A DT value may end in a "-hhmm" offset: read "a-b" as a range first (as before).
    found = _RANGE[vr].fullmatch(text) if vr == "DT" else None
    if found is None and _SINGLE[vr].fullmatch(text):
        _check_bound(text, vr, query)
        return text, text
    found = found or _RANGE[vr].fullmatch(text)
    if found is None:
        raise InvalidInputError(f"not a {vr} value or range: {query!r}")
    low, high = found.group(1), found.group(2)
    for bound in (low, high):
        if bound:
            _check_bound(bound, vr, query)
    return low, high


def _in_range(query: str, candidate: str, vr: str) -> bool:
    low, high = parse_range(query, vr)
    width = _RANGE_WIDTH[vr]
    cand = _digits(candidate, width, upper=False)
    if cand.strip("0") == "" and not re.search(r"[0-9]", candidate):
        return False
    if low and cand < _digits(low, width, upper=False):
        return False
    return not (high and cand > _digits(high, width, upper=True))


def _fold(text: str) -> str:
    """Lower-case character by character, keeping the length (a '?' stays one character)."""
    return "".join(low if len(low := c.lower()) == 1 else c for c in text)


def glob_match(pattern: str, text: str, *, fold: bool = False) -> bool:
    """Whether ``text`` matches ``pattern`` with ``*`` (any run) and ``?`` (one character).

    Greedy two-pointer matching with a single backtrack point (the last ``*``):
    O(len(pattern) * len(text)) at worst, never exponential. ``fold`` compares
    characters case-insensitively (``str.lower`` per character).
    """
    if fold:
        pattern, text = _fold(pattern), _fold(text)
    p = t = 0
    star = -1  # pattern index just after the last '*'
    resume = 0  # text index that '*' is currently assumed to absorb up to
    np, nt = len(pattern), len(text)
    while t < nt:
        if p < np and (pattern[p] == "?" or (pattern[p] != "*" and pattern[p] == text[t])):
            p += 1
            t += 1
        elif p < np and pattern[p] == "*":
            star, resume = p + 1, t
            p += 1
        elif star >= 0:
            resume += 1
            p, t = star, resume
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np


def _wildcard(pattern: str, candidate: str, fold: bool) -> bool:
    return glob_match(pattern, candidate, fold=fold)


def match_value(query: str, vr: str, candidate: Any) -> bool:
    """Whether one (non-empty, single) query value matches a candidate value.

    Parameters
    ----------
    query : str
        The query value as text (may hold wildcards or a range).
    vr : str
        The attribute's value representation.
    candidate : Any
        The stored value (``str``, number, or a multi-value; any value matching suffices).
    """
    query = _text(query)
    if query == "" or query.strip("*") == "":
        return True
    if vr in _RANGE_WIDTH:
        parse_range(query, vr)  # an unparsable key fails even with no candidate value
    cands = _values(candidate)
    if not cands:
        return False
    if vr in _RANGE_WIDTH:
        return any(_in_range(query, _text(c), vr) for c in cands)
    if vr in _NUMERIC_VRS:
        try:
            target = float(query)
            return any(float(c) == target for c in cands)
        except (TypeError, ValueError):
            return False
    fold = vr == "PN"
    if vr in _WILDCARD_VRS and ("*" in query or "?" in query):
        return any(_wildcard(query, _text(c), fold) for c in cands)
    if fold:
        return any(_text(c).lower() == query.lower() for c in cands)
    return any(_text(c).strip() == query.strip() for c in cands)


def match_element(element: DataElement, candidate: Any) -> bool:
    """Whether a candidate value satisfies one identifier element (any rule above).

    ``candidate`` is the candidate's value for that attribute: a plain value, a
    multi-value, or a :class:`~pydicom.sequence.Sequence` for SQ elements.
    """
    if element.VR == "SQ":
        items = list(element.value or [])
        if not items or all(len(item) == 0 for item in items):
            return True
        cand_items = list(candidate or []) if isinstance(candidate, Sequence | list) else []
        return any(all(matches(q, c) for q in items if len(q)) for c in cand_items)
    value = element.value
    if value is None or value == "" or (isinstance(value, MultiValue | list) and len(value) == 0):
        return True
    queries = [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]
    return any(match_value(q, element.VR, candidate) for q in queries)


def check_identifier(identifier: Dataset) -> None:
    """Check every DA/TM/DT matching key of an identifier (sequence items included).

    Raises
    ------
    InvalidInputError
        A key that is neither a value nor a range of its VR, naming the attribute.
    """
    for element in identifier:
        if element.VR == "SQ":
            for item in element.value or []:
                check_identifier(item)
            continue
        if element.VR not in _RANGE_WIDTH or element.value in (None, ""):
            continue
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        for value in values:
            text = _text(value)
            if text and text.strip("*"):
                try:
                    parse_range(text, element.VR)
                except InvalidInputError as exc:
                    raise InvalidInputError(f"{element.keyword or element.tag}: {exc}") from exc


def matches(identifier: Dataset, candidate: Dataset, *, ignore: Iterable[str] = ()) -> bool:
    """Whether ``candidate`` matches every key of ``identifier``.

    Keys absent from the candidate match only universally (empty query value).
    ``ignore`` names keywords not to match on (e.g. keys below the query level).
    """
    skip = _NOT_MATCHED | set(ignore)
    for element in identifier:
        keyword = element.keyword
        if keyword in skip or element.tag.is_private or element.tag.group == 0x0002:
            continue
        got = candidate.get(element.tag)
        if not match_element(element, None if got is None else got.value):
            return False
    return True


# -- responses ------------------------------------------------------------------------


def _empty_like(element: DataElement) -> DataElement:
    return DataElement(element.tag, element.VR, Sequence() if element.VR == "SQ" else None)


def _response_sequence(query: DataElement, candidate: Any) -> Sequence:
    items = list(query.value or [])
    cand_items = list(candidate or []) if isinstance(candidate, Sequence | list) else []
    if not items:
        return Sequence(cand_items)
    template = items[0]
    out: list[Dataset] = []
    for cand in cand_items:
        if not matches(template, cand):
            continue
        out.append(response_identifier(template, cand, level=None) if len(template) else cand)
    return Sequence(out)


def response_identifier(identifier: Dataset, candidate: Dataset, *, level: QueryLevel | None,
                        retrieve_aet: str | None = None) -> Dataset:
    """The C-FIND response identifier: the requested keys with the candidate's values.

    Parameters
    ----------
    identifier : Dataset
        The request identifier.
    candidate : Dataset
        The matching entity's attributes.
    level : QueryLevel or None
        The query level (echoed as QueryRetrieveLevel); ``None`` for a worklist.
    retrieve_aet : str, optional
        Filled into RetrieveAETitle when the request asks for it.
    """
    out = Dataset()
    for element in identifier:
        if element.tag.group == 0x0002 or element.keyword == "SpecificCharacterSet":
            continue
        if element.keyword == "QueryRetrieveLevel":
            continue
        if element.keyword == "RetrieveAETitle" and retrieve_aet:
            out.RetrieveAETitle = retrieve_aet
            continue
        got = candidate.get(element.tag)
        if element.VR == "SQ":
            out.add(DataElement(element.tag, "SQ", _response_sequence(element, got.value if got else None)))
        elif got is None:
            out.add(_empty_like(element))
        else:
            out.add(DataElement(element.tag, element.VR if element.VR not in ("UN", None) else got.VR,
                                got.value))
    if level is not None:
        out.QueryRetrieveLevel = level.value
    if _has_non_ascii(out):
        out.SpecificCharacterSet = "ISO_IR 192"
    return out


def _has_non_ascii(ds: Dataset) -> bool:
    for element in ds:
        if element.VR == "SQ":
            if any(_has_non_ascii(item) for item in element.value):
                return True
        elif isinstance(element.value, str) and not element.value.isascii():
            return True
        elif element.VR == "PN" and element.value is not None and not str(element.value).isascii():
            return True
    return False


def candidate_dataset(record: Mapping[str, Any]) -> Dataset:
    """A Dataset from ``{keyword: value}`` (values as DICOM strings, numbers or lists).

    Unknown keywords and ``None``/empty values are skipped.
    """
    ds = Dataset()
    for keyword, value in record.items():
        if value is None or value == "" or keyword.startswith("_"):
            continue
        try:
            setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)
        except (ValueError, TypeError, AttributeError):
            continue
    return ds


# -- worklist -------------------------------------------------------------------------

#: ScheduledStationAETitle of the synthetic modalities, by modality.
STATION_AETS: Mapping[str, str] = {"CT": "KITCT1", "MR": "KITMR1", "ES": ENDOSCOPY_AET}


def _worklist_item(patient_name: str, patient_id: str, birth: str, sex: str, study: Study) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = sex
    ds.AccessionNumber = study.accession
    ds.StudyInstanceUID = UID(study.study_uid)
    ds.RequestedProcedureID = f"RP{study.accession}"
    ds.RequestedProcedureDescription = study.description
    ds.ReferringPhysicianName = "Referrer^Kit"
    sps = Dataset()
    sps.Modality = study.modality
    sps.ScheduledStationAETitle = STATION_AETS.get(study.modality, "KITMOD1")
    sps.ScheduledProcedureStepStartDate = study.date.strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = study.time.strftime("%H%M%S")
    sps.ScheduledProcedureStepID = f"SPS{study.accession}"
    sps.ScheduledProcedureStepDescription = study.description
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def worklist_items_from_cohort(*, include_endoscopy: bool = True) -> list[Dataset]:
    """Modality Worklist items for the sample cohort.

    One item per scheduled study (``Study.scheduled``) and, with
    ``include_endoscopy``, one per endoscopy (ES) study, so the endoscopy tower
    (ScheduledStationAETitle ``ENDO1``) finds its patients. Each item carries
    PatientName/ID/BirthDate/Sex, AccessionNumber, StudyInstanceUID,
    RequestedProcedureID/Description and a ScheduledProcedureStepSequence item
    with Modality, ScheduledStationAETitle, start date/time, step ID,
    description and status.

    Returns
    -------
    list of Dataset
        Items in cohort order; deterministic.
    """
    items = []
    for patient in COHORT:
        for study in patient.studies:
            if study.scheduled or (include_endoscopy and study.modality == "ES"):
                items.append(_worklist_item(patient.dicom_name, patient.mrn,
                                            patient.birth_date.strftime("%Y%m%d"), patient.sex, study))
    return items
