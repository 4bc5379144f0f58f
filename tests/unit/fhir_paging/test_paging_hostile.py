"""kit.fhir._paging against hostile servers (no HTTP): paging that never ends is bounded, a malformed
``next`` URL and an odd ``Bundle.total`` end in a KitError or are read as the check intends."""

from __future__ import annotations

import math
from typing import Any

import pytest

from kit.errors import FhirError, KitError
from kit.fhir import _paging
from kit.fhir._paging import IncompleteResultError, page_entries

BASE = "http://fhir.test/R4"
#: Pages the fake servers below serve at most: past it a search that was not stopped fails the test.
SAFETY = 400


class _Runaway(AssertionError):
    """The fake server served SAFETY pages: the search was not bounded."""


def _patients(page: int, size: int) -> list[dict[str, Any]]:
    return [{"resource": {"resourceType": "Patient", "id": f"p{page}-{i}"}, "search": {"mode": "match"}}
            for i in range(size)]


def _consume(get: Any, query: list[tuple[str, str]] | None = None, **options: Any) -> list[str]:
    gen = page_entries(get, "Patient", query or [], url=f"{BASE}/Patient", base=BASE, limit=None,
                       rewrite_next_links=False, **options)
    return [e.resource["id"] for e in gen]


class _EndlessNext:
    """Every page has ``size`` fresh Patients and a fresh ``next`` link (page=N+1)."""

    def __init__(self, size: int = 3) -> None:
        self.size, self.pages = size, 0

    def __call__(self, url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        if self.pages >= SAFETY:
            raise _Runaway(f"{self.pages} pages served")
        n, self.pages = self.pages, self.pages + 1
        return {"resourceType": "Bundle", "type": "searchset", "entry": _patients(n, self.size),
                "link": [{"relation": "next", "url": f"{BASE}/Patient?page={n + 1}"}]}


class _EndlessOffset:
    """No next link, ``Bundle.total`` of 10**12, and fresh Patients on every ``_offset`` page."""

    def __init__(self, size: int = 3) -> None:
        self.size, self.pages = size, 0

    def __call__(self, url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        if self.pages >= SAFETY:
            raise _Runaway(f"{self.pages} pages served")
        n, self.pages = self.pages, self.pages + 1
        return {"resourceType": "Bundle", "type": "searchset", "total": 10**12,
                "entry": _patients(n, self.size)}


@pytest.mark.parametrize("server", [_EndlessNext, _EndlessOffset], ids=["fresh-next-links", "offset"])
def test_a_search_that_never_ends_stops_at_max_pages(server: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_paging, "MAX_PAGES", 25)
    get = server()
    with pytest.raises(_paging.PagingLimitError, match="25 pages") as info:
        _consume(get)
    assert isinstance(info.value, FhirError) and isinstance(info.value, KitError)
    assert get.pages == 25


@pytest.mark.parametrize("server", [_EndlessNext, _EndlessOffset], ids=["fresh-next-links", "offset"])
def test_a_search_that_never_ends_stops_at_max_resources(server: type,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_paging, "MAX_RESOURCES", 100)
    get = server(size=10)
    got: list[str] = []
    gen = page_entries(get, "Patient", [], url=f"{BASE}/Patient", base=BASE, limit=None,
                       rewrite_next_links=False)
    with pytest.raises(_paging.PagingLimitError, match="100 entries"):
        got.extend(e.resource["id"] for e in gen)
    assert len(got) == 100 and get.pages == 11


def test_the_bounds_are_parameters_too() -> None:
    get = _EndlessNext()
    with pytest.raises(_paging.PagingLimitError, match="7 pages"):
        _consume(get, max_pages=7)
    assert get.pages == 7
    get = _EndlessNext(size=5)
    with pytest.raises(_paging.PagingLimitError, match="20 entries in 4 pages"):
        _consume(get, max_resources=20)


def test_the_default_bounds_are_generous_module_constants() -> None:
    assert _paging.MAX_PAGES >= 100_000 and _paging.MAX_RESOURCES >= 10_000_000


def test_a_search_exactly_at_the_bounds_is_not_an_error() -> None:
    pages = {f"{BASE}/Patient": {"resourceType": "Bundle", "type": "searchset", "entry": _patients(0, 2),
                                 "link": [{"relation": "next", "url": f"{BASE}/Patient?page=1"}]},
             f"{BASE}/Patient?page=1": {"resourceType": "Bundle", "type": "searchset",
                                        "entry": _patients(1, 2)}}
    ids = _consume(lambda url, params: pages[url], max_pages=2, max_resources=4)
    assert len(ids) == 4


def test_an_offset_page_without_new_entries_ends_the_search() -> None:
    asked: list[Any] = []

    def get(url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        if len(asked) >= SAFETY:
            raise _Runaway("offset paging did not stop")
        asked.append(params)
        # total 10**12; the first page again, whatever the _offset: nothing new
        return {"resourceType": "Bundle", "type": "searchset", "total": 10**12, "entry": _patients(0, 3)}

    with pytest.raises(IncompleteResultError, match="ignores _offset"):
        _consume(get)
    assert asked == [[], [("_offset", "3")]]


@pytest.mark.parametrize("href", ["http://[::1/fhir/Patient?page=2", "http://[::1…/x",
                                  "http://fhir.test:notaport/R4/Patient?page=2", "http://fhir.test:99999/R4/x"])
def test_a_malformed_next_url_is_a_fhir_error(href: str) -> None:
    pages = {f"{BASE}/Patient": {"resourceType": "Bundle", "type": "searchset", "entry": _patients(0, 1),
                                 "link": [{"relation": "next", "url": href}]}}
    with pytest.raises(FhirError, match="next link"):
        _consume(lambda url, params: pages[url])


def test_a_huge_next_url_is_not_repeated_whole_in_the_message() -> None:
    href = "http://[::1/" + "x" * 1_000_000
    pages = {f"{BASE}/Patient": {"resourceType": "Bundle", "type": "searchset", "entry": _patients(0, 1),
                                 "link": [{"relation": "next", "url": href}]}}
    with pytest.raises(FhirError) as info:
        _consume(lambda url, params: pages[url])
    assert len(str(info.value)) < 2_000


def _one_entry_total(total: Any) -> Any:
    """A server that counts ``total`` matches, sends one, has no next link and ignores _offset."""

    def get(url: str, params: list[tuple[str, str]] | None) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset", "total": total,
                "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}]}

    return get


@pytest.mark.parametrize("total", [3, 3.0, "3", " 3 ", 2**64, 1e30], ids=repr)
def test_a_larger_total_in_any_integral_form_is_checked(total: Any) -> None:
    with pytest.raises(IncompleteResultError, match="counts"):
        _consume(_one_entry_total(total))


@pytest.mark.parametrize("total", [1, 1.0, "1", 0, None, True, 2.5, -4, "many", "3.5", "", [3], {"n": 3},
                                   math.inf, math.nan, "٣"], ids=repr)
def test_a_total_that_is_not_a_larger_count_is_no_total(total: Any) -> None:
    assert _consume(_one_entry_total(total)) == ["a"]


@pytest.mark.parametrize(("total", "expected"), [
    (3, 3), (3.0, 3), ("3", 3), (" 12 ", 12), (2**64, 2**64), (0, 0),
    (None, None), (True, None), (False, None), (2.5, None), (-1, None), (-1.0, None), ("-1", None),
    ("x", None), ("1" * 5000, None), (math.inf, None), (math.nan, None), ([1], None), ({}, None),
], ids=repr)
def test_bundle_total_reads_integral_values_and_nothing_else(total: Any, expected: int | None) -> None:
    from kit.fhir._paging import bundle_total

    assert bundle_total({"total": total}) == expected
    assert bundle_total({}) is None
