"""A FHIR R4 REST client on httpx: read, search with paging, write, batch/transaction.

:class:`FhirClient` speaks ``application/fhir+json`` to one server base URL.
Resources are plain JSON dicts; :meth:`FhirClient.search_frame` turns search
results into a polars DataFrame through :func:`kit.fhir.frames.to_frame`, and
``validate=True`` checks resources with ``fhir.resources.R4B`` (through
:func:`kit.fhir.resources.validate`) before they are sent.

Failures are typed (:mod:`kit.errors`):

================================================  =======================================
what happened                                      raised
================================================  =======================================
connection refused, DNS failure                    :class:`~kit.errors.PeerUnreachableError`
no answer within the timeout                       :class:`~kit.errors.PeerTimeoutError`
an answer not complete within ``total_timeout``   :class:`~kit.errors.PeerTimeoutError`
a body over ``max_response_bytes`` (decompressed)  :class:`ResponseTooLargeError`
a malformed URL, too many redirects                :class:`~kit.errors.FhirError`
connection dropped mid-exchange                    :class:`~kit.errors.PeerDisconnectedError`
TLS handshake / certificate                        :class:`~kit.errors.TLSError`
401 (after one token renewal)                      :class:`~kit.errors.AuthError`
4xx/5xx with an OperationOutcome body              :class:`~kit.errors.OperationOutcomeError`
4xx/5xx without one                                :class:`~kit.errors.FhirError`
2xx that is not JSON                               :class:`~kit.errors.FhirError`
JSON that is not a FHIR resource / wrong type      :class:`~kit.errors.FhirValidationError`
a ``next`` link that fails or loops                one of the above; never a silent partial
================================================  =======================================

Retries (:class:`RetryPolicy`): 429, 502, 503, 504 and connection failures are
retried with exponential backoff and jitter, waiting at least what
``Retry-After`` asks (seconds or an HTTP date), bounded by a number of attempts
and a total wait; then the last failure is raised. Only what retrying can fix is
retried: a name that does not resolve is raised at once, and a refused or
timed-out connection is tried ``max_connect_attempts`` times (default 2, so a dead
port fails in well under 2 s). Requests that change data and
are not idempotent (POST create, batch, transaction) are retried only when the
server cannot have processed them: connection refused, 429 and 503.

Credentials go only to the server's own origin (scheme, host and port of
``base``) and to the origins the vendor profile (``file_hosts``) or
``trusted_origins`` name: a request to any other URL (a Bulk Data status or file
URL, a redirect target) is sent without the auth flow and without the credential
headers (``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``X-Api-Key``,
``Api-Key``, ``Ocp-Apim-Subscription-Key``, ``X-Auth-Token``), even when they
were set by hand in ``headers``. Redirects are followed by the client itself (at
most ``MAX_REDIRECTS``), so this holds for every hop.

Every body read into memory is bounded: at most ``max_response_bytes`` after
decompression (default 256 MiB). Every request ends within ``total_timeout`` (default
10 times ``timeout``): its connect, its upload, the status line and headers (through
:mod:`kit._http_deadline`: httpx bounds each read, not a request) and a body read into
memory; one past it is not retried. A body streamed to the caller (Bulk Data files) is
bounded per read by ``timeout`` only.

Hand-written here: retries and the error mapping; the paging and Bundle reading
in :mod:`kit.fhir._paging` (no maintained Python FHIR client does these with
httpx; fhirpy is async-first and untyped on errors).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
import orjson

from kit._http_deadline import deadline_transport, request_deadline
from kit.config import FhirSettings, Settings
from kit.errors import (
    AuthError,
    FhirError,
    FhirValidationError,
    InvalidInputError,
    KitError,
    OperationOutcomeError,
    PeerDisconnectedError,
    PeerTimeoutError,
    PeerUnreachableError,
    TLSError,
)
from kit.fhir._audit import audited_send
from kit.fhir._bounded import read_bounded
from kit.fhir._paging import MAX_PAGES, MAX_RESOURCES, IncompleteResultError, Params, SearchEntry, SearchMode
from kit.fhir._paging import check_id as _check_id
from kit.fhir._paging import check_type as _check_type
from kit.fhir._paging import normalise_params as _normalise_params
from kit.fhir._search import Searching, check_bound
from kit.fhir.policy import NO_RETRY, OriginRule, RetryPolicy, origin, parse_retry_after
from kit.fhir.resources import outcome_issues, outcome_message
from kit.fhir.resources import validate as validate_resource
from kit.fhir.transactions import batch_in_chunks, size_hint, transaction_in_chunks
from kit.fhir.vendors import VendorProfile, vendor_profile

__all__ = [
    "FHIR_JSON",
    "NO_RETRY",
    "BatchError",
    "FhirClient",
    "IncompleteResultError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "SearchEntry",
    "SearchMode",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

#: The FHIR JSON media type.
FHIR_JSON = "application/fhir+json"
#: Default ``max_response_bytes``: the largest body (decompressed) one request reads into memory.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
#: Default ``total_timeout`` as a multiple of ``timeout``.
TOTAL_TIMEOUT_FACTOR = 10
#: A read, write or connect timing out this close to ``total_timeout``'s deadline was cut by it.
DEADLINE_SLACK = 0.05
#: Redirects one request follows at most.
MAX_REDIRECTS = 10


class ResponseTooLargeError(FhirError):
    """A response body, decompressed, is larger than the client's ``max_response_bytes``."""


class BatchError(OperationOutcomeError):
    """Entries of a batch failed (the others were applied). ``bundle`` is the batch-response."""

    def __init__(self, message: str, *, issues: Sequence[dict[str, Any]], bundle: dict[str, Any],
                 peer: str | None = None) -> None:
        self.bundle = bundle
        super().__init__(message, issues=issues, status_code=None, peer=peer)


def _etag(version: str | int) -> str:
    text = str(version)
    return text if text.startswith(('W/"', '"')) else f'W/"{text}"'


class FhirClient(Searching):
    """A client for one FHIR R4 server.

    Parameters
    ----------
    base : str
        The service base URL, e.g. ``"https://fhir.hospital.org/R4"``.
    auth : httpx.Auth, optional
        From :mod:`kit.fhir.auth`; default no authentication.
    timeout : float
        Seconds for connect, read and write of each request.
    vendor : str
        A :mod:`kit.fhir.vendors` profile: extra headers, page-size cap, checks.
    retries : RetryPolicy
        Retry policy for busy servers and failed connections.
    headers : Mapping[str, str], optional
        Extra headers for every request (credential headers such as ``X-Api-Key``
        only to the trusted origins).
    rewrite_next_links : bool
        Rewrite the scheme/host of ``next`` links onto ``base`` (for servers behind
        a proxy that announce their internal address). Otherwise a ``next`` link
        to another origin is an error.
    verify : bool or str or ssl.SSLContext
        TLS verification (a CA bundle path or a context).
    transport : httpx.BaseTransport, optional
        Custom transport (tests of faults no real server produces).
    trusted_origins : sequence of str
        More origins (``"https://files.hospital.org"``, ``"https://*.hospital.org"``)
        that may receive the credentials, besides ``base``'s own and the vendor
        profile's ``file_hosts``.
    max_response_bytes : int
        The largest response body read into memory, counted after decompression
        (default ``DEFAULT_MAX_RESPONSE_BYTES``, 256 MiB; a gzip bomb of a few MB
        on the wire is stopped there). A larger body raises
        :class:`ResponseTooLargeError`. Bulk Data files are streamed to disk and
        not limited by it.
    total_timeout : float, optional
        Seconds one attempt of a request may take from sending it to the last byte
        of its body (default ``TOTAL_TIMEOUT_FACTOR`` times ``timeout``: 300 s with
        the default ``timeout``). ``timeout`` bounds each wait for the network;
        this bounds a body that keeps coming too slowly. It is checked as the body
        arrives and raises :class:`~kit.errors.PeerTimeoutError` (not retried).
        Streamed responses (Bulk Data downloads) are not bounded by it.
    max_pages, max_resources : int
        Pages and Bundle entries one search reads at most (default
        :data:`~kit.fhir._paging.MAX_PAGES`, 100,000, and
        :data:`~kit.fhir._paging.MAX_RESOURCES`, 10,000,000): a server that pages
        without end raises :class:`~kit.fhir._paging.PagingLimitError` there. Raise
        them for a larger export by search; a search's ``limit`` stops it sooner.

    Raises
    ------
    InvalidInputError
        ``base`` is not an http(s) URL, or ``timeout``, ``total_timeout``,
        ``max_response_bytes``, ``max_pages`` or ``max_resources`` is not positive.

    Examples
    --------
    >>> with FhirClient("http://127.0.0.1:8080/fhir/R4") as fhir:  # doctest: +SKIP
    ...     patients = fhir.search_frame("Patient", birthdate="ge1950-01-01")
    """

    def __init__(self, base: str, *, auth: httpx.Auth | None = None, timeout: float = 30.0,
                 vendor: str = "generic", retries: RetryPolicy | None = None,
                 headers: Mapping[str, str] | None = None, rewrite_next_links: bool = False,
                 verify: bool | str | ssl.SSLContext = True,
                 transport: httpx.BaseTransport | None = None,
                 trusted_origins: Sequence[str] = (),
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 total_timeout: float | None = None, max_pages: int = MAX_PAGES,
                 max_resources: int = MAX_RESOURCES) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidInputError(f"FHIR base must be an http(s) URL, got {base!r}")
        if not timeout > 0:
            raise InvalidInputError("timeout must be positive")
        if total_timeout is None:
            total_timeout = TOTAL_TIMEOUT_FACTOR * timeout
        if not total_timeout > 0:
            raise InvalidInputError("total_timeout must be positive")
        self.max_response_bytes = check_bound("max_response_bytes", max_response_bytes)
        self.max_pages = check_bound("max_pages", max_pages)
        self.max_resources = check_bound("max_resources", max_resources)
        self.total_timeout = float(total_timeout)
        self.base = base.rstrip("/")
        self.profile: VendorProfile = vendor_profile(vendor)
        self.retries = retries if retries is not None else RetryPolicy()
        self.rewrite_next_links = rewrite_next_links
        self.timeout = timeout
        self._trusted = OriginRule([self.base, *self.profile.file_hosts, *trusted_origins])
        bind = getattr(auth, "bind", None)
        if callable(bind):
            bind(self.base)
        self.auth = auth
        from importlib.metadata import PackageNotFoundError, version

        try:
            agent = f"kit/{version('kit')}"
        except PackageNotFoundError:  # pragma: no cover
            agent = "kit"
        all_headers = {"Accept": FHIR_JSON, "User-Agent": agent,
                       **self.profile.headers(getattr(auth, "client_id", None)), **(headers or {})}
        self._http = httpx.Client(auth=auth, timeout=httpx.Timeout(timeout), headers=all_headers,
                                  follow_redirects=False, verify=verify,
                                  transport=deadline_transport(verify) if transport is None else transport)

    # -- construction / lifetime -------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings | FhirSettings, **overrides: Any) -> FhirClient:
        """A client for ``settings.fhir`` (base, vendor, timeout, auth); keywords override."""
        from kit.fhir.auth import auth_from_settings

        fs = settings.fhir if isinstance(settings, Settings) else settings
        fs = dataclasses.replace(fs, base=overrides.pop("base", fs.base))
        kwargs: dict[str, Any] = {"auth": auth_from_settings(fs), "timeout": fs.timeout,
                                  "vendor": fs.vendor, "trusted_origins": fs.trusted_origins, **overrides}
        return cls(fs.base, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirClient({self.base!r}, vendor={self.profile.name!r}, auth={self.auth!r})"

    # -- the HTTP core ---------------------------------------------------------------------------

    def url(self, *parts: str) -> str:
        """``base`` joined with path parts."""
        return "/".join([self.base, *(p.strip("/") for p in parts if p)])

    def trusts(self, url: str) -> bool:
        """Whether ``url`` is on an origin that may receive the credentials.

        Those are ``base``'s own origin (scheme, host and port), the vendor
        profile's ``file_hosts`` and ``trusted_origins``.
        """
        return self._trusted.allows(url)

    @audited_send
    def send(self, method: str, url: str, *, params: Sequence[tuple[str, str]] | None = None,
             content: bytes | None = None, headers: Mapping[str, str] | None = None,
             idempotent: bool | None = None, stream: bool = False, authenticate: bool = True,
             check: bool = True) -> httpx.Response:
        """Send one request with retries; return the response (errors raised when ``check``).

        Parameters
        ----------
        method, url : str
            The HTTP method and the absolute URL.
        params, content, headers : optional
            Query parameters (pairs), body (bytes) and more headers of this request.
        idempotent : bool, optional
            Allow retries after failures the server may have processed (default:
            true for GET/HEAD/PUT/DELETE/OPTIONS).
        stream : bool
            Leave the body unread (the caller reads and closes the response);
            ``max_response_bytes`` and ``total_timeout`` do not apply to it.
        authenticate : bool
            ``False`` sends no credentials (pre-signed download URLs); neither does a
            ``url`` (or a redirect target) the client does not :meth:`trust <trusts>`.
        check : bool
            Raise the typed error for a 4xx/5xx answer.

        Returns
        -------
        httpx.Response
            Its body read (unless ``stream``); redirects followed (at most
            ``MAX_REDIRECTS``), without credentials to an origin not trusted.

        Raises
        ------
        ResponseTooLargeError
            The body, decompressed, is larger than ``max_response_bytes``.
        PeerTimeoutError
            No answer within ``timeout``, or the body not complete within ``total_timeout``.
        FhirError
            The URL is malformed, too many redirects, or the answer is an error
            (see the module's table for the others).
        """
        method = method.upper()
        if authenticate and not self.trusts(url):
            log.debug("%s is not on a trusted origin: sending it without credentials", origin(url))
            authenticate = False
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
        policy = self.retries
        waited = 0.0
        attempt = 0
        try:
            target = urlsplit(url).path
        except ValueError as exc:
            raise FhirError(f"{method} {url[:200]!r}: not a valid URL: {exc}", peer=self.base) from None
        while True:
            attempt += 1
            error: KitError | None = None
            retry_after: float | None = None
            response: httpx.Response | None = None
            deadline = time.monotonic() + self.total_timeout
            try:
                try:
                    request = self._http.build_request(method, url, params=list(params or ()) or None,
                                                       content=content, headers=headers)
                except httpx.InvalidURL as exc:
                    raise FhirError(f"{method} {target!r}: not a valid URL: {exc}", peer=self.base) from None
                try:
                    with request_deadline(deadline):  # the status line and headers too (kit._http_deadline)
                        response = self._send_following(request, authenticate, target)
                        if not stream:
                            self._read_body(response, deadline)
                except httpx.TimeoutException as exc:
                    if time.monotonic() < deadline - DEADLINE_SLACK:
                        raise  # one read, write or connect's timeout: below
                    raise PeerTimeoutError(f"{method} {target} was not answered within total_timeout="
                                           f"{self.total_timeout} s (a server this slow is not "
                                           "asked again)", peer=self.base) from exc
            except httpx.ConnectTimeout as exc:
                error = PeerTimeoutError(f"connecting for {method} {target} timed out after "
                                         f"{self.timeout} s", peer=self.base)
                error.__cause__ = exc
                retryable = attempt < policy.max_connect_attempts
            except httpx.ConnectError as exc:
                error = self._connect_error(exc, method, target)
                retryable = (not isinstance(error, TLSError) and not _name_unresolved(exc)
                             and attempt < policy.max_connect_attempts)
            except httpx.TimeoutException as exc:
                error = PeerTimeoutError(f"no answer to {method} {target} within {self.timeout} s",
                                         peer=self.base)
                error.__cause__ = exc
                retryable = idempotent
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
                if _bad_location(exc):  # httpx builds the redirect before it is followed
                    error = FhirError(f"{method} {target} answered a redirect to a malformed URL: {exc}",
                                      peer=self.base)
                    retryable = False
                else:
                    error = PeerDisconnectedError(f"connection lost during {method} {target}: {exc}",
                                                  peer=self.base)
                    retryable = idempotent
                error.__cause__ = exc
            except httpx.HTTPError as exc:
                error = FhirError(f"{method} {target} failed: {type(exc).__name__}: {exc}", peer=self.base)
                error.__cause__ = exc
                retryable = False
            except httpx.InvalidURL as exc:  # a malformed redirect target
                error = FhirError(f"{method} {target} failed: not a valid URL: {exc}", peer=self.base)
                error.__cause__ = exc
                retryable = False
            else:
                status = response.status_code
                retryable = status in policy.statuses and (idempotent or status in (429, 503))
                if not retryable:
                    if check:
                        self.raise_for_status(response)
                    return response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = policy.delay(attempt, retry_after)
            out_of_budget = attempt >= policy.max_attempts or waited + delay > policy.max_total_wait
            if not retryable or out_of_budget:
                if error is not None:
                    if attempt > 1:
                        error.args = (f"{error.args[0]} (gave up after {attempt} attempts)",)
                    raise error
                assert response is not None
                if not check:
                    return response
                self.raise_for_status(response, note=f"gave up after {attempt} attempts, "
                                                     f"{waited:.1f} s waited")
            if response is not None:
                response.close()
            connect_failure = isinstance(error, PeerUnreachableError) or (
                isinstance(error, PeerTimeoutError) and isinstance(error.__cause__, httpx.ConnectTimeout))
            most = min(policy.max_attempts, policy.max_connect_attempts) if connect_failure \
                else policy.max_attempts
            log.warning("FHIR %s %s: %s; retry %d/%d in %.1f s", method, target,
                        f"HTTP {response.status_code}" if response is not None else type(error).__name__,
                        attempt + 1, most, delay)
            time.sleep(delay)
            waited += delay

    def _send_following(self, request: httpx.Request, authenticate: bool, target: str) -> httpx.Response:
        """Send ``request`` (body unread), following redirects; to an untrusted origin without the
        auth flow and any of ``_CREDENTIAL_HEADERS`` (httpx would strip only ``Authorization``)."""
        hops = 0
        while True:
            if authenticate:
                response = self._http.send(request, stream=True)
            else:
                for name in _CREDENTIAL_HEADERS:
                    request.headers.pop(name, None)
                response = self._http.send(request, stream=True, auth=None)
            following = response.next_request
            if following is None:
                return response
            response.close()
            hops += 1
            if hops > MAX_REDIRECTS:
                raise FhirError(f"{request.method} {target}: more than {MAX_REDIRECTS} redirects "
                                f"(last to {origin(str(following.url))})", status_code=response.status_code,
                                peer=self.base)
            if authenticate and not self.trusts(str(following.url)):
                log.debug("redirect to %s, not a trusted origin: followed without credentials",
                          origin(str(following.url)))
                authenticate = False
            request = following

    def _read_body(self, response: httpx.Response, deadline: float | None = None) -> bytes:
        """Read the decompressed body, at most ``max_response_bytes``, before ``deadline`` (else close
        it and raise); httpx's ``read()`` has no bound, a small gzip bomb would fill the memory."""
        where = f"{response.request.method} {urlsplit(str(response.request.url)).path}"
        limit = self.max_response_bytes
        return read_bounded(
            response, limit,
            lambda: ResponseTooLargeError(f"the answer to {where} is larger than max_response_bytes={limit} "
                                          "(decompressed); stopped reading", status_code=response.status_code,
                                          peer=self.base),
            deadline=time.monotonic() + self.total_timeout if deadline is None else deadline,
            too_slow=lambda size: PeerTimeoutError(
                f"the answer to {where} was not complete within total_timeout={self.total_timeout} s "
                f"({size} bytes came)", peer=self.base))

    def _connect_error(self, exc: httpx.ConnectError, method: str, target: str) -> KitError:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLError):
                err: KitError = TLSError(f"TLS failed for {method} {target}: {cause}", peer=self.base)
                err.__cause__ = exc
                return err
            cause = cause.__cause__ or cause.__context__
        err = PeerUnreachableError(f"cannot connect for {method} {target}: {exc}", peer=self.base)
        err.__cause__ = exc
        return err

    def raise_for_status(self, response: httpx.Response, *, note: str = "") -> None:
        """Raise the typed error for a 4xx/5xx ``response`` (nothing for success)."""
        status = response.status_code
        if status < 400:
            return
        self._read_body(response)
        where = f"{response.request.method} {urlsplit(str(response.request.url)).path}"
        suffix = f" ({note})" if note else ""
        body = _loads(response.content)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            message = f"HTTP {status} for {where}: {outcome_message(body)}{suffix}"
            if status == 401:
                raise AuthError(message, status_code=status, peer=self.base)
            raise OperationOutcomeError(message, issues=outcome_issues(body), status_code=status,
                                        peer=self.base)
        snippet = " ".join(response.text[:200].split())
        message = f"HTTP {status} {response.reason_phrase} for {where}" + (f": {snippet}" if snippet else "")
        if status == 401:
            raise AuthError(message + suffix, status_code=status, peer=self.base)
        raise FhirError(message + suffix, status_code=status, peer=self.base)

    def resource_of(self, response: httpx.Response, resource_type: str | None = None) -> dict[str, Any]:
        """The FHIR resource in a response body, checked to be JSON with a ``resourceType``."""
        where = str(response.request.url)
        content = self._read_body(response)
        if not content.strip():
            raise FhirError(f"HTTP {response.status_code} from {where} has an empty body",
                            status_code=response.status_code, peer=self.base)
        body = _loads(content)
        if body is _NOT_JSON:
            kind = response.headers.get("Content-Type", "no Content-Type")
            raise FhirError(f"{where} answered {kind}, not FHIR JSON: "
                            f"{' '.join(response.text[:120].split())!r}",
                            status_code=response.status_code, peer=self.base)
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise FhirValidationError("JSON without a resourceType is not a FHIR resource", source=where)
        if resource_type is not None and body["resourceType"] != resource_type:
            raise FhirValidationError(f"expected a {resource_type}, got a {body['resourceType']}",
                                      source=where)
        return body

    # -- read ---------------------------------------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement (``GET [base]/metadata``)."""
        return self.resource_of(self.send("GET", self.url("metadata")), "CapabilityStatement")

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """``GET [base]/[type]/[id]``: the current version of a resource."""
        url = self.url(_check_type(resource_type), _check_id(resource_id))
        return self.resource_of(self.send("GET", url), resource_type)

    def vread(self, resource_type: str, resource_id: str, version: str | int) -> dict[str, Any]:
        """``GET [base]/[type]/[id]/_history/[vid]``: one version of a resource."""
        url = self.url(_check_type(resource_type), _check_id(resource_id), "_history", str(version))
        return self.resource_of(self.send("GET", url), resource_type)

    # -- write --------------------------------------------------------------------------------------

    def _body(self, resource: Mapping[str, Any], validate: bool) -> tuple[str, bytes]:
        if not isinstance(resource, Mapping):
            raise FhirValidationError("a resource must be a JSON object (dict)")
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            raise FhirValidationError("resource has no resourceType")
        _check_type(rtype)
        if validate:
            validate_resource(resource)
        return rtype, orjson.dumps(dict(resource))

    def _written(self, response: httpx.Response, resource_type: str) -> dict[str, Any]:
        """The resource a create/update answered with, reading Location if the body is empty."""
        content = self._read_body(response)
        if content.strip():
            body = self.resource_of(response)
            if body.get("resourceType") == resource_type:
                return body
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        if not location:
            raise FhirError(f"HTTP {response.status_code} for a {resource_type} write has neither "
                            "the resource nor a Location", status_code=response.status_code,
                            peer=self.base)
        try:
            url = urljoin(self.base + "/", location)
        except ValueError:
            url = ""
        if not url or origin(url) is None:
            raise FhirError(f"HTTP {response.status_code} for a {resource_type} write answered the "
                            f"Location {location[:200]!r}, not a URL", status_code=response.status_code,
                            peer=self.base)
        return self.resource_of(self.send("GET", url), resource_type)

    def create(self, resource: Mapping[str, Any], *,
               if_none_exist: str | Params | None = None, validate: bool = False) -> dict[str, Any]:
        """``POST [base]/[type]``; return the stored resource (with its new id and meta).

        Parameters
        ----------
        resource : mapping
            The resource; an ``id`` is ignored by the server.
        if_none_exist : str or mapping, optional
            Conditional create: a search (``"identifier=http://h.org/mrn|123"`` or
            ``{"identifier": ...}``); if one resource matches, it is returned and
            nothing is created; several matches raise an error (412).
        validate : bool
            Validate with ``fhir.resources.R4B`` before sending.
        """
        rtype, body = self._body(resource, validate)
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist is not None:
            query = if_none_exist if isinstance(if_none_exist, str) else urlencode(
                _normalise_params(if_none_exist, {}))
            if not query:
                raise InvalidInputError("if_none_exist is empty")
            headers["If-None-Exist"] = query
        response = self.send("POST", self.url(rtype), content=body, headers=headers,
                             idempotent=if_none_exist is not None)
        return self._written(response, rtype)

    def update(self, resource: Mapping[str, Any], *, if_match: str | int | None = None,
               validate: bool = False) -> dict[str, Any]:
        """``PUT [base]/[type]/[id]``; return the stored resource.

        ``if_match`` (a version id or ETag) makes it a version-aware update: a
        concurrent change answers 412, raised as :class:`~kit.errors.OperationOutcomeError`
        or :class:`~kit.errors.FhirError` with ``status_code`` 412.
        """
        rtype, body = self._body(resource, validate)
        rid = resource.get("id")
        if not isinstance(rid, str):
            raise InvalidInputError("update needs a resource with an id")
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = _etag(if_match)
        response = self.send("PUT", self.url(rtype, _check_id(rid)), content=body, headers=headers)
        return self._written(response, rtype)

    def delete(self, resource_type: str, resource_id: str) -> None:
        """``DELETE [base]/[type]/[id]`` (a 404 raises)."""
        self.send("DELETE", self.url(_check_type(resource_type), _check_id(resource_id)))

    def batch(self, entries: Iterable[Mapping[str, Any]], *, check: bool = True,
              chunk: int | None = None) -> dict[str, Any]:
        """POST a ``batch`` Bundle of ``entries`` (each with ``request``); return the batch-response.

        Entries succeed or fail one by one. With ``check`` (default) any failed
        entry raises :class:`BatchError` (``.bundle`` holds the whole response).
        ``chunk``: batches of at most that many entries, answered as one.
        """
        items = [dict(e) for e in entries]
        self._check_entries(items)
        if chunk is not None and len(items) > chunk:
            return batch_in_chunks(self, items, chunk, check=check)
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": items}
        try:
            response = self.send("POST", self.base, content=orjson.dumps(bundle),
                                 headers={"Content-Type": FHIR_JSON}, idempotent=False)
        except FhirError as exc:
            size_hint(exc, len(items), "batch")
            raise
        result = self.resource_of(response, "Bundle")
        if result.get("type") != "batch-response":
            raise FhirValidationError(f"expected a batch-response, got {result.get('type')!r}",
                                      source=self.base)
        if check:
            self._raise_for_entries(result)
        return result

    def transaction(self, bundle: Mapping[str, Any] | Iterable[Mapping[str, Any]], *,
                    validate: bool = False, chunk: int | None = None) -> dict[str, Any]:
        """POST a ``transaction`` Bundle (or its entries); all or nothing. Return the response Bundle.

        ``chunk``: for servers that cap a transaction's entries, post transactions of
        at most that many entries, ``urn:uuid`` references resolved across them
        (:func:`kit.fhir.transactions.transaction_in_chunks`; each chunk is all or
        nothing, the whole is not). A refusal for size says what to try.
        """
        if isinstance(bundle, Mapping):
            if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
                raise FhirValidationError("transaction needs a Bundle of type 'transaction'")
            payload = dict(bundle)
        else:
            payload = {"resourceType": "Bundle", "type": "transaction",
                       "entry": [dict(e) for e in bundle]}
        entries = payload.get("entry") or []
        self._check_entries(entries)
        if validate:
            validate_resource(payload)
        if chunk is not None and len(entries) > chunk:
            return transaction_in_chunks(self, entries, chunk)
        try:
            response = self.send("POST", self.base, content=orjson.dumps(payload),
                                 headers={"Content-Type": FHIR_JSON}, idempotent=False)
        except FhirError as exc:
            size_hint(exc, len(entries))
            raise
        result = self.resource_of(response, "Bundle")
        if result.get("type") != "transaction-response":
            raise FhirValidationError(f"expected a transaction-response, got {result.get('type')!r}",
                                      source=self.base)
        return result

    @staticmethod
    def _check_entries(entries: Sequence[Mapping[str, Any]]) -> None:
        for n, e in enumerate(entries):
            req = e.get("request")
            if not isinstance(req, Mapping) or not req.get("method") or not req.get("url"):
                raise FhirValidationError(f"Bundle entry {n} needs request.method and request.url",
                                          issues=[{"severity": "error", "code": "required",
                                                   "diagnostics": "request.method and request.url",
                                                   "expression": [f"Bundle.entry[{n}].request"]}])

    def _raise_for_entries(self, result: dict[str, Any]) -> None:
        entries = result.get("entry") or []
        if not isinstance(entries, list):
            raise FhirValidationError(f"the batch-response's entry is a {type(entries).__name__}, not a list",
                                      source=self.base)
        issues: list[dict[str, Any]] = []
        for n, e in enumerate(entries):
            response = e.get("response") if isinstance(e, dict) else None
            response = response if isinstance(response, dict) else {}  # malformed: a failed entry
            status = str(response.get("status", ""))
            if status[:1] in ("2", "3"):
                continue
            outcome = response.get("outcome") or {}
            found = outcome_issues(outcome) or [{"severity": "error", "code": "exception",
                                                 "diagnostics": f"status {status or 'missing'}"}]
            issues.extend({**i, "expression": [f"Bundle.entry[{n}]"]} for i in found)
        if issues:
            raise BatchError(f"{len({i['expression'][0] for i in issues})} batch entries failed: "
                             f"{issues[0].get('diagnostics', '')}", issues=issues, bundle=result,
                             peer=self.base)


_NOT_JSON: Any = object()
#: headers never sent to an origin the client does not trust (nor on a redirect to one)
_CREDENTIAL_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "X-Api-Key", "Api-Key",
                       "Ocp-Apim-Subscription-Key", "X-Auth-Token")


def _name_unresolved(exc: BaseException) -> bool:
    """Whether a connect error is a DNS failure (retrying does not fix it)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _bad_location(exc: httpx.HTTPError) -> bool:
    """Whether httpx refused a redirect's ``Location`` (raised as a protocol error)."""
    return isinstance(exc, httpx.RemoteProtocolError) and str(exc).startswith("Invalid URL in location")


def _loads(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return _NOT_JSON
