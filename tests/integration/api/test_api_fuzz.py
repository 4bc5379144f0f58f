"""Schemathesis against the API's published OpenAPI document, over real HTTP on the embedded stack.

No answer is a 5xx, every 4xx is an ``application/problem+json`` body, and the API still answers a good
request afterwards. Bounded: a few examples per operation and generation mode.
"""

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

from kit.stack import Stack
from tests.integration.api.helpers import ADMIN_KEY, running_api

pytestmark = pytest.mark.timeout(300)

EXAMPLES = 8  # per operation and generation mode

schemathesis.serializer.alias("application/dicom", "application/octet-stream")  # an upload is raw bytes


def test_schemathesis_finds_no_5xx(tmp_path: Path) -> None:
    failures: list[str] = []
    calls = 0
    with (
        Stack.ephemeral() as stack,
        running_api(stack, tmp_path / "ws") as api,  # video-stream reads the stack's live stream
    ):
        schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 35, [op.path for op in operations]
        started = time.monotonic()
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )
                def run(case: Any) -> None:
                    nonlocal calls
                    calls += 1
                    response = case.call(base_url=api.base, timeout=60, headers={"X-API-Key": ADMIN_KEY})
                    problem = _problem(response)
                    if problem:
                        failures.append(
                            f"{case.method} {case.formatted_path} query={case.query} "
                            f"body={str(case.body)[:200]!r}: {problem}"
                        )

                try:
                    run()
                except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no inputs)
                    assert mode is GenerationMode.NEGATIVE, op.path
        elapsed = time.monotonic() - started
        with httpx.Client(base_url=api.base, headers={"X-API-Key": ADMIN_KEY}, timeout=30) as c:
            t = time.monotonic()
            assert (
                c.get("/api/v1/integration/pacs/find-studies", params={"patient_id": "MRN1001"}).status_code
                == 200
            )
            assert time.monotonic() - t < 5
    print(f"schemathesis: {calls} requests on {len(operations)} operations in {elapsed:.1f} s")
    assert not failures, "\n".join(failures[:20])
    assert calls >= len(operations) * 2, calls
    assert elapsed < 150, elapsed


def _problem(response: Any) -> str | None:
    status = response.status_code
    if status >= 500:
        return f"{status} {response.text[:300]}"
    if status >= 400:
        ctype = response.headers.get("content-type") or [""]  # schemathesis: name -> list of values
        if not ctype[0].startswith("application/problem+json"):
            return f"{status} with content-type {ctype}"
        try:
            body = response.json()
        except ValueError:
            return f"{status} body is not JSON: {response.text[:200]}"
        if not isinstance(body, dict) or body.get("status") != status or not body.get("detail"):
            return f"{status} body is not a problem: {response.text[:200]}"
    return None
