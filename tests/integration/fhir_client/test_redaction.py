"""A server that echoes the credentials back: no error, issue or log line shows them (issue 7 #19)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from kit.config import Secret
from kit.errors import AuthError, FhirError, KitError, OperationOutcomeError
from kit.fhir.auth import BasicAuth, BearerAuth, ClientCredentialsAuth
from kit.fhir.client import FhirClient, RetryPolicy
from tests.integration.fhir_client.conftest import serve_app

FHIR = "application/fhir+json"
BEARER = "tok-echoed-4b9d2c7e1a"
PASSWORD = "pw-echoed-9f8e7d6c"
CLIENT_SECRET = "cs-echoed-0a1b2c3d4e"
ISSUED = "at-issued-by-the-token-endpoint-77aa"  # never a Secret in the test: only auth sees it
QUICK = RetryPolicy(max_attempts=2, backoff=0.01, max_total_wait=1)


def _echo(request: Request) -> str:
    return f"you sent Authorization: {request.headers.get('authorization')} " \
           f"(token {request.headers.get('authorization', '').split(' ')[-1]})"


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/token")
    async def token() -> Response:
        return JSONResponse({"access_token": ISSUED, "token_type": "bearer", "expires_in": 300})

    @app.get("/fhir/Patient/{pid}")
    async def read(pid: str, request: Request) -> Response:
        return JSONResponse({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "forbidden", "diagnostics": _echo(request),
             "details": {"text": request.headers.get("authorization", "")}}]},
            status_code=403, media_type=FHIR)

    @app.get("/fhir/Observation/{oid}")
    async def plain(oid: str, request: Request) -> Response:
        return Response(_echo(request), status_code=500)

    @app.get("/fhir/Practitioner/{pid}")
    async def unauthorized(pid: str, request: Request) -> Response:
        return Response(_echo(request), status_code=401)

    @app.get("/fhir/Patient")
    async def search(request: Request) -> Response:
        return JSONResponse({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "OperationOutcome", "issue": [
                {"severity": "warning", "code": "informational", "diagnostics": _echo(request)}]},
             "search": {"mode": "outcome"}}]}, media_type=FHIR)

    @app.get("/fhir/Encounter/{eid}")
    async def busy(eid: str, request: Request) -> Response:
        return Response(_echo(request), status_code=503, headers={"Retry-After": "0"})

    return app


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    with serve_app(_app()) as url:
        yield url


def _auths(origin: str) -> list[Any]:
    return [BearerAuth(Secret(BEARER)), BasicAuth("alice", Secret(PASSWORD)),
            ClientCredentialsAuth(f"{origin}/token", "app1", Secret(CLIENT_SECRET))]


def _clean(text: str) -> None:
    for secret in (BEARER, PASSWORD, CLIENT_SECRET, ISSUED):
        assert secret not in text
    assert "YWxpY2U6" not in text  # base64 of "alice:..."
    assert "Bearer ********" in text or "Basic ********" in text or "********" in text


@pytest.mark.parametrize("which", ["bearer", "basic", "client_credentials"])
def test_echoed_credentials_never_show(origin: str, which: str, caplog: pytest.LogCaptureFixture) -> None:
    auth = _auths(origin)[["bearer", "basic", "client_credentials"].index(which)]
    caplog.set_level(logging.DEBUG, logger="kit")
    with FhirClient(f"{origin}/fhir", auth=auth, retries=QUICK) as client:
        errors: list[KitError] = []
        for call, kind in ((lambda: client.read("Patient", "p1"), OperationOutcomeError),
                           (lambda: client.read("Observation", "o1"), FhirError),
                           (lambda: client.read("Practitioner", "x"), AuthError),
                           (lambda: client.read("Encounter", "e1"), FhirError)):
            with pytest.raises(kind) as err:
                call()
            errors.append(err.value)
        list(client.search("Patient"))  # a warning outcome: logged
    for e in errors:
        _clean(str(e))
        _clean(repr(e))
        _clean(str(e.args))
    oo = errors[0]
    assert isinstance(oo, OperationOutcomeError) and oo.issues
    _clean(repr(oo.issues))
    assert "you sent Authorization" in oo.issues[0]["diagnostics"]  # the rest of the text is kept
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "you sent Authorization" in logged
    _clean(logged)
