"""Schemathesis against the served OpenAPI document, over real HTTP: no 5xx, every 4xx an OperationOutcome."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from kit.examples.fhir import generate
from kit.fhir.server import EmbeddedFhirServer

pytestmark = pytest.mark.timeout(180)

#: Resource types fuzzed (every route of each); system-level routes are always included.
FUZZED_TYPES = ("Patient", "Observation")
EXAMPLES = 15  # per operation and generation mode


def _selected(path: str) -> bool:
    rest = path.removeprefix("/fhir/R4").lstrip("/")
    first = rest.split("/", 1)[0]
    return not first or first.startswith(("$", "_", "metadata")) or first in FUZZED_TYPES


def test_openapi_document_describes_the_routes(tmp_path: Path) -> None:
    with EmbeddedFhirServer(tmp_path / "fhir.db") as s:
        doc = httpx.get(f"http://127.0.0.1:{s.port}/openapi.json", timeout=10).json()
    paths = doc["paths"]
    assert doc["openapi"].startswith("3.0")
    search = {p["name"]: p for p in paths["/fhir/R4/Patient"]["get"]["parameters"]}
    assert {"birthdate", "identifier", "_count", "_offset", "_id", "_lastUpdated"} <= set(search)
    assert search["_count"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 1000}
    form = paths["/fhir/R4/Patient/_search"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in form
    assert set(paths["/fhir/R4/Patient/{id}"]) == {"get", "put", "delete"}
    assert "/fhir/R4/Observation/{id}/_history/{vid}" in paths and "/fhir/R4/" in paths


def test_schemathesis_finds_no_5xx(tmp_path: Path) -> None:
    (bundle,) = generate(tmp_path / "samples")
    failures: list[str] = []
    calls = 0
    with EmbeddedFhirServer(tmp_path / "fhir.db", preload=bundle) as s:
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{s.port}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        chosen = [op for op in operations if _selected(op.path)]
        assert len(chosen) >= 20, [op.path for op in chosen]
        base = f"http://127.0.0.1:{s.port}"
        started = time.monotonic()
        for op in chosen:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          phases=[Phase.explicit, Phase.generate],
                          suppress_health_check=list(HealthCheck))
                def run(case: Any) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=base, timeout=30)
                    problem = _problem(response)
                    if problem:
                        failures.append(f"{case.method} {case.formatted_path} query={case.query} "
                                        f"headers={case.headers} body={str(case.body)[:200]!r}: {problem}")

                try:
                    run()
                except Unsatisfiable:  # nothing to make invalid (e.g. GET /metadata has no inputs)
                    assert mode is GenerationMode.NEGATIVE, op.path
        elapsed = time.monotonic() - started
        # the server still answers a good request afterwards
        assert httpx.get(s.base_url + "/Patient", params={"_count": "1"}, timeout=10).status_code == 200
    print(f"schemathesis: {calls} requests on {len(chosen)} operations in {elapsed:.1f} s")
    assert not failures, "\n".join(failures[:20])
    assert calls >= len(chosen) * 2, calls
    assert elapsed < 60, elapsed


def _problem(response: Any) -> str | None:
    status = response.status_code
    if status >= 500:
        return f"{status} {response.text[:300]}"
    if status >= 400:
        ctype = response.headers.get("content-type") or [""]  # schemathesis: name -> list of values
        if not ctype[0].startswith("application/fhir+json"):
            return f"{status} with content-type {ctype}"
        try:
            body = response.json()
        except ValueError:
            return f"{status} body is not JSON: {response.text[:200]}"
        if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome" \
                or not body.get("issue"):
            return f"{status} body is not an OperationOutcome: {response.text[:200]}"
    return None
