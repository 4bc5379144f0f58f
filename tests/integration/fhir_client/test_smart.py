"""SMART Backend Services and client credentials against a real token endpoint on loopback.

The token server verifies the signed client assertion (alg, kid, signature with the
registered public key, iss, sub, aud, exp, jti) and issues short-lived tokens; the
FHIR endpoint beside it refuses expired or revoked tokens with 401.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from kit.config import FhirSettings, Secret
from kit.errors import AuthError
from kit.fhir.auth import CLIENT_ASSERTION_TYPE, ClientCredentialsAuth, SmartBackendAuth, auth_from_settings
from kit.fhir.client import FhirClient
from tests.integration.fhir_client.conftest import serve_app

FHIR = "application/fhir+json"
CC_SECRET = "cc-secret-" + secrets.token_hex(8)


@dataclass
class TokenServer:
    origin: str = ""
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # client_id -> (kid, public key)
    lifetime: int = 60
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (time.time)
    jtis: set[str] = field(default_factory=set)
    token_requests: int = 0
    refusals: list[str] = field(default_factory=list)
    fhir_requests: list[str] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"{self.origin}/auth/token"

    def refuse(self, reason: str) -> Response:
        self.refusals.append(reason)
        return JSONResponse({"error": "invalid_client", "error_description": reason}, status_code=400)

    def verify_assertion(self, form: dict[str, str]) -> str | Response:
        if form.get("grant_type") != "client_credentials":
            return self.refuse("grant_type")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            return self.refuse("client_assertion_type")
        assertion = form.get("client_assertion", "")
        try:
            unverified = jws.extract_compact(assertion.encode())  # to pick the client's key
            header = unverified.headers()
            client_id = json.loads(unverified.payload)["iss"]
        except (JoseError, KeyError, ValueError):
            return self.refuse("not a JWT")
        if client_id not in self.keys:
            return self.refuse("unknown client")
        kid, public = self.keys[client_id]
        if header.get("kid") != kid:
            return self.refuse("kid")
        if header.get("alg") not in ("RS384", "ES384"):
            return self.refuse("alg")
        try:
            token = jwt.decode(assertion, public, algorithms=[header["alg"]])
        except JoseError:
            return self.refuse("signature")
        c = token.claims
        now = time.time()
        if c.get("sub") != client_id:
            return self.refuse("sub")
        if c.get("aud") != self.token_url:
            return self.refuse("aud")
        if not isinstance(c.get("exp"), int) or not now < c["exp"] <= now + 301:
            return self.refuse("exp")
        if not c.get("jti") or c["jti"] in self.jtis:
            return self.refuse("jti reused")
        self.jtis.add(c["jti"])
        return client_id

    def issue(self, scope: str) -> Response:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.lifetime
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": self.lifetime,
                             "scope": scope})

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/fhir/R4/.well-known/smart-configuration")
        async def smart_config() -> Response:
            return JSONResponse({"token_endpoint": self.token_url,
                                 "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                                 "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]})

        @app.post("/auth/token")
        async def token(request: Request) -> Response:
            self.token_requests += 1
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Basic "):  # client_credentials with a secret
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
                if cid != "cc-client" or secret != CC_SECRET:
                    return self.refuse("bad client secret")
                return self.issue(form.get("scope", ""))
            verified = self.verify_assertion(form)
            if isinstance(verified, Response):
                return verified
            return self.issue(form.get("scope", ""))

        @app.api_route("/fhir/R4/Patient/{pid}", methods=["GET", "PUT"])
        async def patient(pid: str, request: Request) -> Response:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            self.fhir_requests.append(token)
            if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.time():
                return JSONResponse({"resourceType": "OperationOutcome", "issue": [
                    {"severity": "error", "code": "login", "diagnostics": "token expired"}]},
                    status_code=401, media_type=FHIR)
            if request.method == "PUT":
                body = await request.json()
                return JSONResponse({**body, "meta": {"versionId": "2"}}, media_type=FHIR)
            return JSONResponse({"resourceType": "Patient", "id": pid}, media_type=FHIR)

        return app


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048)


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384")


@pytest.fixture
def server(rsa_key: RSAKey, ec_key: ECKey) -> Iterator[TokenServer]:
    ts = TokenServer()
    ts.keys["rsa-app"] = ("rsa-1", RSAKey.import_key(rsa_key.as_pem(private=False)))
    ts.keys["ec-app"] = ("ec-1", ECKey.import_key(ec_key.as_pem(private=False)))
    with serve_app(ts.app()) as origin:
        ts.origin = origin
        yield ts


def _pem(key: RSAKey | ECKey) -> Secret:
    return Secret(key.as_pem(private=True).decode())


def _smart(server: TokenServer, key: RSAKey, **kw: Any) -> FhirClient:
    auth = SmartBackendAuth("rsa-app", _pem(key), key_id="rsa-1", scope="system/Patient.read", **kw)
    return FhirClient(f"{server.origin}/fhir/R4", auth=auth, timeout=10)


def test_smart_discovers_the_token_endpoint_and_reuses_the_token(server: TokenServer,
                                                                 rsa_key: RSAKey) -> None:
    client = _smart(server, rsa_key)
    assert client.read("Patient", "p1")["id"] == "p1"
    assert client.read("Patient", "p2")["id"] == "p2"
    assert server.refusals == []
    assert server.token_requests == 1
    assert client.auth.token_url == server.token_url  # type: ignore[union-attr]


def test_smart_es384(server: TokenServer, ec_key: ECKey) -> None:
    auth = SmartBackendAuth("ec-app", _pem(ec_key), key_id="ec-1", algorithm="ES384",
                            token_url=server.token_url)
    assert FhirClient(f"{server.origin}/fhir/R4", auth=auth).read("Patient", "e")["id"] == "e"
    assert server.refusals == []


def test_token_renewed_shortly_before_expiry(server: TokenServer, rsa_key: RSAKey) -> None:
    server.lifetime = 2  # renew margin: a fifth of the lifetime, 0.4 s
    client = _smart(server, rsa_key)
    client.read("Patient", "a")
    time.sleep(1.0)
    client.read("Patient", "b")  # still valid
    assert server.token_requests == 1
    time.sleep(0.7)  # 1.7 s: inside the renewal margin, before expiry
    client.read("Patient", "c")
    assert server.token_requests == 2
    assert server.fhir_requests[-1] != server.fhir_requests[0]
    assert len(server.jtis) == 2  # a fresh assertion each time


def test_renewed_once_on_401(server: TokenServer, rsa_key: RSAKey) -> None:
    client = _smart(server, rsa_key)
    client.read("Patient", "a")
    server.tokens.clear()  # the server forgets (revokes) every token
    updated = client.update({"resourceType": "Patient", "id": "a", "active": True})
    assert updated["active"] is True  # the body went again with the new token
    assert server.token_requests == 2
    assert [t in server.tokens for t in server.fhir_requests[-2:]] == [False, True]


def test_persistent_401_is_an_auth_error(server: TokenServer, rsa_key: RSAKey) -> None:
    server.lifetime = -1  # every token is born expired
    client = _smart(server, rsa_key)
    with pytest.raises(AuthError) as err:
        client.read("Patient", "a")
    assert err.value.status_code == 401
    assert server.token_requests == 2  # renewed once, not in a loop


def test_wrong_key_is_refused_by_the_token_endpoint(server: TokenServer) -> None:
    other = RSAKey.generate_key(2048)
    client = _smart(server, other)
    with pytest.raises(AuthError, match="invalid_client"):
        client.read("Patient", "a")
    assert server.refusals == ["signature"]


def test_client_credentials_with_secret(server: TokenServer) -> None:
    auth = ClientCredentialsAuth(server.token_url, "cc-client", Secret(CC_SECRET), "system/*.read")
    assert FhirClient(f"{server.origin}/fhir/R4", auth=auth).read("Patient", "c")["id"] == "c"
    bad = ClientCredentialsAuth(server.token_url, "cc-client", Secret("wrong"), "system/*.read")
    with pytest.raises(AuthError, match="bad client secret"):
        FhirClient(f"{server.origin}/fhir/R4", auth=bad).read("Patient", "c")


def test_secrets_never_in_logs_or_reprs(server: TokenServer, rsa_key: RSAKey,
                                        caplog: pytest.LogCaptureFixture) -> None:
    pem = _pem(rsa_key)
    settings = FhirSettings(base=f"{server.origin}/fhir/R4", auth="smart", client_id="rsa-app",
                            key_id="rsa-1", private_key=pem)
    with caplog.at_level(logging.DEBUG):
        client = FhirClient.from_settings(settings)
        client.read("Patient", "a")
        cc = FhirClient(f"{server.origin}/fhir/R4", auth=auth_from_settings(FhirSettings(
            base=f"{server.origin}/fhir/R4", auth="client_credentials", client_id="cc-client",
            token_url=server.token_url, client_secret=Secret(CC_SECRET))))
        cc.read("Patient", "b")
        logging.getLogger("test").info("client %r auth %r settings %r", client, client.auth, settings)
    tokens = list(server.tokens)
    assert len(tokens) == 2
    text = caplog.text + repr(client) + repr(client.auth) + repr(cc.auth) + str(settings)
    key_body = pem.reveal().splitlines()[1]
    for secret in [key_body, CC_SECRET, *tokens]:
        assert secret not in text
    assert "rsa-app" in text  # the log did capture the request flow
