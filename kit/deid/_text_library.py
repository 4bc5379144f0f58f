"""The library layer of :mod:`kit.deid.text`: Microsoft Presidio's analyzer, offline (pure).

Presidio (``presidio-analyzer``) is run with its ``NoOpNlpEngine``: no spaCy model is loaded
or downloaded, so only self-contained recognizers run. The library's own recognizers used
(:data:`LIBRARY_ENTITIES`): e-mail, phone (Google's ``phonenumbers``, regions configurable),
dates, IP addresses, URLs with a scheme or ``www.``, IBAN and credit-card numbers. Two things
are changed so that nothing leaves the machine and time stays linear:

* the e-mail recognizer validates domains against ``tldextract``'s bundled snapshot of the
  public suffix list (the library's default fetches the list over HTTP on first use);
* the text is analysed in overlapping windows (:data:`WINDOW` characters, stepping
  :data:`STEP`), because the library's e-mail pattern is quadratic on long runs of word
  characters and dots; a PHI value is at most ``WINDOW - STEP`` characters long to be seen
  whole, and detections from overlapping windows are merged by the caller.

kit adds recognizers of its own, in the same engine (case-sensitive patterns; a person name
needs an NER model the library cannot load offline): names after a title (``Dr. Anna
Weber``) or after a reporting verb or a relation (``signed by``, ``her husband``), dates
written with month names (English, German, French), and record numbers (``MRN 4711``,
``KH-20240099``, digit runs of 7 to 16).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from kit.errors import ConfigError, InvalidInputError

__all__ = ["KIT_ENTITIES", "LIBRARY_ENTITIES", "STEP", "WINDOW", "LibraryDetector", "entity_kind"]

WINDOW = 512
STEP = 256

#: Presidio entity types of the library's recognizers used here.
LIBRARY_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "DATE_TIME", "IP_ADDRESS", "URL", "IBAN_CODE",
                    "CREDIT_CARD")
#: Entity types of kit's recognizers.
KIT_ENTITIES = ("KIT_NAME", "KIT_DATE", "KIT_ID")

_KIND = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "DATE_TIME": "DATE", "KIT_DATE": "DATE",
         "KIT_NAME": "NAME", "PERSON": "NAME", "URL": "URL", "LOCATION": "ADDRESS"}

_TITLE = r"(?i:dr|drs|dres|prof|mr|mrs|ms|mme|mlle|herr|frau|pr|sr|sra|nurse|sister)"
_CUE = (r"(?i:signed|seen|dictated|reviewed|verified|referred|examined|reported|discussed\s+with|"
        r"informed|contacted|called|cc|husband|wife|daughter|son|mother|father|brother|sister|"
        r"partner|spouse|neighbou?r|friend|attending|referring|physician|gp)")
_WORD = r"\p{Lu}[\p{Ll}'’-]+"
_NAME = rf"(?:\p{{Lu}}\.[ \t]{{0,2}}){{0,2}}{_WORD}(?:[ \t]{{1,3}}{_WORD}){{0,2}}"
_MONTHS = (r"(?i:jan(?:uary|uar|vier)?|feb(?:ruary|ruar)?|f[ée]v(?:rier)?|m[aä]r(?:ch|z|s)?|apr(?:il)?|"
           r"avr(?:il)?|ma[iy]|june?|juni|juin|july?|juli|juillet|aug(?:ust)?|ao[uû]t|sep(?:t|tember|tembre)?|"
           r"o[ck]t(?:ober|obre)?|nov(?:ember|embre)?|de[cz](?:ember)?|d[ée]c(?:embre)?)")
_ORD = r"(?:st|nd|rd|th|er)?"
_PATTERNS: dict[str, list[tuple[str, str, float]]] = {
    "KIT_NAME": [
        ("titled name", rf"(?<=\b{_TITLE}\.?[ \t]{{1,3}}){_NAME}", 0.6),
        ("name after a cue",
         rf"(?<=\b{_CUE}(?:[ \t]+(?i:by|to|with))?[:,]?[ \t]{{1,3}})(?!{_TITLE}\b){_NAME}", 0.5),
    ],
    "KIT_DATE": [
        ("day month year", rf"\b\d{{1,2}}{_ORD}\.?[ \t]{{0,2}}{_MONTHS}\b\.?,?[ \t]{{0,2}}\d{{2,4}}\b", 0.7),
        ("month day year", rf"\b{_MONTHS}\b\.?[ \t]{{0,2}}\d{{1,2}}{_ORD},?[ \t]{{1,2}}\d{{2,4}}\b", 0.7),
        ("month year", rf"\b{_MONTHS}\b\.?[ \t]{{1,2}}(?:19|20)\d\d\b", 0.5),
    ],
    "KIT_ID": [
        ("prefixed number", r"\b\p{Lu}{2,6}[-#:]?\d{3,12}\b", 0.5),
        ("labelled number", r"(?<=\b(?i:mrn|pid|id|nr|no|case|fall|patient|pat|acc|accession)\.?"
                            r"[ \t]?(?:#|nr\.?|no\.?|:)?[ \t]?)\d{3,16}\b", 0.6),
        ("long number", r"\b\d{7,16}\b", 0.4),
    ],
}

_log = logging.getLogger(__name__)
_tld_lock = threading.Lock()
_tld: Any = None


def entity_kind(entity: str) -> str:
    """kit's kind (NAME, DATE, PHONE, EMAIL, URL, ADDRESS, ID) of a Presidio entity type."""
    return _KIND.get(entity, "ID")


def _offline_tld() -> Any:
    global _tld
    with _tld_lock:
        if _tld is None:
            import tldextract

            _tld = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
        return _tld


def _engine(regions: Sequence[str], with_kit: bool) -> Any:
    try:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            DateRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UrlRecognizer,
        )
    except ImportError as exc:
        raise ConfigError("deid.text", "the library layer needs presidio-analyzer: "
                                       "pip install 'kit[deid]'") from exc
    import regex

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(_offline_tld()(pattern_text.rsplit("@", 1)[-1]).suffix)

    url_patterns: list[Any] = [p for p in UrlRecognizer.PATTERNS if "https?://" in p.regex]
    url_patterns.append(Pattern("www url", r"(?i)\bwww\d{0,3}\.[a-z0-9\-]{1,63}(?:\.[a-z0-9\-]{1,63}){1,4}"
                                           r"(?:/[^\s\"'<>]{0,200})?", 0.5))
    recognizers: list[Any] = [
        OfflineEmailRecognizer(), PhoneRecognizer(supported_regions=tuple(regions)), DateRecognizer(),
        IpRecognizer(), UrlRecognizer(patterns=url_patterns), IbanRecognizer(), CreditCardRecognizer()]
    if with_kit:
        flags = regex.DOTALL | regex.MULTILINE | regex.VERSION0
        for entity, patterns in _PATTERNS.items():
            recognizers.append(PatternRecognizer(
                supported_entity=entity, name=entity.lower(), global_regex_flags=flags,
                patterns=[Pattern(name, rx, score) for name, rx, score in patterns]))
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    nlp.load()
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    return AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])


class LibraryDetector:
    """Presidio's offline recognizers (and, with ``with_kit``, kit's), windowed.

    Parameters
    ----------
    regions : sequence of str
        ISO country codes the phone recognizer parses national numbers for.
    with_kit : bool
        Add kit's name, date and record-number recognizers.
    score_threshold : float
        Detections scoring below this are dropped.
    """

    def __init__(self, regions: Sequence[str] = ("CH", "DE", "FR", "IT", "AT", "GB", "US"), *,
                 with_kit: bool = True, score_threshold: float = 0.35) -> None:
        self.regions = tuple(regions)
        self.with_kit = with_kit
        self.score_threshold = score_threshold
        self._engine = _engine(self.regions, with_kit)

    def _analyze(self, chunk: str) -> list[Any]:
        try:
            return list(self._engine.analyze(chunk, language="en", score_threshold=self.score_threshold))
        except (ValueError, TypeError, RuntimeError, IndexError, KeyError, OverflowError) as exc:
            raise InvalidInputError(f"the PHI detector failed on a text: {type(exc).__name__}") from exc

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """``(start, end, kind)`` of every detection in ``text`` (may overlap; sorted)."""
        found: set[tuple[int, int, str]] = set()
        start = 0
        while True:
            chunk = text[start:start + WINDOW]
            if chunk.strip():
                for r in self._analyze(chunk):
                    found.add((start + r.start, start + r.end, entity_kind(r.entity_type)))
            if start + WINDOW >= len(text):
                break
            start += STEP
        return sorted(found)
