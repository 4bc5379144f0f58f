"""The column model of the FHIR frames and the value readers the extractors share (pure).

Split out of :mod:`kit.fhir.frames_extract` (which re-exports the public names):
:class:`Col` and the struct dtypes of list columns, the compact schema notation
(``_c``), and the helpers that read CodeableConcepts, References, identifiers,
extensions, names and periods the same way in every resource type. The rules
they follow (one rule for every CodeableConcept; wrong JSON types raise, never
coerced) are described in :mod:`kit.fhir.frames_extract`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
import polars as pl

__all__ = [
    "CODING",
    "COMPONENT",
    "EXTENSION",
    "IDENTIFIER",
    "KINDS",
    "ROLES",
    "Col",
    "Extractor",
    "mrn",
]

KINDS: Final = frozenset({"str", "float", "int", "bool", "date", "datetime", "list", "structs"})
#: ``Col.role``: "" (plain), "ref" (References, resolved in Bundles), "concept" (from a CodeableConcept)
ROLES: Final = frozenset({"", "ref", "concept"})

#: struct of one Coding (``codings`` columns)
CODING: Final = pl.Struct({"system": pl.Utf8, "code": pl.Utf8, "display": pl.Utf8})
#: struct of one Identifier (``identifiers`` columns); ``type`` is the first type coding's code
IDENTIFIER: Final = pl.Struct({"system": pl.Utf8, "value": pl.Utf8, "type": pl.Utf8, "use": pl.Utf8})
#: struct of one extension: ``value`` is the value[x] as text (JSON for complex values and
#: for nested extensions)
EXTENSION: Final = pl.Struct({"url": pl.Utf8, "value": pl.Utf8})
#: struct of one Observation.component
COMPONENT: Final = pl.Struct({
    "code": pl.Utf8, "code_system": pl.Utf8, "code_display": pl.Utf8,
    "value_quantity": pl.Float64, "value_unit": pl.Utf8, "value_string": pl.Utf8,
    "value_code": pl.Utf8, "interpretation": pl.Utf8,
})

_SCALAR_DTYPES: Final[dict[str, pl.DataType]] = {
    "str": pl.Utf8(), "float": pl.Float64(), "int": pl.Int64(), "bool": pl.Boolean(),
    "date": pl.Date(), "datetime": pl.Datetime("us", "UTC"),
}


@dataclasses.dataclass(frozen=True)
class Col:
    """One column of a built-in frame: ``name``, ``kind`` and (for lists) the dtype."""

    name: str
    kind: str = "str"
    inner: pl.DataType | None = None
    role: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown column kind {self.kind!r}")
        if self.role not in ROLES:
            raise ValueError(f"unknown column role {self.role!r}")
        if self.kind in ("list", "structs") and self.inner is None:
            raise ValueError(f"column {self.name}: kind {self.kind} needs an inner dtype")

    @functools.cached_property  # built once: a List dtype is rebuilt on every call otherwise
    def dtype(self) -> pl.DataType:
        """The polars dtype of the finished column."""
        if self.kind in ("list", "structs"):
            assert self.inner is not None
            return pl.List(self.inner)
        return _SCALAR_DTYPES[self.kind]


Extractor = Callable[[Mapping[str, Any]], tuple[Any, ...]]


def _c(spec: str) -> tuple[Col, ...]:
    """Columns from a compact ``name:kind`` list (kind defaults to str).

    ``ref``/``refs`` are a Reference / list of References, ``cc``/``ccs`` a
    CodeableConcept / list of them (string columns with a role).
    """
    out = []
    for item in spec.split():
        name, _, kind = item.partition(":")
        inner: pl.DataType | None = None
        role = ""
        if kind in ("ref", "cc"):
            kind, role = "str", "ref" if kind == "ref" else "concept"
        elif kind in ("refs", "ccs"):
            kind, inner, role = "list", pl.Utf8(), "ref" if kind == "refs" else "concept"
        elif kind == "codings":
            kind, inner = "structs", CODING
        elif kind == "identifiers":
            kind, inner = "structs", IDENTIFIER
        elif kind == "extensions":
            kind, inner = "structs", EXTENSION
        elif kind == "components":
            kind, inner = "structs", COMPONENT
        elif kind == "strs":
            kind, inner = "list", pl.Utf8()
        out.append(Col(name, kind or "str", inner, role))
    return tuple(out)



# --------------------------------------------------------------------------- helpers

def _cc(cc: Mapping[str, Any] | None) -> tuple[Any, Any, Any]:
    """(code-or-text, system, display-or-text) of a CodeableConcept's first coding (the module rule)."""
    if not cc:
        return None, None, None
    codings = cc.get("coding")
    if codings:
        c = codings[0]
        text = cc.get("text")
        return c.get("code") or text, c.get("system"), c.get("display") or text
    text = cc.get("text")
    return text, None, text


def _code(cc: Mapping[str, Any] | None) -> Any:
    """Code of a CodeableConcept's first coding, else its text (the module rule)."""
    if not cc:
        return None
    codings = cc.get("coding")
    if codings:
        return codings[0].get("code") or cc.get("text")
    return cc.get("text")


def _words(items: Any, sep: str = " ") -> Any:
    """``sep``-joined strings of a JSON array (a string where an array belongs is malformed)."""
    if not items:
        return None
    if items.__class__ is not list:
        raise TypeError(f"expected an array, got {type(items).__name__}")
    return sep.join(items)


def _first_code(ccs: list[Any] | None) -> Any:
    return _code(ccs[0]) if ccs else None


def _codes(ccs: list[Any] | None) -> list[Any] | None:
    return [_code(cc) for cc in ccs] if ccs else None


def _ref(x: Mapping[str, Any] | None) -> Any:
    return x.get("reference") if x else None


def _refs(xs: list[Any] | None) -> list[Any] | None:
    return [x.get("reference") for x in xs] if xs else None


def _patient_ref(ref: str) -> str | None:
    """The Patient id in a reference (relative, absolute, versioned); urn:uuid kept for later."""
    if ref.startswith("Patient/"):
        rest = ref[8:]
        return rest if "/" not in rest else rest.split("/", 1)[0]
    i = ref.find("/Patient/")
    if i >= 0:
        return ref[i + 9:].split("/", 1)[0]
    if ref.startswith("urn:"):
        return ref
    return None


def _contained(r: Mapping[str, Any], local_id: str) -> Mapping[str, Any] | None:
    for c in r.get("contained") or ():
        if c.get("id") == local_id:
            return c
    return None


def mrn(identifiers: list[Any] | None) -> tuple[Any, Any]:
    """(value, system) of the MRN: type code MR, else a system containing "mrn", else the first."""
    if not identifiers:
        return None, None
    for i in identifiers:
        t = i.get("type")
        if t:
            for c in t.get("coding") or ():
                if c.get("code") == "MR":
                    return i.get("value"), i.get("system")
    for i in identifiers:
        s = i.get("system")
        if s and "mrn" in s.lower():
            return i.get("value"), s
    return identifiers[0].get("value"), identifiers[0].get("system")


def _subject(r: Mapping[str, Any], s: Mapping[str, Any] | None) -> tuple[Any, Any, Any]:
    """(reference, patient_ref id, patient_id MRN) of a subject/patient Reference.

    The MRN is known when the reference carries a logical ``identifier`` or points
    at a contained Patient (``#id``).
    """
    if not s:
        return None, None, None
    ref = s.get("reference")
    ident = s.get("identifier")
    pid = ident.get("value") if ident else None
    if ref:
        if ref[0] == "#":
            c = _contained(r, ref[1:])
            if c is not None and c.get("resourceType") == "Patient":
                pid = pid or mrn(c.get("identifier"))[0]
            return ref, None, pid
        return ref, _patient_ref(ref), pid
    return None, None, pid


def _typed_identifier(identifiers: list[Any] | None, type_code: str, hint: str) -> Any:
    """Value of the identifier whose type code is ``type_code`` (or whose system contains ``hint``)."""
    if not identifiers:
        return None
    for i in identifiers:
        t = i.get("type")
        if t:
            for c in t.get("coding") or ():
                if c.get("code") == type_code:
                    return i.get("value")
    for i in identifiers:
        s = i.get("system")
        if s and hint in s.lower():
            return i.get("value")
    return None


def _identifiers(identifiers: list[Any] | None) -> tuple[Any, ...] | None:
    """IDENTIFIER struct items, flattened."""
    if not identifiers:
        return None
    out: list[Any] = []
    for i in identifiers:
        out += (i.get("system"), i.get("value"), _code(i.get("type")), i.get("use"))
    return tuple(out)


def _coding_items(codings: list[Any]) -> tuple[Any, ...]:
    """CODING struct items of a non-empty list of Codings, flattened."""
    if len(codings) == 1:
        c = codings[0]
        return c.get("system"), c.get("code"), c.get("display")
    out: list[Any] = []
    for c in codings:
        out += (c.get("system"), c.get("code"), c.get("display"))
    return tuple(out)


def _codings(cc: Mapping[str, Any] | None) -> tuple[Any, ...] | None:
    """CODING struct items of a CodeableConcept (every coding), flattened."""
    codings = cc.get("coding") if cc else None
    return _coding_items(codings) if codings else None


def _ext(r: Mapping[str, Any]) -> tuple[Any, ...] | None:
    exts = r.get("extension")
    if not exts:
        return None
    out: list[Any] = []
    for e in exts:
        value: Any = None
        for k, v in e.items():
            if k.startswith("value"):
                value = v if isinstance(v, str) else orjson.dumps(v).decode()
                break
        else:
            if "extension" in e:
                value = orjson.dumps(e["extension"]).decode()
        out += (e.get("url"), value)
    return tuple(out)


def _last_updated(r: Mapping[str, Any]) -> Any:
    m = r.get("meta")
    return m.get("lastUpdated") if m else None


def _when(r: Mapping[str, Any], stem: str) -> tuple[Any, Any]:
    """(start, end) of a ``<stem>[x]`` choice: dateTime, instant, Period, or Period-like."""
    v = r.get(stem + "DateTime")
    if v is not None:
        return v, None
    p = r.get(stem + "Period")
    if p:
        return p.get("start"), p.get("end")
    return r.get(stem + "Instant"), None


def _name(names: list[Any] | None) -> tuple[Any, Any, Any, Any]:
    """(family, given, prefix, text) of the official (else first) HumanName; given names space-joined."""
    if not names:
        return None, None, None, None
    n = names[0]
    if len(names) > 1:
        for cand in names:
            if cand.get("use") == "official":
                n = cand
                break
    given = n.get("given")
    prefix = n.get("prefix")
    return n.get("family"), _words(given), _words(prefix), n.get("text")


def _telecom(telecom: list[Any] | None, system: str) -> Any:
    if telecom:
        for t in telecom:
            if t.get("system") == system:
                return t.get("value")
    return None


def _note(notes: list[Any] | None) -> Any:
    if not notes:
        return None
    return "\n".join(n.get("text") or "" for n in notes)


def _quantity(q: Mapping[str, Any] | None) -> tuple[Any, Any]:
    if not q:
        return None, None
    return q.get("value"), q.get("unit") or q.get("code")
