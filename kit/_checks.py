"""Checks of the values a user hands the kit: ports, AE titles, timeouts, URLs, UIDs (pure).

One definition used by the settings (:mod:`kit.config`, which names the key)
and by the command line (:mod:`kit.cli.common`, which names the option). Each
check returns the normalised value or raises :class:`ValueError` with a
one-line reason; the callers turn that into their own error.

Written by hand: these are a handful of rules from the standards (PS3.5 for AE
titles and UIDs, RFC 3986 via :mod:`urllib.parse` for URLs).
"""

from __future__ import annotations

import math
import re
from urllib.parse import urlsplit

__all__ = [
    "ae_title",
    "dicom_uid",
    "dicom_url",
    "host_name",
    "http_url",
    "mllp_url",
    "port",
    "positive_int",
    "positive_seconds",
]

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def port(value: object, *, ephemeral: bool = False) -> int:
    """A TCP port, 1-65535 (0 too when ``ephemeral``: "pick a free one")."""
    text = str(value).strip()
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a port number") from None
    low = 0 if ephemeral else 1
    if not low <= number <= 65535:
        raise ValueError(f"port {number} is outside {low}-65535"
                         + ("" if ephemeral else " (0, an ephemeral port, is not allowed here)"))
    return number


def ae_title(value: object) -> str:
    """A DICOM AE title: 1-16 characters of printable ASCII, no backslash, not only spaces."""
    text = str(value)
    stripped = text.strip()
    if not stripped:
        raise ValueError("an AE title must not be empty")
    if len(text) > 16:
        raise ValueError(f"AE title {text!r} is longer than 16 characters")
    bad = [c for c in text if c == "\\" or not 0x20 <= ord(c) < 0x7F]
    if bad:
        raise ValueError(f"AE title {text!r} contains {bad[0]!r} (printable ASCII without backslash only)")
    return stripped


def positive_seconds(value: object) -> float:
    """A duration in seconds: a finite number above 0."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{value!r} seconds: must be a positive number")
    return number


def positive_int(value: object) -> int:
    """A whole number above 0."""
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{number} must be positive")
    return number


def host_name(value: object) -> str:
    """A host name or address: not empty, no spaces or control characters."""
    text = str(value).strip()
    if not text:
        raise ValueError("a host must not be empty")
    if any(c.isspace() or ord(c) < 0x20 or c in "/@" for c in text):
        raise ValueError(f"{text!r} is not a host name or address")
    return text


def http_url(value: object) -> str:
    """An absolute http(s) URL with a host; returned without a trailing slash."""
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL (e.g. http://127.0.0.1:8080/fhir/R4)")
    return text.rstrip("/")


def dicom_uid(value: object) -> str:
    """A DICOM UID: up to 64 characters, dot-separated numbers without leading zeros."""
    text = str(value).strip().rstrip("\x00")
    if not text:
        raise ValueError("a UID must not be empty")
    if len(text) > 64:
        raise ValueError(f"UID {text[:20]}... is longer than 64 characters")
    if not _UID.match(text):
        raise ValueError(f"{text!r} is not a DICOM UID (digits and dots, e.g. 1.2.840.10008.1.1)")
    return text


def _netloc(text: str, scheme: str) -> tuple[str | None, str, int]:
    """``scheme://[user@]host:port`` split by hand: an AE title may hold any of ``[#?/@``."""
    prefix = f"{scheme}://"
    if not text.lower().startswith(prefix):
        raise ValueError(f"{text!r} is not a {prefix} address")
    user, at, hostport = text[len(prefix):].rpartition("@")
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket:
            raise ValueError(f"{text!r}: unclosed [ in the host")
        if after and not after.startswith(":"):
            raise ValueError(f"{text!r} is not a {prefix} address (host:port only)")
        colon, port_text = after[:1], after[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port_text = hostport, ""
    if any(c in hostport for c in "/?#"):
        raise ValueError(f"{text!r} is not a {prefix} address (host:port only)")
    if not colon or not port_text:
        raise ValueError(f"{text!r} has no port")
    return (user if at else None), host_name(host), port(port_text)


def dicom_url(value: object) -> tuple[str | None, str, int]:
    """``dicom://AET@host:port`` (as ``kit serve`` prints it) -> (called AE title or None, host, port)."""
    text = str(value).strip()
    aet, host, number = _netloc(text, "dicom")
    return (ae_title(aet) if aet is not None else None), host, number


def mllp_url(value: object) -> tuple[str, int]:
    """``mllp://host:port`` -> (host, port)."""
    text = str(value).strip()
    user, host, number = _netloc(text, "mllp")
    if user is not None:
        raise ValueError(f"{text!r}: an MLLP address has no user part")
    return host, number
