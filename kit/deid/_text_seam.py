"""The text scrubber behind :data:`kit.deid.policy.TextScrubber`: ``scrub_field(text, field)`` (pure).

The cross-system de-identifiers (:mod:`kit.deid.fhir`, :mod:`kit.deid.hl7`) hand each
free-text value to ``scrub_field`` with what is known of its patient
(:class:`kit.deid.policy.PatientFacts`). The patient's identifiers are replaced exactly
(a known-layer :class:`~kit.deid.text.TextScrubber` per patient, cached), then one
shared library-layer scrubber (Presidio's recognizers plus kit's; built once, it is the
expensive part) catches the rest. The library never re-detects the known layer's tokens.

By ``field.kind``: ``string``, ``markdown`` and ``text`` (HL7, unescaped) are scrubbed
as they are; ``xhtml`` (a FHIR narrative ``div``) text by text with the markup kept;
``base64`` (an Attachment's ``data``) is decoded, scrubbed as UTF-8 text and encoded
again. Binary data (not UTF-8 text) cannot be scrubbed and is refused with
:class:`~kit.errors.InvalidInputError`: remove such attachments first, or convert them
to text.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools

from kit.deid._text_targets import _Report, _xhtml
from kit.deid._text_variants import Address, KnownIdentifiers, PersonName
from kit.deid.policy import PatientFacts, TextField
from kit.errors import InvalidInputError

__all__ = ["known_from_facts", "scrub_field"]


def known_from_facts(facts: PatientFacts | None) -> KnownIdentifiers:
    """The :class:`~kit.deid.text.KnownIdentifiers` of one patient's facts (names, MRN, ids, ...)."""
    if facts is None:
        return KnownIdentifiers()
    names: list[PersonName] = []
    for name in facts.names:
        if "^" in name:
            family, _, rest = name.partition("^")
            given = tuple(p for p in rest.split("^") if p.strip())
        else:
            parts = name.split()
            family, given = (parts[-1], tuple(parts[:-1])) if parts else ("", ())
        if family.strip():
            names.append(PersonName(family.strip(), given))
    births: list[dt.date] = []
    for text in facts.birth_dates:
        try:
            births.append(dt.date.fromisoformat(text[:10]))
        except ValueError:
            continue
    return KnownIdentifiers(
        names=tuple(names), ids=tuple(i for i in (facts.mrn, *facts.identifiers) if i.strip()),
        birth_dates=tuple(births), addresses=tuple(Address(lines=(a,)) for a in facts.addresses if a.strip()),
        phones=tuple(p for p in facts.phones if p.strip()))


@functools.lru_cache(maxsize=256)
def _known(facts: PatientFacts | None) -> object:
    from kit.deid.text import TextScrubber

    return TextScrubber(known_from_facts(facts), library=None)


@functools.lru_cache(maxsize=1)
def _library() -> object:
    from kit.deid.text import TextScrubber

    return TextScrubber(None, library="kit")


class _Both:
    """Known layer, then library layer; ``scrub`` as :meth:`kit.deid.text.TextScrubber.scrub`."""

    def __init__(self, facts: PatientFacts | None) -> None:
        self.first, self.second = _known(facts), _library()

    def scrub(self, text: str) -> object:
        from kit.deid.text import ScrubResult

        once = self.first.scrub(text)  # type: ignore[attr-defined]
        twice = self.second.scrub(once.text)  # type: ignore[attr-defined]
        return ScrubResult(twice.text, tuple(once.spans) + tuple(twice.spans))


def scrub_field(text: str, field: TextField) -> str:
    """``text`` with its PHI replaced; see the module docstring for what each ``field.kind`` means.

    Raises
    ------
    kit.errors.InvalidInputError
        ``text`` is not a string, a narrative is not well-formed XHTML, or an
        attachment is not base64 of UTF-8 text.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"{field.path}: expected text, got {type(text).__name__}")
    both = _Both(field.facts)
    if field.kind == "xhtml":
        return _xhtml(text, _Report(both), field.path)  # type: ignore[arg-type]
    if field.kind == "base64":
        try:
            plain = base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise InvalidInputError(f"{field.path}: an attachment that is not UTF-8 text cannot be scrubbed; "
                                    "remove it or convert it to text first", source=field.path) from exc
        scrubbed: str = both.scrub(plain).text  # type: ignore[attr-defined]
        return base64.b64encode(scrubbed.encode("utf-8")).decode("ascii")
    return str(both.scrub(text).text)  # type: ignore[attr-defined]
