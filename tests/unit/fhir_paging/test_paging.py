"""kit.fhir._paging without HTTP: pages from a dict, next links, _offset paging, limits, and only
KitError for any Bundle a server could send (fuzzed)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import FhirError, KitError
from kit.fhir._paging import IncompleteResultError, SearchMode, page_entries
from kit.fhir.client import IncompleteResultError as PublicIncomplete
from kit.fhir.client import SearchEntry
from kit.fhir.client import SearchMode as PublicMode

BASE = "http://fhir.test/R4"


def _patient(n: int) -> dict[str, Any]:
    return {"resource": {"resourceType": "Patient", "id": f"p{n}"}, "search": {"mode": "match"}}


def _bundle(entries: list[dict[str, Any]], *, next_url: str | None = None,
            total: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    if total is not None:
        out["total"] = total
    return out


def _run(pages: dict[str, dict[str, Any]], query: list[tuple[str, str]] | None = None,
         limit: int | None = None) -> tuple[list[str], str | None, list[Any]]:
    asked: list[Any] = []

    def get(url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        asked.append((url, params))
        key = url if params is None else url + "?" + "&".join(f"{n}={v}" for n, v in params)
        return pages[key]

    gen = page_entries(get, "Patient", query or [], url=f"{BASE}/Patient", base=BASE, limit=limit,
                       rewrite_next_links=False)
    ids: list[str] = []
    while True:
        try:
            ids.append(next(gen).resource["id"])
        except StopIteration as stop:
            return ids, stop.value, asked


def test_the_public_names_are_the_same_objects() -> None:
    assert PublicIncomplete is IncompleteResultError and PublicMode is SearchMode
    assert SearchEntry.__name__ == "SearchEntry"


def test_next_links_are_followed_and_a_limit_reports_what_it_left_out() -> None:
    pages = {f"{BASE}/Patient?": _bundle([_patient(0), _patient(1)], next_url="Patient?page=2", total=4),
             f"{BASE}/Patient?page=2": _bundle([_patient(2), _patient(3)], total=4)}
    assert _run(pages)[:2] == (["p0", "p1", "p2", "p3"], None)
    assert _run(pages, limit=3)[:2] == (["p0", "p1", "p2"], "4 matches")


def test_a_next_link_loop_and_a_foreign_origin_are_errors() -> None:
    loop = {f"{BASE}/Patient?": _bundle([_patient(0)], next_url="Patient?page=2"),
            f"{BASE}/Patient?page=2": _bundle([_patient(1)], next_url="Patient?page=2")}
    with pytest.raises(FhirError, match="same next link twice"):
        _run(loop)
    foreign = {f"{BASE}/Patient?": _bundle([_patient(0)], next_url="http://elsewhere.test/R4/Patient?p=2")}
    with pytest.raises(FhirError, match="another server"):
        _run(foreign)


def test_no_next_link_but_a_larger_total_pages_with_offset_or_raises() -> None:
    pages = {f"{BASE}/Patient?": _bundle([_patient(0), _patient(1)], total=3),
             f"{BASE}/Patient?_offset=2": _bundle([_patient(2)], total=3)}
    assert _run(pages)[0] == ["p0", "p1", "p2"]
    ignores = {f"{BASE}/Patient?": _bundle([_patient(0), _patient(1)], total=3),
               f"{BASE}/Patient?_offset=2": _bundle([_patient(0), _patient(1)], total=3)}
    with pytest.raises(IncompleteResultError, match="ignores _offset"):
        _run(ignores)


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 5) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["resourceType", "id", "resource", "search", "mode", "url",
                                          "relation", "link", "entry", "type", "total", "fullUrl"]),
                         inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(first=_json, second=_json)
def test_any_bundle_gives_entries_or_a_kit_error(first: Any, second: Any) -> None:
    def get(url: str, params: list[tuple[str, str]] | None) -> Any:
        page = first if params is not None and not any(n == "_offset" for n, _ in params) else second
        if isinstance(page, dict):
            page = {"type": "searchset", **page}
        return page if isinstance(page, dict) else {"type": "searchset", "entry": page}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for entry in page_entries(get, "Patient", [], url=f"{BASE}/Patient", base=BASE, limit=5,
                                      rewrite_next_links=False):
                assert isinstance(entry.resource, dict) and entry.mode in SearchMode
        except KitError:
            pass
