"""The bounds a caller sets on a result (``limit``, bytes) checked, and, when a ``limit`` cut a query's
result, a :class:`~kit.errors.TruncatedResultWarning` and a log line."""

from __future__ import annotations

import logging
import warnings

from kit.errors import InvalidInputError, TruncatedResultWarning

__all__ = ["check_bytes", "check_limit", "warn_truncated"]

log = logging.getLogger("kit")


def check_limit(limit: int | None) -> int | None:
    """``limit`` checked: None (no limit) or an integer >= 0."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInputError(f"limit must be an integer >= 0, got {limit!r}")
    return limit


def check_bytes(name: str, value: int) -> int:
    """``value`` checked as a bound in bytes: an integer > 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be an integer > 0 (bytes), got {value!r}")
    return value


def warn_truncated(what: str, limit: int, more: str = "more matches") -> None:
    """Warn (and log) that ``what`` stopped at ``limit`` results while the peer had ``more``."""
    message = (f"{what}: stopped at limit={limit}; the peer has {more} "
               "(narrow the query or raise the limit for all of them)")
    log.warning("%s", message)
    warnings.warn(message, TruncatedResultWarning, stacklevel=3)
