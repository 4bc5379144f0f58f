"""FHIR servers that omit next links or cap transactions: a clear error or a complete result,
never a partial one with exit 0 (issue #14 items 5-7). The faults come from a FastAPI proxy in
front of the kit's own FHIR server (:mod:`.faulty_fhir`); the CLI runs as a subprocess."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.errors import TruncatedResultWarning
from kit.fhir.client import FhirClient, IncompleteResultError
from kit.stack import Stack
from tests.integration.real_systems.conftest import run_kit
from tests.integration.real_systems.faulty_fhir import faulty_app, serving

BUNDLE = Path(__file__).resolve().parents[3] / "data/samples/fhir/bundle.json"


def _upstream(stack: Stack) -> str:
    return stack.client_settings().fhir.base


@pytest.fixture(scope="module")
def no_next(stack: Stack) -> Iterator[str]:
    """Omits next links, pages with _offset when asked (like the issue's server)."""
    with serving(faulty_app(_upstream(stack), next_links=False)) as base:
        yield base


@pytest.fixture(scope="module")
def no_paging(stack: Stack) -> Iterator[str]:
    """Omits next links and ignores _offset: only ever the first page."""
    with serving(faulty_app(_upstream(stack), next_links=False, offset=False)) as base:
        yield base


def _all_ids(stack: Stack, rtype: str) -> set[str]:
    with FhirClient(_upstream(stack)) as fhir:
        return {r["id"] for r in fhir.search(rtype)}


def test_search_without_next_links_pages_with_offset(stack: Stack, no_next: str) -> None:
    every = _all_ids(stack, "Observation")
    assert len(every) > 5
    with FhirClient(no_next) as fhir:
        got = [r["id"] for r in fhir.search("Observation", _count=5)]
    assert sorted(got) == sorted(every)


def test_search_that_cannot_page_raises_naming_total(stack: Stack, no_paging: str) -> None:
    total = len(_all_ids(stack, "Observation"))
    with FhirClient(no_paging) as fhir, pytest.raises(IncompleteResultError) as info:
        fhir.search_frame("Observation", _count=5)
    assert f"counts {total} matches" in str(info.value) and "sent 5" in str(info.value)


def test_cli_search_is_complete_or_fails_in_one_line(stack: Stack, no_next: str, no_paging: str,
                                                     tmp_path: Path) -> None:
    every = _all_ids(stack, "Observation")
    ok = run_kit(tmp_path, "fhir", "search", "Observation", "--count", "5", "--base", no_next, "--json")
    assert ok.returncode == 0, ok.stderr
    assert sorted(r["id"] for r in json.loads(ok.stdout)) == sorted(every)
    bad = run_kit(tmp_path, "fhir", "search", "Observation", "--count", "5", "--base", no_paging)
    assert bad.returncode == 1 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: ") and "--count" in lines[0], lines


def test_search_limit_stops_paging_and_warns(stack: Stack) -> None:
    every = _all_ids(stack, "Observation")
    with FhirClient(_upstream(stack)) as fhir:
        with pytest.warns(TruncatedResultWarning, match="limit=4"):
            frame = fhir.search_frame("Observation", _count=3, limit=4)
        assert frame.height == 4 and set(frame["id"]) <= every
        with warnings.catch_warnings():
            warnings.simplefilter("error", TruncatedResultWarning)   # a limit that cut nothing: silent
            assert len(list(fhir.search("Observation", limit=len(every)))) == len(every)


def test_cli_search_limit_says_it_cut(stack: Stack, no_paging: str, tmp_path: Path) -> None:
    # a limit within the first page is a complete answer to what was asked, even from a server
    # that cannot page: exit 0, the cut said on stderr
    result = run_kit(tmp_path, "fhir", "search", "Observation", "--count", "5", "--limit", "3",
                     "--base", no_paging, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 3
    assert result.stderr.startswith("kit: warning: FHIR search Observation: stopped at limit=3")


def test_count_only_search_is_not_incomplete(stack: Stack, no_paging: str) -> None:
    # _summary=count / _count=0 ask for the total alone: no resources is the complete answer
    with FhirClient(no_paging) as fhir:
        for params in ({"_summary": "count"}, {"_count": 0}):
            assert [e.resource for e in fhir.search_entries("Observation", params)] == []
