"""Faults, from a real misbehaving HTTP server on loopback: each is a typed error or a bounded retry."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from kit.errors import (
    FhirError,
    FhirValidationError,
    OperationOutcomeError,
    PeerTimeoutError,
    PeerUnreachableError,
)
from kit.fhir.client import FhirClient, RetryPolicy
from tests.conftest import free_port
from tests.integration.fhir_client.conftest import serve_app

FHIR = "application/fhir+json"
HITS: Counter[str] = Counter()


def _bundle(request: Request, ids: list[str], next_url: str | None) -> dict:
    links = [{"relation": "self", "url": str(request.url)}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {"resourceType": "Bundle", "type": "searchset", "link": links,
            "entry": [{"resource": {"resourceType": "Patient", "id": i}, "search": {"mode": "match"}}
                      for i in ids]}


def _app() -> FastAPI:
    app = FastAPI()
    oo = {"resourceType": "OperationOutcome",
          "issue": [{"severity": "error", "code": "exception", "diagnostics": "database on fire"}]}

    @app.get("/fhir/notfhir/metadata")
    async def not_fhir() -> Response:
        return JSONResponse({"status": "ok", "version": 3})

    @app.get("/fhir/html/metadata")
    async def html() -> Response:
        return Response("<html><body>Login</body></html>", media_type="text/html")

    @app.get("/fhir/oo500/Patient/{pid}")
    async def oo500(pid: str) -> Response:
        return JSONResponse(oo, status_code=500, media_type=FHIR)

    @app.get("/fhir/plain500/Patient/{pid}")
    async def plain500(pid: str) -> Response:
        return Response("Internal Server Error", status_code=500)

    @app.get("/fhir/wrongtype/Patient/{pid}")
    async def wrongtype(pid: str) -> Response:
        return JSONResponse({"resourceType": "Observation", "id": pid}, media_type=FHIR)

    @app.get("/fhir/storm/Patient/{pid}")
    async def storm(pid: str) -> Response:
        HITS["storm"] += 1
        return Response(status_code=429, headers={"Retry-After": "1"})

    @app.get("/fhir/datestorm/Patient/{pid}")
    async def datestorm(pid: str) -> Response:
        HITS["datestorm"] += 1
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        if HITS["datestorm"] < 2:
            return Response(status_code=503, headers={"Retry-After": when})
        return JSONResponse({"resourceType": "Patient", "id": pid}, media_type=FHIR)

    @app.get("/fhir/flaky/Patient/{pid}")
    async def flaky(pid: str) -> Response:
        HITS["flaky"] += 1
        if HITS["flaky"] < 3:
            return Response(status_code=502)
        return JSONResponse({"resourceType": "Patient", "id": pid}, media_type=FHIR)

    @app.post("/fhir/flaky/Patient")
    async def flaky_post() -> Response:
        HITS["flaky_post"] += 1
        return Response(status_code=502)

    @app.get("/fhir/slow/Patient/{pid}")
    async def slow(pid: str) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({"resourceType": "Patient", "id": pid}, media_type=FHIR)

    @app.get("/fhir/{kind}/Patient")
    async def search(kind: str, request: Request) -> Response:
        page = int(request.query_params.get("page", "1"))
        base = f"{request.base_url}fhir/{kind}/Patient"
        if kind == "broken404":
            nxt = f"{base}?page=99" if page == 1 else None
        elif kind == "garbage":
            if page == 2:
                return Response("<html>session expired</html>", media_type="text/html")
            nxt = f"{base}?page=2"
        elif kind == "loop":
            nxt = f"{base}?page=2"
        elif kind == "foreign":
            nxt = "http://10.255.0.1:8080/fhir/foreign/Patient?page=2" if page == 1 else None
        elif kind == "outcome":
            body = _bundle(request, ["a"], None)
            body["entry"].append({"resource": oo, "search": {"mode": "outcome"}})
            return JSONResponse(body, media_type=FHIR)
        else:
            nxt = None
        if page == 99:
            return JSONResponse(oo | {"issue": [{"severity": "error", "code": "not-found",
                                                "diagnostics": "page expired"}]}, status_code=404)
        return JSONResponse(_bundle(request, [f"p{page}"], nxt), media_type=FHIR)

    return app


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve_app(_app()) as url:
        yield url


def _client(origin: str, kind: str, **kw: object) -> FhirClient:
    kw.setdefault("retries", RetryPolicy(max_attempts=4, backoff=0.05, max_total_wait=5))
    return FhirClient(f"{origin}/fhir/{kind}", **kw)  # type: ignore[arg-type]


def test_non_fhir_json(origin: str) -> None:
    with pytest.raises(FhirValidationError, match="resourceType"):
        _client(origin, "notfhir").capabilities()


def test_not_json(origin: str) -> None:
    with pytest.raises(FhirError, match="text/html"):
        _client(origin, "html").capabilities()


def test_wrong_resource_type(origin: str) -> None:
    with pytest.raises(FhirValidationError, match="expected a Patient"):
        _client(origin, "wrongtype").read("Patient", "x")


def test_500_with_operation_outcome(origin: str) -> None:
    with pytest.raises(OperationOutcomeError) as err:
        _client(origin, "oo500").read("Patient", "x")
    assert err.value.status_code == 500
    assert err.value.issues[0]["diagnostics"] == "database on fire"
    assert "database on fire" in str(err.value)


def test_500_without_operation_outcome(origin: str) -> None:
    with pytest.raises(FhirError) as err:
        _client(origin, "plain500").read("Patient", "x")
    assert not isinstance(err.value, OperationOutcomeError)
    assert err.value.status_code == 500


def test_429_storm_is_bounded(origin: str) -> None:
    HITS["storm"] = 0
    policy = RetryPolicy(max_attempts=3, backoff=0.01, max_total_wait=10)
    t = time.monotonic()
    with pytest.raises(FhirError, match="gave up after 3 attempts") as err:
        _client(origin, "storm", retries=policy).read("Patient", "x")
    elapsed = time.monotonic() - t
    assert err.value.status_code == 429
    assert HITS["storm"] == 3
    assert 2.0 <= elapsed < 5.0  # Retry-After: 1 honoured twice, not the 0.01 s backoff


def test_retry_after_beyond_the_budget_stops_at_once(origin: str) -> None:
    HITS["storm"] = 0
    policy = RetryPolicy(max_attempts=10, backoff=0.01, max_total_wait=0.5)
    with pytest.raises(FhirError) as err:
        _client(origin, "storm", retries=policy).read("Patient", "x")
    assert err.value.status_code == 429 and HITS["storm"] == 1


def test_retry_after_http_date_then_success(origin: str) -> None:
    HITS["datestorm"] = 0
    t = time.monotonic()
    assert _client(origin, "datestorm").read("Patient", "x")["id"] == "x"
    assert HITS["datestorm"] == 2
    assert time.monotonic() - t >= 0.8  # waited for the date (whole-second resolution)


def test_502_retried_for_reads_but_not_for_creates(origin: str) -> None:
    HITS["flaky"] = HITS["flaky_post"] = 0
    assert _client(origin, "flaky").read("Patient", "x")["id"] == "x"
    assert HITS["flaky"] == 3
    with pytest.raises(FhirError) as err:
        _client(origin, "flaky").create({"resourceType": "Patient"})
    assert err.value.status_code == 502 and HITS["flaky_post"] == 1  # never a duplicate create


def test_timeout(origin: str) -> None:
    with pytest.raises(PeerTimeoutError):
        _client(origin, "slow", timeout=0.5, retries=RetryPolicy(max_attempts=1)).read("Patient", "x")


def test_connection_refused() -> None:
    port = free_port()
    c = FhirClient(f"http://127.0.0.1:{port}/fhir", retries=RetryPolicy(max_attempts=2, backoff=0.01))
    with pytest.raises(PeerUnreachableError, match="gave up after 2 attempts"):
        c.capabilities()


def test_paging(origin: str) -> None:
    assert [r["id"] for r in _client(origin, "fine").search("Patient")] == ["p1"]


def test_broken_next_link_404_is_an_error(origin: str) -> None:
    got: list[str] = []
    with pytest.raises(OperationOutcomeError) as err:
        for r in _client(origin, "broken404").search("Patient"):
            got.append(r["id"])
    assert got == ["p1"] and err.value.status_code == 404


def test_garbage_next_page_is_an_error(origin: str) -> None:
    with pytest.raises(FhirError, match="not FHIR JSON"):
        list(_client(origin, "garbage").search("Patient"))


def test_next_link_loop_is_an_error(origin: str) -> None:
    with pytest.raises(FhirError, match="paging loop"):
        list(_client(origin, "loop").search("Patient"))


def test_next_link_to_another_server(origin: str) -> None:
    with pytest.raises(FhirError, match="another server"):
        list(_client(origin, "foreign").search("Patient"))
    # behind a proxy: rewrite onto the base origin (then the page the proxy knows is read)
    rewritten = list(_client(origin, "foreign", rewrite_next_links=True).search("Patient"))
    assert [r["id"] for r in rewritten] == ["p1", "p2"]


def test_error_outcome_inside_a_search_bundle(origin: str) -> None:
    with pytest.raises(OperationOutcomeError, match="database on fire"):
        list(_client(origin, "outcome").search("Patient"))
