"""Medix auth and hostile peers: 401 without the token, 4xx (never 5xx) for bad input, still answering."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import pytest

from kit.services.medix import MedixService
from kit.stack import Stack
from tests.integration.hub.helpers import sample_study
from tests.integration.medix.helpers import AUTH, GOOD, TOKEN, WebhookReceiver, client

Factory = Callable[..., AbstractContextManager[MedixService]]
ENDPOINTS = [("GET", "/health"), ("POST", "/api/study/download"), ("POST", "/api/study/report-status"),
             ("GET", "/api/study/download/" + "a" * 32), ("GET", "/api/study/download/" + "a" * 32 + "/file"),
             ("GET", "/no/such/path"), ("GET", "/docs"), ("GET", "/openapi.json")]


@pytest.fixture(scope="module")
def service(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> MedixService:
    from kit.config import Secret
    from tests.integration.medix.conftest import medix_settings

    settings = medix_settings(stack.client_settings(), tmp_path_factory.mktemp("medix"),
                              max_report_studies=50)
    svc = MedixService(settings, token=Secret(TOKEN), port=0).start()
    yield svc  # type: ignore[misc]
    svc.stop()


def _still_good(service: MedixService) -> None:
    """The service answers a good request at normal speed and runs a job to the end."""
    study = sample_study("MRN1003", "ES")["study_instance_uid"]
    with WebhookReceiver() as hook, client(service.address) as c:
        started = time.monotonic()
        assert c.get("/health").status_code == 200
        assert time.monotonic() - started < 1.0
        r = c.post("/api/study/download", json={"StudyInstanceUID": study, "WebhookUri": hook.url})
        assert r.status_code == 202
        assert hook.wait_final() == GOOD


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN}x", "Bearer", TOKEN])
def test_no_or_wrong_token_is_refused(service: MedixService, method: str, path: str,
                                      authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = httpx.request(method, service.address + path, headers=headers, json={}, timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in r.text


def test_good_token_is_accepted_and_never_logged(service: MedixService,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with client(service.address) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/api/study/download/" + "a" * 32).status_code == 404
        assert c.get("/no/such/path").status_code == 404
    _still_good(service)
    assert TOKEN not in caplog.text


@pytest.mark.parametrize(("body", "why"), [
    ({"StudyInstanceUID": "1.2.abc", "WebhookUri": "http://127.0.0.1:9/h"}, "DICOM UID"),
    ({"StudyInstanceUID": "1.02.3", "WebhookUri": "http://127.0.0.1:9/h"}, "DICOM UID"),
    ({"StudyInstanceUID": "1." + "2" * 70, "WebhookUri": "http://127.0.0.1:9/h"}, "64"),
    ({"StudyInstanceUID": ["1.2.3"], "WebhookUri": "http://127.0.0.1:9/h"}, "string"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "ftp://127.0.0.1/h"}, "http"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "file:///etc/passwd"}, "http"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "http://user:pw@127.0.0.1/h"}, "credentials"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "http://127.0.0.1:9/h",
      "WebhookHeaders": {"X-A": "v\r\nX-Injected: 1"}}, "printable"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "http://127.0.0.1:9/h",
      "WebhookHeaders": {"Content-Length": "0"}}, "HTTP client"),
    ({"StudyInstanceUID": "1.2.3", "WebhookUri": "http://127.0.0.1:9/h",
      "WebhookHeaders": {f"X-{i}": "v" for i in range(40)}}, "more than"),
    ({"StudyInstanceUID": "1.2.3"}, "WebhookUri"),
    ([1, 2, 3], "object"),
])
def test_bad_download_requests_are_400(service: MedixService, body: object, why: str) -> None:
    with client(service.address) as c:
        r = c.post("/api/study/download", json=body)
    assert r.status_code == 400 and why in r.json()["error"], r.text


def test_oversize_and_garbage_bodies_are_4xx(service: MedixService) -> None:
    limit = service.settings.medix.max_body_bytes
    with client(service.address) as c:
        big = c.post("/api/study/download", content=b"{" + b" " * limit + b"}",
                     headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        chunked = c.post("/api/study/download", content=iter([b"[" + b"1," * 20000] * 4 + [b"1]"]))
        assert chunked.status_code == 413  # no Content-Length: cut off while reading
        assert c.post("/api/study/download", content=b"\xff\xfe not json").status_code == 400
        assert c.post("/api/study/report-status", content=b"").status_code == 400
    _still_good(service)


def test_thousands_of_studies_in_report_status_are_refused(service: MedixService) -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(5000)]
    with client(service.address) as c:
        over_body = c.post("/api/study/report-status", json={"StudyInstanceUIDs": uids})
        over_list = c.post("/api/study/report-status", json={"StudyInstanceUIDs": uids[:51]})
        bad_uid = c.post("/api/study/report-status", json={"StudyInstanceUIDs": ["1.2.3", "x.y"]})
    assert over_body.status_code == 413
    assert over_list.status_code == 400 and "at most 50" in over_list.json()["error"]
    assert bad_uid.status_code == 400 and "[1]" in bad_uid.json()["error"]
    _still_good(service)


def test_slow_and_half_open_peers_do_not_stop_the_service(service: MedixService) -> None:
    port = service.port
    held = []
    for _ in range(20):  # connect and send half a request head, then nothing
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /api/study/download HTTP/1.1\r\nHost: x\r\n")
        held.append(s)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    raw.sendall(b"\x16\x03\x01garbage, not HTTP\r\n\r\n")
    assert raw.recv(100).startswith(b"HTTP/1.1 400")
    raw.close()
    try:
        _still_good(service)
    finally:
        for s in held:
            s.close()


def test_unknown_job_and_bad_job_id_are_404(service: MedixService) -> None:
    with client(service.address) as c:
        assert c.get("/api/study/download/../../etc").status_code == 404
        assert c.get("/api/study/download/" + "z" * 32).status_code == 404
        assert c.get("/api/study/download/" + "0" * 32 + "/file").status_code == 404
    assert AUTH["Authorization"].endswith(TOKEN)
