"""Audit layers of the HTTP services: one event per request to the integration API and to Medix.

The action is the route: ``api.<route below /api/v1>`` (``api.integration/patient/{patient_id}/all-systems``)
and ``medix.<route below /api>`` (``medix.study/download``); who is the API key's id
(``key:<id>``) or the Medix token's fingerprint (``token:<12 hex of its SHA-256>``),
``anonymous`` for a request without valid credentials. Identifiers come from the
path parameters and from JSON bodies, by key only (``PatientID``, ``patient_id``,
``StudyInstanceUID(s)``, ``AccessionNumber``...): no other value of a body is read.
What a request does through kit's clients (a C-FIND, a FHIR read) is recorded by
those clients as well, attributed to the same principal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import orjson

from kit._audit_asgi import ASGIApp, AuditMiddleware, Scope

__all__ = ["api_audit", "json_identifiers", "medix_audit"]

_KEYS = {
    "patientid": "patient_ids", "mrn": "patient_ids",
    "studyinstanceuid": "study_uids", "studyuid": "study_uids", "studyinstanceuids": "study_uids",
    "studyuids": "study_uids",
    "accessionnumber": "accessions", "accession": "accessions",
}
_NOT_ACTION = re.compile(r"[^A-Za-z0-9_.{}/$\-]")
#: bodies kept for their identifiers (larger ones are DICOM uploads or zips, read by no one here)
JSON_LIMIT = 1024 * 1024
#: most JSON nodes visited per body
MAX_NODES = 100_000
_SKIP = ("/health", "/openapi.json", "/docs", "/redoc", "/metrics")


def _key(name: str) -> str | None:
    return _KEYS.get(name.replace("_", "").replace("-", "").lower())


def json_identifiers(body: bytes, ids: dict[str, list[str]], *, bare_list: str | None = None) -> None:
    """Add the identifiers a JSON body holds under identifier keys (``bare_list``: what a top-level
    list of strings is, e.g. Medix report-status's study UIDs)."""
    if not body or body.lstrip()[:1] not in (b"{", b"["):
        return
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if bare_list and isinstance(parsed, list):
        ids[bare_list] += [v for v in parsed[:MAX_NODES] if isinstance(v, str)]
        return
    todo: list[Any] = [parsed]
    visited = 0
    while todo and visited < MAX_NODES:
        node = todo.pop()
        visited += 1
        if isinstance(node, dict):
            for name, value in node.items():
                kind = _key(str(name))
                if kind is not None and isinstance(value, str | int) and not isinstance(value, bool):
                    ids[kind].append(str(value))
                elif kind is not None and isinstance(value, list):
                    ids[kind] += [str(v) for v in value[:MAX_NODES] if isinstance(v, str)]
                elif isinstance(value, dict | list):
                    todo.append(value)
        elif isinstance(node, list):
            todo.extend(v for v in node[:MAX_NODES] if isinstance(v, dict | list))


def _describer(prefix: str, strip: str, *, response: bool,
               bare_list: str | None = None) -> Callable[[Scope, int, bytes, bytes], dict[str, Any] | None]:
    def describe(scope: Scope, status: int, request: bytes, answer: bytes) -> dict[str, Any] | None:
        route = scope.get("route")
        template = str(getattr(route, "path", "") or "")
        path = str(scope.get("path", ""))
        if (template or path) in _SKIP:
            return None
        name = template.removeprefix(strip).strip("/") if template else "unmatched"
        ids: dict[str, list[str]] = {"patient_ids": [], "study_uids": [], "accessions": []}
        notes = [f"{scope.get('method', '')} HTTP {status}"]
        for param, value in dict(scope.get("path_params") or {}).items():
            kind = _key(str(param))
            if kind is not None:
                ids[kind].append(str(value))
            elif param.endswith("id"):
                notes.append(f"{param} {str(value)[:64]}")
        json_identifiers(request, ids, bare_list=bare_list)
        if response:
            json_identifiers(answer, ids)
        action = f"{prefix}.{_NOT_ACTION.sub('_', name)[:200] or 'root'}"
        return {"action": action, "target": _address(scope), "detail": "; ".join(notes), **ids}

    return describe


def _address(scope: Scope) -> str:
    server = scope.get("server")
    return f"{scope.get('scheme', 'http')}://{server[0]}:{server[1]}" if server else ""


def _api_actor(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    key = state.get("key_id") if isinstance(state, dict) else None
    return f"key:{key}" if key else None


def api_audit(app: ASGIApp) -> AuditMiddleware:
    """The integration API's audit layer (``who`` is the key id once the key is checked)."""
    describe = _describer("api", "/api/v1", response=False)

    def describe_who(scope: Scope, status: int, request: bytes, answer: bytes) -> dict[str, Any] | None:
        fields = describe(scope, status, request, answer)
        return None if fields is None else {**fields, "who": _api_actor(scope) or "anonymous"}

    return AuditMiddleware(app, describe_who, actor=_api_actor, body_limit=JSON_LIMIT)


def medix_audit(app: ASGIApp, allows: Callable[[bytes | None], bool]) -> AuditMiddleware:
    """The Medix service's audit layer; ``allows`` is its token check (a fingerprint names a valid token)."""
    describe = _describer("medix", "/api", response=True, bare_list="study_uids")

    def who(scope: Scope) -> str | None:
        header = dict(scope.get("headers") or []).get(b"authorization")
        if header is None or not allows(header):
            return None
        token = header.strip().partition(b" ")[2].strip()
        return f"token:{hashlib.sha256(token).hexdigest()[:12]}"

    def describe_who(scope: Scope, status: int, request: bytes, answer: bytes) -> dict[str, Any] | None:
        fields = describe(scope, status, request, answer)
        return None if fields is None else {**fields, "who": who(scope) or "anonymous"}

    return AuditMiddleware(app, describe_who, actor=who, body_limit=JSON_LIMIT)
