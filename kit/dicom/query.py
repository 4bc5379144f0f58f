"""C-FIND / QIDO-RS query identifiers and their responses as frames (pure).

Builds the query identifier (a pydicom :class:`~pydicom.dataset.Dataset`) for
a C-FIND at a given level from snake_case filters, and turns the matching
responses into a typed :class:`polars.DataFrame`. The same identifier drives
QIDO-RS (``kit.dicom.web``), so both transports give the same frame.

Filters are the snake_case of the DICOM keyword (``patient_id`` ->
PatientID, ``study_date`` -> StudyDate). Values:

* strings are sent as is (``*`` and ``?`` wildcards are DICOM's),
* dates (DA): a :class:`datetime.date`, ``"20260101"``, ``"2026-01-01"``, a
  range ``"20260101-20260301"`` (open ends allowed: ``"20260101-"``) or a
  ``(start, end)`` tuple whose ends may be ``None``,
* times (TM): a :class:`datetime.time`, ``"0930"``, ``"09:30"`` or a range,
* a list or tuple of strings for UID list matching (``\\``-joined).

Frame columns are named like the DICOM index (``kit.dicom.index``) and the
other systems' frames: ``patient_id``, ``accession_number``,
``study_instance_uid`` join across PACS, FHIR and HL7.

Written by hand: pynetdicom and pydicom leave the identifier to the caller
and have no notion of frames.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from kit.errors import InvalidInputError

if TYPE_CHECKING:  # polars is imported when a frame is built: `kit pacs echo` must not pay for it
    import polars as pl

__all__ = [
    "ATTRIBUTES",
    "DEFAULT_RETURN_KEYS",
    "WORKLIST_RETURN_KEYS",
    "Attribute",
    "QueryLevel",
    "QueryModel",
    "empty_frame",
    "find_identifier",
    "format_date_range",
    "parse_da",
    "parse_tm",
    "responses_to_frame",
    "worklist_identifier",
    "worklist_to_frame",
]


class QueryLevel(enum.Enum):
    """Query/Retrieve level (QueryRetrieveLevel, 0008,0052)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @classmethod
    def of(cls, value: QueryLevel | str) -> QueryLevel:
        """The level for ``value`` (case-insensitive; ``INSTANCE`` means IMAGE)."""
        if isinstance(value, QueryLevel):
            return value
        text = str(value).strip().upper()
        if text == "INSTANCE":
            text = "IMAGE"
        try:
            return cls(text)
        except ValueError:
            raise InvalidInputError(
                f"unknown query level {value!r}; use one of PATIENT, STUDY, SERIES, IMAGE"
            ) from None

    @property
    def depth(self) -> int:
        """0 for PATIENT ... 3 for IMAGE."""
        return list(QueryLevel).index(self)

    @property
    def unique_key(self) -> str:
        """Keyword of the level's unique key (PatientID, StudyInstanceUID, ...)."""
        return ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")[self.depth]


class QueryModel(enum.Enum):
    """Query/Retrieve information model; the value is the C-FIND SOP Class UID."""

    PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
    STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"

    @classmethod
    def of(cls, value: QueryModel | str) -> QueryModel:
        """The model for ``value`` (``"patient"``/``"study"`` or the enum name)."""
        if isinstance(value, QueryModel):
            return value
        text = str(value).strip().upper().replace("-", "_")
        for model in cls:
            if text in (model.name, model.name.split("_")[0], model.value):
                return model
        raise InvalidInputError(f"unknown query model {value!r}; use 'patient' or 'study'")

    @classmethod
    def from_sop_class(cls, uid: str) -> QueryModel:
        """The model of a FIND, GET or MOVE SOP Class UID."""
        for model in cls:
            if uid.startswith(model.value[:-1]):  # ...2.1.1 FIND, ...2.1.2 MOVE, ...2.1.3 GET
                return model
        raise InvalidInputError(f"not a Patient/Study Root Query/Retrieve SOP class: {uid}")

    @property
    def levels(self) -> tuple[QueryLevel, ...]:
        """Levels valid in this model (Study Root has no PATIENT level)."""
        return tuple(QueryLevel)[1:] if self is QueryModel.STUDY_ROOT else tuple(QueryLevel)

    @property
    def find_uid(self) -> str:
        """C-FIND SOP Class UID."""
        return self.value

    @property
    def move_uid(self) -> str:
        """C-MOVE SOP Class UID."""
        return self.value[:-1] + "2"

    @property
    def get_uid(self) -> str:
        """C-GET SOP Class UID."""
        return self.value[:-1] + "3"


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A queryable attribute: its frame column, DICOM keyword, VR, level and polars type."""

    column: str
    keyword: str
    vr: str
    level: QueryLevel | None  # None: worklist only
    multi: bool = False

    @property
    def dtype(self) -> pl.DataType:
        """The polars type of the frame column."""
        import polars as pl

        if self.multi:
            return pl.List(pl.String)
        return _vr_dtypes().get(self.vr, pl.String())


@functools.cache
def _vr_dtypes() -> dict[str, pl.DataType]:
    """Polars types of the VRs that are not strings (built on first use, with polars)."""
    import polars as pl

    return {
        "DA": pl.Date(), "TM": pl.Time(), "IS": pl.Int32(), "US": pl.Int32(), "UL": pl.Int64(),
        "DT": pl.Datetime("us"),
    }

_P, _ST, _SE, _IM = QueryLevel.PATIENT, QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE

#: Every attribute the builders know, by frame column name.
ATTRIBUTES: dict[str, Attribute] = {a.column: a for a in (
    Attribute("patient_id", "PatientID", "LO", _P),
    Attribute("patient_name", "PatientName", "PN", _P),
    Attribute("patient_birth_date", "PatientBirthDate", "DA", _P),
    Attribute("patient_sex", "PatientSex", "CS", _P),
    Attribute("other_patient_ids", "OtherPatientIDs", "LO", _P),
    Attribute("number_of_patient_related_studies", "NumberOfPatientRelatedStudies", "IS", _P),
    Attribute("study_instance_uid", "StudyInstanceUID", "UI", _ST),
    Attribute("study_date", "StudyDate", "DA", _ST),
    Attribute("study_time", "StudyTime", "TM", _ST),
    Attribute("accession_number", "AccessionNumber", "SH", _ST),
    Attribute("study_id", "StudyID", "SH", _ST),
    Attribute("study_description", "StudyDescription", "LO", _ST),
    Attribute("referring_physician_name", "ReferringPhysicianName", "PN", _ST),
    Attribute("modalities_in_study", "ModalitiesInStudy", "CS", _ST, multi=True),
    Attribute("number_of_study_related_series", "NumberOfStudyRelatedSeries", "IS", _ST),
    Attribute("number_of_study_related_instances", "NumberOfStudyRelatedInstances", "IS", _ST),
    Attribute("series_instance_uid", "SeriesInstanceUID", "UI", _SE),
    Attribute("modality", "Modality", "CS", _SE),
    Attribute("series_number", "SeriesNumber", "IS", _SE),
    Attribute("series_description", "SeriesDescription", "LO", _SE),
    Attribute("series_date", "SeriesDate", "DA", _SE),
    Attribute("series_time", "SeriesTime", "TM", _SE),
    Attribute("body_part_examined", "BodyPartExamined", "CS", _SE),
    Attribute("number_of_series_related_instances", "NumberOfSeriesRelatedInstances", "IS", _SE),
    Attribute("sop_instance_uid", "SOPInstanceUID", "UI", _IM),
    Attribute("sop_class_uid", "SOPClassUID", "UI", _IM),
    Attribute("instance_number", "InstanceNumber", "IS", _IM),
    Attribute("content_date", "ContentDate", "DA", _IM),
    Attribute("content_time", "ContentTime", "TM", _IM),
    Attribute("rows", "Rows", "US", _IM),
    Attribute("columns", "Columns", "US", _IM),
    Attribute("number_of_frames", "NumberOfFrames", "IS", _IM),
)}

#: Return keys asked for by default at each level (also the frame's columns, in order).
DEFAULT_RETURN_KEYS: dict[QueryLevel, tuple[str, ...]] = {
    _P: ("patient_id", "patient_name", "patient_birth_date", "patient_sex",
         "number_of_patient_related_studies"),
    _ST: ("patient_id", "patient_name", "patient_birth_date", "patient_sex",
          "study_instance_uid", "study_date", "study_time", "accession_number", "study_id",
          "study_description", "referring_physician_name", "modalities_in_study",
          "number_of_study_related_series", "number_of_study_related_instances"),
    _SE: ("patient_id", "study_instance_uid", "series_instance_uid", "modality", "series_number",
          "series_description", "series_date", "series_time", "body_part_examined",
          "number_of_series_related_instances"),
    _IM: ("patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
          "sop_class_uid", "instance_number", "rows", "columns", "number_of_frames"),
}

# Modality Worklist (PS3.4 K.6.1.2.2): top-level and Scheduled Procedure Step attributes.
_WL_TOP: tuple[Attribute, ...] = (
    ATTRIBUTES["patient_id"], ATTRIBUTES["patient_name"], ATTRIBUTES["patient_birth_date"],
    ATTRIBUTES["patient_sex"], ATTRIBUTES["accession_number"], ATTRIBUTES["study_instance_uid"],
    ATTRIBUTES["referring_physician_name"],
    Attribute("requested_procedure_id", "RequestedProcedureID", "SH", None),
    Attribute("requested_procedure_description", "RequestedProcedureDescription", "LO", None),
)
_WL_SPS: tuple[Attribute, ...] = (
    Attribute("modality", "Modality", "CS", None),
    Attribute("scheduled_station_ae_title", "ScheduledStationAETitle", "AE", None),
    Attribute("scheduled_procedure_step_start_date", "ScheduledProcedureStepStartDate", "DA", None),
    Attribute("scheduled_procedure_step_start_time", "ScheduledProcedureStepStartTime", "TM", None),
    Attribute("scheduled_performing_physician_name", "ScheduledPerformingPhysicianName", "PN", None),
    Attribute("scheduled_procedure_step_description", "ScheduledProcedureStepDescription", "LO", None),
    Attribute("scheduled_procedure_step_id", "ScheduledProcedureStepID", "SH", None),
    Attribute("scheduled_station_name", "ScheduledStationName", "SH", None),
)
#: Columns of :func:`worklist_to_frame` (also the worklist filters), in order.
WORKLIST_RETURN_KEYS: tuple[str, ...] = tuple(a.column for a in _WL_TOP + _WL_SPS)
_WL_ATTRS: dict[str, Attribute] = {a.column: a for a in _WL_TOP + _WL_SPS}
_WL_SPS_COLUMNS = frozenset(a.column for a in _WL_SPS)


# -- values -------------------------------------------------------------------------------------

_DA_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_DA = re.compile(r"^\d{8}$")


def _da_text(value: Any, name: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip()
    m = _DA_ISO.match(text)
    if m:
        text = "".join(m.groups())
    if not _DA.match(text):
        raise InvalidInputError(f"{name}: {value!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise InvalidInputError(f"{name}: {value!r} is not a valid date") from None
    return text


def _tm_text(value: Any, name: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S")
    text = str(value).strip().replace(":", "")
    if not re.match(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$", text) or parse_tm(text) is None:
        raise InvalidInputError(f"{name}: {value!r} is not a time (HHMMSS or HH:MM:SS)")
    return text


def format_date_range(value: Any, *, name: str = "date", vr: str = "DA") -> str:
    """A DICOM date (or time) range matching value from a date, string or ``(start, end)`` tuple.

    Parameters
    ----------
    value : date, str or tuple
        ``date(2026, 1, 1)``, ``"20260101"``, ``"2026-01-01"``,
        ``"20260101-20260301"``, ``"20260101-"``, ``(date1, date2)`` or
        ``(None, date2)``.
    name : str
        Filter name, used in error messages.
    vr : str
        ``"DA"`` for dates, ``"TM"`` for times.

    Returns
    -------
    str
        ``"20260101"``, ``"20260101-20260301"``, ``"-20260301"`` and so on.

    Raises
    ------
    InvalidInputError
        The value is not a date/time, or the range ends are reversed.
    """
    one = _da_text if vr == "DA" else _tm_text
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidInputError(f"{name}: a range is a (start, end) pair, got {value!r}")
        start, end = one(value[0], name), one(value[1], name)
    elif isinstance(value, str) and value.count("-") == 1 and not _DA_ISO.match(value.strip()):
        left, right = value.strip().split("-")
        start, end = one(left, name), one(right, name)
    elif isinstance(value, str) and vr == "DA" and re.match(
            r"^\d{4}-\d{2}-\d{2}-\d{4}-\d{2}-\d{2}$", value.strip()):
        start, end = one(value.strip()[:10], name), one(value.strip()[11:], name)
    else:
        return one(value, name)
    if not start and not end:
        raise InvalidInputError(f"{name}: a range needs at least one end")
    if start and end and start > end:
        raise InvalidInputError(f"{name}: range start {start} is after its end {end}")
    return f"{start}-{end}"


def _filter_value(attr: Attribute, value: Any) -> Any:
    if attr.vr in ("DA", "TM"):
        return format_date_range(value, name=attr.column, vr=attr.vr)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [str(v) for v in value]
        if any("\\" in v for v in items):
            raise InvalidInputError(f"{attr.column}: values must not contain a backslash")
        return "\\".join(items)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidInputError(f"{attr.column}: expected a string, got {type(value).__name__}")
    return value


def _unknown(name: str, known: Iterable[str]) -> InvalidInputError:
    return InvalidInputError(f"unknown filter {name!r}; known: {', '.join(sorted(known))}")


def find_identifier(
    level: QueryLevel | str = QueryLevel.STUDY,
    *,
    model: QueryModel | str = QueryModel.STUDY_ROOT,
    return_keys: Iterable[str] | None = None,
    **filters: Any,
) -> Dataset:
    """The C-FIND identifier for a query at ``level`` with snake_case ``filters``.

    Parameters
    ----------
    level : QueryLevel or str
        PATIENT, STUDY, SERIES or IMAGE.
    model : QueryModel or str
        Information model; PATIENT level needs the patient root model.
    return_keys : iterable of str, optional
        Columns to ask for; default :data:`DEFAULT_RETURN_KEYS` of the level.
        Filters are always returned too.
    **filters
        ``patient_id="MRN1001"``, ``study_date=("2026-01-01", None)``,
        ``modality="CT"``, ``accession_number="ACC*"``, ``study_instance_uid=[...]``...

    Returns
    -------
    pydicom.dataset.Dataset
        QueryRetrieveLevel plus every return key (empty = universal match)
        and every filter (the matching value).

    Raises
    ------
    InvalidInputError
        Unknown filter or return key (named), a filter below the query level,
        a bad date, or PATIENT level with the study root model.
    """
    level = QueryLevel.of(level)
    model = QueryModel.of(model)
    if level is QueryLevel.PATIENT and model is QueryModel.STUDY_ROOT:
        raise InvalidInputError("PATIENT level needs the patient root model (model='patient')")
    keys = list(DEFAULT_RETURN_KEYS[level] if return_keys is None else return_keys)
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    for name in keys:
        if name not in ATTRIBUTES:
            raise InvalidInputError(f"unknown return key {name!r}; known: {', '.join(sorted(ATTRIBUTES))}")
        attr = ATTRIBUTES[name]
        setattr(ds, attr.keyword, "" if attr.vr not in ("US", "UL") else None)
    for name, value in filters.items():
        if name not in ATTRIBUTES:
            raise _unknown(name, ATTRIBUTES)
        attr = ATTRIBUTES[name]
        assert attr.level is not None
        if attr.level.depth > level.depth:
            raise InvalidInputError(f"filter {name!r} is an {attr.level.value}-level attribute; "
                                    f"it cannot be used in a {level.value}-level query")
        if value is None:
            continue
        setattr(ds, attr.keyword, _filter_value(attr, value))
    return ds


def worklist_identifier(*, return_keys: Iterable[str] | None = None, **filters: Any) -> Dataset:
    """The Modality Worklist C-FIND identifier (Scheduled Procedure Step Sequence inside).

    Parameters
    ----------
    return_keys : iterable of str, optional
        Columns to ask for; default :data:`WORKLIST_RETURN_KEYS`.
    **filters
        Any of :data:`WORKLIST_RETURN_KEYS`, e.g. ``modality="CT"``,
        ``scheduled_procedure_step_start_date="20261201-20261231"``,
        ``scheduled_station_ae_title="CT1"``, ``patient_id="MRN1003"``.

    Returns
    -------
    pydicom.dataset.Dataset

    Raises
    ------
    InvalidInputError
        Unknown filter (named) or a bad date.
    """
    keys = list(WORKLIST_RETURN_KEYS if return_keys is None else return_keys)
    ds, sps = Dataset(), Dataset()
    for name in [*keys, *filters]:
        if name not in _WL_ATTRS:
            raise _unknown(name, _WL_ATTRS)
        target = sps if name in _WL_SPS_COLUMNS else ds
        setattr(target, _WL_ATTRS[name].keyword, "")
    for name, value in filters.items():
        if value is None:
            continue
        attr = _WL_ATTRS[name]
        target = sps if name in _WL_SPS_COLUMNS else ds
        setattr(target, attr.keyword, _filter_value(attr, value))
    ds.ScheduledProcedureStepSequence = [sps]
    return ds


# -- responses -> frames ------------------------------------------------------------------------


def parse_da(value: Any) -> dt.date | None:
    """A DICOM DA value as a date; ``None`` for empty or malformed values."""
    if isinstance(value, dt.date):
        return value
    text = str(value or "").strip().replace("-", "").replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def parse_tm(value: Any) -> dt.time | None:
    """A DICOM TM value (``HH``, ``HHMM``, ``HHMMSS[.ffffff]``) as a time; ``None`` if empty/bad."""
    if isinstance(value, dt.time):
        return value
    text = str(value or "").strip().replace(":", "")
    m = re.match(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$", text)
    if not m:
        return None
    h, mi, s, frac = m.groups()
    try:
        return dt.time(int(h), int(mi or 0), min(int(s or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def _parse_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        try:
            return int(float(str(value)))
        except ValueError:
            return None


def _value(attr: Attribute, ds: Dataset) -> Any:
    elem = ds.get(attr.keyword)
    if elem is None:
        return None
    value = elem.value if hasattr(elem, "value") else elem
    if attr.multi:
        if value is None or value == "":
            return []
        items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
        return [str(v) for v in items if str(v)]
    if isinstance(value, (MultiValue, list)):
        value = value[0] if len(value) else None
    if value is None:
        return None
    if attr.vr == "DA":
        return parse_da(value)
    if attr.vr == "TM":
        return parse_tm(value)
    if attr.vr in ("IS", "US", "UL"):
        return _parse_int(value)
    text = str(value)
    return text if text != "" else None


def _frame(attrs: Sequence[Attribute], rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    import polars as pl

    schema = {a.column: a.dtype for a in attrs}
    data = list(rows)
    return pl.DataFrame(data, schema=schema, orient="row") if data else pl.DataFrame(schema=schema)


def _columns(names: Iterable[str], table: Mapping[str, Attribute]) -> list[Attribute]:
    out: list[Attribute] = []
    for name in names:
        if name not in table:
            raise InvalidInputError(f"unknown column {name!r}")
        if table[name] not in out:
            out.append(table[name])
    return out


def empty_frame(level: QueryLevel | str, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """The empty frame of a query at ``level``: no rows, the full typed schema."""
    return responses_to_frame(level, (), columns=columns)


def responses_to_frame(
    level: QueryLevel | str,
    datasets: Iterable[Dataset],
    *,
    columns: Iterable[str] | None = None,
) -> pl.DataFrame:
    """C-FIND (or QIDO-RS) matches as a typed frame, one row per match.

    Parameters
    ----------
    level : QueryLevel or str
        The query level; picks the default columns.
    datasets : iterable of Dataset
        The identifiers of the pending responses.
    columns : iterable of str, optional
        Columns, in order (default :data:`DEFAULT_RETURN_KEYS` of the level).

    Returns
    -------
    polars.DataFrame
        Dates ``pl.Date``, times ``pl.Time``, counts and numbers ``pl.Int32``,
        ``modalities_in_study`` ``pl.List(pl.String)``, the rest ``pl.String``
        (empty values are null). No matches give an empty frame with this schema.
    """
    level = QueryLevel.of(level)
    attrs = _columns(DEFAULT_RETURN_KEYS[level] if columns is None else columns, ATTRIBUTES)
    return _frame(attrs, ({a.column: _value(a, ds) for a in attrs} for ds in datasets))


def worklist_to_frame(datasets: Iterable[Dataset]) -> pl.DataFrame:
    """Modality Worklist matches as a frame (columns :data:`WORKLIST_RETURN_KEYS`).

    One row per Scheduled Procedure Step: a match with two steps gives two rows.
    """
    attrs = [_WL_ATTRS[c] for c in WORKLIST_RETURN_KEYS]
    top = [a for a in attrs if a.column not in _WL_SPS_COLUMNS]
    sps_attrs = [a for a in attrs if a.column in _WL_SPS_COLUMNS]

    def rows() -> Iterable[dict[str, Any]]:
        for ds in datasets:
            base = {a.column: _value(a, ds) for a in top}
            steps = list(ds.get("ScheduledProcedureStepSequence") or []) or [Dataset()]
            for step in steps:
                yield {**base, **{a.column: _value(a, step) for a in sps_attrs}}

    return _frame(attrs, rows())
