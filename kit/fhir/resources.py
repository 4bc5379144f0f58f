"""FHIR R4 resources as plain dicts: validation, OperationOutcome, references, bundles (pure).

Validation stands on ``fhir.resources.R4B`` (pydantic models of the R4B
specification, which for the resources kit uses is R4): :func:`validate` builds
the model and turns pydantic's errors into OperationOutcome-shaped issues
(``severity``, ``code``, ``diagnostics``, ``expression``) on a
:class:`~kit.errors.FhirValidationError`. Resources stay plain JSON dicts
everywhere else in kit (clients, server, frames), because that is what goes over
the wire and into SQLite.

Written by hand here (no library does it): the mapping of pydantic error
locations to FHIRPath expressions, and the small builders (:func:`bundle`,
:func:`identifier`, :func:`codeable_concept`, ...) the examples, tests and
notebooks use to assemble resources.

>>> p = validate({"resourceType": "Patient", "id": "p1", "birthDate": "1958-03-14"})
>>> reference(p)
'Patient/p1'
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

from kit.errors import FhirValidationError

__all__ = [
    "BUNDLE_TYPES",
    "ISSUE_SEVERITIES",
    "MAX_DIAGNOSTICS",
    "MAX_OUTCOME_MESSAGE",
    "NAMESPACE",
    "bundle",
    "codeable_concept",
    "coding",
    "deterministic_id",
    "identifier",
    "is_resource_type",
    "issue",
    "operation_outcome",
    "outcome_issues",
    "outcome_message",
    "parse_reference",
    "reference",
    "validate",
]

#: Bundle.type values (R4).
BUNDLE_TYPES: Final = frozenset({
    "document", "message", "transaction", "transaction-response", "batch", "batch-response",
    "history", "searchset", "collection"})
#: OperationOutcome.issue.severity values.
ISSUE_SEVERITIES: Final = frozenset({"fatal", "error", "warning", "information"})
#: Characters of one issue's diagnostics (and of its expressions) :func:`outcome_message` keeps.
MAX_DIAGNOSTICS: Final = 2_000
#: Characters of the whole message :func:`outcome_message` returns (a server's error message
#: ends up in an exception and on the terminal: 50 MB of diagnostics must not).
MAX_OUTCOME_MESSAGE: Final = 8_000
#: uuid5 namespace for kit's deterministic resource ids.
NAMESPACE: Final = uuid.UUID("6f1c1d0e-8c57-5a3e-9a55-6b69742d6668")

# pydantic error type -> OperationOutcome issue-type code (http://hl7.org/fhir/issue-type)
_ISSUE_CODES: Final = {
    "missing": "required",
    "extra_forbidden": "structure",
    "fhir-validation-wrong-resource-type": "structure",
}


@lru_cache(maxsize=512)  # bounded: the names come from peers (there are ~150 real types)
def _model_class(resource_type: str) -> Any:
    """The fhir.resources.R4B model class of a resource type, or None if it is not a resource."""
    from fhir.resources.R4B import get_fhir_model_class

    if (not resource_type or len(resource_type) > 64 or not resource_type.isascii()
            or not resource_type[0].isupper() or not resource_type.isalnum()):
        return None
    try:
        cls = get_fhir_model_class(resource_type)
    except (ValueError, AttributeError):
        return None
    base = get_fhir_model_class("Resource")
    if resource_type in ("Resource", "DomainResource") or not issubclass(cls, base):
        return None
    return cls


def is_resource_type(name: str) -> bool:
    """Whether ``name`` is a concrete FHIR R4 resource type (``"Patient"`` yes, ``"HumanName"`` no)."""
    return _model_class(name) is not None


def issue(severity: str, code: str, diagnostics: str, expression: str | Sequence[str] | None = None
          ) -> dict[str, Any]:
    """One OperationOutcome.issue as a dict.

    Parameters
    ----------
    severity : str
        ``fatal``, ``error``, ``warning`` or ``information``.
    code : str
        An issue-type code (``invalid``, ``required``, ``not-found``, ``conflict`` ...).
    diagnostics : str
        Human-readable detail.
    expression : str or sequence of str, optional
        FHIRPath(s) of the offending element(s).
    """
    if severity not in ISSUE_SEVERITIES:
        raise ValueError(f"severity must be one of {sorted(ISSUE_SEVERITIES)}, not {severity!r}")
    if not code:
        raise ValueError("an issue needs a code")
    out: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        out["expression"] = [expression] if isinstance(expression, str) else list(expression)
    return out


def operation_outcome(issues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome resource from issue dicts (see :func:`issue`).

    An ``expression`` given as a string is wrapped in a list; an empty issue list
    yields one ``information`` issue, because OperationOutcome requires at least one.
    """
    out = []
    for i in issues:
        entry = {k: v for k, v in i.items() if v is not None}
        entry.setdefault("severity", "error")
        entry.setdefault("code", "processing")
        if isinstance(entry.get("expression"), str):
            entry["expression"] = [entry["expression"]]
        out.append(entry)
    if not out:
        out = [issue("information", "informational", "All OK")]
    return {"resourceType": "OperationOutcome", "issue": out}


def outcome_issues(outcome: Any) -> list[dict[str, Any]]:
    """The issues of an OperationOutcome dict (empty list if it is not one).

    Never raises, whatever JSON a server sent: an ``issue`` that is not a list, and
    items of it that are not objects, are left out.
    """
    if not isinstance(outcome, Mapping) or outcome.get("resourceType") != "OperationOutcome":
        return []
    found = outcome.get("issue")
    if not isinstance(found, list):
        return []
    return [dict(i) for i in found if isinstance(i, Mapping)]


def _cut(text: str, size: int) -> str:
    """``text``, or its first ``size`` characters saying how much was cut."""
    if len(text) <= size:
        return text
    return f"{text[:size]}... [cut: {len(text) - size:,} more characters]"


def _issue_text(item: Mapping[str, Any]) -> str:
    """One issue as text: diagnostics, else details.text, else the code, else the severity (else
    ``"no detail"``); then its expressions in parentheses."""
    details = item.get("details")
    for text in (item.get("diagnostics"), details.get("text") if isinstance(details, Mapping) else None,
                 item.get("code"), item.get("severity")):
        if isinstance(text, str) and text:
            break
    else:
        text = "no detail"
    text = _cut(text, MAX_DIAGNOSTICS)
    found = item.get("expression")
    paths = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    where = _cut(", ".join(p for p in paths if isinstance(p, str) and p), MAX_DIAGNOSTICS)
    return f"{text} ({where})" if where else text


def outcome_message(outcome: Any) -> str:
    """A one-line summary of an OperationOutcome (its issues' diagnostics joined), bounded.

    Never raises, whatever JSON a server sent: parts of an issue that cannot be read
    (``details`` that is not an object, ``expression`` items that are not strings ...)
    are left out. Each issue's text is cut to :data:`MAX_DIAGNOSTICS` characters and the
    whole message to :data:`MAX_OUTCOME_MESSAGE`, saying so.
    """
    parts: list[str] = []
    size = left = 0
    issues = outcome_issues(outcome)
    for n, item in enumerate(issues):
        if size >= MAX_OUTCOME_MESSAGE:
            left = len(issues) - n
            break
        text = _issue_text(item)
        parts.append(text)
        size += len(text) + 2
    message = _cut("; ".join(parts) or "OperationOutcome without issues", MAX_OUTCOME_MESSAGE)
    return f"{message}; [cut: {left:,} more issues]" if left else message


def _fhirpath(root: str, loc: Sequence[int | str]) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("resource_type", "__root__"):
            continue
        else:
            path += f".{part}"
    return path


def validate(resource: Mapping[str, Any], *, resource_type: str | None = None) -> dict[str, Any]:
    """Validate a FHIR R4 resource given as JSON; return it (a copy) if valid.

    Parameters
    ----------
    resource : mapping
        The resource as parsed JSON.
    resource_type : str, optional
        The type it must have (e.g. the ``[type]`` of the URL it was sent to).

    Returns
    -------
    dict
        A deep copy of ``resource``, unchanged.

    Raises
    ------
    FhirValidationError
        Not a JSON object, no or unknown ``resourceType``, a type other than
        ``resource_type``, or the model rejects it. ``issues`` holds one
        OperationOutcome-shaped dict per problem, with a FHIRPath ``expression``.
    """
    if not isinstance(resource, Mapping):
        raise FhirValidationError(
            "not a FHIR resource: expected a JSON object",
            issues=[issue("error", "structure", f"expected a JSON object, got {type(resource).__name__}")])
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise FhirValidationError(
            "not a FHIR resource: no resourceType",
            issues=[issue("error", "required", "resourceType is missing", "resourceType")])
    cls = _model_class(rtype)
    if cls is None:
        raise FhirValidationError(
            f"not a FHIR resource: unknown resourceType {rtype!r}",
            issues=[issue("error", "not-supported", f"unknown resource type {rtype!r}", "resourceType")])
    if resource_type is not None and rtype != resource_type:
        raise FhirValidationError(
            f"expected a {resource_type} resource, got {rtype}",
            issues=[issue("error", "invalid", f"resourceType {rtype!r} does not match {resource_type!r}",
                          "resourceType")])
    from pydantic import ValidationError

    try:
        cls.model_validate(resource)
    except ValidationError as exc:
        issues = [
            issue("error", _ISSUE_CODES.get(str(e.get("type")), "invalid"),
                  str(e.get("msg", "invalid")).replace("\n", " "), _fhirpath(rtype, e.get("loc", ())))
            for e in exc.errors()
        ]
        first = issues[0]
        raise FhirValidationError(
            f"invalid {rtype}: {first['diagnostics']} at {first['expression'][0]}"
            + (f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""),
            issues=issues) from exc
    except (ValueError, TypeError) as exc:  # validators raising outside pydantic's wrapper
        raise FhirValidationError(f"invalid {rtype}: {exc}",
                                  issues=[issue("error", "invalid", str(exc), rtype)]) from exc
    return copy.deepcopy(dict(resource))


def reference(resource: Mapping[str, Any]) -> str:
    """The relative reference ``"Type/id"`` of a resource (which must have an id)."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not rtype or not isinstance(rid, str) or not rid:
        raise FhirValidationError("a reference needs a resource with resourceType and id",
                                  issues=[issue("error", "required", "resourceType and id are required",
                                                "id")])
    return f"{rtype}/{rid}"


def parse_reference(ref: str) -> tuple[str, str]:
    """Split ``"Type/id"`` (or an absolute ``.../Type/id[/_history/n]`` URL) into ``(type, id)``."""
    parts = [p for p in ref.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) < 2 or not is_resource_type(parts[-2]) or not parts[-1]:
        raise FhirValidationError(f"not a resource reference: {ref!r}",
                                  issues=[issue("error", "invalid", f"cannot parse reference {ref!r}")])
    return parts[-2], parts[-1]


def deterministic_id(*parts: str) -> str:
    """A resource id derived from ``parts`` (uuid5): the same parts always give the same id."""
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A Coding dict."""
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def codeable_concept(*codings: Mapping[str, Any], text: str | None = None) -> dict[str, Any]:
    """A CodeableConcept from Coding dicts (see :func:`coding`) and an optional text."""
    out: dict[str, Any] = {}
    if codings:
        out["coding"] = [dict(c) for c in codings]
    if text:
        out["text"] = text
    return out


def identifier(system: str, value: str, *, type_code: str | None = None,
               type_system: str = "http://terminology.hl7.org/CodeSystem/v2-0203",
               use: str | None = None) -> dict[str, Any]:
    """An Identifier dict; ``type_code`` (e.g. ``"MR"``, ``"ACSN"``) adds an Identifier.type coding."""
    out: dict[str, Any] = {}
    if use:
        out["use"] = use
    if type_code:
        out["type"] = {"coding": [{"system": type_system, "code": type_code}]}
    out["system"] = system
    out["value"] = value
    return out


def _entry(item: Mapping[str, Any], btype: str) -> dict[str, Any]:
    if "resourceType" not in item:  # already an entry
        return copy.deepcopy(dict(item))
    resource = copy.deepcopy(dict(item))
    entry: dict[str, Any] = {}
    rid = resource.get("id")
    if btype in ("transaction", "batch"):
        if rid:
            entry["fullUrl"] = f"{resource['resourceType']}/{rid}"
            entry["resource"] = resource
            entry["request"] = {"method": "PUT", "url": f"{resource['resourceType']}/{rid}"}
        else:
            entry["fullUrl"] = f"urn:uuid:{uuid.uuid4()}"
            entry["resource"] = resource
            entry["request"] = {"method": "POST", "url": resource["resourceType"]}
    else:
        if rid:
            entry["fullUrl"] = f"{resource['resourceType']}/{rid}"
        entry["resource"] = resource
    return entry


def bundle(entries: Iterable[Mapping[str, Any]], type: str = "collection", *,  # noqa: A002
           id: str | None = None, timestamp: str | None = None) -> dict[str, Any]:  # noqa: A002
    """A Bundle dict.

    Parameters
    ----------
    entries : iterable of mapping
        Resources (dicts with ``resourceType``) or ready-made entries (dicts with
        ``resource``/``request``/``fullUrl``). In a ``transaction`` or ``batch`` a
        resource with an id becomes ``PUT Type/id``, one without becomes
        ``POST Type`` with a ``urn:uuid`` fullUrl.
    type : str
        Bundle.type (``collection``, ``transaction``, ``batch``, ``searchset`` ...).
    id, timestamp : str, optional
        Bundle.id and Bundle.timestamp.
    """
    if type not in BUNDLE_TYPES:
        raise ValueError(f"Bundle.type must be one of {sorted(BUNDLE_TYPES)}, not {type!r}")
    out: dict[str, Any] = {"resourceType": "Bundle"}
    if id:
        out["id"] = id
    out["type"] = type
    if timestamp:
        out["timestamp"] = timestamp
    out["entry"] = [_entry(e, type) for e in entries]
    return out
