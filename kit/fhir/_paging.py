"""FHIR search paging and Bundle reading for :class:`kit.fhir.client.FhirClient` (pure: no I/O).

:func:`page_entries` walks a search result page by page: it asks the caller's
``get_bundle(url, params)`` for each page (the client does the HTTP), reads
every entry (:class:`SearchEntry` with its :class:`SearchMode`), follows
``next`` links (checked: http(s), the server's own origin unless rewritten, no
loop), pages with ``_offset`` when a server counts more matches
(``Bundle.total``) than it sends and gives no ``next`` link, and raises
:class:`IncompleteResultError` rather than return part of a result. A search
that never ends (a fresh ``next`` link on every page, or a ``Bundle.total``
beyond what it will ever send) stops at :data:`MAX_PAGES` pages or
:data:`MAX_RESOURCES` entries with a :class:`PagingLimitError`. Search
parameters are normalised here too (:func:`normalise_params`).

Written by hand: the FHIR paging rules (R4 3.1.1.7, Bundle.link "next") as
servers really follow them; no library does this over a caller's transport.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import logging
import re
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

from kit.errors import FhirError, FhirValidationError, InvalidInputError, OperationOutcomeError
from kit.fhir.resources import outcome_issues, outcome_message

__all__ = [
    "MAX_PAGES", "MAX_RESOURCES", "IncompleteResultError", "PagingLimitError", "ParamValue", "Params",
    "SearchEntry", "SearchMode", "bundle_total", "check_id", "check_type", "next_link", "normalise_params",
    "page_entries", "param_text", "search_entry", "search_outcome",
]

#: Pages one search reads at most (``next`` links and ``_offset`` pages together); more ends it
#: with a :class:`PagingLimitError`. Generous: 100,000 pages of the usual 50-1000 entries.
MAX_PAGES: Final = 100_000
#: Bundle entries one search reads at most (matches, includes and outcomes); more ends it with a
#: :class:`PagingLimitError`.
MAX_RESOURCES: Final = 10_000_000

log = logging.getLogger("kit.fhir.client")

_TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")

ParamValue = str | int | float | bool | dt.date | dt.datetime | Sequence[Any]
Params = Mapping[str, ParamValue] | Sequence[tuple[str, ParamValue]]


class SearchMode(enum.StrEnum):
    """``Bundle.entry.search.mode``: why an entry is in a search result."""

    MATCH = "match"
    INCLUDE = "include"
    OUTCOME = "outcome"


@dataclasses.dataclass(frozen=True)
class SearchEntry:
    """One entry of a search result: the resource, why it is there, and its full URL."""

    resource: dict[str, Any]
    mode: SearchMode
    full_url: str | None = None


class IncompleteResultError(FhirError):
    """A search got fewer matches than the server counts (``Bundle.total``) and cannot page on."""


class PagingLimitError(FhirError):
    """A search went on past :data:`MAX_PAGES` pages or :data:`MAX_RESOURCES` entries (the server
    keeps sending pages); narrow the search or pass a ``limit``."""


def param_text(value: Any) -> str:
    """A search parameter value as text (booleans, dates and aware datetimes formatted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidInputError(f"search datetime {value.isoformat()} has no time zone")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def normalise_params(params: Params | None, extra: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Search parameters as (name, value) pairs; a list value repeats the parameter (AND)."""
    items: list[tuple[str, Any]] = []
    if params is not None:
        items.extend(params.items() if isinstance(params, Mapping) else params)
    items.extend(extra.items())
    out: list[tuple[str, str]] = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"search parameter name must be a non-empty string, got {name!r}")
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            out.extend((name, param_text(v)) for v in value)
        else:
            out.append((name, param_text(value)))
    return out


def check_type(resource_type: str) -> str:
    """``resource_type`` if it is a FHIR resource type name, else InvalidInputError."""
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise InvalidInputError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def check_id(resource_id: str) -> str:
    """``resource_id`` if it is a FHIR id, else InvalidInputError."""
    if not isinstance(resource_id, str) or not _ID_RE.match(resource_id):
        raise InvalidInputError(f"not a FHIR resource id: {resource_id!r}")
    return resource_id


def search_entry(entry: Any, resource_type: str, url: str) -> SearchEntry:
    """One ``Bundle.entry`` of a searchset (the mode guessed from the type when it is not given)."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FhirValidationError("search Bundle entry without a resource", source=url)
    search = entry.get("search")
    if search is not None and not isinstance(search, dict):
        raise FhirValidationError("search Bundle entry with a search that is not an object", source=url)
    mode_text = (search or {}).get("mode")
    if mode_text is None:
        mode_text = "match" if resource["resourceType"] == resource_type else "include"
    try:
        mode = SearchMode(mode_text)
    except (ValueError, TypeError):
        raise FhirValidationError(f"unknown search mode {mode_text!r:.80}", source=url) from None
    full_url = entry.get("fullUrl")
    return SearchEntry(resource, mode, full_url if isinstance(full_url, str) else None)


def search_outcome(outcome: dict[str, Any], peer: str) -> None:
    """An ``outcome`` entry: raise for an error or fatal issue, log a warning."""
    issues = outcome_issues(outcome)
    if any(i.get("severity") in ("error", "fatal") for i in issues):
        raise OperationOutcomeError(f"search failed: {outcome_message(outcome)}", issues=issues,
                                    peer=peer)
    if issues:
        log.warning("FHIR search: %s", outcome_message(outcome))


def bundle_total(bundle: dict[str, Any]) -> int | None:
    """``Bundle.total`` as an integer >= 0: an int, an integral float (``3.0``) or a string of
    digits (``"3"``); None (no total) for anything else (absent, a bool, a fraction, negative, text)."""
    value = bundle.get("total")
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) <= 40:
        text = value.strip()
        value = int(text) if text.isascii() and text.isdigit() else None
    elif isinstance(value, float):
        value = int(value) if value.is_integer() else None
    return value if isinstance(value, int) and value >= 0 else None


def next_link(bundle: dict[str, Any], seen: set[str], base: str, *, rewrite: bool) -> str | None:
    """The page's ``next`` link, checked (http(s), ``base``'s origin or rewritten to it, not seen
    before: it is added to ``seen``); None on the last page."""
    found = bundle.get("link") or []
    if not isinstance(found, list):
        raise FhirValidationError("search Bundle.link is not a list", source=base)
    links = [lk for lk in found if isinstance(lk, dict) and lk.get("relation") == "next"]
    if not links:
        return None
    href = links[0].get("url")
    if not isinstance(href, str) or not href.strip():
        raise FhirValidationError("search Bundle has a next link without a url", source=base)
    try:
        url = urljoin(base + "/", href.strip())
        parts, home = urlsplit(url), urlsplit(base)
        _ = parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise FhirError(f"next link {href!r:.200} is not a valid URL: {exc}", peer=base) from exc
    if parts.scheme not in ("http", "https"):
        raise FhirError(f"next link {href!r:.200} is not an http(s) URL", peer=base)
    if (parts.scheme, parts.netloc) != (home.scheme, home.netloc):
        if not rewrite:
            raise FhirError(f"next link points to another server ({parts.netloc}); pass "
                            "rewrite_next_links=True if the server sits behind a proxy", peer=base)
        url = urlunsplit((home.scheme, home.netloc, parts.path, parts.query, parts.fragment))
    if url in seen:
        raise FhirError("server sent the same next link twice (paging loop)", peer=base)
    seen.add(url)
    return url


def _incomplete(resource_type: str, total: int | None, got: int, why: str, base: str) -> FhirError:
    return IncompleteResultError(
        f"search {resource_type}: the server counts {total} matches (Bundle.total) but sent "
        f"{got}, with no next link, and {why}; ask for larger pages (--count / _count={total}) "
        "or accept part of it with a limit (--limit N)", peer=base)


def _too_long(resource_type: str, what: str, bound: str, base: str) -> FhirError:
    option = bound.replace("_", "-")
    return PagingLimitError(
        f"search {resource_type}: stopped after {what} ({bound}), and the server still sends more; "
        f"narrow the search, accept part of it with a limit (--limit N), or raise {bound} "
        f"(--{option} N) if the search is that large", peer=base)


def page_entries(get_bundle: Callable[[str, list[tuple[str, str]] | None], dict[str, Any]],
                 resource_type: str, query: list[tuple[str, str]], *, url: str, base: str,
                 limit: int | None, rewrite_next_links: bool, max_pages: int | None = None,
                 max_resources: int | None = None) -> Generator[SearchEntry, None, str | None]:
    """Every ``match`` and ``include`` entry of a search, page by page (see the module); returns
    what ``limit`` left out (e.g. ``"23 matches"``) when it cut the result, else None (the caller
    warns, so that the warning names its caller's line).

    Parameters
    ----------
    get_bundle : callable
        ``get_bundle(url, params)``: the Bundle a GET of ``url`` (with ``params``, or
        None for a ``next`` link as given) answers.
    resource_type : str
        What is searched.
    query : list of (str, str)
        The normalised search parameters of the first page.
    url, base : str
        The search URL (``[base]/[type]``) and the server's base.
    limit : int, optional
        Stop after this many matches.
    rewrite_next_links : bool
        Follow a ``next`` link to another origin at ``base``'s origin instead of refusing it.
    max_pages : int, optional
        Pages to read at most (default :data:`MAX_PAGES`).
    max_resources : int, optional
        Bundle entries to read at most (default :data:`MAX_RESOURCES`).

    Raises
    ------
    IncompleteResultError
        The server counts more matches than it sends and cannot be paged on (it ignores
        ``_offset``: a page brings no new match).
    PagingLimitError
        The search goes on past ``max_pages`` pages or ``max_resources`` entries.
    FhirError
        A ``next`` link that is not a valid http(s) URL, is on another origin, or repeats.
    FhirValidationError
        A page that is not a searchset Bundle, or an entry without a resource.
    OperationOutcomeError
        An ``outcome`` entry with an error or fatal issue.
    """
    max_pages = MAX_PAGES if max_pages is None else max_pages
    max_resources = MAX_RESOURCES if max_resources is None else max_resources
    counting = ("_summary", "count") in query or ("_count", "0") in query  # a total, no resources
    page_url: str | None = url
    page_params: list[tuple[str, str]] | None = query
    seen_links: set[str] = set()
    seen_includes: set[str] = set()
    seen_matches: set[str] = set()
    matches = pages = read = 0
    total: int | None = None
    while page_url is not None:
        if pages >= max_pages:
            raise _too_long(resource_type, f"{pages} pages", "max_pages", base)
        bundle = get_bundle(page_url, page_params)
        pages += 1
        if bundle.get("type") != "searchset":
            raise FhirValidationError(f"search answered a {bundle.get('type')!r:.80} Bundle, "
                                      "not a searchset", source=page_url)
        if total is None:
            total = bundle_total(bundle)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise FhirValidationError("search Bundle.entry is not a list", source=page_url)
        read += len(entries)
        if read > max_resources:
            raise _too_long(resource_type, f"{read - len(entries)} entries in {pages - 1} pages",
                            "max_resources", base)
        items = [search_entry(e, resource_type, page_url) for e in entries]
        keys = {f"{i.resource['resourceType']}/{i.resource.get('id')}" for i in items
                if i.mode is SearchMode.MATCH}
        if page_params is not None and page_params is not query and (not keys or keys & seen_matches):
            raise _incomplete(resource_type, total, matches, "ignores _offset", base)
        seen_matches |= keys
        cut = False
        for item in items:
            if item.mode is SearchMode.OUTCOME:
                search_outcome(item.resource, base)
                continue
            if item.mode is SearchMode.INCLUDE:
                key = f"{item.resource['resourceType']}/{item.resource.get('id')}"
                if key in seen_includes:
                    continue
                seen_includes.add(key)
            elif limit is not None and matches >= limit:
                cut = True
                continue
            else:
                matches += 1
            yield item
        page_url = next_link(bundle, seen_links, base, rewrite=rewrite_next_links)
        page_params = None
        if limit is not None and matches >= limit:
            if cut or page_url is not None or (total is not None and total > matches):
                return f"{total} matches" if total is not None else "more matches"
            return None
        if page_url is None and total is not None and len(seen_matches) < total and not counting:
            # No next link, yet the server counts more matches: page with _offset, once a page.
            if not keys:
                raise _incomplete(resource_type, total, matches, "sent an empty page", base)
            page_url = url
            start = next((int(v) for n, v in query if n == "_offset" and v.isascii() and v.isdigit()), 0)
            page_params = [(n, v) for n, v in query if n != "_offset"]
            page_params.append(("_offset", str(start + len(seen_matches))))
    return None
