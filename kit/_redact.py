"""Keep credentials out of error messages and log lines (pure: no sockets, no files).

A process-wide registry holds every secret value the kit knows: each
:class:`kit.config.Secret` registers its value when it is made, and the FHIR
auth flows register the access tokens they receive (they are Secrets too).
:func:`redact` replaces every registered value, and any ``Bearer <x>`` /
``Basic <x>`` credential or ``Authorization: <x>`` header value, by ``********``.

It is applied in two places, so that nothing else has to remember it:

* :class:`kit.errors.KitError` redacts its message, ``args`` and every attribute
  set on it (``issues``, ``text``, ``bundle``, ...) when they are set, and its
  ``str``/``repr`` again when shown (a secret registered later is still hidden);
* :func:`install_logging` (run when :mod:`kit.errors` is imported) redacts every
  log record of the ``kit`` logger tree: a :class:`RedactingFilter` on the
  ``kit`` logger and, because a logger's filters do not see records that
  propagate from its children (``kit.fhir.client``...), a log-record factory
  that redacts records whose logger is ``kit`` or below.

Values shorter than :data:`MIN_LENGTH` characters are not registered: masking
every occurrence of a short word (a test's ``"wrong"`` password) would garble
unrelated messages, paths and setting names, and a credential that short is no
secret; the Bearer/Basic/Authorization shapes are masked whatever their length.
Configured secrets stay registered; of the transient ones (access tokens, signed
assertions) the newest :data:`MAX_SECRETS` are kept (old ones have expired).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "MASK",
    "MAX_SECRETS",
    "MIN_LENGTH",
    "RedactingFilter",
    "install_logging",
    "redact",
    "redact_value",
    "register_secret",
]

#: what a secret is replaced with
MASK = "********"
#: shortest value that is registered
MIN_LENGTH = 8
#: most values kept in the registry (the oldest drop out first)
MAX_SECRETS = 256

_lock = threading.Lock()
_kept: set[str] = set()  # configured secrets: kept for the life of the process
_recent: OrderedDict[str, None] = OrderedDict()  # access tokens, assertions: the newest MAX_SECRETS
_ordered: tuple[str, ...] | None = None  # every value, longest first (a secret containing another wins)

# credentials recognisable by their shape, whoever they belong to; linear-time patterns
_SHAPES = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+)[^\s\"',;)\]}]+"
    r"|(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)(?!(?:bearer|basic)\s)"
    r"(?:(?:token|digest|negotiate|ntlm|hawk|mac|jwt|dpop|aws4-hmac-sha256)\s+)?[^\s\"',;)\]}]+")


def register_secret(value: str, *, transient: bool = False) -> None:
    """Add a secret value (and its URL-encoded forms) to the registry.

    ``transient`` values (access tokens, signed assertions: they expire) are kept
    among the newest :data:`MAX_SECRETS`; the others for the life of the process.
    """
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    global _ordered
    forms = {value, quote(value, safe=""), quote_plus(value)}
    with _lock:
        for form in forms:
            if transient:
                _kept.discard(form)
                _recent[form] = None
                _recent.move_to_end(form)
            elif form not in _recent:
                _kept.add(form)
        while len(_recent) > MAX_SECRETS:
            _recent.popitem(last=False)
        _ordered = None


def _values() -> tuple[str, ...]:
    global _ordered
    with _lock:
        if _ordered is None:
            _ordered = tuple(sorted(_kept.union(_recent), key=len, reverse=True))
        return _ordered



def _shape(m: re.Match[str]) -> str:
    return (m.group(1) or m.group(2)) + MASK


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-shaped value masked."""
    if not text:
        return text
    for secret in _values():  # substring search per value: linear, no regex to build
        if secret in text:
            text = text.replace(secret, MASK)
    return _SHAPES.sub(_shape, text)


def redact_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with :func:`redact` applied to every string in it (dicts, lists, tuples)."""
    if isinstance(value, str):
        return redact(value)
    if _depth > 64:  # deeper nesting is not text a person reads
        return value
    if isinstance(value, dict):
        return {redact_value(k, _depth + 1): redact_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v, _depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v, _depth + 1) for v in value)
    return value


def _redact_record(record: logging.LogRecord) -> None:
    if getattr(record, "_kit_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: left to logging's own error report
        return
    record.msg = redact(message)
    record.args = None
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    setattr(record, "_kit_redacted", True)  # noqa: B010


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in each record (it never drops a record).

    Installed on the ``kit`` logger by :func:`install_logging`; put it on your own
    handlers too if they receive records from libraries that may print credentials.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


_installed = False


def install_logging() -> None:
    """Redact every record of the ``kit`` logger tree (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    logging.getLogger("kit").addFilter(RedactingFilter())
    previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        name = record.name
        if name == "kit" or name.startswith("kit."):
            _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)
