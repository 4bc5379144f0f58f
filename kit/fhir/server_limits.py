"""Input limits of the embedded FHIR server, checked before SQLite or Python internals see a value (pure).

Every peer is treated as hostile, so each value a request carries is checked
against a grammar and a bound here first, and a violation becomes a 4xx
:class:`~kit.errors.OperationOutcomeError` (or :class:`~kit.errors.FhirValidationError`,
answered 400): integers are ASCII digits only (``"²".isdigit()`` is true, and
``int("١٠")`` is 10) and bounded to what SQLite stores, ids follow the FHIR id
grammar, JSON nesting is bounded (deep documents overflow the validator's and
the serializer's recursion), and search is bounded in parameters, OR values,
``_include`` fan-out and paging.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any, Final

from kit.errors import OperationOutcomeError
from kit.fhir.resources import is_resource_type, issue

__all__ = [
    "ID_RE",
    "MAX_BUNDLE_ENTRIES",
    "MAX_BUNDLE_READ",
    "MAX_CONTAINERS",
    "MAX_DEPTH",
    "MAX_FORM_BODY",
    "MAX_INCLUDED",
    "MAX_INCLUDES",
    "MAX_OFFSET",
    "MAX_OR_VALUES",
    "MAX_SEARCH_PARAMS",
    "MAX_VERSION",
    "ascii_int",
    "check_containers",
    "check_depth",
    "check_id",
    "etag_version",
    "is_id",
    "is_type",
    "outcome_error",
]

#: FHIR R4 ``id``: http://hl7.org/fhir/R4/datatypes.html#id
ID_RE: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DIGITS: Final = re.compile(r"[0-9]{1,19}")

#: Deepest JSON nesting accepted in a request body (objects and arrays count one level each;
#: a nested extension is two). Realistic resources stay far below; ~250 overflows the validator.
MAX_DEPTH: Final = 100
#: Objects and arrays a request body may hold (a Bundle of 10,000 entries of 100 each is half):
#: parsed, each takes about 150 bytes, so a body of 32 MB of ``{}`` would take 1.5 GB.
MAX_CONTAINERS: Final = 2_000_000
#: Values one search parameter may OR together (``a,b,c``); SQLite's expression depth is 1000.
MAX_OR_VALUES: Final = 100
#: Query pairs in one search (each AND-ed parameter is one SQL clause).
MAX_SEARCH_PARAMS: Final = 64
#: ``_include`` plus ``_revinclude`` parameters in one search.
MAX_INCLUDES: Final = 10
#: Resources ``_include``/``_revinclude`` may add to one page (above: 400 too-costly).
MAX_INCLUDED: Final = 2000
#: Largest ``_offset`` (a paging cursor past any real result set, far inside SQLite's int64).
MAX_OFFSET: Final = 1_000_000_000
#: Largest version number looked up (vread, If-Match); SQLite integers are 64-bit.
MAX_VERSION: Final = 2**63 - 1
#: Entries in one batch/transaction Bundle.
MAX_BUNDLE_ENTRIES: Final = 10_000
#: Resources the GET entries of one batch/transaction Bundle may return together (ten pages of
#: the largest ``_count``): beyond, the entry that passes it, and every GET after it, is 400.
MAX_BUNDLE_READ: Final = 10_000
#: Largest ``application/x-www-form-urlencoded`` body of ``POST [type]/_search``.
MAX_FORM_BODY: Final = 256 * 1024


@functools.cache
def _type_names() -> frozenset[str]:
    from fhir.resources.R4B import fhirtypes

    return frozenset(n[:-4] for n in dir(fhirtypes) if n.endswith("Type"))


def is_type(name: object) -> bool:
    """Whether ``name`` is a FHIR resource type, asking :func:`~kit.fhir.resources.is_resource_type`
    only about names fhir.resources defines: that function caches every name it is asked about, so
    a peer's random type names must not reach it (the cache would grow without bound).
    """
    return isinstance(name, str) and name in _type_names() and is_resource_type(name)


def outcome_error(status: int, code: str, message: str, expression: str | None = None
                  ) -> OperationOutcomeError:
    """An :class:`OperationOutcomeError` with one error issue, answered with ``status``."""
    return OperationOutcomeError(message, status_code=status,
                                 issues=[issue("error", code, message, expression)])


def is_id(value: object) -> bool:
    """True if ``value`` is a string matching the FHIR id grammar ``[A-Za-z0-9\\-.]{1,64}``."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def check_id(value: object, where: str = "id", *, status: int = 400) -> str:
    """Return ``value`` if it is a FHIR id; raise a ``status`` OperationOutcomeError otherwise."""
    if not is_id(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{type(value).__name__} value"
        raise outcome_error(status, "invalid", f"{where} must match [A-Za-z0-9-.]{{1,64}}, got {shown!r}",
                            where)
    assert isinstance(value, str)
    return value


def ascii_int(raw: object, name: str, *, low: int = 0, high: int, status: int = 400) -> int:
    """Parse a non-negative integer of ASCII digits within ``[low, high]``.

    Raises
    ------
    OperationOutcomeError
        ``status`` (400 unless told) for anything else: signs, spaces, non-ASCII
        digits (``²``, ``١``), more than 19 digits, or a value outside the bounds.
    """
    if not isinstance(raw, str) or _DIGITS.fullmatch(raw) is None:
        shown = raw[:40] if isinstance(raw, str) else type(raw).__name__
        raise outcome_error(status, "invalid", f"{name} must be an integer of ASCII digits, got {shown!r}",
                            name)
    value = int(raw)
    if not low <= value <= high:
        raise outcome_error(status, "invalid", f"{name} must be between {low} and {high}, got {value}", name)
    return value


def etag_version(value: object, name: str = "If-Match") -> int:
    """The version of a weak ETag ``W/"<n>"`` (or a bare ``n``); 400 if it is anything else."""
    if not isinstance(value, str):
        raise outcome_error(400, "invalid", f'{name} must be a string W/"<version>", '
                            f"got {type(value).__name__}", name)
    text = value.strip().removeprefix("W/").strip('"')
    return ascii_int(text, name, low=1, high=MAX_VERSION)


def check_containers(raw: bytes, limit: int = MAX_CONTAINERS) -> None:
    """Raise a 400 OperationOutcomeError if the JSON text ``raw`` may hold more than ``limit``
    objects and arrays (its ``{`` and ``[`` counted, those in strings too: a bound, before a parse)."""
    if raw.count(b"{") + raw.count(b"[") > limit:
        raise outcome_error(400, "too-costly", f"JSON with more than {limit:,} objects and arrays")


def check_depth(document: Any, limit: int = MAX_DEPTH) -> None:
    """Raise a 400 OperationOutcomeError if JSON ``document`` nests deeper than ``limit`` (iterative;
    empty objects and arrays, which nest nothing, are not visited)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            raise outcome_error(400, "too-costly", f"JSON nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children if child and isinstance(child, (Mapping, list)))
