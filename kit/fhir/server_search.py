"""FHIR search for the embedded server: parameter definitions, index rows, query parsing, SQL (pure).

No library covers a FHIR search engine over SQLite, so this is written by hand,
following the FHIR R4 search page (http://hl7.org/fhir/R4/search.html) for the
subset the embedded server supports:

- parameter types ``token`` (``[system]|[code]``, ``|code``, ``system|``, ``:not``),
  ``string`` (case- and accent-insensitive prefix; ``:exact``, ``:contains``),
  ``reference`` (``Type/id``, ``id``, absolute URL, ``:Type``), ``date``
  (prefixes ``eq ne lt gt le ge sa eb ap``, year/month/day/second precision,
  ranges compared as intervals), and ``:missing`` on all of them;
- ``_id``, ``_lastUpdated``, ``_sort`` (``-`` for descending), ``_count``,
  ``_offset`` (the server's paging cursor), ``_include``, ``_revinclude``,
  ``_summary=count``, ``_total``, ``_elements``;
- comma-separated values are OR, repeated parameters AND.

A written resource becomes rows ``(param, system, value, lo, hi)`` in an index
table (:func:`index_rows`); a query becomes a SQL ``WHERE`` over that table
(:func:`build_where`). Dates are stored as UTC interval bounds
``YYYY-MM-DDTHH:MM:SS.ffffff`` so string comparison is time comparison.
This module builds SQL text and arguments only; it never opens a database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import itertools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from kit.errors import FhirValidationError
from kit.fhir.resources import issue
from kit.fhir.server_limits import MAX_INCLUDES, MAX_OFFSET, MAX_OR_VALUES, MAX_SEARCH_PARAMS, is_type

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "MAX_SORT",
    "SEARCH_PARAMS",
    "Condition",
    "Include",
    "ParamType",
    "SearchParam",
    "SearchQuery",
    "build_order",
    "build_where",
    "date_range",
    "index_rows",
    "normalize_string",
    "parse_search",
    "params_for",
]

#: Page size when the client gives no ``_count``, and the largest page served.
DEFAULT_COUNT: Final = 50
MAX_COUNT: Final = 1000
#: Fields one ``_sort`` may name (each is a correlated subquery).
MAX_SORT: Final = 8

_MIN: Final = "0001-01-01T00:00:00.000000"
_MAX: Final = "9999-12-31T23:59:59.999999"


class ParamType(enum.Enum):
    """FHIR search parameter types the server supports."""

    TOKEN = "token"
    STRING = "string"
    REFERENCE = "reference"
    DATE = "date"


@dataclasses.dataclass(frozen=True)
class SearchParam:
    """A search parameter: its type, the element paths it indexes, and reference targets."""

    name: str
    type: ParamType
    paths: tuple[str, ...]
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.paths:
            raise ValueError("a search parameter needs a name and at least one path")


def _p(name: str, kind: str, *paths: str, targets: tuple[str, ...] = ()) -> SearchParam:
    return SearchParam(name, ParamType(kind), paths, targets)


_PATIENT = ("Patient",)
_SUBJECT = (_p("subject", "reference", "subject"),
            _p("patient", "reference", "subject", targets=_PATIENT))
_COMMON = (_p("identifier", "token", "identifier"), _p("status", "token", "status"))

#: Search parameters per resource type (``*`` applies to types not listed).
SEARCH_PARAMS: Final[Mapping[str, tuple[SearchParam, ...]]] = {
    "Patient": (
        _p("identifier", "token", "identifier"),
        _p("family", "string", "name.family"),
        _p("given", "string", "name.given"),
        _p("name", "string", "name.family", "name.given", "name.text", "name.prefix", "name.suffix"),
        _p("birthdate", "date", "birthDate"),
        _p("gender", "token", "gender"),
        _p("telecom", "token", "telecom"),
        _p("address", "string", "address.line", "address.city", "address.state", "address.postalCode",
           "address.country", "address.text"),
        _p("address-city", "string", "address.city"),
        _p("active", "token", "active"),
        _p("general-practitioner", "reference", "generalPractitioner"),
    ),
    "Observation": (*_COMMON, *_SUBJECT,
        _p("code", "token", "code"), _p("category", "token", "category"),
        _p("encounter", "reference", "encounter"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod", "effectiveInstant"),
        _p("based-on", "reference", "basedOn"), _p("derived-from", "reference", "derivedFrom"),
        _p("has-member", "reference", "hasMember"), _p("performer", "reference", "performer"),
        _p("value-concept", "token", "valueCodeableConcept"),
        _p("value-string", "string", "valueString"),
        _p("component-code", "token", "component.code")),
    "Encounter": (*_COMMON, *_SUBJECT,
        _p("class", "token", "class"), _p("type", "token", "type"),
        _p("date", "date", "period"), _p("based-on", "reference", "basedOn")),
    "Condition": (_p("identifier", "token", "identifier"), *_SUBJECT,
        _p("clinical-status", "token", "clinicalStatus"),
        _p("verification-status", "token", "verificationStatus"),
        _p("category", "token", "category"), _p("code", "token", "code"),
        _p("encounter", "reference", "encounter"), _p("body-site", "token", "bodySite"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
        _p("recorded-date", "date", "recordedDate")),
    "ImagingStudy": (*_COMMON, *_SUBJECT,
        _p("started", "date", "started"), _p("modality", "token", "series.modality"),
        _p("series", "token", "series.uid"), _p("body-site", "token", "series.bodySite"),
        _p("encounter", "reference", "encounter"), _p("basedon", "reference", "basedOn")),
    "Procedure": (*_COMMON, *_SUBJECT,
        _p("code", "token", "code"), _p("category", "token", "category"),
        _p("date", "date", "performedDateTime", "performedPeriod"),
        _p("encounter", "reference", "encounter"), _p("based-on", "reference", "basedOn")),
    "Appointment": (*_COMMON,
        _p("date", "date", "start"), _p("actor", "reference", "participant.actor"),
        _p("patient", "reference", "participant.actor", targets=_PATIENT),
        _p("service-type", "token", "serviceType"), _p("appointment-type", "token", "appointmentType"),
        _p("based-on", "reference", "basedOn")),
    "ServiceRequest": (*_COMMON, *_SUBJECT,
        _p("code", "token", "code"), _p("category", "token", "category"),
        _p("intent", "token", "intent"), _p("requisition", "token", "requisition"),
        _p("authored", "date", "authoredOn"),
        _p("occurrence", "date", "occurrenceDateTime", "occurrencePeriod"),
        _p("encounter", "reference", "encounter")),
    "DiagnosticReport": (*_COMMON, *_SUBJECT,
        _p("code", "token", "code"), _p("category", "token", "category"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"), _p("issued", "date", "issued"),
        _p("result", "reference", "result"), _p("based-on", "reference", "basedOn"),
        _p("encounter", "reference", "encounter"), _p("conclusion", "token", "conclusionCode")),
    "MedicationRequest": (*_COMMON, *_SUBJECT,
        _p("code", "token", "medicationCodeableConcept"), _p("intent", "token", "intent"),
        _p("authoredon", "date", "authoredOn")),
    "Group": (_p("identifier", "token", "identifier"), _p("type", "token", "type"),
              _p("code", "token", "code"), _p("member", "reference", "member.entity")),
    "Practitioner": (_p("identifier", "token", "identifier"),
                     _p("name", "string", "name.family", "name.given", "name.text"),
                     _p("family", "string", "name.family"), _p("given", "string", "name.given")),
    "Organization": (_p("identifier", "token", "identifier"), _p("name", "string", "name")),
    "DocumentReference": (*_COMMON, *_SUBJECT,
        _p("type", "token", "type"), _p("category", "token", "category"), _p("date", "date", "date")),
    "*": (*_COMMON, *_SUBJECT, _p("code", "token", "code"), _p("category", "token", "category"),
          _p("encounter", "reference", "encounter")),
}

#: Parameters every type has (indexed from meta, not from SEARCH_PARAMS).
_LAST_UPDATED = SearchParam("_lastUpdated", ParamType.DATE, ("meta.lastUpdated",))
_RESULT_PARAMS = frozenset({"_count", "_offset", "_sort", "_include", "_revinclude", "_summary",
                            "_total", "_elements", "_format", "_pretty"})


def params_for(resource_type: str) -> dict[str, SearchParam]:
    """The search parameters of a resource type, by name (``_lastUpdated`` included)."""
    params = {p.name: p for p in SEARCH_PARAMS.get(resource_type, SEARCH_PARAMS["*"])}
    params["_lastUpdated"] = _LAST_UPDATED
    return params


# -- values --------------------------------------------------------------------------------------


def normalize_string(text: str) -> str:
    """Case- and accent-insensitive form used for ``string`` search."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


_DATE_RE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?")
_EPOCH: Final = dt.datetime(1, 1, 1)
_US: Final = dt.timedelta(microseconds=1)
#: ``_MIN``/``_MAX`` in microseconds since 0001-01-01 (what every bound is clamped into).
_MIN_US: Final = 0
_MAX_US: Final = (dt.datetime(9999, 12, 31, 23, 59, 59, 999999) - _EPOCH) // _US
_DAY_US: Final = 86_400_000_000


def _bad(message: str, expression: str | None = None) -> FhirValidationError:
    return FhirValidationError(message, issues=[issue("error", "invalid", message, expression)])


def _fmt(us: int) -> str:
    """Microseconds since 0001-01-01, clamped to the representable range, as a stored bound."""
    clamped = min(max(us, _MIN_US), _MAX_US)
    return (_EPOCH + dt.timedelta(microseconds=clamped)).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _bounds(text: str) -> tuple[int, int]:
    """The UTC interval a FHIR date covers, in microseconds since 0001-01-01 (may lie outside it)."""
    m = _DATE_RE.fullmatch(text)
    if not m:
        raise _bad(f"not a FHIR date/dateTime: {text[:80]!r}")
    year, month, day, hour, minute, second, frac, zone = m.groups()
    try:
        y = int(year)
        mo = int(month) if month else 1
        start = dt.date(y, mo, int(day) if day else 1)
        if hour is None:
            if month is None:
                end_excl = (dt.date(y, 12, 31) - start).days + 1
            elif day is None:
                end_excl = ((dt.date(y, 12, 31) - start).days + 1 if mo == 12
                            else (dt.date(y, mo + 1, 1) - start).days)
            else:
                end_excl = 1
            lo = (start - _EPOCH.date()).days * _DAY_US
            return lo, lo + end_excl * _DAY_US - 1
        local = dt.datetime(y, mo, int(day), int(hour), int(minute), int(second or 0))
        offset = dt.timedelta(0)
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            dt.timezone(offset)  # rejects offsets of a day or more
    except ValueError as exc:
        raise _bad(f"not a valid date: {text[:80]!r} ({exc})") from exc
    lo = (local - _EPOCH) // _US - offset // _US
    if second is None:
        span = 60_000_000
    elif frac:
        digits = frac[:6]
        lo += int(digits.ljust(6, "0"))
        span = 10 ** (6 - len(digits))
    else:
        span = 1_000_000
    return lo, lo + span - 1


def date_range(text: str) -> tuple[str, str]:
    """The UTC interval ``(lo, hi)`` a FHIR date/dateTime/instant covers, at its precision.

    ``"2026"`` covers the whole year, ``"2026-01-12"`` the day, a dateTime with
    seconds that second (fractions narrow it further). Times without a zone are
    taken as UTC. Bounds that a zone offset moves outside years 1-9999 are
    clamped to them (``9999-12-31T23:59:59-14:00`` is a valid instant).

    Raises
    ------
    FhirValidationError
        Not a FHIR date (only ASCII digits count), or not a calendar date.
    """
    lo, hi = _bounds(text)
    return _fmt(lo), _fmt(hi)


def _walk(node: Any, path: Sequence[str]) -> Iterable[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, path)
        return
    if not path:
        if node is not None:
            yield node
        return
    if isinstance(node, Mapping) and path[0] in node:
        yield from _walk(node[path[0]], path[1:])


def _ref_parts(ref: str) -> tuple[str | None, str]:
    parts = [p for p in ref.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and is_type(parts[-2]):
        return parts[-2], parts[-1]
    return None, ref


def _tokens(value: Any) -> Iterable[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, Mapping):
        if "coding" in value:
            for c in value.get("coding") or []:
                if isinstance(c, Mapping) and c.get("code"):
                    yield c.get("system"), str(c["code"])
        elif "code" in value:
            yield value.get("system"), str(value["code"])
        elif "value" in value:  # Identifier, ContactPoint
            yield value.get("system"), str(value["value"])


def _dates(value: Any) -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield date_range(value)
    elif isinstance(value, Mapping) and ("start" in value or "end" in value):
        lo = date_range(value["start"])[0] if value.get("start") else _MIN
        hi = date_range(value["end"])[1] if value.get("end") else _MAX
        yield lo, hi


Row = tuple[str, str | None, str | None, str | None, str | None]


def index_rows(resource: Mapping[str, Any]) -> list[Row]:
    """The index rows ``(param, system, value, lo, hi)`` of a resource.

    token: ``system``/``value`` = system/code; string: ``system`` the original
    text, ``value`` its normalized form; reference: ``system`` the target type,
    ``value`` its id (or the raw reference if it is not ``Type/id``); date:
    ``lo``/``hi`` the UTC interval.
    """
    rows: set[Row] = set()
    for param in params_for(str(resource.get("resourceType"))).values():
        for path in param.paths:
            for value in _walk(resource, path.split(".")):
                try:
                    rows.update(_rows_of(param, value))
                except FhirValidationError:
                    continue  # an unparseable value is not searchable; validation judged the rest
    return sorted(rows, key=lambda r: tuple(x or "" for x in r))


def _rows_of(param: SearchParam, value: Any) -> list[Row]:
    if param.type is ParamType.TOKEN:
        return [(param.name, s, v, None, None) for s, v in _tokens(value)]
    if param.type is ParamType.STRING:
        return [(param.name, value, normalize_string(value), None, None)] if isinstance(value, str) else []
    if param.type is ParamType.DATE:
        return [(param.name, None, None, lo, hi) for lo, hi in _dates(value)]
    ref = value.get("reference") if isinstance(value, Mapping) else None
    if not isinstance(ref, str):
        return []
    rtype, rid = _ref_parts(ref)
    if param.targets and rtype not in param.targets:
        return []
    return [(param.name, rtype, rid, None, None)]


# -- queries -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Condition:
    """One AND-ed search criterion: a parameter, an optional modifier, OR-ed values."""

    param: SearchParam
    modifier: str | None
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Include:
    """An ``_include``/``_revinclude``: ``source_type:param[:target_type]``."""

    source_type: str
    param: str
    target_type: str | None = None


@dataclasses.dataclass(frozen=True)
class SearchQuery:
    """A parsed search on one resource type."""

    resource_type: str
    ids: tuple[tuple[str, ...], ...] = ()
    conditions: tuple[Condition, ...] = ()
    sort: tuple[tuple[str, bool], ...] = ()  # (param, descending)
    count: int = DEFAULT_COUNT
    offset: int = 0
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    summary_count: bool = False
    elements: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.count <= MAX_COUNT:
            raise _bad(f"_count must be between 0 and {MAX_COUNT}", "_count")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise _bad(f"_offset must be between 0 and {MAX_OFFSET}", "_offset")


_MODIFIERS: Final = {
    ParamType.TOKEN: {None, "not", "missing"},
    ParamType.STRING: {None, "exact", "contains", "missing"},
    ParamType.DATE: {None, "missing"},
    ParamType.REFERENCE: {None, "missing"},
}


def _split_values(raw: str, name: str = "value") -> tuple[str, ...]:
    parts = re.split(r"(?<!\\),", raw)
    if len(parts) > MAX_OR_VALUES:
        raise _bad(f"{name}: more than {MAX_OR_VALUES} comma-separated values", name)
    return tuple(p.replace("\\,", ",") for p in parts if p != "")


_ASCII_INT = re.compile(r"[0-9]{1,19}")


def _int(name: str, raw: str, high: int) -> int:
    """A non-negative integer of ASCII digits up to ``high`` (``"²".isdigit()`` is true; not here)."""
    if _ASCII_INT.fullmatch(raw) is None:
        raise _bad(f"{name} must be a non-negative integer of ASCII digits, got {raw[:40]!r}", name)
    value = int(raw)
    if value > high:
        raise _bad(f"{name} must be between 0 and {high}", name)
    return value


def _include(raw: str, name: str) -> Include:
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not is_type(parts[0]):
        raise _bad(f"{name} must be Type:param[:TargetType], got {raw!r}", name)
    if parts[1] not in params_for(parts[0]) or params_for(parts[0])[parts[1]].type is not ParamType.REFERENCE:
        raise _bad(f"{name}: {parts[0]} has no reference search parameter {parts[1]!r}", name)
    target = parts[2] if len(parts) == 3 else None
    if target is not None and not is_type(target):
        raise _bad(f"{name}: unknown target type {target!r}", name)
    return Include(parts[0], parts[1], target)


def parse_search(resource_type: str, params: Iterable[tuple[str, str]], *, strict: bool = True
                 ) -> SearchQuery:
    """Parse URL query pairs into a :class:`SearchQuery`.

    Parameters
    ----------
    resource_type : str
        The type searched.
    params : iterable of (str, str)
        The query pairs in order (repeats allowed).
    strict : bool
        Reject unknown parameters and modifiers (``Prefer: handling=strict``,
        the server's default) instead of ignoring them.

    Raises
    ------
    FhirValidationError
        Unknown parameter or modifier (when strict), malformed value.
    """
    known = params_for(resource_type)
    ids: list[tuple[str, ...]] = []
    conditions: list[Condition] = []
    sort: list[tuple[str, bool]] = []
    count, offset = DEFAULT_COUNT, 0
    includes: list[Include] = []
    revincludes: list[Include] = []
    summary_count = False
    elements: list[str] = []
    pairs = list(itertools.islice(params, MAX_SEARCH_PARAMS + 1))
    if len(pairs) > MAX_SEARCH_PARAMS:
        raise _bad(f"more than {MAX_SEARCH_PARAMS} search parameters")
    for key, raw in pairs:
        name, _, modifier = key.partition(":")
        if name in _RESULT_PARAMS:
            if name == "_count":
                count = _int("_count", raw, MAX_COUNT)
            elif name == "_offset":
                offset = _int("_offset", raw, MAX_OFFSET)
            elif name == "_sort":
                for s in _split_values(raw, "_sort"):
                    field = s.removeprefix("-")
                    if field not in known and field != "_id":
                        raise _bad(f"cannot sort {resource_type} by {field!r}", "_sort")
                    sort.append((field, s.startswith("-")))
                if len(sort) > MAX_SORT:
                    raise _bad(f"_sort: at most {MAX_SORT} fields", "_sort")
            elif name == "_include":
                includes.append(_include(raw, "_include"))
            elif name == "_revinclude":
                revincludes.append(_include(raw, "_revinclude"))
            elif name == "_summary":
                summary_count = raw == "count"
            elif name == "_elements":
                elements.extend(_split_values(raw, "_elements"))
            if len(includes) + len(revincludes) > MAX_INCLUDES:
                raise _bad(f"at most {MAX_INCLUDES} _include/_revinclude parameters", name)
            continue
        values = _split_values(raw, name)
        if name == "_id":
            ids.append(values)
            continue
        param = known.get(name)
        if param is None:
            if strict:
                raise _bad(f"unknown search parameter {name!r} for {resource_type}", name)
            continue
        mod = modifier or None
        if param.type is ParamType.REFERENCE and mod and is_type(mod):
            values = tuple(v if "/" in v else f"{mod}/{v}" for v in values)
            mod = None
        if mod not in _MODIFIERS[param.type]:
            if strict:
                raise _bad(f"modifier :{mod} is not supported on {name}", name)
            continue
        if mod == "missing" and any(v not in ("true", "false") for v in values):
            raise _bad(f"{name}:missing takes true or false", name)
        if not values:
            continue
        conditions.append(Condition(param, mod, values))
    return SearchQuery(resource_type, tuple(ids), tuple(conditions), tuple(sort), count, offset,
                       tuple(includes), tuple(revincludes), summary_count, tuple(elements))


_PREFIXES: Final = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _value_sql(param: SearchParam, modifier: str | None, value: str, now: dt.datetime
               ) -> tuple[str, list[Any]]:
    """SQL over index alias ``i`` that is true when the row matches one search value."""
    kind = param.type
    if kind is ParamType.TOKEN:
        if "|" in value:
            system, _, code = value.partition("|")
            if not system:
                return "(i.system IS NULL AND i.value = ?)", [code]
            if not code:
                return "i.system = ?", [system]
            return "(i.system = ? AND i.value = ?)", [system, code]
        return "i.value = ?", [value]
    if kind is ParamType.STRING:
        if modifier == "exact":
            return "i.system = ?", [value]
        needle = _like(normalize_string(value))
        pattern = f"%{needle}%" if modifier == "contains" else f"{needle}%"
        return "i.value LIKE ? ESCAPE '\\'", [pattern]
    if kind is ParamType.REFERENCE:
        rtype, rid = _ref_parts(value)
        if rtype is None:
            if len(param.targets) == 1:
                return "(i.system = ? AND i.value = ?)", [param.targets[0], rid]
            return "i.value = ?", [rid]
        return "(i.system = ? AND i.value = ?)", [rtype, rid]
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    lo_us, hi_us = _bounds(value[2:] if value[:2] in _PREFIXES else value)
    lo, hi = _fmt(lo_us), _fmt(hi_us)
    if prefix == "eq":
        return "(i.lo >= ? AND i.hi <= ?)", [lo, hi]
    if prefix == "ne":
        return "NOT (i.lo >= ? AND i.hi <= ?)", [lo, hi]
    if prefix == "gt":
        return "i.hi > ?", [hi]
    if prefix == "lt":
        return "i.lo < ?", [lo]
    if prefix == "ge":
        return "i.hi >= ?", [lo]
    if prefix == "le":
        return "i.lo <= ?", [hi]
    if prefix == "sa":
        return "i.lo > ?", [hi]
    if prefix == "eb":
        return "i.hi < ?", [lo]
    # ap: overlap with the value's range widened by 10% of its distance from now (at least a day);
    # integer arithmetic, clamped into years 1-9999 when formatted
    utc = now if now.tzinfo is None else now.astimezone(dt.UTC).replace(tzinfo=None)
    now_us = (utc.replace(tzinfo=None) - _EPOCH) // _US
    slack = max(abs(now_us - lo_us) // 10, _DAY_US)
    return "(i.lo <= ? AND i.hi >= ?)", [_fmt(hi_us + slack), _fmt(lo_us - slack)]


def build_where(query: SearchQuery, *, now: dt.datetime | None = None) -> tuple[str, list[Any]]:
    """SQL condition over resource alias ``r`` (columns type, id, deleted) and its arguments.

    The index table is ``idx`` with columns ``type, id, param, system, value, lo, hi``.
    """
    now = now or dt.datetime.now(dt.UTC)
    clauses = ["r.type = ?", "r.deleted = 0"]
    args: list[Any] = [query.resource_type]
    for ids in query.ids:
        clauses.append(f"r.id IN ({','.join('?' * len(ids))})")
        args.extend(ids)
    for cond in query.conditions:
        # the ids whose index rows match, found once (SQLite keeps them in a temporary index), not
        # a subquery per resource: correlated, SQLite probed idx_value (type, param, value) for
        # each resource, and ``gender=female`` over 8,000 patients took 15 s (quadratic)
        matching = "r.id IN (SELECT i.id FROM idx i WHERE i.type = ? AND i.param = ?"
        if cond.modifier == "missing":
            missing = cond.values[0] == "true"
            clauses.append(("NOT " if missing else "") + matching + ")")
            args.extend((query.resource_type, cond.param.name))
            continue
        ors, or_args = [], []
        for value in cond.values:
            sql, a = _value_sql(cond.param, cond.modifier, value, now)
            ors.append(sql)
            or_args.extend(a)
        clauses.append(("NOT " if cond.modifier == "not" else "") + matching + f" AND ({' OR '.join(ors)}))")
        args.extend((query.resource_type, cond.param.name))
        args.extend(or_args)
    return " AND ".join(clauses), args


def build_order(query: SearchQuery) -> tuple[str, list[Any]]:
    """SQL ``ORDER BY`` body for the query's ``_sort`` (ties and default: creation order)."""
    parts: list[str] = []
    args: list[Any] = []
    known = params_for(query.resource_type)
    for name, desc in query.sort:
        direction = "DESC" if desc else "ASC"
        if name == "_id":
            parts.append(f"r.id {direction}")
        elif name == "_lastUpdated":
            parts.append(f"r.last_updated {direction}")
        else:
            column = "lo" if known[name].type is ParamType.DATE else "value"
            agg = "MAX" if desc else "MIN"
            # this resource's own rows (INDEXED BY: for MIN/MAX SQLite picked idx_value, ordered by
            # value, and scanned every resource's rows for each resource)
            parts.append(f"(SELECT {agg}(i.{column}) FROM idx i INDEXED BY idx_owner WHERE i.type = r.type "
                         f"AND i.id = r.id AND i.param = ?) {direction} NULLS LAST")
            args.append(name)
    parts.append("r.rowid ASC")
    return ", ".join(parts), args
