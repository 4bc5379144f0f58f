"""Who may do what, and secrets at rest: keys and roles on every route, credentials never in clear text.

Every route is taken from the published OpenAPI document, so a new route is covered (and must say
who may call it) without this file changing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kit.services.api_vault import CredentialVault
from kit.stack import Stack
from tests.integration.api.helpers import RunningApi, running_api

pytestmark = pytest.mark.timeout(240)

SECRET = "S3cr3t-Pa55word-XYZZY-42"
TOKEN = "tok-0123456789-PLUGH-secret"
#: Routes only an admin may call (the rest: GET needs read, others write).
ADMIN_ONLY = {
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("delete", "/api/v1/keys/{key_id}"),
    ("post", "/api/v1/integrations"),
    ("patch", "/api/v1/integrations/{integration_id}"),
    ("delete", "/api/v1/integrations/{integration_id}"),
}
OPEN = {("get", "/health")}
FILL = {
    "patient_id": "MRN1001",
    "integration_id": "int-0000000000000000",
    "job_id": "job-0000000000000000",
    "key_id": "0123456789abcdef",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with Stack.ephemeral(services=("fhir", "mllp")) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    with running_api(stack, tmp_path_factory.mktemp("api") / "ws") as running:
        yield running


def _routes(api: RunningApi) -> list[tuple[str, str]]:
    doc = httpx.get(f"{api.base}/openapi.json", timeout=30).json()
    return [
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    url = re.sub(r"\{(\w+)\}", lambda m: FILL[m.group(1)], path)
    return client.request(method.upper(), url, json={} if method in ("post", "patch") else None)


def _is_problem(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and response.json()["status"] == status
    )


def test_every_route_refuses_no_key_a_bad_key_and_a_role_too_low(api: RunningApi) -> None:
    routes = _routes(api)
    assert len(routes) >= 35, routes
    wrong = []
    with (
        api.client(None) as anon,
        api.client("read") as read,
        api.client("write") as write,
        httpx.Client(base_url=api.base, headers={"X-API-Key": "kit_" + "z" * 43}, timeout=30) as unknown,
    ):
        for method, path in routes:
            if (method, path) in OPEN:
                continue
            for who, client, status in (("no key", anon, 401), ("unknown key", unknown, 401)):
                got = _call(client, method, path)
                if not _is_problem(got, status) or "ApiKey" not in got.headers.get("www-authenticate", ""):
                    wrong.append(f"{method} {path} with {who}: {got.status_code}")
            if method != "get" or (method, path) in ADMIN_ONLY:
                got = _call(read, method, path)
                if not _is_problem(got, 403):
                    wrong.append(f"{method} {path} with a read key: {got.status_code}")
            if (method, path) in ADMIN_ONLY:
                got = _call(write, method, path)
                if not _is_problem(got, 403):
                    wrong.append(f"{method} {path} with a write key: {got.status_code}")
    assert not wrong, "\n".join(wrong)


def test_keys_made_revoked_and_never_shown(api: RunningApi) -> None:
    with api.client("admin") as admin:
        made = admin.post("/api/v1/keys", json={"role": "read", "label": "dashboard"})
        assert made.status_code == 201
        key, kid = made.json()["key"], made.json()["key_id"]
        with httpx.Client(base_url=api.base, headers={"X-API-Key": key}, timeout=30) as c:
            assert c.get("/api/v1/integrations").status_code == 200
            listed = admin.get("/api/v1/keys").text
            assert key not in listed and kid in listed and "scrypt" not in listed
            assert admin.delete(f"/api/v1/keys/{kid}").status_code == 204
            assert _is_problem(c.get("/api/v1/integrations"), 401)  # at once: the cache forgets it
            assert admin.delete(f"/api/v1/keys/{kid}").status_code == 404


def _files(workspace: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in workspace.iterdir() if p.name.startswith("api.db")}


def test_credentials_are_encrypted_at_rest_and_never_returned(
    api: RunningApi, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fhir = stack.services["fhir"].address
    seen: list[str] = []
    with api.client("admin") as admin:
        basic = admin.post(
            "/api/v1/integrations",
            json={
                "name": "EHR basic",
                "connector": "ehr-fhir",
                "auth_type": "basic",
                "config": {"base": fhir, "username": "kit"},
                "credentials": {"password": SECRET},
            },
        )
        bearer = admin.post(
            "/api/v1/integrations",
            json={
                "name": "EHR bearer",
                "connector": "ehr-fhir",
                "auth_type": "bearer",
                "config": {"base": fhir},
                "credentials": {"token": TOKEN},
            },
        )
        assert basic.status_code == bearer.status_code == 201, basic.text
        iid = basic.json()["integration_id"]
        assert basic.json()["credential_fields"] == ["password"]
        patched = admin.patch(f"/api/v1/integrations/{iid}", json={"description": "the EHR"})
        assert patched.status_code == 200 and patched.json()["credential_fields"] == ["password"]
        tested = admin.post(f"/api/v1/integrations/{bearer.json()['integration_id']}/test")
        assert tested.status_code == 200 and tested.json()["status"] == "ok", tested.text
        bad = admin.post(
            "/api/v1/integrations",
            json={  # an error about credentials does not echo them
                "name": "x",
                "connector": "pacs-dimse",
                "config": {"host": "h", "port": 104},
                "credentials": {"password": SECRET},
            },
        )
        assert bad.status_code == 422
        seen += [
            basic.text,
            bearer.text,
            patched.text,
            tested.text,
            bad.text,
            admin.get("/api/v1/integrations").text,
            admin.get(f"/api/v1/integrations/{iid}").text,
        ]
    for text in seen:
        assert SECRET not in text and TOKEN not in text
    files = _files(api.workspace)
    assert {"api.db", "api.db-wal"} <= set(files)  # the WAL is there while the API runs: searched too
    for name, data in files.items():  # the database, its WAL and shared memory, byte-wise
        for value in (SECRET, TOKEN):
            assert value.encode() not in data, name
            assert value.encode("utf-16-le") not in data, name
    assert SECRET not in caplog.text and TOKEN not in caplog.text
    # and they are kept: the vault opens them again
    ctx = api.server.app.state.ctx
    opened = CredentialVault.open(ctx.vault, ctx.store.sealed_credentials(iid))
    assert opened["password"].reveal() == SECRET


def test_pause_resume_and_a_sync_job_with_its_history(api: RunningApi, stack: Stack) -> None:
    fhir = stack.services["fhir"].address
    job: dict[str, Any] = {
        "name": "patients",
        "resource_type": "Patient",
        "key_column": "mrn",
        "key_system": "urn:kit:api-test",
        "fields": [
            {"remote": "name[0].family", "local": "family"},
            {"remote": "gender", "local": "sex", "transform": "gender"},
        ],
    }
    with api.client("admin") as admin:
        iid = admin.post(
            "/api/v1/integrations", json={"name": "EHR", "connector": "ehr-fhir", "config": {"base": fhir}}
        ).json()["integration_id"]
        pacs = admin.post(
            "/api/v1/integrations",
            json={"name": "PACS", "connector": "pacs-dimse", "config": {"host": "127.0.0.1", "port": 104}},
        )
    with api.client("write") as c:
        assert (
            c.post(f"/api/v1/integrations/{pacs.json()['integration_id']}/sync-jobs", json=job).status_code
            == 422
        )
        assert (
            c.post(
                f"/api/v1/integrations/{iid}/sync-jobs",
                json={**job, "fields": [{"remote": "gender", "local": "sex", "transform": "nope"}]},
            ).status_code
            == 422
        )
        made = c.post(f"/api/v1/integrations/{iid}/sync-jobs", json=job)
        assert made.status_code == 201, made.text
        jid = made.json()["job_id"]
        rows = {
            "rows": [{"mrn": "API-1", "family": "Tester", "sex": "F"}, {"mrn": "API-2", "family": "Other"}]
        }
        first = c.post(f"/api/v1/sync-jobs/{jid}/run", json=rows)
        assert first.status_code == 200, first.text
        assert first.json()["counts"]["created"] == 2 and first.json()["status"] == "ok"
        again = c.post(f"/api/v1/sync-jobs/{jid}/run", json=rows).json()
        assert again["counts"]["skipped"] == 2
        assert c.post(f"/api/v1/integrations/{iid}/pause").json()["status"] == "paused"
        assert _is_problem(c.post(f"/api/v1/sync-jobs/{jid}/run", json=rows), 409)
        assert _is_problem(c.post(f"/api/v1/integrations/{iid}/test"), 409)
        assert c.post(f"/api/v1/integrations/{iid}/resume").json()["status"] == "active"
        assert c.post(f"/api/v1/integrations/{iid}/test").json()["status"] == "ok"
        history = c.get(f"/api/v1/sync-jobs/{jid}/history", params={"report": "true"}).json()["runs"]
        assert [r["counts"]["created"] for r in history] == [0, 2]  # newest first
        assert {r["key"] for r in history[1]["report"]} == {"API-1", "API-2"}
        assert c.get(f"/api/v1/integrations/{iid}").json()["last_test"]["status"] == "ok"
    with api.client("admin") as admin:
        assert admin.delete(f"/api/v1/integrations/{iid}").status_code == 204
    with api.client("read") as c:
        assert _is_problem(c.get(f"/api/v1/sync-jobs/{jid}"), 404)  # deleted with its integration
