"""Search work grows linearly with the resources (SQLite's own count of VM steps, not a clock).

The search conditions were subqueries correlated with each resource, which SQLite answered by
probing ``idx_value (type, param, value)``: every patient scanned the index rows of every other
(``gender=female`` over 8,000 patients took 15 s; a string search of 1 KB held the store's lock
for 300 s, every other request of the server waiting).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kit.fhir.server_search import parse_search
from kit.fhir.server_store import FhirStore

SMALL, LARGE = 300, 2400  # eight times as many patients: linear work is about 8 times as much


def _store(path: Path, n: int) -> FhirStore:
    store = FhirStore(path)

    def work(conn: sqlite3.Connection) -> None:
        for i in range(n):
            store._write(conn, "Patient", f"p{i}", {
                "resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01",
                "identifier": [{"system": "urn:mrn", "value": f"MRN{i}"}],
                "name": [{"family": f"Family{i}", "given": ["Anna"]}]}, "PUT", 1)

    store.run(work)
    return store


def _steps(store: FhirStore, params: list[tuple[str, str]]) -> int:
    """SQLite VM steps (in thousands) of one search, through the store's connection."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    store.run(lambda conn: conn.set_progress_handler(count, 1000))
    try:
        store.search(parse_search("Patient", params))
    finally:
        store.run(lambda conn: conn.set_progress_handler(None, 1000))
    return steps[0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[FhirStore, FhirStore]:
    folder = tmp_path_factory.mktemp("search_cost")
    small, large = _store(folder / "small.db", SMALL), _store(folder / "large.db", LARGE)
    yield small, large
    small.close()
    large.close()


@pytest.mark.parametrize("params", [
    [("gender", "female")], [("gender", "male")], [("identifier", "urn:mrn|MRN7")], [("name", "nomatch")],
    [("name:contains", "amil")], [("name:missing", "true")], [("birthdate", "ge1960")],
    [("name:contains", ",".join(f"x{k}" for k in range(100)))], [("gender", "female"), ("_sort", "family")],
], ids=lambda p: "&".join(f"{k}={v[:12]}" for k, v in p))
def test_search_work_is_linear_in_the_resources(stores: tuple[FhirStore, FhirStore],
                                                params: list[tuple[str, str]]) -> None:
    small, large = (max(_steps(s, params), 1) for s in stores)
    assert large <= 12 * small + 20, f"{small}k VM steps for {SMALL} patients, {large}k for {LARGE}"
