"""What the embedded FHIR server serves, described: its CapabilityStatement and an OpenAPI document (pure).

The OpenAPI 3.0 document (served at ``/openapi.json``) lists the real routes
with their parameters: per resource type the search parameters of
:data:`kit.fhir.server_search.SEARCH_PARAMS` (as query parameters of
``GET [type]`` and as form fields of ``POST [type]/_search``), the paging and
result parameters, ids and versions as path parameters, the headers the server
reads (``If-Match``, ``If-None-Exist``, ``Prefer``), and JSON bodies for
writes and Bundles. Every 4xx/5xx answer is an OperationOutcome. Written by
hand because FastAPI's generated document cannot see parameters that the
routes read from the raw request.
"""

from __future__ import annotations

from typing import Any

from kit.fhir.server_limits import MAX_OFFSET, MAX_VERSION
from kit.fhir.server_search import MAX_COUNT, SEARCH_PARAMS, params_for

__all__ = ["capability_statement", "openapi_document"]


def capability_statement(base: str) -> dict[str, Any]:
    """The server's CapabilityStatement (what ``GET [base]/metadata`` returns)."""
    interactions = [
        {"code": c}
        for c in (
            "read",
            "vread",
            "update",
            "delete",
            "history-instance",
            "history-type",
            "create",
            "search-type",
        )
    ]
    resources = []
    for rtype, params in sorted(SEARCH_PARAMS.items()):
        if rtype == "*":
            continue
        resources.append(
            {
                "type": rtype,
                "interaction": interactions,
                "versioning": "versioned",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "searchInclude": [f"{rtype}:{p.name}" for p in params if p.type.value == "reference"],
                "searchRevInclude": [
                    f"{src}:{p.name}"
                    for src, ps in sorted(SEARCH_PARAMS.items())
                    if src != "*"
                    for p in ps
                    if p.type.value == "reference" and (not p.targets or rtype in p.targets)
                ],
                "searchParam": [{"name": p.name, "type": p.type.value} for p in params]
                + [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "date": "2026-01-01",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "software": {"name": "kit embedded FHIR server"},
        "implementation": {"description": "kit embedded FHIR R4 server (SQLite)", "url": base},
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
                "operation": [
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                    },
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                    },
                    {
                        "name": "export",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                    },
                ],
            }
        ],
    }


_JSON = "application/fhir+json"
_OO = {"$ref": "#/components/schemas/OperationOutcome"}
_ERRORS = {"4XX": {"description": "OperationOutcome", "content": {_JSON: {"schema": _OO}}},
           "5XX": {"description": "OperationOutcome", "content": {_JSON: {"schema": _OO}}}}
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}$"}


def _ok(description: str, status: str = "200") -> dict[str, Any]:
    content = {_JSON: {"schema": {"type": "object"}}}
    return {status: {"description": description, "content": content}, **_ERRORS}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
            "description": description}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _paging() -> list[dict[str, Any]]:
    return [_query("_count", {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}, "page size"),
            _query("_offset", {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET}, "paging cursor")]


def _search_fields(rtype: str) -> dict[str, dict[str, Any]]:
    fields: dict[str, dict[str, Any]] = {"_id": {"type": "string"}}
    for name, param in params_for(rtype).items():
        fields[name] = {"type": "string", "description": f"{param.type.value} search parameter"}
    refs = [f"{rtype}:{p.name}" for p in params_for(rtype).values() if p.type.value == "reference"]
    if refs:
        fields["_include"] = {"type": "string", "enum": refs}
    fields["_sort"] = {"type": "string"}
    fields["_summary"] = {"type": "string", "enum": ["count", "false"]}
    fields["_elements"] = {"type": "string"}
    return fields


def _resource_body(rtype: str) -> dict[str, Any]:
    schema = {"type": "object", "required": ["resourceType"],
              "properties": {"resourceType": {"type": "string", "enum": [rtype]}, "id": _ID}}
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _type_paths(bp: str, rtype: str) -> dict[str, Any]:
    fields = _search_fields(rtype)
    search_params = [_query(k, v, v.get("description", "")) for k, v in fields.items()] + _paging()
    prefer = _header("Prefer", "return=minimal|representation|OperationOutcome, handling=strict|lenient")
    rid, vid = _path("id", _ID), _path("vid", {"type": "integer", "minimum": 1, "maximum": MAX_VERSION})
    history = [*_paging(), _query("_since", {"type": "string", "format": "date-time"})]
    return {
        f"{bp}/{rtype}": {
            "get": {"operationId": f"search{rtype}", "parameters": [*search_params, prefer],
                    "responses": _ok("searchset Bundle")},
            "post": {"operationId": f"create{rtype}", "requestBody": _resource_body(rtype),
                     "parameters": [_header("If-None-Exist", "conditional create query"), prefer],
                     "responses": {**_ok("created", "201"), "200": {"description": "existing match"}}},
            "put": {"operationId": f"conditionalUpdate{rtype}", "requestBody": _resource_body(rtype),
                    "parameters": search_params, "responses": _ok("updated")},
        },
        f"{bp}/{rtype}/_search": {
            "post": {"operationId": f"searchPost{rtype}", "parameters": [prefer],
                     "requestBody": {"required": False, "content": {"application/x-www-form-urlencoded": {
                         "schema": {"type": "object", "properties": {
                             **fields, "_count": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}}}}}},
                     "responses": _ok("searchset Bundle")},
        },
        f"{bp}/{rtype}/_history": {
            "get": {"operationId": f"history{rtype}", "parameters": history, "responses": _ok("history")},
        },
        f"{bp}/{rtype}/{{id}}": {
            "get": {"operationId": f"read{rtype}", "parameters": [rid], "responses": _ok(rtype)},
            "put": {"operationId": f"update{rtype}", "requestBody": _resource_body(rtype),
                    "parameters": [rid, _header("If-Match", 'W/"<version>"'), prefer],
                    "responses": {**_ok("updated"), "201": {"description": "created"}}},
            "delete": {"operationId": f"delete{rtype}", "parameters": [rid],
                       "responses": {"204": {"description": "deleted"}, **_ERRORS}},
        },
        f"{bp}/{rtype}/{{id}}/_history": {
            "get": {"operationId": f"historyInstance{rtype}", "parameters": [rid, *history],
                    "responses": _ok("history")},
        },
        f"{bp}/{rtype}/{{id}}/_history/{{vid}}": {
            "get": {"operationId": f"vread{rtype}", "parameters": [rid, vid], "responses": _ok(rtype)},
        },
    }


def openapi_document(base_path: str, server_url: str = "") -> dict[str, Any]:
    """The OpenAPI 3.0 description of the server's routes (see the module docstring).

    Parameters
    ----------
    base_path : str
        URL path of the FHIR base (``/fhir/R4``).
    server_url : str
        Scheme and authority the document names as its server (may be empty).
    """
    bp = "/" + base_path.strip("/") if base_path.strip("/") else ""
    entry = {"type": "object", "properties": {
        "fullUrl": {"type": "string"}, "resource": {"type": "object"},
        "request": {"type": "object", "required": ["method", "url"], "properties": {
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "DELETE"]}, "url": {"type": "string"},
            "ifNoneExist": {"type": "string"}, "ifMatch": {"type": "string"}}}}}
    bundle = {"type": "object", "required": ["resourceType", "type"], "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]},
        "type": {"type": "string", "enum": ["batch", "transaction"]},
        "entry": {"type": "array", "items": entry, "maxItems": 5}}}
    export = [_query("_type", {"type": "string"}),
              _query("_since", {"type": "string", "format": "date-time"}),
              _query("_outputFormat", {"type": "string"}),
              {**_header("Prefer", "respond-async"), "required": True}]
    kicked = {"202": {"description": "kicked off"}, **_ERRORS}
    paths: dict[str, Any] = {
        f"{bp}/metadata": {"get": {"operationId": "capabilities", "responses": _ok("CapabilityStatement")}},
        f"{bp}/": {"post": {"operationId": "batchOrTransaction",
                            "requestBody": {"required": True, "content": {_JSON: {"schema": bundle}}},
                            "responses": _ok("batch-response or transaction-response Bundle")}},
        f"{bp}/_history": {"get": {"operationId": "historySystem", "parameters": [
            *_paging(), _query("_since", {"type": "string", "format": "date-time"})],
            "responses": _ok("history")}},
        f"{bp}/$export": {"get": {"operationId": "exportSystem", "parameters": export,
                                  "responses": kicked}},
        f"{bp}/Patient/$export": {"get": {"operationId": "exportPatient", "parameters": export,
                                          "responses": kicked}},
        f"{bp}/Group/{{id}}/$export": {"get": {"operationId": "exportGroup",
                                               "parameters": [_path("id", _ID), *export],
                                               "responses": kicked}},
        f"{bp}/$export-status/{{job}}": {
            "get": {"operationId": "exportStatus", "parameters": [_path("job", {"type": "string"})],
                    "responses": {**_ok("manifest"), "202": {"description": "running"}}},
            "delete": {"operationId": "exportCancel", "parameters": [_path("job", {"type": "string"})],
                       "responses": {"202": {"description": "cancelled"}, **_ERRORS}}},
    }
    for rtype in sorted(SEARCH_PARAMS):
        if rtype != "*":
            paths.update(_type_paths(bp, rtype))
    return {
        "openapi": "3.0.3",
        "info": {"title": "kit embedded FHIR R4 server", "version": "4.0.1"},
        "servers": [{"url": server_url}] if server_url else [],
        "paths": paths,
        "components": {"schemas": {"OperationOutcome": {
            "type": "object", "required": ["resourceType", "issue"],
            "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                           "issue": {"type": "array", "minItems": 1, "items": {"type": "object"}}}}}},
    }
