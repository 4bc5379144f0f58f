"""Credentials stay home: Bulk Data status and file URLs on another origin get no token (issue 7 #15).

Two real HTTP servers on different loopback ports: a FHIR-ish server (kick-off, its
own files) and an "other origin" (status URL, files), each recording the
Authorization header of every request it receives.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from kit.config import Secret
from kit.errors import BulkExportError, InvalidInputError
from kit.fhir.auth import BearerAuth
from kit.fhir.bulk import BulkExport
from kit.fhir.client import FhirClient
from tests.integration.fhir_client.conftest import FAST_RETRY, serve_app

TOKEN = "tok-6c1f0e2a-credentials-stay-home"
PATIENT = orjson.dumps({"resourceType": "Patient", "id": "p1"}) + b"\n"
OBS = orjson.dumps({"resourceType": "Observation", "id": "o1", "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}) + b"\n"


class Peers:
    """The two origins, their recorded (path, Authorization) pairs, and what the manifest says."""

    def __init__(self) -> None:
        self.fhir = ""
        self.other = ""
        self.seen: dict[str, list[tuple[str, str | None]]] = {"fhir": [], "other": []}
        self.status_on = "other"
        self.requires_token = True

    def auth_of(self, who: str, fragment: str) -> list[str | None]:
        return [a for p, a in self.seen[who] if fragment in p]


def _app(peers: Peers, who: str) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def record(request: Request, call_next: Any) -> Response:
        peers.seen[who].append((request.url.path, request.headers.get("authorization")))
        response: Response = await call_next(request)
        return response

    @app.get("/fhir/$export")
    async def kickoff() -> Response:
        where = peers.other if peers.status_on == "other" else peers.fhir
        return Response(status_code=202, headers={"Content-Location": f"{where}/status/job1"})

    @app.get("/status/job1")
    async def status() -> Response:
        return JSONResponse({
            "transactionTime": "2024-01-01T00:00:00Z", "request": f"{peers.fhir}/fhir/$export",
            "requiresAccessToken": peers.requires_token,
            "output": [{"type": "Patient", "url": f"{peers.fhir}/files/Patient.ndjson", "count": 1},
                       {"type": "Observation", "url": f"{peers.other}/files/Observation.ndjson",
                        "count": 1}],
            "error": []})

    @app.get("/files/{name}")
    async def files(name: str) -> Response:
        return Response(PATIENT if name.startswith("Patient") else OBS,
                        media_type="application/fhir+ndjson")

    return app


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    state = Peers()
    with serve_app(_app(state, "fhir")) as fhir, serve_app(_app(state, "other")) as other:
        state.fhir, state.other = fhir, other
        yield state


@pytest.fixture
def fresh(peers: Peers) -> Peers:
    peers.seen = {"fhir": [], "other": []}
    peers.status_on, peers.requires_token = "other", True
    return peers


def _client(peers: Peers, **kw: Any) -> FhirClient:
    return FhirClient(f"{peers.fhir}/fhir", auth=BearerAuth(Secret(TOKEN)), retries=FAST_RETRY, **kw)


def test_token_goes_only_to_the_configured_origin(fresh: Peers, tmp_path: Path) -> None:
    with _client(fresh) as client:
        result = BulkExport(client).run(tmp_path, progress=False)
    assert result.frame("Observation")["id"].to_list() == ["o1"]
    assert result.frame("Patient")["id"].to_list() == ["p1"]
    bearer = f"Bearer {TOKEN}"
    assert fresh.auth_of("fhir", "$export") == [bearer]
    assert fresh.auth_of("fhir", "/files/Patient") == [bearer]  # requiresAccessToken, same origin
    assert fresh.auth_of("other", "/status/") and set(fresh.auth_of("other", "/status/")) == {None}
    assert fresh.auth_of("other", "/files/Observation") == [None]
    assert all(a is None for _, a in fresh.seen["other"])


def test_requires_access_token_false_means_no_token_anywhere(fresh: Peers, tmp_path: Path) -> None:
    fresh.requires_token = False
    fresh.status_on = "fhir"
    with _client(fresh) as client:
        BulkExport(client).run(tmp_path, progress=False)
    assert fresh.auth_of("fhir", "/status/") == [f"Bearer {TOKEN}"]  # the server's own status URL
    assert fresh.auth_of("fhir", "/files/") == [None]
    assert fresh.auth_of("other", "/files/") == [None]


def test_trusted_origins_extend_the_rule(fresh: Peers, tmp_path: Path) -> None:
    with _client(fresh, trusted_origins=[fresh.other]) as client:
        assert client.trusts(f"{fresh.other}/anything") and not client.trusts("http://127.0.0.2:1/")
        BulkExport(client).run(tmp_path, progress=False)
    assert set(fresh.auth_of("other", "/")) == {f"Bearer {TOKEN}"}


def test_a_header_set_by_hand_is_not_sent_elsewhere_either(fresh: Peers) -> None:
    with FhirClient(f"{fresh.fhir}/fhir", headers={"Authorization": f"Bearer {TOKEN}"},
                    retries=FAST_RETRY) as client:
        client.send("GET", f"{fresh.other}/files/Observation.ndjson")
        client.send("GET", f"{fresh.fhir}/files/Patient.ndjson")
    assert fresh.auth_of("other", "/files/") == [None]
    assert fresh.auth_of("fhir", "/files/") == [f"Bearer {TOKEN}"]


def test_a_refused_status_url_elsewhere_says_why(fresh: Peers, tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/status/job1")
    async def status(request: Request) -> Response:
        return Response(status_code=401 if "authorization" not in request.headers else 200)

    with serve_app(app) as third, _client(fresh) as client:
        from kit.fhir.bulk import ExportJob

        with pytest.raises(BulkExportError, match="trusted_origins") as err:
            ExportJob(client, f"{third}/status/job1").poll()
    assert err.value.status_code == 401


def test_origin_rule_is_scheme_host_and_port() -> None:
    with FhirClient("https://fhir.h.example/R4", trusted_origins=["https://*.files.example"]) as c:
        assert c.trusts("https://fhir.h.example/R4/Binary/1")
        assert c.trusts("https://FHIR.h.example:443/other/path")
        assert not c.trusts("http://fhir.h.example/R4")  # scheme
        assert not c.trusts("https://fhir.h.example:8443/R4")  # port
        assert not c.trusts("https://fhir.h.example.evil.test/R4")  # host
        assert c.trusts("https://a.files.example/x") and not c.trusts("https://files.example/x")
        assert not c.trusts("https://evilfiles.example/x")
        assert not c.trusts("file:///etc/passwd")
    with pytest.raises(InvalidInputError):
        FhirClient("https://fhir.h.example/R4", trusted_origins=["not a url"])
