"""Authentication for the FHIR client, as :class:`httpx.Auth` flows.

* :class:`NoAuth`, :class:`BearerAuth` (a fixed token), :class:`BasicAuth`;
* :class:`ClientCredentialsAuth`: OAuth 2.0 ``client_credentials`` with a client
  secret (RFC 6749 section 4.4; Oracle Health system accounts, athenahealth);
* :class:`SmartBackendAuth`: SMART Backend Services (HL7 SMART App Launch 2.x,
  "client-confidential-asymmetric"): a client-assertion JWT signed with the
  client's private key (RS384 or ES384, signed by joserfc) exchanged for an
  access token at the token endpoint, discovered from
  ``{base}/.well-known/smart-configuration`` when not given.

Tokens are cached and renewed shortly before they expire, and once more when the
server answers 401; a second 401 comes back to the client, which raises
:class:`~kit.errors.AuthError`. Token requests travel through the same
:class:`httpx.Client` as the FHIR requests (same timeouts, TLS, transport), as
requests yielded from the auth flow. The flows are for the synchronous client.

Where the secrets go: a token endpoint discovered from the FHIR server must be
``https`` or on the FHIR base's own origin (scheme, host and port), else
:class:`~kit.errors.AuthError` names it and nothing is sent; a ``token_url`` given
in the settings is used as given. Token requests never follow a redirect (one is
an :class:`~kit.errors.AuthError`; httpx would re-send the form with the secret on
a 307); the discovery document (no credentials) follows up to
``MAX_DISCOVERY_REDIRECTS``. Token and discovery answers are read up to
``MAX_AUTH_BODY`` bytes (decompressed).

Secrets (client secret, private key, access tokens) are held as
:class:`kit.config.Secret`: no ``repr``, log line or error message shows them
(every Secret, every token received, the Basic credential pairs and the signed
client assertions are registered with :mod:`kit._redact` and masked).

Hand-written here: the OAuth token exchange and cache (httpx has no OAuth flow;
authlib would add a dependency for two POSTs). JWT signing is joserfc's.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Generator
from typing import Any, Literal

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from kit._redact import register_secret
from kit.config import FhirSettings, Secret
from kit.errors import AuthError, ConfigError
from kit.fhir._bounded import read_bounded
from kit.fhir.policy import origin
from kit.fhir.vendors import vendor_profile

__all__ = [
    "CLIENT_ASSERTION_TYPE",
    "BasicAuth",
    "BearerAuth",
    "ClientCredentialsAuth",
    "NoAuth",
    "SmartBackendAuth",
    "auth_from_settings",
]

log = logging.getLogger(__name__)

#: RFC 7523 client assertion type used by SMART Backend Services.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

_Flow = Generator[httpx.Request, httpx.Response, None]

#: The largest token or discovery answer read (decompressed), in bytes.
MAX_AUTH_BODY = 1024 * 1024
#: Redirects the discovery request follows at most (token requests follow none).
MAX_DISCOVERY_REDIRECTS = 5


def _require_secret(key: str, value: object) -> Secret:
    if not isinstance(value, Secret):
        raise ConfigError(key, "must be a kit.config.Secret (never a plain string)")
    if not value.reveal():
        raise ConfigError(key, "is empty")
    return value


class NoAuth(httpx.Auth):
    """Send requests without credentials (the embedded server, open sandboxes)."""

    def auth_flow(self, request: httpx.Request) -> _Flow:
        yield request

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth(httpx.Auth):
    """A fixed bearer token.

    Parameters
    ----------
    token : Secret
        The access token.
    """

    def __init__(self, token: Secret) -> None:
        self._token = _require_secret("fhir.token", token)

    def auth_flow(self, request: httpx.Request) -> _Flow:
        request.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(token=Secret('********'))"


class BasicAuth(httpx.Auth):
    """HTTP Basic authentication.

    Parameters
    ----------
    username : str
        User name.
    password : Secret
        Password.
    """

    def __init__(self, username: str, password: Secret) -> None:
        if not username:
            raise ConfigError("fhir.username", "is empty")
        self.username = username
        self._password = _require_secret("fhir.password", password)
        register_secret(_basic_pair(username, password))

    def auth_flow(self, request: httpx.Request) -> _Flow:
        yield from httpx.BasicAuth(self.username, self._password.reveal()).auth_flow(request)

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=Secret('********'))"


def _basic_pair(user: str, secret: Secret) -> str:
    """The base64 ``user:secret`` of HTTP Basic (registered as a secret of its own)."""
    return base64.b64encode(f"{user}:{secret.reveal()}".encode()).decode("ascii")


@dataclasses.dataclass(frozen=True)
class _Token:
    value: Secret
    expires_at: float  # time.monotonic() clock
    lifetime: float


class _TokenAuth(httpx.Auth):
    """Shared OAuth machinery: discovery, token cache, renewal before expiry and once on 401."""

    #: renew this many seconds before expiry (at most a fifth of the token's lifetime)
    refresh_margin: float = 30.0
    #: lifetime assumed when the token response has no ``expires_in``
    default_lifetime: float = 300.0

    def __init__(self, client_id: str, *, token_url: str | None, base: str | None,
                 scope: str | None) -> None:
        if not client_id:
            raise ConfigError("fhir.client_id", "is empty")
        self.client_id = client_id
        self.token_url = token_url
        self.base = base.rstrip("/") if base else None
        self.scope = scope
        self._token: _Token | None = None
        self._lock = threading.Lock()

    # -- subclass hooks ------------------------------------------------------------------------

    def _token_request(self, token_url: str) -> httpx.Request:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the flow ----------------------------------------------------------------------------------

    def bind(self, base: str) -> None:
        """Set the FHIR base used to discover the token endpoint (done by the client)."""
        if self.base is None:
            self.base = base.rstrip("/")

    def invalidate(self) -> None:
        """Forget the cached token (the next request fetches a new one)."""
        with self._lock:
            self._token = None

    def _valid_token(self) -> Secret | None:
        with self._lock:
            tok = self._token
        if tok is None:
            return None
        margin = min(self.refresh_margin, tok.lifetime / 5)
        return tok.value if time.monotonic() < tok.expires_at - margin else None

    def auth_flow(self, request: httpx.Request) -> _Flow:
        token = self._valid_token()
        if token is None:
            token = yield from self._fetch_token()
        request.headers["Authorization"] = f"Bearer {token.reveal()}"
        response = yield request
        if response.status_code == 401:
            log.info("FHIR server answered 401; renewing the access token once")
            _read_bounded(response, "the 401 answer")  # httpx reads it whole otherwise
            self.invalidate()
            token = yield from self._fetch_token()
            request.headers["Authorization"] = f"Bearer {token.reveal()}"
            yield request

    def _fetch_token(self) -> Generator[httpx.Request, httpx.Response, Secret]:
        token_url = self.token_url
        if token_url is None:
            token_url = yield from self._discover()
        try:
            token_request = self._token_request(token_url)
        except httpx.InvalidURL as exc:
            raise AuthError(f"the token endpoint {token_url[:200]!r} is not a valid URL: {exc}") from None
        response = yield token_request
        if response.next_request is not None or response.is_redirect:
            where = response.headers.get("Location", "")
            response.close()
            raise AuthError(f"the token endpoint answered HTTP {response.status_code}, a redirect "
                            f"(to {where[:200]!r}); token requests do not follow redirects",
                            status_code=response.status_code, peer=token_url)
        _read_bounded(response, f"the token endpoint {token_url}")
        body = _json_or_none(response)
        if response.status_code != 200:
            detail = ""
            if isinstance(body, dict) and body.get("error"):
                detail = f": {body['error']}" + (f" ({body['error_description']})"
                                                  if body.get("error_description") else "")
            raise AuthError(f"token endpoint refused the client {self.client_id!r} with HTTP "
                            f"{response.status_code}{detail}", status_code=response.status_code,
                            peer=token_url)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise AuthError("token endpoint answered without an access_token", peer=token_url)
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise AuthError(f"unsupported token_type {body.get('token_type')!r}", peer=token_url)
        try:
            lifetime = float(body.get("expires_in", self.default_lifetime))
        except (TypeError, ValueError, OverflowError):
            lifetime = self.default_lifetime
        if not (math.isfinite(lifetime) and lifetime > 0):  # negative, 0, NaN, inf: as if not given
            lifetime = self.default_lifetime
        token = Secret(body["access_token"])
        register_secret(token.reveal(), transient=True)  # masked in errors and logs while it lives
        with self._lock:
            self._token = _Token(token, time.monotonic() + lifetime, lifetime)
        log.debug("got an access token for %s valid %.0f s", self.client_id, lifetime)
        return token

    def _discover(self) -> Generator[httpx.Request, httpx.Response, str]:
        if self.base is None:
            raise ConfigError("fhir.token_url", "give token_url, or a FHIR base to discover it from")
        url = f"{self.base}/.well-known/smart-configuration"
        try:
            request = httpx.Request("GET", url, headers={"Accept": "application/json"})
        except httpx.InvalidURL as exc:
            raise AuthError(f"cannot discover the token endpoint: {url!r} is not a valid URL: "
                            f"{exc}") from None
        response = yield request
        hops = 0
        while response.next_request is not None and hops < MAX_DISCOVERY_REDIRECTS:
            hops += 1
            following = response.next_request
            _read_bounded(response, url)  # httpx reads it whole otherwise
            response = yield following
        _read_bounded(response, url)
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict) \
                or not isinstance(body.get("token_endpoint"), str):
            raise AuthError(f"cannot discover the token endpoint: {url} answered HTTP "
                            f"{response.status_code} without a token_endpoint",
                            status_code=response.status_code, peer=url)
        self.token_url = self._check_discovered(body["token_endpoint"], url)
        return self.token_url

    def _check_discovered(self, endpoint: str, where: str) -> str:
        """``endpoint`` if a discovered token endpoint may receive the client's credentials.

        It must be an absolute ``https`` URL, or on the FHIR base's own origin
        (e.g. ``http://127.0.0.1:8080`` beside a loopback test server).
        """
        found = origin(endpoint)
        if found is not None and (found[0] == "https" or found == origin(self.base or "")):
            return endpoint
        raise AuthError(f"{where} names the token endpoint {endpoint[:200]!r}, which is neither https "
                        "nor on the FHIR server's own origin; the client credentials are not sent "
                        "there (give fhir.token_url to use it anyway)", peer=where)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        return None


def _read_bounded(response: httpx.Response, where: str) -> bytes:
    """Read a token/discovery answer, at most :data:`MAX_AUTH_BODY` bytes of it decompressed."""
    return read_bounded(response, MAX_AUTH_BODY, lambda: AuthError(
        f"{where} answered more than {MAX_AUTH_BODY} bytes; stopped reading",
        status_code=response.status_code))


class ClientCredentialsAuth(_TokenAuth):
    """OAuth 2.0 client credentials grant with a client secret.

    Parameters
    ----------
    token_url : str or None
        The token endpoint; ``None`` discovers it from ``base``.
    client_id : str
        The registered client id.
    client_secret : Secret
        The client secret.
    scope : str, optional
        Space-separated scopes, e.g. ``"system/Patient.read system/Observation.read"``.
    method : {"basic", "post"}
        Send the credentials as HTTP Basic (``client_secret_basic``, the default)
        or in the form body (``client_secret_post``).
    base : str, optional
        FHIR base URL for discovery (the client sets it).
    """

    def __init__(self, token_url: str | None, client_id: str, client_secret: Secret,
                 scope: str | None = None, *, method: Literal["basic", "post"] = "basic",
                 base: str | None = None) -> None:
        super().__init__(client_id, token_url=token_url, base=base, scope=scope)
        self._secret = _require_secret("fhir.client_secret", client_secret)
        if method not in ("basic", "post"):
            raise ConfigError("fhir.client_auth_method", f"must be 'basic' or 'post', got {method!r}")
        self.method = method
        register_secret(_basic_pair(client_id, self._secret))

    def _token_request(self, token_url: str) -> httpx.Request:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        if self.method == "post":
            form |= {"client_id": self.client_id, "client_secret": self._secret.reveal()}
        else:
            headers["Authorization"] = "Basic " + _basic_pair(self.client_id, self._secret)
        return httpx.Request("POST", token_url, data=form, headers=headers)

    def __repr__(self) -> str:
        return (f"ClientCredentialsAuth(token_url={self.token_url!r}, client_id={self.client_id!r}, "
                f"client_secret=Secret('********'), scope={self.scope!r})")


class SmartBackendAuth(_TokenAuth):
    """SMART Backend Services: a signed JWT client assertion for an access token.

    Parameters
    ----------
    client_id : str
        The client id registered with the EHR (the JWT's ``iss`` and ``sub``).
    private_key : Secret
        PEM of the private key (RSA for RS384, EC P-384 for ES384).
    key_id : str, optional
        ``kid`` header naming the key in the client's JWKS; default: the key's
        RFC 7638 thumbprint.
    algorithm : {"RS384", "ES384"}
        Signature algorithm.
    scope : str
        Space-separated scopes, e.g. ``"system/*.read"``.
    token_url : str, optional
        Token endpoint (the JWT's ``aud``); ``None`` discovers it from
        ``{base}/.well-known/smart-configuration``.
    base : str, optional
        FHIR base URL for discovery (the client sets it).
    assertion_lifetime : float
        Seconds the assertion is valid (at most 300, as SMART requires).
    jku : str, optional
        URL of the client's JWKS, sent as the ``jku`` header when given.
    """

    def __init__(self, client_id: str, private_key: Secret, *, key_id: str | None = None,
                 algorithm: Literal["RS384", "ES384"] = "RS384", scope: str = "system/*.read",
                 token_url: str | None = None, base: str | None = None,
                 assertion_lifetime: float = 300.0, jku: str | None = None) -> None:
        super().__init__(client_id, token_url=token_url, base=base, scope=scope)
        pem = _require_secret("fhir.private_key", private_key).reveal()
        if algorithm not in ("RS384", "ES384"):
            raise ConfigError("fhir.algorithm", f"must be RS384 or ES384, got {algorithm!r}")
        if not 0 < assertion_lifetime <= 300:
            raise ConfigError("fhir.assertion_lifetime", "must be in (0, 300] seconds")
        try:
            key: RSAKey | ECKey = (RSAKey.import_key(pem) if algorithm == "RS384"
                                   else ECKey.import_key(pem))
        except (JoseError, ValueError, TypeError) as exc:
            kind = "an RSA" if algorithm == "RS384" else "an EC P-384"
            raise ConfigError("fhir.private_key", f"{algorithm} needs {kind} private key in PEM "
                                                  f"({type(exc).__name__})") from None
        if not key.is_private:
            raise ConfigError("fhir.private_key", "is a public key; the private key is needed")
        if isinstance(key, ECKey) and key.curve_name != "P-384":
            raise ConfigError("fhir.private_key", f"ES384 needs a P-384 key, got {key.curve_name}")
        self._key = key
        self.algorithm = algorithm
        self.key_id = key_id or key.thumbprint()
        self.assertion_lifetime = assertion_lifetime
        self.jku = jku

    def client_assertion(self, token_url: str, *, now: float | None = None) -> str:
        """A freshly signed client-assertion JWT for ``token_url`` (unique ``jti``)."""
        issued = int(time.time() if now is None else now)
        header = {"alg": self.algorithm, "kid": self.key_id, "typ": "JWT"}
        if self.jku:
            header["jku"] = self.jku
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": token_url,
                  "exp": issued + int(self.assertion_lifetime), "iat": issued,
                  "jti": uuid.uuid4().hex}
        assertion = jwt.encode(header, claims, self._key, algorithms=[self.algorithm])
        register_secret(assertion, transient=True)  # a bearer credential until it expires
        return assertion

    def _token_request(self, token_url: str) -> httpx.Request:
        form = {"grant_type": "client_credentials", "scope": self.scope or "",
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": self.client_assertion(token_url)}
        return httpx.Request("POST", token_url, data=form, headers={"Accept": "application/json"})

    def __repr__(self) -> str:
        return (f"SmartBackendAuth(client_id={self.client_id!r}, key_id={self.key_id!r}, "
                f"algorithm={self.algorithm!r}, scope={self.scope!r}, token_url={self.token_url!r}, "
                "private_key=Secret('********'))")


def auth_from_settings(settings: FhirSettings) -> httpx.Auth:
    """Build the auth flow ``settings.auth`` names.

    Parameters
    ----------
    settings : FhirSettings
        ``kit.toml``'s ``[fhir]`` section (secrets from the environment/files).

    Returns
    -------
    httpx.Auth

    Raises
    ------
    ConfigError
        A setting the chosen style needs is missing or wrong.
    """
    style = settings.auth
    scope = settings.scope or vendor_profile(settings.vendor).default_scope
    if style == "none":
        return NoAuth()
    if style == "bearer":
        if settings.token is None:
            raise ConfigError("fhir.token", "auth = 'bearer' needs KIT_FHIR_TOKEN or token_file")
        return BearerAuth(settings.token)
    if style == "basic":
        if not settings.username or settings.password is None:
            raise ConfigError("fhir.password", "auth = 'basic' needs username and KIT_FHIR_PASSWORD")
        return BasicAuth(settings.username, settings.password)
    if not settings.client_id:
        raise ConfigError("fhir.client_id", f"auth = {style!r} needs client_id")
    if style == "client_credentials":
        if settings.client_secret is None:
            raise ConfigError("fhir.client_secret", "auth = 'client_credentials' needs "
                              "KIT_FHIR_CLIENT_SECRET or client_secret_file")
        return ClientCredentialsAuth(settings.token_url, settings.client_id, settings.client_secret,
                                     scope, base=settings.base)
    if style == "smart":
        if settings.private_key is None:
            raise ConfigError("fhir.private_key",
                              "auth = 'smart' needs private_key_file or KIT_FHIR_PRIVATE_KEY")
        if settings.algorithm not in ("RS384", "ES384"):
            raise ConfigError("fhir.algorithm", f"must be RS384 or ES384, got {settings.algorithm!r}")
        return SmartBackendAuth(settings.client_id, settings.private_key, key_id=settings.key_id,
                                algorithm=settings.algorithm,  # type: ignore[arg-type]
                                scope=scope, token_url=settings.token_url, base=settings.base)
    raise ConfigError("fhir.auth", f"unknown auth style {style!r}")  # pragma: no cover
