"""DICOMweb media types and ``multipart/related`` bodies (PS3.18 8.6, 8.7): read bounded, write (pure).

- :func:`parse_media_type` and :func:`parse_accept` read ``Content-Type`` and
  ``Accept`` values (parameters such as ``type``, ``transfer-syntax``,
  ``boundary``, ``q``) with python-multipart's ``parse_options_header``.
- :class:`MultipartReader` reads a ``multipart/related`` body fed in chunks as
  it arrives, with python-multipart's streaming ``MultipartParser`` (it parses any
  multipart body, not only form data). Each part's bytes go to a sink the caller
  opens (a spool file on the server, a ``BytesIO`` in tests), so no part is ever
  held whole by the reader; the number of parts and the size of part headers are
  bounded, and a body that ends before its closing boundary is refused.
- :func:`part_head` and :func:`closing` write a ``multipart/related`` answer part
  by part, so a WADO-RS response streams files from disk.

Written by hand: only the splitting of an ``Accept`` value into media ranges
(quoted commas kept) and the bounds; no library offers multipart/related
writing as a stream of parts.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import IO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from kit.errors import DicomWebRequestError

__all__ = [
    "MAX_PARTS",
    "MediaType",
    "MultipartReader",
    "Part",
    "closing",
    "new_boundary",
    "parse_accept",
    "parse_media_type",
    "part_head",
]

#: Default bound on the parts of one request body.
MAX_PARTS = 10_000
_MAX_ACCEPT = 8192  # characters of an Accept value read at most


@dataclasses.dataclass(frozen=True)
class MediaType:
    """A media type with its parameters (names lower-cased), e.g. ``multipart/related; type=...``."""

    type: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def q(self) -> float:
        """The quality value (1.0 if absent or unreadable)."""
        try:
            return min(max(float(self.params.get("q", "1")), 0.0), 1.0)
        except ValueError:
            return 1.0

    def matches(self, wanted: str) -> bool:
        """Whether this media range covers ``wanted`` (``*/*`` and ``type/*`` wildcards)."""
        if self.type in ("*/*", "*", wanted):
            return True
        major, _, minor = self.type.partition("/")
        return minor == "*" and wanted.partition("/")[0] == major


def parse_media_type(value: str) -> MediaType:
    """One media type from a ``Content-Type`` value (lower-cased type; parameter values as sent)."""
    kind, params = parse_options_header(value[:_MAX_ACCEPT])
    return MediaType(kind.decode("latin-1").strip().lower(),
                     {k.decode("latin-1").strip().lower(): v.decode("latin-1").strip()
                      for k, v in params.items()})


def _split_ranges(value: str) -> list[str]:
    """An Accept value split at commas outside quoted strings."""
    out, start, quoted, escaped = [], 0, False, False
    for i, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out.append(value[start:i])
            start = i + 1
    out.append(value[start:])
    return [r for r in (s.strip() for s in out) if r]


def parse_accept(value: str | None) -> list[MediaType]:
    """The media ranges of an ``Accept`` value, best first (stable for equal ``q``); ``*/*`` if absent.

    Ranges with ``q=0`` are dropped (not acceptable).
    """
    if not value or not value.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(r) for r in _split_ranges(value[:_MAX_ACCEPT])]
    ranges = [r for r in ranges if r.type and r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


@dataclasses.dataclass
class Part:
    """One part of a multipart body: its headers (names lower-cased) and where its bytes went."""

    headers: dict[str, str]
    body: IO[bytes]
    size: int = 0

    @property
    def content_type(self) -> MediaType | None:
        """The part's ``Content-Type`` (None if it has none)."""
        raw = self.headers.get("content-type")
        return parse_media_type(raw) if raw else None


class MultipartReader:
    """A bounded streaming reader of one ``multipart/related`` (or any ``multipart/*``) body.

    Parameters
    ----------
    content_type : str
        The request's ``Content-Type`` (must be ``multipart/*`` with a boundary).
    sink : callable
        Called with a part's headers when its body starts; returns a writable
        binary file for the body (the caller closes it).
    max_parts : int
        More parts than this -> :class:`~kit.errors.DicomWebRequestError` (413).

    Raises
    ------
    DicomWebRequestError
        415 when the content type is not multipart or has no usable boundary.
    """

    def __init__(self, content_type: str, sink: Callable[[Mapping[str, str]], IO[bytes]], *,
                 max_parts: int = MAX_PARTS) -> None:
        media = parse_media_type(content_type)
        if not media.type.startswith("multipart/"):
            raise DicomWebRequestError(f"expected a multipart/related body, got {media.type or 'none'}",
                                       status_code=415)
        boundary = media.params.get("boundary", "")
        if not 1 <= len(boundary) <= 70 or not boundary.isascii():  # RFC 2046 5.1.1
            raise DicomWebRequestError("the multipart body has no valid boundary parameter", status_code=415)
        self.media = media
        self.parts: list[Part] = []
        self.max_parts = max_parts
        self._sink = sink
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._current: Part | None = None
        self._ended = False
        self._parser = MultipartParser(boundary.encode("ascii"), {
            "on_part_begin": self._on_part_begin,
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        })

    def _on_part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise DicomWebRequestError(f"more than {self.max_parts} parts in one request", status_code=413)
        self._headers = {}

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_headers_finished(self) -> None:
        self._current = Part(self._headers, self._sink(self._headers))
        self.parts.append(self._current)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self._current is not None
        self._current.body.write(data[start:end])
        self._current.size += end - start

    def _on_part_end(self) -> None:
        self._current = None

    def _on_end(self) -> None:
        self._ended = True

    def feed(self, chunk: bytes) -> None:
        """Parse the next bytes of the body.

        Raises
        ------
        DicomWebRequestError
            400 when the bytes are not a multipart body, 413 over ``max_parts``.
        """
        if self._ended:
            return  # the epilogue after the closing boundary is ignored (RFC 2046)
        try:
            self._parser.write(chunk)
        except FormParserError as exc:
            raise DicomWebRequestError(f"malformed multipart body: {exc}") from exc

    def finish(self) -> list[Part]:
        """The parts, once the whole body was fed.

        Raises
        ------
        DicomWebRequestError
            400 when the body ended before its closing boundary.
        """
        if not self._ended:
            raise DicomWebRequestError("the multipart body ends before its closing boundary")
        return self.parts


def new_boundary() -> str:
    """A fresh boundary for a multipart answer."""
    return uuid.uuid4().hex


def part_head(boundary: str, content_type: str, *, first: bool = False,
              headers: Mapping[str, str] | None = None) -> bytes:
    """The delimiter and headers that start a part (``first``: no CRLF before the delimiter)."""
    lines = [f"Content-Type: {content_type}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return (b"" if first else b"\r\n") + f"--{boundary}\r\n".encode() + \
        "\r\n".join(lines).encode("latin-1", "replace") + b"\r\n\r\n"


def closing(boundary: str, *, empty: bool = False) -> bytes:
    """The closing delimiter (``empty``: the body had no part)."""
    return (b"" if empty else b"\r\n") + f"--{boundary}--\r\n".encode()
