"""Free-text PHI scrubbing: the identifiers kit knows, then a detection library (pure).

Two layers, applied to one text at a time by :class:`TextScrubber`:

1. **Known identifiers** (:class:`KnownIdentifiers`, built by :func:`known_from_fhir` from
   Patient resources and by :func:`known_from_hl7` from PID/NK1 segments) are replaced
   exactly, however they are written: case and accents ignored, every name order and
   initials (``Doe, Jane``, ``Jane Doe``, ``J. Doe``, ``Doe``), dates in every order and
   with month names (``1970-03-04``, ``04.03.1970``, ``19700304``, ``3/4/1970``,
   ``4 March 1970``), phone numbers however grouped, with or without country code. One token
   automaton matches them all in linear time (:mod:`kit.deid._text_known`).
2. **The library** catches the rest: Microsoft Presidio's analyzer
   (``presidio-analyzer``, maintained by Microsoft, MIT) with its pattern recognizers --
   e-mail, phone numbers (Google's ``phonenumbers``), dates, IP addresses, URLs, IBAN and card
   numbers -- plus kit's own patterns registered in the same engine for names after a title
   or a cue (``Dr. Weber``, ``signed by A. Weber``), dates with month names and record
   numbers (:mod:`kit.deid._text_library`).

Why Presidio: it installs from PyPI and runs with no model download when given its
``NoOpNlpEngine`` (its default engine wants a spaCy model; spaCy the library is installed as
a dependency but no model is loaded), it is actively released, and its recognizers are
plain, configurable pattern objects kit can add its own to. scrubadub was the alternative
named in the issue: its name and address detectors need textblob/NLTK corpora or a spaCy
model fetched at run time, and it was last released in 2023. Presidio's one network access
(``tldextract`` fetching the public suffix list to validate e-mail domains) is replaced by the
bundled snapshot. Without an NER model no library finds untitled unknown names: the known
layer carries the cohort's own names, and ``bench/phi.py`` measures the rest.

Replacements are tokens per kind (:data:`DEFAULT_TOKENS`: ``[NAME]``, ``[DATE]``, ``[ID]``,
``[PHONE]``, ``[EMAIL]``, ``[ADDRESS]``, ``[URL]``; configurable). Tokens already in a text
are never split or re-detected, and :meth:`TextScrubber.scrub` repeats until nothing more is
found (at most :data:`MAX_PASSES`), so scrubbing is idempotent. The report
(:class:`ScrubResult`) lists each replaced span's offsets in the input, kind and layer,
never the value. Inputs over ``max_chars`` characters are refused (:data:`MAX_CHARS` by
default), so time and memory are bounded.

Where the scrubber is applied (HL7 OBX/NTE, FHIR narrative, conclusions, notes and text
attachments, DICOM text attributes and SR TEXT items): :mod:`kit.deid._text_targets`,
re-exported here.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

from kit.deid._text_known import KnownMatcher
from kit.deid._text_library import LibraryDetector
from kit.deid._text_targets import (
    DICOM_TEXT_KEYWORDS,
    Scrubbed,
    scrub_dicom,
    scrub_fhir,
    scrub_hl7,
)
from kit.deid._text_variants import (
    Address,
    KnownIdentifiers,
    PersonName,
    known_from_fhir,
    known_from_hl7,
    variants,
)
from kit.errors import InvalidInputError

__all__ = [
    "DEFAULT_TOKENS",
    "DICOM_TEXT_KEYWORDS",
    "KINDS",
    "MAX_CHARS",
    "MAX_PASSES",
    "Address",
    "KnownIdentifiers",
    "PersonName",
    "ScrubResult",
    "Scrubbed",
    "Span",
    "TextScrubber",
    "known_from_fhir",
    "known_from_hl7",
    "scrub_dicom",
    "scrub_fhir",
    "scrub_field",
    "scrub_hl7",
]

#: The kinds of PHI the scrubber reports.
KINDS = ("NAME", "DATE", "ID", "PHONE", "EMAIL", "ADDRESS", "URL")
#: Replacement token per kind.
DEFAULT_TOKENS: Mapping[str, str] = {k: f"[{k}]" for k in KINDS}
#: Longest text scrubbed (characters); longer ones are refused.
MAX_CHARS = 1_000_000
#: Most passes of :meth:`TextScrubber.scrub` (each pass re-reads the previous output).
MAX_PASSES = 3

Layer = Literal["known", "library"]


@dataclasses.dataclass(frozen=True)
class Span:
    """One replaced span: offsets in the input text, kind, and the layer that found it."""

    start: int
    end: int
    kind: str
    layer: str

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise InvalidInputError(f"invalid span {self.start}..{self.end}")


@dataclasses.dataclass(frozen=True)
class ScrubResult:
    """The scrubbed text and what was replaced (no PHI values)."""

    text: str
    spans: tuple[Span, ...]
    passes: int = 1

    @property
    def counts(self) -> dict[str, int]:
        """Replaced spans per kind."""
        out: dict[str, int] = {}
        for s in self.spans:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out


class TextScrubber:
    """Replace PHI in free text: known identifiers exactly, then a detection library.

    Parameters
    ----------
    known : KnownIdentifiers or None
        The cohort's identifiers (:func:`known_from_fhir`, :func:`known_from_hl7`, merged
        with :meth:`KnownIdentifiers.merge`).
    library : {"kit", "presidio"} or None
        ``"kit"``: Presidio's offline recognizers plus kit's (default); ``"presidio"``: the
        library's recognizers alone; None: the known layer only (no dependency needed).
    tokens : mapping of str to str, optional
        Replacement per kind (see :data:`KINDS`); missing kinds use :data:`DEFAULT_TOKENS`.
    regions : sequence of str
        Countries whose national phone numbers the library parses.
    max_chars : int
        Longest text accepted.
    score_threshold : float
        The library's detections scoring below this are ignored.

    Raises
    ------
    kit.errors.ConfigError
        ``library`` is set and presidio-analyzer is not installed.

    Examples
    --------
    >>> s = TextScrubber(KnownIdentifiers(names=(PersonName("Doe", ("Jane",)),)), library=None)
    >>> s("Seen: DOE, Jane.")
    'Seen: [NAME].'
    """

    def __init__(self, known: KnownIdentifiers | None = None, *,
                 library: Literal["kit", "presidio"] | None = "kit",
                 tokens: Mapping[str, str] | None = None,
                 regions: Sequence[str] = ("CH", "DE", "FR", "IT", "AT", "GB", "US"),
                 max_chars: int = MAX_CHARS, score_threshold: float = 0.35) -> None:
        if library not in ("kit", "presidio", None):
            raise InvalidInputError(f"library must be 'kit', 'presidio' or None, not {library!r}")
        self.known = known if known is not None else KnownIdentifiers()
        self.tokens = {**DEFAULT_TOKENS, **(tokens or {})}
        for kind, token in self.tokens.items():
            if not isinstance(token, str) or not token or token.isspace():
                raise InvalidInputError(f"replacement token for {kind} must be a non-blank string")
        self.max_chars = max_chars
        phrases, digits = variants(self.known)
        self._known = KnownMatcher(phrases, digits)
        self._library = (LibraryDetector(regions, with_kit=library == "kit", score_threshold=score_threshold)
                         if library else None)
        ordered = sorted(set(self.tokens.values()), key=len, reverse=True)
        self._protected = re.compile("|".join(re.escape(t) for t in ordered))

    # -- detection -------------------------------------------------------------------------------
    def _check(self, text: str) -> None:
        if not isinstance(text, str):
            raise InvalidInputError(f"expected text, got {type(text).__name__}")
        if len(text) > self.max_chars:
            raise InvalidInputError(f"text of {len(text)} characters is over the limit of {self.max_chars}")

    def detect(self, text: str) -> list[Span]:
        """One pass: the non-overlapping spans to replace in ``text`` (offsets into it).

        Overlapping detections are merged; a merged span takes the kind of its known-layer
        part if it has one, else of its longest part. Replacement tokens already in the text
        are cut out of every span.
        """
        self._check(text)
        raw: list[tuple[int, int, str, str]] = [(a, b, k, "known") for a, b, k in self._known.find(text)]
        if self._library is not None:
            raw.extend((a, b, k, "library") for a, b, k in self._library.find(text))
        protected = [m.span() for m in self._protected.finditer(text)]
        pieces = [p for r in raw for p in _outside(r, protected)]
        pieces = [p for p in pieces if any(c.isalnum() for c in text[p[0]:p[1]])]
        return _merge(pieces)

    def scrub(self, text: str) -> ScrubResult:
        """Replace every detected span by its kind's token, again until nothing more is found."""
        spans: list[Span] = []
        current = text
        back: list[tuple[int, int, int, int]] = []  # (out_start, out_end, in_start, in_end), sorted
        passes = 0
        while passes < MAX_PASSES:
            found = self.detect(current)
            passes += 1
            if not found:
                break
            mapped = [_to_input(s, back) for s in found]
            spans = _merge_spans(spans + mapped)
            current, back = self._apply(text, spans)
        return ScrubResult(current, tuple(spans), passes)

    def __call__(self, text: str) -> str:
        """The scrubbed text (the seam other modules call)."""
        return self.scrub(text).text

    def _apply(self, text: str, spans: list[Span]) -> tuple[str, list[tuple[int, int, int, int]]]:
        out: list[str] = []
        back: list[tuple[int, int, int, int]] = []
        pos = length = 0
        for s in spans:
            out.append(text[pos:s.start])
            length += s.start - pos
            token = self.tokens.get(s.kind, DEFAULT_TOKENS["ID"])
            back.append((length, length + len(token), s.start, s.end))
            out.append(token)
            length += len(token)
            pos = s.end
        out.append(text[pos:])
        return "".join(out), back


_Piece = tuple[int, int, str, str]  # start, end, kind, layer


def _outside(r: _Piece, protected: list[tuple[int, int]]) -> list[_Piece]:
    """``r`` minus the protected ranges (kept sorted, non-overlapping)."""
    start, end, kind, layer = r
    out = []
    i = bisect.bisect_left(protected, (start, -1))
    if i > 0 and protected[i - 1][1] > start:
        i -= 1
    for ps, pe in protected[i:]:
        if ps >= end:
            break
        if ps > start:
            out.append((start, ps, kind, layer))
        start = max(start, pe)
    if start < end:
        out.append((start, end, kind, layer))
    return out


def _merge(pieces: list[tuple[int, int, str, str]]) -> list[Span]:
    spans: list[Span] = []
    group: list[tuple[int, int, str, str]] = []
    end = -1
    for p in sorted(pieces):
        if group and p[0] < end:
            group.append(p)
            end = max(end, p[1])
            continue
        if group:
            spans.append(_one(group, end))
        group, end = [p], p[1]
    if group:
        spans.append(_one(group, end))
    return spans


def _one(group: list[tuple[int, int, str, str]], end: int) -> Span:
    known = [p for p in group if p[3] == "known"]
    best = max(known or group, key=lambda p: (p[1] - p[0], -p[0]))
    return Span(group[0][0], end, best[2], best[3])


def _merge_spans(spans: list[Span]) -> list[Span]:
    return _merge([(s.start, s.end, s.kind, s.layer) for s in spans])


def _to_input(span: Span, back: list[tuple[int, int, int, int]]) -> Span:
    """A span of a later pass, in the offsets of the original input."""
    def position(p: int, is_end: bool) -> int:
        # the last token starting before p (an end) or at or before p (a start)
        i = (bisect.bisect_left(back, (p,)) if is_end else bisect.bisect_right(back, (p, sys.maxsize))) - 1
        if i < 0:
            return p
        out_s, out_e, in_s, in_e = back[i]
        if p < out_e or (is_end and p == out_e):
            return in_e if is_end else in_s
        return in_e + (p - out_e)

    return Span(position(span.start, False), position(span.end, True), span.kind, span.layer)


from kit.deid._text_seam import scrub_field  # noqa: E402  (the seam kit.deid.policy looks for)
