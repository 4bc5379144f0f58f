"""Declarative mappings between a local table and FHIR resources, and named transforms (pure).

A :class:`ResourceMapping` says how one row of a local table (a polars frame)
becomes one FHIR resource and back: which local column holds the key (written to
``Resource.identifier`` with a given system), and a list of :class:`FieldMapping`
(remote path, local column, direction, transforms). Remote paths are simple
dotted paths with list selectors, which can be both read and written::

    birthDate                 name[0].family          telecom[system=phone].value
    identifier[system=urn:x].value                     name[0].given          (a list)

A path that is not of that form is taken as FHIRPath (read-only, so only for
``Direction.TO_LOCAL``), evaluated with fhirpathpy.

A null local value means "no opinion": it is not written and does not count as
a difference, unless its :class:`FieldMapping` says ``delete_on_null=True``; then
the remote value is removed. A removal never leaves a partial element behind:
an element left empty, or holding only the key its ``[key=value]`` selector
matched (``{"system": "email"}``), is removed too, and so are the lists and
objects emptied by that.

Transforms are unary functions, named in :data:`TRANSFORMS` (``"trim"``,
``"gender"``, ``("round", 2)``, ``("default", "unknown")``, ...) or plain
callables. ``transform`` applies local -> remote, ``reverse_transform`` remote ->
local. Every transform passes ``None`` through (except ``default``).

Written by hand: the path get/set with selectors and the transform registry (no
library offers declarative FHIR <-> table field mappings).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson

from kit.errors import InvalidInputError

__all__ = [
    "TRANSFORMS",
    "Direction",
    "FieldMapping",
    "ResourceMapping",
    "Transform",
    "get_path",
    "resolve_transform",
    "set_path",
]

Transform = Callable[[Any], Any]
TransformSpec = str | tuple[Any, ...] | Transform | None


class Direction(enum.Enum):
    """Which way a field flows: both ways, only local -> FHIR, or only FHIR -> local."""

    BOTH = "both"
    TO_REMOTE = "to_remote"
    TO_LOCAL = "to_local"


# --------------------------------------------------------------------------- transforms

def _none_safe(fn: Callable[[Any], Any]) -> Transform:
    def wrapped(value: Any) -> Any:
        return None if value is None else fn(value)
    wrapped.__name__ = getattr(fn, "__name__", "transform")
    return wrapped


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def _to_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        d = value
    elif isinstance(value, dt.date):
        d = dt.datetime(value.year, value.month, value.day)
    else:
        d = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def _iso_datetime(value: Any) -> str:
    return _to_datetime(value).isoformat()


def _unix_to_iso(value: Any) -> str:
    return dt.datetime.fromtimestamp(float(value), tz=dt.UTC).isoformat()


def _iso_to_unix(value: Any) -> float:
    return _to_datetime(value).timestamp()


def _phone(value: Any) -> str:
    """E.164-ish: keep a leading +, drop everything but digits; 00 prefix becomes +."""
    text = str(value).strip()
    digits = re.sub(r"\D", "", text)
    if not digits:
        raise ValueError(f"no digits in phone number {value!r}")
    if text.startswith("+"):
        return "+" + digits
    if digits.startswith("00"):
        return "+" + digits[2:]
    return digits


_GENDER: Final = {"m": "male", "male": "male", "1": "male", "man": "male",
                  "f": "female", "female": "female", "2": "female", "w": "female", "woman": "female",
                  "o": "other", "other": "other", "u": "unknown", "unknown": "unknown", "0": "unknown",
                  "9": "unknown"}


def _gender(value: Any) -> str:
    key = str(value).strip().lower()
    if key not in _GENDER:
        raise ValueError(f"unknown gender {value!r}")
    return _GENDER[key]


_HL7_SEX: Final = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
_TRUE: Final = {"true", "t", "yes", "y", "1", "on"}
_FALSE: Final = {"false", "f", "no", "n", "0", "off"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    key = str(value).strip().lower()
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    return int(str(value).strip())


def _full_name(value: Any) -> str:
    """(given, family) pair, or {"given": [...], "family": ...}, to "Given Family"."""
    if isinstance(value, Mapping):
        given = value.get("given") or []
        parts = [*([given] if isinstance(given, str) else given), value.get("family")]
    else:
        parts = list(value)
    return " ".join(str(p).strip() for p in parts if p)


def _split_name(value: Any) -> dict[str, Any]:
    """"Given Middle Family" (or "Family, Given") to a HumanName-shaped dict."""
    text = str(value).strip()
    if "," in text:
        family, given = (p.strip() for p in text.split(",", 1))
        return {"family": family, "given": given.split()}
    parts = text.split()
    return {"family": parts[-1] if parts else None, "given": parts[:-1]}


def _round(ndigits: int = 0) -> Transform:
    return _none_safe(lambda v: round(float(v), int(ndigits)))


def _default(fallback: Any) -> Transform:
    def default(value: Any) -> Any:
        return fallback if value is None or value == "" else value
    return default


def _map_values(table: Mapping[Any, Any], strict: bool = True) -> Transform:
    def map_values(value: Any) -> Any:
        if value in table:
            return table[value]
        if strict:
            raise ValueError(f"{value!r} is not one of {sorted(map(str, table))}")
        return value
    return _none_safe(map_values)


def _simple(fn: Callable[[Any], Any]) -> Callable[[], Transform]:
    return lambda: _none_safe(fn)


#: name -> factory; the factory takes the transform's arguments and returns the unary function
TRANSFORMS: Final[dict[str, Callable[..., Transform]]] = {
    "date_to_iso": _simple(lambda v: _to_date(v).isoformat()),
    "iso_to_date": _simple(_to_date),
    "datetime_to_iso": _simple(_iso_datetime),
    "iso_to_datetime": _simple(_to_datetime),
    "unix_to_iso": _simple(_unix_to_iso),
    "iso_to_unix": _simple(_iso_to_unix),
    "trim": _simple(lambda v: str(v).strip()),
    "collapse_spaces": _simple(lambda v: " ".join(str(v).split())),
    "lower": _simple(lambda v: str(v).lower()),
    "upper": _simple(lambda v: str(v).upper()),
    "capitalize": _simple(lambda v: str(v).capitalize()),
    "title": _simple(lambda v: str(v).title()),
    "phone": _simple(_phone),
    "gender": _simple(_gender),
    "gender_to_hl7": _simple(lambda v: _HL7_SEX[_gender(v)]),
    "to_bool": _simple(_to_bool),
    "to_int": _simple(_to_int),
    "to_float": _simple(lambda v: float(v)),
    "to_str": _simple(str),
    "round": _round,
    "json_parse": _simple(lambda v: orjson.loads(v)),
    "json_dump": _simple(lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()),
    "full_name": _simple(_full_name),
    "split_name": _simple(_split_name),
    "strip_non_digits": _simple(lambda v: re.sub(r"\D", "", str(v))),
    "empty_to_none": lambda: (lambda v: None if v is None or str(v).strip() == "" else v),
    "default": _default,
    "map_values": _map_values,
    "boolean_yes_no": _simple(lambda v: "yes" if _to_bool(v) else "no"),
    "yes_no_boolean": _simple(_to_bool),
    "first": _simple(lambda v: (v[0] if v else None) if isinstance(v, (list, tuple)) else v),
    "as_list": _simple(lambda v: list(v) if isinstance(v, (list, tuple)) else [v]),
}


def resolve_transform(spec: TransformSpec) -> Transform | None:
    """A unary function from a name, a ``(name, *args)`` tuple, a callable or None.

    Raises
    ------
    InvalidInputError
        Unknown name or wrong arguments.
    """
    if spec is None or callable(spec):
        return spec
    name, args = (spec, ()) if isinstance(spec, str) else (spec[0], spec[1:])
    factory = TRANSFORMS.get(name)
    if factory is None:
        raise InvalidInputError(f"unknown transform {name!r}; known: {', '.join(sorted(TRANSFORMS))}")
    try:
        return factory(*args)
    except TypeError as exc:
        raise InvalidInputError(f"transform {name!r}: bad arguments {args!r}: {exc}") from exc


# --------------------------------------------------------------------------- paths

_SEGMENT: Final = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+|[A-Za-z][A-Za-z0-9_]*=[^\]]*)\])?$")


def _parse_path(path: str) -> list[tuple[str, str | None]] | None:
    """Segments of a simple dotted path, or None if it is not one (then: FHIRPath)."""
    out: list[tuple[str, str | None]] = []
    # split on dots outside brackets
    for part in re.split(r"\.(?![^\[]*\])", path):
        m = _SEGMENT.match(part)
        if m is None:
            return None
        out.append((m.group(1), m.group(2)))
    return out


def _select(items: list[Any], selector: str) -> Any:
    if selector.isdigit():
        i = int(selector)
        return items[i] if i < len(items) else None
    key, _, want = selector.partition("=")
    for item in items:
        if isinstance(item, Mapping) and str(item.get(key)) == want:
            return item
    return None


def get_path(resource: Mapping[str, Any], path: str) -> Any:
    """Value at a simple dotted path (None where absent); FHIRPath otherwise (first result)."""
    segments = _parse_path(path)
    if segments is None:
        import fhirpathpy

        found = fhirpathpy.evaluate(dict(resource), path)
        return found[0] if found else None
    node: Any = resource
    for name, selector in segments:
        if not isinstance(node, Mapping):
            return None
        node = node.get(name)
        if selector is not None:
            if not isinstance(node, list):
                return None
            node = _select(node, selector)
        if node is None:
            return None
    return node


def set_path(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, with None, remove) the value at a simple dotted path, creating what is missing.

    A ``[key=value]`` selector that matches nothing appends ``{key: value}`` to the list.
    A removal prunes what it leaves empty or partial (see the module docstring).
    """
    segments = _parse_path(path)
    if segments is None:
        raise InvalidInputError(f"cannot write to {path!r}: only simple dotted paths are writable")
    trail: list[tuple[dict[str, Any], str, str | None, Any]] = []  # (parent, name, selector, element)
    _set(resource, segments, value, trail)
    if value is None:
        _prune(trail)


def _prune(trail: list[tuple[dict[str, Any], str, str | None, Any]]) -> None:
    """After a removal, drop the elements it left empty or holding only their selector key."""
    for parent, name, selector, element in reversed(trail):
        if element is not None:  # an object inside a list, reached through a selector
            items = parent.get(name)
            key = selector.partition("=")[0] if selector and not selector.isdigit() else None
            leftover = {k for k in element if k != key} if isinstance(element, dict) else {1}
            if not leftover and isinstance(items, list) and any(e is element for e in items):
                items[:] = [e for e in items if e is not element]
        child = parent.get(name)
        if isinstance(child, dict | list) and not child:
            parent.pop(name)
        elif child is not None:
            return


def _set(resource: dict[str, Any], segments: list[tuple[str, str | None]], value: Any,
         trail: list[tuple[dict[str, Any], str, str | None, Any]]) -> None:
    node: dict[str, Any] = resource
    for depth, (name, selector) in enumerate(segments):
        last = depth == len(segments) - 1
        if selector is None:
            if last:
                if value is None:
                    node.pop(name, None)
                else:
                    node[name] = value
                return
            child = node.get(name)
            if not isinstance(child, dict):
                if value is None:
                    return
                child = node[name] = {}
            trail.append((node, name, None, None))
            node = child
            continue
        items = node.get(name)
        if not isinstance(items, list):
            if value is None:
                return
            items = node[name] = []
        target = _select(items, selector)
        if last:
            trail.append((node, name, None, None))
            if selector.isdigit():
                i = int(selector)
                if value is None:
                    if i < len(items):
                        items.pop(i)
                    return
                while len(items) <= i:
                    items.append(None)
                items[i] = value
            else:
                if target is not None:
                    items.remove(target)
                if value is not None:
                    items.append(value)
            return
        if target is None:
            if value is None:
                return
            if selector.isdigit():
                i = int(selector)
                while len(items) <= i:
                    items.append({})
                target = items[i]
            else:
                k, _, v = selector.partition("=")
                target = {k: v}
                items.append(target)
        if not isinstance(target, dict):
            if value is None:
                return
            raise InvalidInputError(f"cannot write to {name}[{selector}] in a "
                                    f"{type(target).__name__}: not an object")
        trail.append((node, name, selector, target))
        node = target


# --------------------------------------------------------------------------- mappings

@dataclasses.dataclass(frozen=True)
class FieldMapping:
    """One field: FHIR ``remote`` path <-> ``local`` column.

    Parameters
    ----------
    remote : str
        Simple dotted path (``"name[0].family"``) or FHIRPath (read-only).
    local : str
        Column of the local table.
    required : bool
        A record whose value is null is refused (action ``error``) before writing.
    direction : Direction
        ``BOTH`` (default), ``TO_REMOTE`` or ``TO_LOCAL``.
    transform, reverse_transform : str, tuple, callable or None
        Applied local -> remote and remote -> local (see :data:`TRANSFORMS`).
    delete_on_null : bool
        A null local value removes the remote value (default: null means "no
        opinion", nothing is written and it is no difference).
    """

    remote: str
    local: str
    required: bool = False
    direction: Direction = Direction.BOTH
    transform: TransformSpec = None
    reverse_transform: TransformSpec = None
    delete_on_null: bool = False
    _to_remote: Transform | None = dataclasses.field(init=False, repr=False, compare=False)
    _to_local: Transform | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.remote or not self.local:
            raise InvalidInputError("FieldMapping needs a remote path and a local column")
        if not isinstance(self.direction, Direction):
            object.__setattr__(self, "direction", Direction(self.direction))
        if self.writes_remote and _parse_path(self.remote) is None:
            raise InvalidInputError(f"{self.remote!r} is FHIRPath (read-only): use Direction.TO_LOCAL")
        object.__setattr__(self, "_to_remote", resolve_transform(self.transform))
        object.__setattr__(self, "_to_local", resolve_transform(self.reverse_transform))

    @property
    def writes_remote(self) -> bool:
        """Whether the field flows local -> FHIR."""
        return self.direction is not Direction.TO_LOCAL

    @property
    def reads_remote(self) -> bool:
        """Whether the field flows FHIR -> local."""
        return self.direction is not Direction.TO_REMOTE

    def to_remote(self, value: Any) -> Any:
        """The local value as it goes into FHIR (raises InvalidInputError if the transform fails)."""
        return self._apply(self._to_remote, value)

    def to_local(self, value: Any) -> Any:
        """The FHIR value as it goes into the local table."""
        return self._apply(self._to_local, value)

    def _apply(self, fn: Transform | None, value: Any) -> Any:
        if fn is None:
            return value
        try:
            return fn(value)
        except (ValueError, TypeError, KeyError, OverflowError, orjson.JSONDecodeError) as exc:
            raise InvalidInputError(f"{self.local} <-> {self.remote}: {exc}", source=self.local) from exc


@dataclasses.dataclass(frozen=True)
class ResourceMapping:
    """How rows of a local table map to resources of one FHIR type.

    Parameters
    ----------
    resource_type : str
        E.g. ``"Patient"``.
    key : (str, str)
        ``(local key column, identifier system)``: a row matches the resource whose
        ``identifier`` has that system and the row's key as value.
    fields : sequence of FieldMapping
    updated_at : str or None
        Local column with the row's last change (for ``newest_wins``), compared
        with ``meta.lastUpdated``.
    """

    resource_type: str
    key: tuple[str, str]
    fields: Sequence[FieldMapping] = ()
    updated_at: str | None = "updated_at"

    def __post_init__(self) -> None:
        from kit.fhir.resources import is_resource_type

        if not is_resource_type(self.resource_type):
            raise InvalidInputError(f"{self.resource_type!r} is not a FHIR R4 resource type")
        if len(self.key) != 2 or not all(isinstance(k, str) and k for k in self.key):
            raise InvalidInputError("key must be (local key column, identifier system)")
        object.__setattr__(self, "fields", tuple(self.fields))
        locals_ = [f.local for f in self.fields]
        if len(set(locals_)) != len(locals_):
            raise InvalidInputError("two FieldMappings write the same local column")
        remotes = [f.remote for f in self.fields if f.writes_remote]
        if len(set(remotes)) != len(remotes):
            raise InvalidInputError("two FieldMappings write the same remote path")

    @property
    def key_column(self) -> str:
        """The local key column."""
        return self.key[0]

    @property
    def key_system(self) -> str:
        """The identifier system of the key."""
        return self.key[1]

    def key_of(self, resource: Mapping[str, Any]) -> str | None:
        """The key (identifier value with the key system) of a resource, or None."""
        for ident in resource.get("identifier") or ():
            if ident.get("system") == self.key_system:
                value = ident.get("value")
                return None if value is None else str(value)
        return None

    def remote_values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Remote path -> value, for the fields written to FHIR, from one local row.

        A null value is left out (no opinion) unless its field has ``delete_on_null``.
        """
        out = {}
        for f in self.fields:
            if f.writes_remote:
                value = f.to_remote(row.get(f.local))
                if value is not None or f.delete_on_null:
                    out[f.remote] = value
        return out

    def to_resource(self, row: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The resource for ``row``: ``base`` (e.g. the current remote one) with mapped fields set."""
        resource: dict[str, Any] = orjson.loads(orjson.dumps(base)) if base else {}
        resource["resourceType"] = self.resource_type
        key = row.get(self.key_column)
        if key is None:
            raise InvalidInputError(f"row without key {self.key_column!r}")
        set_path(resource, f"identifier[system={self.key_system}].value", str(key))
        for path, value in self.remote_values(row).items():
            set_path(resource, path, _jsonable(value))
        return resource

    def from_resource(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """One local row (key column plus fields read from FHIR) from a resource."""
        row: dict[str, Any] = {self.key_column: self.key_of(resource)}
        for f in self.fields:
            if f.reads_remote:
                row[f.local] = f.to_local(get_path(resource, f.remote))
        return row


def _jsonable(value: Any) -> Any:
    """Values as they appear in FHIR JSON (dates as ISO strings)."""
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value
