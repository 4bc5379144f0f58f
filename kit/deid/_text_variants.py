"""Known identifiers and the ways they are written in free text (pure).

:class:`KnownIdentifiers` holds what kit knows about the cohort's people (names, record
numbers, birth dates, addresses, phone numbers, e-mails); :func:`known_from_fhir` and
:func:`known_from_hl7` read them from Patient (and RelatedPerson) resources and from PID/NK1
segments. :func:`variants` expands them into the token sequences of
:mod:`kit.deid._text_known`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from kit.deid._text_known import digit_key, token_keys
from kit.errors import InvalidInputError
from kit.hl7.message import STANDARD_ENCODING, Message, component

__all__ = ["Address", "KnownIdentifiers", "PersonName", "known_from_fhir", "known_from_hl7", "variants"]

_PARTICLES = frozenset({"van", "von", "der", "den", "de", "la", "le", "du", "di", "da", "del", "dos", "des",
                        "ten", "ter", "zu", "y", "e", "al", "el", "bin", "ben", "mc"})
_MONTHS = {  # month number -> names written in notes (English, German, French; accents are folded)
    1: ("january", "jan", "januar", "janvier", "janv"), 2: ("february", "feb", "februar", "fevrier", "fev"),
    3: ("march", "mar", "marz", "maerz", "mars"), 4: ("april", "apr", "avril", "avr"),
    5: ("may", "mai"), 6: ("june", "jun", "juni", "juin"), 7: ("july", "jul", "juli", "juillet", "juil"),
    8: ("august", "aug", "aout"), 9: ("september", "sep", "sept", "septembre"),
    10: ("october", "oct", "oktober", "okt", "octobre"), 11: ("november", "nov", "novembre"),
    12: ("december", "dec", "dezember", "dez", "decembre")}
_ORDINAL = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}
_HL7_DATE = re.compile(r"(\d{4})(\d\d)(\d\d)")


@dataclasses.dataclass(frozen=True)
class PersonName:
    """A person's name: family name and given names (each may hold several words)."""

    family: str
    given: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.family, str) or not all(isinstance(g, str) for g in self.given):
            raise InvalidInputError("a PersonName holds strings")
        object.__setattr__(self, "given", tuple(g for g in self.given if g.strip()))


@dataclasses.dataclass(frozen=True)
class Address:
    """A postal address: street lines, city, postal code (any may be empty)."""

    lines: tuple[str, ...] = ()
    city: str = ""
    postal_code: str = ""


@dataclasses.dataclass(frozen=True)
class KnownIdentifiers:
    """What kit knows about the cohort's people, to be replaced exactly wherever it is written.

    Parameters
    ----------
    names : tuple of PersonName
    ids : tuple of str
        Record numbers: MRNs, other patient identifiers, accession numbers.
    birth_dates : tuple of datetime.date
    addresses : tuple of Address
    phones : tuple of str
        As stored (``+41 21 555 0101``); matched whatever the grouping.
    emails : tuple of str
    """

    names: tuple[PersonName, ...] = ()
    ids: tuple[str, ...] = ()
    birth_dates: tuple[dt.date, ...] = ()
    addresses: tuple[Address, ...] = ()
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, tuple):
                raise InvalidInputError(f"KnownIdentifiers.{field.name} must be a tuple")
            object.__setattr__(self, field.name, tuple(dict.fromkeys(value)))  # drop repeats, keep order
        if not all(isinstance(d, dt.date) for d in self.birth_dates):
            raise InvalidInputError("KnownIdentifiers.birth_dates must be dates")

    def merge(self, other: KnownIdentifiers) -> KnownIdentifiers:
        """Both sets of identifiers in one."""
        return KnownIdentifiers(*(getattr(self, f.name) + getattr(other, f.name)
                                  for f in dataclasses.fields(self)))

    def __len__(self) -> int:
        return sum(len(getattr(self, f.name)) for f in dataclasses.fields(self))


# -- builders ------------------------------------------------------------------------------------

def _resources(data: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(data, Mapping):
        if data.get("resourceType") == "Bundle":
            for entry in data.get("entry") or ():
                if isinstance(entry, Mapping) and isinstance(entry.get("resource"), Mapping):
                    yield from _resources(entry["resource"])
        else:
            yield data
            for contained in data.get("contained") or ():
                if isinstance(contained, Mapping):
                    yield contained
    elif isinstance(data, list | tuple):
        for item in data:
            yield from _resources(item)
    else:
        raise InvalidInputError(f"expected FHIR resources (dicts), got {type(data).__name__}")


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _fhir_name(name: Any) -> PersonName | None:
    if not isinstance(name, Mapping):
        return None
    given = tuple(_str(g) for g in name.get("given") or () if _str(g))
    family = _str(name.get("family"))
    if not family and not given and _str(name.get("text")):
        *first, last = _str(name["text"]).split() or [""]
        family, given = last, tuple(first)
    return PersonName(family, given) if family or given else None


def _fhir_address(addr: Any) -> Address | None:
    if not isinstance(addr, Mapping):
        return None
    lines = tuple(_str(x) for x in addr.get("line") or () if _str(x))
    return Address(lines, _str(addr.get("city")), _str(addr.get("postalCode")))


def _is_accession(ident: Mapping[str, Any]) -> bool:
    codings = (ident.get("type") or {}).get("coding") or () if isinstance(ident.get("type"), Mapping) else ()
    return any(isinstance(c, Mapping) and c.get("code") == "ACSN" for c in codings)


def known_from_fhir(resources: Any) -> KnownIdentifiers:
    """The identifiers of the people in FHIR resources.

    Parameters
    ----------
    resources : dict or list of dict
        A Bundle, a resource, or a list of either. Patient and RelatedPerson give names,
        identifiers, birth dates, addresses and telecoms (Patient.contact too); any
        resource's identifiers typed ``ACSN`` give accession numbers.

    Raises
    ------
    kit.errors.InvalidInputError
        Something other than dicts and lists.
    """
    names: list[PersonName] = []
    ids: list[str] = []
    births: list[dt.date] = []
    addresses: list[Address] = []
    phones: list[str] = []
    emails: list[str] = []

    def person(res: Mapping[str, Any]) -> None:
        names.extend(n for n in map(_fhir_name, _list(res.get("name"))) if n)
        addresses.extend(a for a in map(_fhir_address, _list(res.get("address"))) if a)
        for tel in _list(res.get("telecom")):
            if isinstance(tel, Mapping) and _str(tel.get("value")):
                (emails if tel.get("system") == "email" else phones).append(tel["value"])

    for res in _resources(resources):
        rtype = res.get("resourceType")
        for ident in _list(res.get("identifier")):
            if isinstance(ident, Mapping) and _str(ident.get("value")) and (
                    rtype in ("Patient", "RelatedPerson") or _is_accession(ident)):
                ids.append(ident["value"])
        if rtype not in ("Patient", "RelatedPerson"):
            continue
        person(res)
        try:
            if _str(res.get("birthDate")):
                births.append(dt.date.fromisoformat(res["birthDate"][:10]))
        except ValueError:
            pass  # a partial date (year or year-month) is not a day to look for
        for contact in _list(res.get("contact")):
            if isinstance(contact, Mapping):
                person({"name": [contact.get("name")], "address": [contact.get("address")],
                        "telecom": contact.get("telecom")})
    return KnownIdentifiers(tuple(names), tuple(ids), tuple(births), tuple(addresses), tuple(phones),
                            tuple(emails))


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def known_from_hl7(messages: Iterable[Message]) -> KnownIdentifiers:
    """The identifiers of the people in HL7 v2 messages (PID, NK1).

    PID-2/3/4/18/19/20 (identifiers, first component), PID-5 and PID-9 (names), PID-6
    (mother's maiden name), PID-7 (birth date), PID-11 (addresses), PID-13/14 (phones and
    e-mails), NK1-2/4/5/6 (relatives' names, addresses, phones).

    Raises
    ------
    kit.errors.InvalidInputError
        An item is not a :class:`~kit.hl7.message.Message`.
    """
    acc = _Collected()
    for msg in messages:
        if not isinstance(msg, Message):
            raise InvalidInputError(f"expected kit.hl7.Message, got {type(msg).__name__}")
        acc.message(msg)
    return KnownIdentifiers(tuple(acc.names), tuple(acc.ids), tuple(acc.births), tuple(acc.addresses),
                            tuple(acc.phones), tuple(acc.emails))


class _Collected:
    """Identifiers gathered from HL7 segments."""

    def __init__(self) -> None:
        self.names: list[PersonName] = []
        self.ids: list[str] = []
        self.births: list[dt.date] = []
        self.addresses: list[Address] = []
        self.phones: list[str] = []
        self.emails: list[str] = []
        self.enc = STANDARD_ENCODING

    def reps(self, raw: str) -> list[str]:
        return raw.split(self.enc.repetition) if raw else []

    def comp(self, rep: str, n: int) -> str:
        return component(rep, self.enc, 1, n, 1)

    def people(self, name_raws: Iterable[str], addr_raw: str, phone_raws: Iterable[str]) -> None:
        comp = self.comp
        for raw in name_raws:
            for rep in self.reps(raw):
                family, given, middle = comp(rep, 1), comp(rep, 2), comp(rep, 3)
                if family or given:
                    self.names.append(PersonName(family, tuple(g for g in (given, middle) if g)))
        for rep in self.reps(addr_raw):
            lines = tuple(x for x in (comp(rep, 1), comp(rep, 2)) if x)
            self.addresses.append(Address(lines, comp(rep, 3), comp(rep, 5)))
        for raw in phone_raws:
            for rep in self.reps(raw):
                if "@" in comp(rep, 4):
                    self.emails.append(comp(rep, 4))
                local = comp(rep, 6) + comp(rep, 7)
                country = ("+" + comp(rep, 5)) if comp(rep, 5) else ""
                for value in (comp(rep, 1) or comp(rep, 12), country + local):
                    if digit_key(value):
                        self.phones.append(value)

    def message(self, msg: Message) -> None:
        self.enc = msg.encoding
        for seg in msg.segments("PID"):
            for n in (2, 3, 4, 18, 19, 20):
                self.ids.extend(v for v in (self.comp(rep, 1) for rep in self.reps(seg.field(n))) if v)
            self.people((seg.field(5), seg.field(9)), seg.field(11), (seg.field(13), seg.field(14)))
            for rep in self.reps(seg.field(6)):
                if self.comp(rep, 1):
                    self.names.append(PersonName(self.comp(rep, 1)))
            m = _HL7_DATE.match(component(seg.field(7), self.enc, 1, 1, 1))
            if m:
                try:
                    self.births.append(dt.date(int(m[1]), int(m[2]), int(m[3])))
                except ValueError:
                    pass  # not a calendar date: nothing to look for
        for seg in msg.segments("NK1"):
            self.people((seg.field(2),), seg.field(4), (seg.field(5), seg.field(6)))


# -- variants ------------------------------------------------------------------------------------

def _name_variants(name: PersonName) -> Iterator[tuple[str, ...]]:
    family = token_keys(name.family)
    givens = [token_keys(g) for g in name.given]
    givens = [g for g in givens if g]
    all_given = tuple(k for g in givens for k in g)
    initials = tuple(g[0][0] for g in givens)
    if family:
        yield family
        for word in family:
            if len(word) >= 3 and word not in _PARTICLES and not word.isdigit():
                yield (word,)
    for g in givens:
        if len(g) > 1 or len(g[0]) >= 2:
            yield g
    if not family or not givens:
        return
    first = givens[0]
    for given in {first, all_given}:
        yield given + family
        yield family + given
    for inits in {initials[:1], initials}:
        yield inits + family
        yield family + inits
    yield first + initials[1:] + family


def _date_variants(d: dt.date) -> Iterator[tuple[str, ...]]:
    y, m, dd, yy = str(d.year), str(d.month), str(d.day), str(d.year % 100)
    for year in (y, yy):
        yield (dd, m, year)
        yield (m, dd, year)
    yield (y, m, dd)
    yield (f"{d.year:04d}{d.month:02d}{d.day:02d}",)
    yield ((f"{d.day:02d}{d.month:02d}{d.year:04d}").lstrip("0"),)
    suffix = _ORDINAL.get(d.day, "th")
    for month in _MONTHS[d.month]:
        for day in ((dd,), (dd, suffix)):
            yield (*day, month, y)
            yield (month, *day, y)


def _phone_digits(value: str) -> Iterator[str]:
    digits = digit_key(value)
    if len(digits) < 6:
        return
    yield digits
    if value.lstrip().startswith("+") or digits.startswith("00"):
        full = digits[2:] if digits.startswith("00") else digits
        yield full
        yield "00" + full
        for cc in (1, 2, 3):
            national = full[cc:]
            if len(national) >= 6:
                yield national
                yield "0" + national
    elif digits.startswith("0") and len(digits) > 6:
        yield digits[1:]


def variants(known: KnownIdentifiers) -> tuple[list[tuple[tuple[str, ...], str]], list[tuple[str, str]]]:
    """Token sequences (with their kind) and digit strings (with theirs) for the matcher."""
    phrases: list[tuple[tuple[str, ...], str]] = []
    digits: list[tuple[str, str]] = []
    for name in known.names:
        phrases.extend((v, "NAME") for v in _name_variants(name))
    for value in known.ids:
        keys = token_keys(value)
        if keys:
            phrases.append((keys, "ID"))
        dk = digit_key(value)
        if len(dk) >= 6 and not any(c.isalpha() for c in value):
            digits.append((dk, "ID"))
    for d in known.birth_dates:
        phrases.extend((v, "DATE") for v in _date_variants(d))
    for addr in known.addresses:
        for line in addr.lines:
            keys = token_keys(line)
            if len(keys) > 1 or (keys and len(keys[0]) >= 3 and not keys[0].isdigit()):
                phrases.append((keys, "ADDRESS"))
        city, code = token_keys(addr.city), token_keys(addr.postal_code)
        if city:
            phrases.append((city, "ADDRESS"))
            if code:
                phrases.append((code + city, "ADDRESS"))
                phrases.append((city + code, "ADDRESS"))
    for phone in known.phones:
        digits.extend((d, "PHONE") for d in _phone_digits(phone))
    for email in known.emails:
        keys = token_keys(email)
        if keys:
            phrases.append((keys, "EMAIL"))
    return phrases, digits
