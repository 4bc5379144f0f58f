"""Request policies of the FHIR client (pure): retries, and which origins get the credentials.

:class:`RetryPolicy` says what is retried and how long (see :mod:`kit.fhir.client`);
:func:`parse_retry_after` reads ``Retry-After``. :func:`origin` and
:class:`OriginRule` decide whether a URL is on an origin that may receive the
client's credentials (scheme, host and port; a ``*.`` host prefix for any
subdomain). Hand-written: httpx has neither.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import math
import random
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from kit.errors import InvalidInputError

__all__ = ["MAX_RETRY_AFTER", "NO_RETRY", "OriginRule", "RetryPolicy", "origin", "parse_retry_after"]

#: Longest wait :func:`parse_retry_after` returns (a year, in seconds): a ``Retry-After`` further
#: out, however far (``Fri, 31 Dec 9999999999 ...``, ``1e400``), is read as this. The callers cap
#: their waits far lower (:attr:`RetryPolicy.max_total_wait`, a poll interval).
MAX_RETRY_AFTER: Final = 365 * 86_400.0


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Returns ``None`` for a missing or unreadable header (``nan`` too), 0 for a date in
    the past or a negative delay, and at most :data:`MAX_RETRY_AFTER`; never raises.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parts = email.utils.parsedate_tz(value)
            if parts is None:
                return None
            if parts[0] > dt.MAXYEAR:  # further out than datetime goes (and may overflow it)
                return MAX_RETRY_AFTER
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request the server could not serve right now.

    Attributes
    ----------
    max_attempts : int
        Attempts in all (1 = no retry).
    backoff : float
        First backoff delay in seconds; doubles every attempt.
    max_backoff : float
        Cap on one backoff delay.
    max_total_wait : float
        Cap on the sum of all waits; a ``Retry-After`` beyond what is left ends
        the retries at once.
    jitter : float
        Random spread of each backoff delay, as a fraction (0.25 = +-25 %).
    statuses : frozenset of int
        HTTP statuses that are retried.
    max_connect_attempts : int
        Attempts (within ``max_attempts``) for a connection that is refused or
        times out: a server that is down rarely comes back within seconds, so
        the default 2 keeps a dead port under 2 s. A name that does not
        resolve is never retried.

    Examples
    --------
    ``--retries N`` on the command line (N retries after the first attempt):

    >>> policy = RetryPolicy.with_retries(3)
    >>> (policy.max_attempts, policy.max_connect_attempts)
    (4, 4)
    """

    max_attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_total_wait: float = 120.0
    jitter: float = 0.25
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    max_connect_attempts: int = 2

    @classmethod
    def with_retries(cls, retries: int, **kwargs: Any) -> RetryPolicy:
        """A policy retrying everything retryable (connections too) ``retries`` times."""
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidInputError(f"retries must be an integer >= 0, got {retries!r}")
        return cls(max_attempts=retries + 1, max_connect_attempts=retries + 1, **kwargs)

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_connect_attempts < 1:
            raise InvalidInputError("RetryPolicy.max_attempts and max_connect_attempts must be >= 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_total_wait < 0:
            raise InvalidInputError("RetryPolicy delays must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise InvalidInputError("RetryPolicy.jitter must be within [0, 1]")
        object.__setattr__(self, "statuses", frozenset(self.statuses))

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        A ``retry_after`` from the server is honoured as a minimum.
        """
        base = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        wait = max(0.0, base * (1 + spread))
        return max(wait, retry_after) if retry_after is not None else wait


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _origin_pattern(text: str) -> tuple[str, str, int]:
    """A trusted origin: ``scheme://host[:port]``, the host may start with ``*.`` (any subdomain)."""
    wildcard = "://*." in text
    found = origin(text.replace("://*.", "://", 1) if wildcard else text)
    if found is None:
        raise InvalidInputError(f"a trusted origin must be an http(s) URL, got {text!r}")
    scheme, host, port = found
    return scheme, ("*." + host) if wildcard else host, port


def _matches(pattern: tuple[str, str, int], origin: tuple[str, str, int]) -> bool:
    if pattern[0] != origin[0] or pattern[2] != origin[2]:
        return False
    host = pattern[1]
    return origin[1].endswith(host[1:]) if host.startswith("*.") else origin[1] == host


class OriginRule:
    """The origins that may receive credentials: ``origins`` (``scheme://host[:port]``, ``*.`` allowed).

    Raises
    ------
    InvalidInputError
        An entry is not an http(s) origin.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self._patterns = [_origin_pattern(o) for o in origins]

    def allows(self, url: str) -> bool:
        """Whether ``url`` is on one of the origins."""
        where = origin(url)
        return where is not None and any(_matches(p, where) for p in self._patterns)
