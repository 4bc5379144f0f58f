"""Auth construction, the SMART client assertion, retry arithmetic, vendor profiles (no sockets)."""

from __future__ import annotations

import datetime as dt
import email.utils
import pickle
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from kit.config import FhirSettings, Secret
from kit.errors import ConfigError, InvalidInputError
from kit.fhir.auth import (
    BasicAuth,
    BearerAuth,
    ClientCredentialsAuth,
    NoAuth,
    SmartBackendAuth,
    auth_from_settings,
)
from kit.fhir.client import FhirClient, RetryPolicy, _normalise_params, parse_retry_after
from kit.fhir.vendors import VENDORS, AuthStyle, BulkLevel, VendorProfile, vendor_profile

RSA = RSAKey.generate_key(2048)
EC = ECKey.generate_key("P-384")
TOKEN_URL = "https://ehr.example.org/oauth2/token"


def _pem(key: RSAKey | ECKey) -> Secret:
    return Secret(key.as_pem(private=True).decode())


def test_client_assertion_claims_and_signature() -> None:
    auth = SmartBackendAuth("my-app", _pem(RSA), key_id="k1", token_url=TOKEN_URL)
    now = 1_700_000_000
    a, b = auth.client_assertion(TOKEN_URL, now=now), auth.client_assertion(TOKEN_URL, now=now)
    public = RSAKey.import_key(RSA.as_pem(private=False))
    ta = jwt.decode(a, public, algorithms=["RS384"])
    tb = jwt.decode(b, public, algorithms=["RS384"])
    assert ta.header == {"alg": "RS384", "kid": "k1", "typ": "JWT"}
    assert ta.claims["iss"] == ta.claims["sub"] == "my-app"
    assert ta.claims["aud"] == TOKEN_URL
    assert ta.claims["exp"] - now <= 300 and ta.claims["exp"] > now
    assert ta.claims["jti"] != tb.claims["jti"]
    with pytest.raises(Exception):  # noqa: B017 - another key must not verify it
        jwt.decode(a, RSAKey.generate_key(2048), algorithms=["RS384"])


def test_es384_and_default_kid_is_the_thumbprint() -> None:
    auth = SmartBackendAuth("ec-app", _pem(EC), algorithm="ES384", token_url=TOKEN_URL)
    assert auth.key_id == EC.thumbprint()
    token = jwt.decode(auth.client_assertion(TOKEN_URL), ECKey.import_key(EC.as_pem(private=False)),
                       algorithms=["ES384"])
    assert token.header["alg"] == "ES384"


@pytest.mark.parametrize("key,alg,match", [
    (EC, "RS384", "RSA"),
    (RSA, "ES384", "EC P-384"),
    (ECKey.generate_key("P-256"), "ES384", "P-384"),
])
def test_wrong_key_for_the_algorithm(key: RSAKey | ECKey, alg: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SmartBackendAuth("a", _pem(key), algorithm=alg, token_url=TOKEN_URL)  # type: ignore[arg-type]


def test_bad_keys_and_secrets_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="private key"):
        SmartBackendAuth("a", Secret(RSA.as_pem(private=False).decode()), token_url=TOKEN_URL)
    with pytest.raises(ConfigError, match="PEM"):
        SmartBackendAuth("a", Secret("not a key"), token_url=TOKEN_URL)
    with pytest.raises(ConfigError, match="Secret"):
        BearerAuth("plain-string-token")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="300"):
        SmartBackendAuth("a", _pem(RSA), token_url=TOKEN_URL, assertion_lifetime=600)
    with pytest.raises(ConfigError, match="client_id"):
        ClientCredentialsAuth(TOKEN_URL, "", Secret("s"))


def test_reprs_and_pickles_never_show_secrets() -> None:
    pem = _pem(RSA)
    auths = [BearerAuth(Secret("tok-123456")), BasicAuth("u", Secret("pw-123456")),
             ClientCredentialsAuth(TOKEN_URL, "c", Secret("cs-123456")),
             SmartBackendAuth("s", pem, token_url=TOKEN_URL)]
    text = " ".join(repr(a) + str(a) for a in auths)
    for secret in ("tok-123456", "pw-123456", "cs-123456", pem.reveal().splitlines()[1]):
        assert secret not in text
    assert "********" in text
    with pytest.raises(TypeError):
        pickle.dumps(pem)


def test_auth_from_settings() -> None:
    assert isinstance(auth_from_settings(FhirSettings()), NoAuth)
    assert isinstance(auth_from_settings(FhirSettings(auth="bearer", token=Secret("t"))), BearerAuth)
    smart = auth_from_settings(FhirSettings(auth="smart", client_id="app", private_key=_pem(RSA),
                                            vendor="epic"))
    assert isinstance(smart, SmartBackendAuth) and smart.scope == "system/*.read"
    assert smart.token_url is None and smart.base == FhirSettings().base  # discovered later
    cc = auth_from_settings(FhirSettings(auth="client_credentials", client_id="c", token_url=TOKEN_URL,
                                         scope="system/Patient.read", client_secret=Secret("s")))
    assert isinstance(cc, ClientCredentialsAuth) and cc.scope == "system/Patient.read"
    with pytest.raises(ConfigError, match="fhir.private_key"):
        auth_from_settings(FhirSettings(auth="smart", client_id="app"))
    with pytest.raises(ConfigError, match="fhir.client_id"):
        auth_from_settings(FhirSettings(auth="client_credentials", client_secret=Secret("s")))
    with pytest.raises(ConfigError, match="fhir.token"):
        auth_from_settings(FhirSettings(auth="bearer"))
    with pytest.raises(ConfigError, match="fhir.password"):
        auth_from_settings(FhirSettings(auth="basic", username="u"))


def test_vendor_profiles() -> None:
    assert set(VENDORS) == {"generic", "epic", "cerner", "athena", "allscripts"}
    epic = vendor_profile("Epic")
    assert epic.auth_style is AuthStyle.SMART and epic.bulk_levels == (BulkLevel.GROUP,)
    assert epic.headers("app-1") == {"Epic-Client-ID": "app-1"}
    assert epic.headers(None) == {}
    assert vendor_profile("oracle") is VENDORS["cerner"]
    with pytest.raises(ConfigError, match="unknown vendor"):
        vendor_profile("meditech-magic")
    with pytest.raises(ConfigError):
        VendorProfile(name="x", display_name="X", auth_style=AuthStyle.NONE, max_count=0)
    with pytest.raises(TypeError):
        epic.extra_headers["X"] = "y"  # type: ignore[index]


def test_client_applies_vendor_headers_and_required_params() -> None:
    auth = SmartBackendAuth("epic-app", _pem(RSA), token_url=TOKEN_URL)
    client = FhirClient("https://fhir.example.org/api/FHIR/R4", auth=auth, vendor="epic")
    assert client._http.headers["Epic-Client-ID"] == "epic-app"
    assert client._cap_count("5000") == "1000"
    athena = FhirClient("https://athena.example.org/fhir/r4", vendor="athena")
    with pytest.raises(InvalidInputError, match="ah-practice"):
        next(athena.search("Patient", family="X"))
    with pytest.raises(InvalidInputError, match="resource type"):
        next(athena.search("patient; DROP", family="X"))
    with pytest.raises(InvalidInputError):
        FhirClient("ftp://example.org/fhir")


def test_search_params_normalised() -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    pairs = _normalise_params({"date": ["ge2024-01-01", "le2024-12-31"], "active": True},
                              {"_lastUpdated": when, "birthdate": dt.date(1960, 2, 3), "skip": None})
    assert pairs == [("date", "ge2024-01-01"), ("date", "le2024-12-31"), ("active", "true"),
                     ("_lastUpdated", "2024-05-01T12:00:00+00:00"), ("birthdate", "1960-02-03")]
    with pytest.raises(InvalidInputError, match="time zone"):
        _normalise_params({"_lastUpdated": dt.datetime(2024, 1, 1)}, {})


def test_parse_retry_after() -> None:
    now = dt.datetime(2024, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0


@given(st.integers(min_value=0, max_value=10**7))
def test_retry_after_http_date_round_trip(seconds: int) -> None:
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    header = email.utils.format_datetime(now + dt.timedelta(seconds=seconds), usegmt=True)
    assert parse_retry_after(header, now=now) == seconds


@given(st.text(max_size=40))
def test_retry_after_never_raises(text: str) -> None:
    value = parse_retry_after(text)
    assert value is None or value >= 0


@given(attempt=st.integers(min_value=1, max_value=60), retry_after=st.none() | st.floats(0, 1e4),
       seed=st.integers(0, 2**32))
def test_backoff_is_bounded_and_honours_retry_after(attempt: int, retry_after: float | None,
                                                    seed: int) -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=8.0, jitter=0.25)
    delay = policy.delay(attempt, retry_after, random.Random(seed))
    assert 0 <= delay <= max(8.0 * 1.25, retry_after or 0)
    if retry_after is not None:
        assert delay >= retry_after


def test_retry_policy_validated() -> None:
    with pytest.raises(InvalidInputError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidInputError):
        RetryPolicy(jitter=2)


def test_from_settings_base_override_reaches_the_auth() -> None:
    settings = FhirSettings(base="https://a.example.org/R4", auth="smart", client_id="app",
                            private_key=_pem(RSA), vendor="epic", timeout=7)
    client = FhirClient.from_settings(settings, base="https://b.example.org/R4")
    assert client.base == "https://b.example.org/R4" and client.timeout == 7
    assert client.auth.base == "https://b.example.org/R4"  # type: ignore[union-attr]
    assert client.profile.name == "epic"
