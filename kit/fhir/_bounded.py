"""Read an httpx response body into memory within a byte limit and a deadline (no I/O of its own).

httpx's ``Response.read()`` has no bound: a gzip bomb of a few MB on the wire fills the memory.
:func:`read_bounded` reads the decompressed body piece by piece and stops at the limit; the
FHIR client (:mod:`kit.fhir.client`) and the SMART token flow (:mod:`kit.fhir.auth`) use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from kit.errors import KitError

__all__ = ["read_bounded"]


def read_bounded(response: httpx.Response, limit: int, too_large: Callable[[], KitError], *,
                 deadline: float | None = None, too_slow: Callable[[int], KitError] | None = None) -> bytes:
    """The decompressed body of ``response``, at most ``limit`` bytes, complete by ``deadline``
    (``time.monotonic()``); past either, the response is closed and ``too_large()`` or
    ``too_slow(bytes so far)`` raised. Afterwards ``.content``, ``.text`` and ``.json()`` work as
    after ``response.read()`` (the body is stored where httpx stores it)."""
    if response.is_stream_consumed:
        return response.read()
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise too_large()
            if deadline is not None and too_slow is not None and time.monotonic() > deadline:
                raise too_slow(size)
            chunks.append(chunk)
    except BaseException:
        response.close()
        raise
    response._content = b"".join(chunks)  # what httpx's own read() sets
    return response._content
