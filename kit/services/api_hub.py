"""``/api/v1/integrations``, ``/api/v1/sync-jobs`` and ``/api/v1/keys``: the integration hub seed (I/O).

An integration is one connection to a hospital system: a connector of
:data:`kit.hub.registry.REGISTRY`, its settings and credentials. Credentials
are sealed with Fernet before they are stored and are never part of an answer
(only their field names are). An integration can be tested (the Hub's probe for
its connector, with its own settings), paused (tests and sync runs are then
refused, 409) and resumed. An ``ehr-fhir`` integration has sync jobs
(:class:`kit.hub.syncjob.SyncJob`: local rows -> FHIR resources), each run
recorded with its counts and per-row report. Keys: admins make, list and
revoke API keys.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from fastapi import Path as PathParam

from kit.config import Secret, Settings
from kit.errors import InvalidInputError
from kit.services._auth import Role, new_key
from kit.services.api import ADMIN, READ, WRITE, ApiContext, context, upstream
from kit.services.api_checks import (
    IntegrationIn,
    IntegrationPatch,
    SyncJobIn,
    SyncRunIn,
    build_mapping,
    check_integration,
    integration_settings,
)
from kit.services.api_http import Json
from kit.services.api_models import ID_PATTERN, ApiProblem, Text128, _In, records

__all__ = ["router"]

keys_router = APIRouter(prefix="/api/v1", tags=["keys"])
integrations_router = APIRouter(prefix="/api/v1", tags=["integrations"])
sync_router = APIRouter(prefix="/api/v1", tags=["sync jobs"])

Ctx = Annotated[ApiContext, Depends(context)]
IntegrationId = Annotated[str, PathParam(pattern=ID_PATTERN)]
JobId = Annotated[str, PathParam(pattern=ID_PATTERN)]
KeyId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{16}$")]


# -- keys ---------------------------------------------------------------------------------------------


class KeyIn(_In):
    """A new API key's role and an optional label."""

    role: Literal["read", "write", "admin"]
    label: Text128 | None = None


@keys_router.get("/keys", dependencies=[ADMIN], summary="Every API key (never the key or its hash)")
def list_keys(ctx: Ctx) -> Any:
    return {"keys": ctx.store.keys()}


@keys_router.post(
    "/keys",
    dependencies=[ADMIN],
    status_code=201,
    summary="Make an API key: the answer is the only time it is shown",
)
def create_key(body: KeyIn, ctx: Ctx) -> Any:
    key = new_key()
    kid = ctx.store.add_key(key, Role(body.role), body.label)
    return Json({"key": key, "key_id": kid, "role": body.role, "label": body.label}, status_code=201)


@keys_router.delete("/keys/{key_id}", dependencies=[ADMIN], status_code=204, summary="Revoke an API key")
def revoke_key(key_id: KeyId, ctx: Ctx) -> Response:
    ctx.store.revoke_key(key_id)
    ctx.forget_keys()
    return Response(status_code=204)


# -- integrations -------------------------------------------------------------------------------------


def _credentials(ctx: ApiContext, iid: str) -> dict[str, Secret]:
    sealed = ctx.store.sealed_credentials(iid)
    return ctx.vault.open(sealed) if sealed is not None else {}


def _settings_of(ctx: ApiContext, item: dict[str, Any]) -> Settings:
    return integration_settings(
        ctx.settings,
        item["connector"],
        item["auth_type"],
        item["config"],
        _credentials(ctx, item["integration_id"]),
    )


def _active(item: dict[str, Any]) -> None:
    if item["status"] == "paused":
        raise ApiProblem(409, f"integration {item['integration_id']} is paused; resume it first")


@integrations_router.get("/integrations", dependencies=[READ], summary="Every integration")
def list_integrations(ctx: Ctx) -> Any:
    return {"integrations": ctx.store.integrations()}


@integrations_router.post(
    "/integrations",
    dependencies=[ADMIN],
    status_code=201,
    summary="Create an integration (credentials are encrypted at rest and never returned)",
)
def create_integration(body: IntegrationIn, ctx: Ctx) -> Any:
    config, creds = check_integration(body.connector, body.auth_type, body.config, body.credentials)
    sealed = ctx.vault.seal(creds) if creds else None
    item = ctx.store.add_integration(
        body.name, body.connector, body.auth_type, body.description, config, sealed, list(creds)
    )
    return Json(item, status_code=201)


@integrations_router.get(
    "/integrations/{integration_id}",
    dependencies=[READ],
    summary="One integration",
)
def get_integration(integration_id: IntegrationId, ctx: Ctx) -> Any:
    return ctx.store.integration(integration_id)


@integrations_router.patch(
    "/integrations/{integration_id}",
    dependencies=[ADMIN],
    summary="Change an integration: settings merge, credentials (when given) replace",
)
def update_integration(integration_id: IntegrationId, body: IntegrationPatch, ctx: Ctx) -> Any:
    item = ctx.store.integration(integration_id)
    auth_type = body.auth_type or item["auth_type"]
    config = {**item["config"], **(body.config or {})}
    given = body.credentials
    current = (
        {k: v.reveal() for k, v in _credentials(ctx, integration_id).items()} if given is None else given
    )
    if given is None and auth_type != item["auth_type"]:
        current = {}  # the old auth type's credentials do not carry over
    config, creds = check_integration(item["connector"], auth_type, config, current)
    changes: dict[str, Any] = {"auth_type": auth_type, "config": config}
    if body.name is not None:
        changes["name"] = body.name
    if body.description is not None:
        changes["description"] = body.description
    if given is not None or auth_type != item["auth_type"]:
        changes["credentials"] = ctx.vault.seal(creds) if creds else None
        changes["credential_fields"] = sorted(creds)
    return ctx.store.update_integration(integration_id, changes)


@integrations_router.delete(
    "/integrations/{integration_id}",
    dependencies=[ADMIN],
    status_code=204,
    summary="Delete an integration, its sync jobs and their history",
)
def delete_integration(integration_id: IntegrationId, ctx: Ctx) -> Response:
    ctx.store.delete_integration(integration_id)
    return Response(status_code=204)


@integrations_router.post(
    "/integrations/{integration_id}/test",
    dependencies=[WRITE],
    summary="Probe the integration's system with its own settings; the result is kept as last_test",
)
def test_integration(integration_id: IntegrationId, ctx: Ctx) -> Any:
    from kit.hub import Hub

    item = ctx.store.integration(integration_id)
    _active(item)
    hub = Hub(
        _settings_of(ctx, item),
        dicomweb=item["connector"] == "pacs-dicomweb",
        probe_timeout=ctx.settings.api.probe_timeout,
    )
    row = records(hub.status(only=[item["connector"]]))[0][0]
    row["tested"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    ctx.store.update_integration(integration_id, {"last_test": row})
    return row


@integrations_router.post(
    "/integrations/{integration_id}/pause",
    dependencies=[WRITE],
    summary="Pause: tests and sync runs are refused until resumed",
)
def pause_integration(integration_id: IntegrationId, ctx: Ctx) -> Any:
    ctx.store.integration(integration_id)
    return ctx.store.update_integration(integration_id, {"status": "paused"})


@integrations_router.post(
    "/integrations/{integration_id}/resume",
    dependencies=[WRITE],
    summary="Resume a paused integration",
)
def resume_integration(integration_id: IntegrationId, ctx: Ctx) -> Any:
    ctx.store.integration(integration_id)
    return ctx.store.update_integration(integration_id, {"status": "active"})


# -- sync jobs ----------------------------------------------------------------------------------------


@sync_router.get(
    "/integrations/{integration_id}/sync-jobs",
    dependencies=[READ],
    summary="The sync jobs of an integration",
)
def list_jobs(integration_id: IntegrationId, ctx: Ctx) -> Any:
    return {"sync_jobs": ctx.store.jobs(integration_id)}


@sync_router.post(
    "/integrations/{integration_id}/sync-jobs",
    dependencies=[WRITE],
    status_code=201,
    summary="Define a sync job: local rows -> FHIR resources (ehr-fhir integrations)",
)
def create_job(integration_id: IntegrationId, body: SyncJobIn, ctx: Ctx) -> Any:
    item = ctx.store.integration(integration_id)
    if item["connector"] != "ehr-fhir":
        raise ApiProblem(
            422,
            f"sync jobs write FHIR resources: integration {integration_id} is "
            f"{item['connector']}, not ehr-fhir",
        )
    build_mapping(body)  # a bad mapping is refused now, not at the first run
    return Json(ctx.store.add_job(integration_id, body.name, body.model_dump()), status_code=201)


@sync_router.get("/sync-jobs/{job_id}", dependencies=[READ], summary="One sync job")
def get_job(job_id: JobId, ctx: Ctx) -> Any:
    return ctx.store.job(job_id)


@sync_router.delete(
    "/sync-jobs/{job_id}",
    dependencies=[WRITE],
    status_code=204,
    summary="Delete a sync job and its history",
)
def delete_job(job_id: JobId, ctx: Ctx) -> Response:
    ctx.store.delete_job(job_id)
    return Response(status_code=204)


def _frame(rows: list[dict[str, Any]], key: str) -> Any:
    import polars as pl

    if any(key not in r or r[key] is None for r in rows):
        raise InvalidInputError(f"every row needs the key column {key!r}")
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except Exception as exc:  # noqa: BLE001 - polars raises several types for mixed columns
        raise InvalidInputError(
            f"the rows do not make a table (a column of mixed types?): {type(exc).__name__}"
        ) from None


@sync_router.post(
    "/sync-jobs/{job_id}/run",
    dependencies=[WRITE],
    summary="Run a sync job over the rows given; recorded in the job's history",
)
def run_job(job_id: JobId, body: SyncRunIn, ctx: Ctx) -> Any:
    from kit.fhir.client import FhirClient
    from kit.hub.syncjob import ConflictStore, SyncJob

    job = ctx.store.job(job_id)
    item = ctx.store.integration(job["integration_id"])
    _active(item)
    mapping, strategy, merge_rule = build_mapping(SyncJobIn(**job["spec"]))
    frame = _frame(body.rows, mapping.key_column)
    settings = _settings_of(ctx, item)
    run_id = ctx.store.start_run(job_id)
    try:
        with (
            upstream("EHR"),
            FhirClient.from_settings(settings) as client,
            ConflictStore(ctx.store.workspace / "sync-conflicts.db") as conflicts,
        ):
            report = SyncJob(mapping, strategy, merge_rule=merge_rule, conflicts=conflicts).run(frame, client)
    except ApiProblem as exc:
        ctx.store.finish_run(run_id, "failed", None, None, exc.detail[:2000])
        raise
    rows = records(report.frame)[0]
    status = "ok" if report.ok else "errors"
    ctx.store.finish_run(run_id, status, report.counts, rows, None)
    return {"run_id": run_id, "job_id": job_id, "status": status, "counts": report.counts, "report": rows}


@sync_router.get(
    "/sync-jobs/{job_id}/history",
    dependencies=[READ],
    summary="The job's runs, newest first (with each run's per-row report when report=true)",
)
def job_history(
    job_id: JobId, ctx: Ctx, report: bool = False, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> Any:
    return {"runs": ctx.store.runs(job_id, report=report)[:limit]}


#: Every route of this module.
router = APIRouter()
for _part in (keys_router, integrations_router, sync_router):
    router.include_router(_part)
