"""The pure core of a cohort pull: what was asked, what the PACS answered, what happens next.

No sockets, no files, no clock of its own (times are passed in). The I/O
modules call these functions: :mod:`kit.cohort.journal` (SQLite) keeps the
states, :mod:`kit.cohort.retrieve` talks to the PACS, :mod:`kit.cohort.pull`
runs the job. A Dask path would call the same functions.

- **Input** (:func:`items_from_frame`): one :class:`CohortItem` per distinct
  row of a frame with ``accession_number``, ``study_instance_uid`` and/or
  ``patient_id`` (aliases ``accession``, ``study_uid``, ``mrn``), and
  optionally ``study_date`` (a DICOM date or range, ``20240101-20241231``)
  or ``date_from``/``date_to``. Every value given in a row is a filter of
  its C-FIND (or QIDO) query. Values with DICOM wildcards (``*``, ``?``) or
  list separators (``\\``) are refused: a cohort names studies, it does not
  search for them, and a stray ``*`` would pull a whole archive.
- **Resolution** (:func:`matching_studies`): the PACS's answers are kept only
  if they match the item (a PACS that ignores a filter must not widen the
  cohort) and carry a valid Study Instance UID (it names a folder).
- **Failures** (:func:`classify`, :func:`after_failure`): unreachable, timeout,
  aborted, a busy PACS (transient association rejection, out of resources,
  HTTP 429/5xx) are transient and retried with backoff; "not found", a
  refusal and anything else are final.
- **States** (:class:`ItemState`, :class:`StudyState`, :data:`STUDY_TRANSITIONS`).
- **Report** (:func:`report_frame`): one row per requested item and study.

Written by hand: the rules above; polars builds the frames.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

import kit._checks as _checks
from kit.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomProtocolError,
    DicomWebError,
    DimseStatusError,
    InvalidInputError,
    NotFoundError,
    PeerDisconnectedError,
    PeerTimeoutError,
    PeerUnreachableError,
)

__all__ = [
    "ID_COLUMNS",
    "ITEM_TRANSITIONS",
    "REPORT_SCHEMA",
    "STUDY_TRANSITIONS",
    "CohortItem",
    "Failure",
    "FoundStudy",
    "ItemState",
    "Outcome",
    "Pause",
    "RetryPolicy",
    "StudyState",
    "after_failure",
    "check_transition",
    "classify",
    "items_from_frame",
    "matching_studies",
    "report_frame",
]

#: The identifier columns of a cohort, most specific first.
ID_COLUMNS = ("study_instance_uid", "accession_number", "patient_id")
#: Other names a researcher's table may use for them.
ALIASES = {"study_uid": "study_instance_uid", "studyinstanceuid": "study_instance_uid",
           "accession": "accession_number", "accessionnumber": "accession_number",
           "mrn": "patient_id", "patientid": "patient_id"}
DATE_COLUMNS = ("study_date", "date_from", "date_to")
#: Longest value per column (DICOM VR SH 16, LO 64, UI 64).
MAX_LENGTH = {"accession_number": 16, "patient_id": 64, "study_instance_uid": 64}
_FORBIDDEN = re.compile(r"[*?\\\x00-\x1f\x7f]")
_DATE = re.compile(r"^\d{8}$")


class ItemState(enum.StrEnum):
    """Where a requested item stands."""

    PENDING = "pending"        # not resolved yet (or to be tried again at ``next_at``)
    RESOLVING = "resolving"    # a C-FIND/QIDO is out for it
    RESOLVED = "resolved"      # its studies are known
    FAILED = "failed"          # not found, refused, or out of attempts


class StudyState(enum.StrEnum):
    """Where one study stands."""

    PENDING = "pending"        # to fetch (at ``next_at``)
    RETRIEVING = "retrieving"  # a retrieve is out for it (after a crash: fetch again, cleanly)
    DONE = "done"              # every instance on disk, durably; never fetched again
    FAILED = "failed"          # not found or out of attempts


#: Allowed state changes (a journal refuses others: a bug, never a state to persist).
ITEM_TRANSITIONS: dict[ItemState, frozenset[ItemState]] = {
    ItemState.PENDING: frozenset({ItemState.RESOLVING}),
    ItemState.RESOLVING: frozenset({ItemState.RESOLVED, ItemState.PENDING, ItemState.FAILED}),
    ItemState.RESOLVED: frozenset(),
    ItemState.FAILED: frozenset({ItemState.PENDING}),   # a new run retries transient failures
}
STUDY_TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    StudyState.PENDING: frozenset({StudyState.RETRIEVING}),
    StudyState.RETRIEVING: frozenset({StudyState.DONE, StudyState.PENDING, StudyState.FAILED}),
    StudyState.DONE: frozenset(),
    StudyState.FAILED: frozenset({StudyState.PENDING}),
}


def check_transition(old: ItemState | StudyState, new: ItemState | StudyState) -> None:
    """Raise ValueError unless ``old -> new`` is an allowed change."""
    table: Mapping[Any, frozenset[Any]] = (ITEM_TRANSITIONS if isinstance(old, ItemState)
                                           else STUDY_TRANSITIONS)
    if type(old) is not type(new) or new not in table[old]:
        raise ValueError(f"state change {old.value} -> {new.value} is not allowed")


# -- input ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CohortItem:
    """One requested item: an accession number, a study UID and/or an MRN, maybe a date range.

    Parameters
    ----------
    accession_number, study_instance_uid, patient_id : str or None
        At least one; each given value must match.
    study_date : str or None
        A DICOM date or range (``20240101``, ``20240101-20241231``, ``-20241231``).
    row : int
        The (first) input row it came from, 1-based; not part of its identity.
    """

    accession_number: str | None = None
    study_instance_uid: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    row: int = dataclasses.field(default=0, compare=False)

    def __post_init__(self) -> None:
        where = f"row {self.row}: " if self.row else ""
        if not (self.accession_number or self.study_instance_uid or self.patient_id):
            raise InvalidInputError(f"{where}no accession_number, study_instance_uid or patient_id")
        for name in ID_COLUMNS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _id_value(name, value, where))
        if self.study_date is not None:
            object.__setattr__(self, "study_date", _date_range(self.study_date, where))

    @property
    def key(self) -> str:
        """The item's identity in the journal: ``accession_number=ACC1 study_date=2024...``."""
        return " ".join(f"{name}={value}" for name, value in self.filters().items())

    @property
    def kind(self) -> str:
        """The most specific identifier given: study UID, then accession number, then MRN."""
        return next(name for name in ID_COLUMNS if getattr(self, name))

    def filters(self) -> dict[str, str]:
        """The C-FIND/QIDO filters, in a fixed order."""
        names = (*ID_COLUMNS, "study_date")
        return {name: getattr(self, name) for name in names if getattr(self, name)}


def _id_value(name: str, value: object, where: str) -> str:
    text = str(value).strip()
    if not text:
        raise InvalidInputError(f"{where}{name} is empty")
    if name == "study_instance_uid":
        try:
            return _checks.dicom_uid(text)
        except ValueError as exc:
            raise InvalidInputError(f"{where}{name}: {exc}") from None
    if len(text) > MAX_LENGTH[name]:
        raise InvalidInputError(f"{where}{name} {text[:20]!r} is longer than {MAX_LENGTH[name]} characters")
    bad = _FORBIDDEN.search(text)
    if bad:
        raise InvalidInputError(f"{where}{name} {text!r} contains {bad.group()!r}: wildcards, backslashes "
                                f"and control characters are not allowed in a cohort")
    if not text.isprintable():
        raise InvalidInputError(f"{where}{name} {text!r} has characters that cannot be printed")
    return text


def _date_text(value: object, where: str, name: str) -> str:
    if isinstance(value, dt.datetime):
        value = value.date()
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip().replace("-", "") if re.match(r"^\d{4}-\d{2}-\d{2}$", str(value).strip()) \
        else str(value).strip()
    if not _DATE.match(text):
        raise InvalidInputError(f"{where}{name} {value!r} is not a date (YYYYMMDD or YYYY-MM-DD)")
    try:
        dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        raise InvalidInputError(f"{where}{name} {value!r} is not a real date") from None
    return text


def _date_range(value: object, where: str) -> str:
    """A DICOM DA matching value (a date or ``start-end``, either end open), checked.

    Accepted: ``20240101``, ``2024-01-01``, ``20240101-20241231``, ``20240101-``,
    ``-20241231``, ``2024-01-01/2024-12-31`` (either side may be empty) and
    ``2024-01-01-2024-12-31``.
    """
    if isinstance(value, dt.date):
        return _date_text(value, where, "study_date")
    text = str(value).strip()
    both = re.match(r"^(\d{4}-\d{2}-\d{2})-(\d{4}-\d{2}-\d{2})$", text)
    if re.match(r"^\d{4}-\d{2}-\d{2}$", text) or _DATE.match(text):
        return _date_text(text, where, "study_date")
    if both:
        parts: tuple[str, str] = (both.group(1), both.group(2))
    elif text.count("/") == 1:
        parts = tuple(p.strip() for p in text.split("/"))  # type: ignore[assignment]
    elif text.count("-") == 1:
        parts = tuple(p.strip() for p in text.split("-"))  # type: ignore[assignment]
    else:
        raise InvalidInputError(f"{where}study_date {value!r} is not a date or range "
                                f"(20240101, 20240101-20241231, 20240101-, -20241231)")
    start = _date_text(parts[0], where, "study_date") if parts[0] else ""
    end = _date_text(parts[1], where, "study_date") if parts[1] else ""
    if not start and not end:
        raise InvalidInputError(f"{where}study_date {value!r}: a range needs at least one end")
    if start and end and start > end:
        raise InvalidInputError(f"{where}study_date: range start {start} is after its end {end}")
    return f"{start}-{end}"


def _in_range(date: str, wanted: str) -> bool:
    if "-" not in wanted:
        return date == wanted
    start, end = wanted.split("-")
    return (not start or date >= start) and (not end or date <= end)


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from a pandas-made frame
        return None
    if isinstance(value, str) and not value.strip():
        return None
    return value


def items_from_frame(frame: pl.DataFrame) -> list[CohortItem]:
    """The distinct requested items of a cohort frame, in input order.

    Parameters
    ----------
    frame : polars.DataFrame
        Columns ``accession_number``, ``study_instance_uid``, ``patient_id``
        (any of them; aliases ``accession``, ``study_uid``, ``mrn``; case and
        spaces ignored), optional ``study_date`` (date or DICOM range) or
        ``date_from``/``date_to``. Other columns are ignored. Read CSV files
        with every column as text, or accession numbers lose leading zeros.

    Returns
    -------
    list of CohortItem
        Rows asking the same thing are one item (the first row's number is kept).

    Raises
    ------
    InvalidInputError
        No identifier column, an empty cohort, a row without an identifier,
        a value that is too long, has a wildcard or is not a UID/date; the
        message names the row (1-based, as in a spreadsheet without header).
    """
    if not isinstance(frame, pl.DataFrame):
        raise InvalidInputError(f"a cohort is a polars DataFrame, not {type(frame).__name__}")
    names: dict[str, str] = {}
    for column in frame.columns:
        norm = re.sub(r"[\s\-]+", "_", str(column).strip().lower())
        canonical = ALIASES.get(norm.replace("_", ""), ALIASES.get(norm, norm))
        if canonical in (*ID_COLUMNS, *DATE_COLUMNS):
            if canonical in names.values():
                raise InvalidInputError(f"columns {column!r} and another both mean {canonical}")
            names[column] = canonical
    if not any(c in names.values() for c in ID_COLUMNS):
        shown = ", ".join(repr(str(c)) for c in frame.columns[:8]) or "none"
        raise InvalidInputError(f"the cohort has no accession_number, study_instance_uid or patient_id "
                                f"column (columns: {shown}); aliases accession, study_uid, mrn are accepted")
    if "study_date" in names.values() and {"date_from", "date_to"} & set(names.values()):
        raise InvalidInputError("give study_date or date_from/date_to, not both")
    if frame.is_empty():
        raise InvalidInputError("the cohort has no rows")
    picked = frame.select([pl.col(c).alias(n) for c, n in names.items()])
    items: list[CohortItem] = []
    seen: set[str] = set()
    for index, raw in enumerate(picked.iter_rows(named=True), start=1):
        row = {k: _cell(v) for k, v in raw.items()}
        where = f"row {index}: "
        date = row.get("study_date")
        if date is None and (row.get("date_from") is not None or row.get("date_to") is not None):
            low, high = row.get("date_from"), row.get("date_to")
            start = _date_text(low, where, "date_from") if low is not None else ""
            end = _date_text(high, where, "date_to") if high is not None else ""
            date = f"{start}-{end}"
        ids = {name: row.get(name) for name in ID_COLUMNS}
        item = CohortItem(**{k: (None if v is None else str(v)) for k, v in ids.items()},
                          study_date=date, row=index)
        if item.key not in seen:
            seen.add(item.key)
            items.append(item)
    return items


# -- resolution ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FoundStudy:
    """A study the PACS named for an item."""

    study_instance_uid: str
    accession_number: str | None = None
    patient_id: str | None = None
    study_date: str | None = None   # YYYYMMDD
    instances: int | None = None    # NumberOfStudyRelatedInstances, if the PACS said


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    text = str(value).strip()
    return text or None


def matching_studies(item: CohortItem, rows: Iterable[Mapping[str, Any]]) -> tuple[list[FoundStudy], int]:
    """The PACS's answers for ``item`` that really match it, and how many were dropped.

    An answer is dropped when its Study Instance UID is missing or not a UID,
    or when it contradicts a filter (another accession number, patient or
    study UID, a date outside the range). A missing date is accepted (many
    PACS do not return it). Duplicates count once.
    """
    kept: dict[str, FoundStudy] = {}
    dropped = 0
    for row in rows:
        try:
            uid = _checks.dicom_uid(_text(row.get("study_instance_uid")) or "")
        except ValueError:
            dropped += 1
            continue
        study = FoundStudy(uid, _text(row.get("accession_number")), _text(row.get("patient_id")),
                           _text(row.get("study_date")), _count(row.get("number_of_study_related_instances")))
        wrong = bool((item.study_instance_uid and uid != item.study_instance_uid)
                     or (item.accession_number and study.accession_number != item.accession_number)
                     or (item.patient_id and study.patient_id != item.patient_id)
                     or (item.study_date and study.study_date
                         and not _in_range(study.study_date, item.study_date)))
        if wrong:
            dropped += 1
            continue
        kept.setdefault(uid, study)
    return list(kept.values()), dropped


def _count(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


# -- failures ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why an attempt failed: the one-line reason, and whether trying again may help."""

    reason: str
    transient: bool
    not_found: bool = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"


def classify(exc: BaseException) -> Failure:
    """Sort an attempt's error into transient (retry) or final, with its reason.

    Transient: unreachable, timeout, disconnected or aborted; an association
    rejected transiently (result 2, e.g. the PACS's association limit);
    DIMSE "out of resources" (0xA7xx) or cancelled; a retrieve that failed part
    way; HTTP 408, 429 and 5xx. Final: "not found" (a retrieve that delivered
    nothing, HTTP 404/410), permanent rejection, TLS, refused identifiers, an
    association the kit aborted for what the peer sent (:class:`DicomProtocolError`:
    an oversized identifier or PDU, an answer to another message), anything else.
    """
    reason = _first_line(exc)
    if isinstance(exc, DicomProtocolError):  # the same peer answers the same way again
        return Failure(reason, transient=False)
    if isinstance(exc, (PeerUnreachableError, PeerTimeoutError, PeerDisconnectedError,
                        AssociationAbortedError)):
        return Failure(reason, transient=True)
    if isinstance(exc, AssociationRejectedError):
        return Failure(reason, transient=exc.result == 2)
    if isinstance(exc, NotFoundError):
        return Failure(reason, transient=False, not_found=True)
    if isinstance(exc, DicomWebError):
        code = exc.status_code
        if code in (404, 410) or (code is None and "returned no instances" in str(exc)):
            return Failure(reason, transient=False, not_found=True)
        return Failure(reason, transient=code is None or code in (408, 429) or code >= 500)
    if isinstance(exc, DimseStatusError):
        received = getattr(exc, "received", None)
        nothing = received is not None and getattr(received, "height", 1) == 0
        failed = getattr(exc, "failed", None) or 0
        if exc.status == 0x0000 and nothing and not failed:
            return Failure(reason, transient=False, not_found=True)
        status = exc.status
        busy = status is None or 0xA700 <= status <= 0xA7FF or status == 0xFE00 \
            or (received is not None and (not nothing or failed))
        return Failure(reason, transient=bool(busy))
    return Failure(reason, transient=False)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a study is tried.

    Parameters
    ----------
    max_attempts : int
        Attempts per item or study (1 = no retry).
    backoff : float
        Seconds the job waits after a transient failure; doubled per further
        failure in a row.
    max_backoff : float
        Upper bound of one wait.
    """

    max_attempts: int = 6
    backoff: float = 2.0
    max_backoff: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (self.backoff >= 0 and self.max_backoff >= 0):
            raise ValueError("backoff and max_backoff must not be negative")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` transient failures in a row (1, 2, ...)."""
        return float(min(self.max_backoff, self.backoff * 2 ** max(0, min(failures, 60) - 1)))


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a failed attempt leads to: ``pending`` again at ``next_at``, or ``failed``."""

    retry: bool
    next_at: float
    reason: str
    transient: bool


def after_failure(attempts: int, failure: Failure, policy: RetryPolicy, now: float) -> Outcome:
    """The next step after attempt number ``attempts`` (1-based) failed with ``failure``."""
    if failure.transient and attempts < policy.max_attempts:
        return Outcome(True, now + policy.delay(attempts), failure.reason, True)
    reason = failure.reason
    if failure.transient:
        reason = f"gave up after {attempts} attempt(s): {reason}"
    return Outcome(False, 0.0, reason, failure.transient)


class Pause:
    """The whole job's backoff: after a transient failure nobody starts work until :attr:`until`.

    A PACS that is down or overloaded is not asked again by the other workers
    in the meantime; each transient failure in a row doubles the wait, a
    success resets it.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.until = 0.0

    def failed(self, now: float) -> float:
        """A transient failure at ``now``; returns when work may start again."""
        self.failures += 1
        self.until = max(self.until, now + self.policy.delay(self.failures))
        return self.until

    def succeeded(self) -> None:
        """Something worked: the next failure starts the backoff afresh."""
        self.failures = 0

    def wait(self, now: float) -> float:
        """Seconds until work may start (0 when it may now)."""
        return max(0.0, self.until - now)


# -- report --------------------------------------------------------------------------------------

#: One row per requested item and study it resolved to (an item with no study: one row).
REPORT_SCHEMA: dict[str, pl.DataType] = {
    "row": pl.Int64(), "item": pl.String(),
    "study_instance_uid": pl.String(), "accession_number": pl.String(), "patient_id": pl.String(),
    "study_date": pl.Date(),
    "status": pl.String(), "reason": pl.String(), "attempts": pl.Int64(),
    "instances": pl.Int64(), "bytes": pl.Int64(), "seconds": pl.Float64(), "path": pl.String(),
}

#: report ``status`` values: ``retrieved`` (on disk), ``failed`` (``reason`` says why),
#: ``found`` (resolved, not retrieved yet: the job stopped early), ``pending`` (not resolved yet)
STATUSES = ("retrieved", "failed", "found", "pending")


def report_frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """The report frame (:data:`REPORT_SCHEMA`) from journal rows.

    Each row holds the item's ``row``, ``item`` (key), ``item_state``,
    ``item_reason``, ``item_attempts`` and, when the item has a study, the
    study's columns, ``state``, ``reason``, ``attempts``, ``instances``,
    ``bytes``, ``seconds`` and ``path``.
    """
    out: list[dict[str, Any]] = []
    for r in rows:
        study = r.get("study_instance_uid")
        if study is None:
            state = r["item_state"]
            status = "failed" if state == ItemState.FAILED else "pending"
            reason = r.get("item_reason") if state == ItemState.FAILED else None
            attempts = r.get("item_attempts")
        else:
            state = r["state"]
            status = {StudyState.DONE: "retrieved", StudyState.FAILED: "failed"}.get(state, "found")
            reason, attempts = r.get("reason") if status == "failed" else None, r.get("attempts")
        date = _text(r.get("study_date"))
        out.append({
            "row": r.get("row"), "item": r.get("item"), "study_instance_uid": study,
            "accession_number": r.get("accession_number"), "patient_id": r.get("patient_id"),
            "study_date": dt.datetime.strptime(date, "%Y%m%d").date() if date and _DATE.match(date) else None,
            "status": status, "reason": reason, "attempts": attempts,
            "instances": r.get("instances") if status == "retrieved" else None,
            "bytes": r.get("bytes") if status == "retrieved" else None,
            "seconds": r.get("seconds") if status == "retrieved" else None,
            "path": r.get("path") if status == "retrieved" else None,
        })
    if not out:
        return pl.DataFrame(schema=REPORT_SCHEMA)
    return pl.DataFrame(out, schema=REPORT_SCHEMA)
