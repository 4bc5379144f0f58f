"""Audit descriptions of FHIR accesses: the client's requests, the embedded server's answers, exports.

One request is one event: its action from the method and path (``fhir.read``,
``fhir.search``, ``fhir.create``, ``fhir.update``, ``fhir.delete``,
``fhir.transaction``), its patients from the URL (``Patient/<id>``, the
``patient``/``subject`` search parameters) and from the resources sent and
returned: ``Patient/<id>`` of every Patient and every ``subject``/``patient``
reference, the MR-typed identifiers (MRNs), ACSN-typed identifiers (accession
numbers) and ImagingStudy DICOM UIDs. Nothing else of a resource is kept.
Bulk ``$export`` is one ``fhir.export`` event per :meth:`BulkExport.run
<kit.fhir.bulk.BulkExport.run>` (its polls and downloads are not events).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from kit import audit
from kit._audit_asgi import ASGIApp, AuditMiddleware, Scope

__all__ = ["FhirAuditMiddleware", "action_of", "audited_export", "audited_send", "identifiers"]

F = TypeVar("F", bound=Callable[..., Any])

_PATIENT_PARAMS = frozenset({"patient", "subject", "patient:Patient", "subject:Patient", "beneficiary"})
_REFERENCE_KEYS = ("subject", "patient", "beneficiary")
#: most entries of one Bundle read for identifiers
MAX_ENTRIES = 100_000
#: largest body parsed for identifiers
MAX_BODY = 64 * 1024 * 1024


def action_of(method: str, path: str) -> str | None:
    """The audit action of a FHIR interaction, from its method and its path below the base.

    ``fhir.export`` for an ``$export`` kick-off; None for what is not a data access
    (``metadata``, ``.well-known``) and for an export's status polls and file downloads
    (the kick-off, or :func:`audited_export`'s one event per export, stands for them).
    """
    parts = [p for p in path.split("/") if p]
    if parts and parts[-1] == "$export":
        return "fhir.export"
    if any(p.startswith("$export") for p in parts) or (parts and parts[0] in ("metadata", ".well-known")):
        return None
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "fhir.read" if len(parts) >= 2 and not parts[1].startswith(("_", "$")) else "fhir.search"
    if method == "POST":
        if not parts:
            return "fhir.transaction"
        if len(parts) == 2 and parts[1] == "_search":
            return "fhir.search"
        return "fhir.create" if len(parts) == 1 else "fhir.operation"
    if method in ("PUT", "PATCH"):
        return "fhir.update"
    if method == "DELETE":
        return "fhir.delete"
    return None


def _ids() -> dict[str, list[str]]:
    return {"patient_ids": [], "study_uids": [], "accessions": []}


def _patient_ref(value: Any) -> str | None:
    """``Patient/<id>`` of a reference (relative, absolute or with a version), else None."""
    if not isinstance(value, str):
        return None
    parts = value.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "Patient" and parts[i + 1]:
            return f"Patient/{parts[i + 1]}"
    return None


def _codes(identifier: Mapping[str, Any]) -> set[str]:
    kind = identifier.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    return {str(c.get("code")) for c in codings or () if isinstance(c, dict)}


def _resource(resource: Any, ids: dict[str, list[str]], depth: int = 0) -> int:
    """Add the identifiers of one resource (a Bundle: of its entries); how many resources it held."""
    if not isinstance(resource, dict):
        return 0
    kind = resource.get("resourceType")
    if kind == "Bundle" and depth < 2:
        entries = resource.get("entry")
        count = 0
        for entry in (entries if isinstance(entries, list) else [])[:MAX_ENTRIES]:
            if isinstance(entry, dict):
                count += _resource(entry.get("resource"), ids, depth + 1)
        return count
    if kind == "OperationOutcome":
        return 0
    if kind == "Patient" and isinstance(resource.get("id"), str):
        ids["patient_ids"].append(f"Patient/{resource['id']}")
    for key in _REFERENCE_KEYS:
        ref = resource.get(key)
        found = _patient_ref(ref.get("reference")) if isinstance(ref, dict) else None
        if found:
            ids["patient_ids"].append(found)
    identifiers = resource.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
            continue
        codes, value = _codes(identifier), identifier["value"]
        if kind == "Patient" and "MR" in codes:
            ids["patient_ids"].append(value)
        elif "ACSN" in codes:
            ids["accessions"].append(value)
        elif kind == "ImagingStudy" and value.startswith("urn:oid:"):
            ids["study_uids"].append(value.removeprefix("urn:oid:"))
    return 1


def identifiers(bodies: Iterable[bytes], params: Iterable[tuple[str, str]] = (),
                path: str = "") -> tuple[dict[str, list[str]], int | None]:
    """The identifiers a FHIR interaction touched, and how many resources came back.

    ``bodies`` are JSON bodies (request, then response; anything not JSON is
    skipped); ``params`` the search parameters; ``path`` the path below the base.
    """
    ids = _ids()
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "Patient" and not parts[1].startswith(("_", "$")):
        ids["patient_ids"].append(f"Patient/{parts[1]}")
    for name, value in params:
        if name in _PATIENT_PARAMS or (name == "_id" and parts[:1] == ["Patient"]):
            for piece in str(value).split(","):
                ref = _patient_ref(piece) or (f"Patient/{piece}" if piece and "/" not in piece
                                              and name != "subject" else None)
                if ref:
                    ids["patient_ids"].append(ref)
    count: int | None = None
    for body in bodies:
        if not body or len(body) > MAX_BODY or body.lstrip()[:1] != b"{":
            continue
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            continue
        count = _resource(parsed, ids)
    return ids, count


# -- the client ------------------------------------------------------------------------------------

def _describe_send(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any,
                   error: BaseException | None) -> dict[str, Any] | None:
    client, method, url = args[0], str(args[1]).upper(), str(args[2])
    base = client.base
    if not (url == base or url.startswith((base + "/", base + "?"))):
        return None  # a Bulk Data status or file URL: part of an export
    split = urlsplit(url[len(base):])
    action = action_of(method, split.path)
    if action is None or action == "fhir.export":  # an export is one event of BulkExport.run
        return None
    params = [*parse_qsl(split.query), *(kwargs.get("params") or ())]
    bodies = [kwargs.get("content") or b""]
    fields: dict[str, Any] = {"action": action, "target": base}
    status = getattr(result, "status_code", None)
    if result is not None and not kwargs.get("stream") and "json" in result.headers.get("content-type", ""):
        bodies.append(result.content)
    ids, count = identifiers(bodies, params, split.path)
    if status is not None:
        fields["detail"] = f"HTTP {status}"
        if status >= 400:
            fields.update(outcome="failed", error=f"HTTP{status}")
    if count is not None and result is not None:
        fields["count"] = count
    return {**fields, **ids}


def audited_send(fn: F) -> F:
    """Audit :meth:`FhirClient.send <kit.fhir.client.FhirClient.send>`: one event per request."""
    return audit.audited("fhir.read", _describe_send)(fn)


def _describe_export(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any,
                     error: BaseException | None) -> dict[str, Any]:
    exporter = args[0]
    level = kwargs.get("level", args[2] if len(args) > 2 else "system")
    notes = [f"level {getattr(level, 'value', level)}"]
    if kwargs.get("group_id"):
        notes.append(f"group {kwargs['group_id']}")
    if kwargs.get("types"):
        notes.append("types " + ",".join(map(str, kwargs["types"])))
    fields: dict[str, Any] = {"target": exporter.client.base, "detail": "; ".join(notes)}
    files = getattr(result, "files", None)
    if files is not None and "resources" in files.columns:
        fields["count"] = int(files.get_column("resources").sum() or 0)
    if kwargs.get("group_id") is None and str(getattr(level, "value", level)) == "patient":
        fields["detail"] += "; every patient"
    return fields


def audited_export(fn: F) -> F:
    """Audit :meth:`BulkExport.run <kit.fhir.bulk.BulkExport.run>` as one ``fhir.export`` event."""
    return audit.audited("fhir.export", _describe_export)(fn)


# -- the embedded server ---------------------------------------------------------------------------

def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"peer:{client[0]}" if client else "peer:unknown"


class FhirAuditMiddleware(AuditMiddleware):
    """The embedded FHIR server's audit layer: one ``side="server"`` event per data request."""

    def __init__(self, app: ASGIApp, *, base_path: str = "/fhir/R4") -> None:
        root = "/" + base_path.strip("/") if base_path.strip("/") else ""
        super().__init__(app, functools.partial(_describe_served, root))


def _describe_served(root: str, scope: Scope, status: int, request: bytes,
                     response: bytes) -> dict[str, Any] | None:
    path = str(scope.get("path", ""))
    if not path.startswith(root):
        return None
    rel = path[len(root):]
    action = action_of(str(scope.get("method", "GET")), rel)
    if action is None:
        return None
    params = parse_qsl(bytes(scope.get("query_string") or b"").decode("latin-1"))
    ids, count = identifiers([request, response], params, rel)
    server = scope.get("server")
    target = f"{scope.get('scheme', 'http')}://{server[0]}:{server[1]}{root}" if server else root
    return {"action": action, "who": _peer(scope), "target": target, "count": count,
            "detail": f"HTTP {status}", **ids}
