"""The embedded FHIR server over real HTTP (httpx) on an ephemeral port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from kit.examples.fhir import MRN_SYSTEM, generate
from kit.fhir.server import EmbeddedFhirServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[EmbeddedFhirServer]:
    with EmbeddedFhirServer(tmp_path / "fhir.db", export_delay=0.3) as s:
        yield s


@pytest.fixture()
def client(server: EmbeddedFhirServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as c:
        yield c


def patient(family: str = "Moreau", mrn: str = "MRN1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
        "name": [{"family": family, "given": ["Alice"]}],
        "gender": "female",
        "birthDate": "1958-03-14",
        **extra,
    }


def observation(pid: str, code: str = "8867-4", when: str = "2026-01-12T09:14:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_metadata_and_content_type(server: EmbeddedFhirServer, client: httpx.Client) -> None:
    assert server.address == f"http://127.0.0.1:{server.port}/fhir/R4" and server.port > 0
    r = client.get("/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"].startswith("4.0")
    types = {x["type"]: x for x in cs["rest"][0]["resource"]}
    assert {"name": "birthdate", "type": "date"} in types["Patient"]["searchParam"]
    assert {op["definition"].rsplit("/", 1)[1] for op in cs["rest"][0]["operation"]} >= {
        "export",
        "group-export",
    }


def test_crud_versions_etag_history(client: httpx.Client) -> None:
    r = client.post("/Patient", json=patient())
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"'
    pid = r.json()["id"]
    assert r.headers["location"].endswith(f"/Patient/{pid}/_history/1")
    got = client.get(f"/Patient/{pid}")
    assert got.json()["name"][0]["family"] == "Moreau" and got.headers["etag"] == 'W/"1"'
    body = {**got.json(), "gender": "other"}
    stale = client.put(f"/Patient/{pid}", json=body, headers={"If-Match": 'W/"7"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    ok = client.put(f"/Patient/{pid}", json=body, headers={"If-Match": 'W/"1"'})
    assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "2"
    assert client.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert client.get(f"/Patient/{pid}/_history/2").json()["gender"] == "other"
    assert client.get(f"/Patient/{pid}/_history/9").status_code == 404
    created = client.put("/Patient/fixed-id", json={**patient(mrn="MRN9"), "id": "fixed-id"})
    assert created.status_code == 201
    assert client.put("/Patient/other", json={**patient(), "id": "mismatch"}).status_code == 400
    assert client.delete(f"/Patient/{pid}").status_code == 204
    gone = client.get(f"/Patient/{pid}")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    missing = client.get("/Patient/never")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    hist = client.get(f"/Patient/{pid}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 3
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT", "POST"]
    assert client.get("/Patient/_history").json()["total"] == 4
    assert client.get("/NotAType/1").status_code == 404


def test_validation_errors_are_operation_outcomes(client: httpx.Client) -> None:
    r = client.post("/Patient", json={"resourceType": "Patient", "birthDate": "14.03.1958"})
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.birthDate"]
    assert client.post("/Observation", json=patient()).status_code == 400
    assert (
        client.post(
            "/Patient", content=b"{not json", headers={"content-type": "application/fhir+json"}
        ).status_code
        == 400
    )
    assert client.get("/Patient", params={"nonsense": "1"}).status_code == 400
    assert (
        client.get("/Patient", params={"nonsense": "1"}, headers={"Prefer": "handling=lenient"}).status_code
        == 200
    )


def test_search_families(client: httpx.Client) -> None:
    a = client.post("/Patient", json=patient("Müller", "MRN1")).json()["id"]
    b = client.post("/Patient", json=patient("Meier", "MRN2", gender="male", birthDate="1983-05-30")).json()[
        "id"
    ]
    o1 = client.post("/Observation", json=observation(a, when="2026-01-12T09:14:00Z")).json()["id"]
    o2 = client.post("/Observation", json=observation(a, "29463-7", "2026-02-03")).json()["id"]
    o3 = client.post("/Observation", json=observation(b, when="2025-06-01T10:00:00+02:00")).json()["id"]

    def search(rtype: str, **params: str) -> list[str]:
        r = client.get(f"/{rtype}", params=params)
        assert r.status_code == 200, r.text
        bundle = r.json()
        assert bundle["type"] == "searchset" and bundle["total"] >= len(ids(bundle))
        return ids(bundle)

    assert search("Patient", _id=a) == [a]
    assert search("Patient", identifier=f"{MRN_SYSTEM}|MRN2") == [b]
    assert search("Patient", identifier="other-system|MRN2") == []
    assert search("Patient", identifier="MRN1") == [a]
    assert search("Patient", family="mull") == [a]  # accent- and case-insensitive prefix
    assert search("Patient", **{"family:exact": "Meier"}) == [b]
    assert search("Patient", **{"name:contains": "eie"}) == [b]
    assert search("Patient", given="alice", gender="male") == [b]
    assert sorted(search("Patient", birthdate="ge1958-03-14")) == sorted([a, b])
    assert search("Patient", birthdate="1983") == [b]
    assert search("Patient", birthdate="lt1960") == [a]
    assert search("Observation", patient=a, code="http://loinc.org|8867-4") == [o1]
    assert sorted(search("Observation", subject=f"Patient/{a}")) == sorted([o1, o2])
    assert search("Observation", code="8867-4,29463-7", patient=b) == [o3]
    assert search("Observation", **{"code:not": "8867-4"}) == [o2]
    assert search("Observation", status="final", category="vital-signs", date="2026-01") == [o1]
    assert search("Observation", date="eq2026-02-03") == [o2]
    assert sorted(search("Observation", date="ge2026-01-12T09:14:00Z")) == sorted([o1, o2])
    assert search("Observation", date="sa2026-01-31") == [o2]
    assert search("Observation", date="eb2026-01-01") == [o3]
    assert search("Observation", date="ne2026-02-03", patient=a) == [o1]
    assert search("Observation", date="2025-06-01T08:00:00Z") == [o3]  # +02:00 normalised to UTC
    assert o3 in search("Observation", date="ap2025-06-02")
    assert search("Observation", **{"date:missing": "true"}) == []
    assert search("Observation", _sort="-date") == [o2, o1, o3]
    assert search("Observation", _sort="date") == [o3, o1, o2]
    assert search("Patient", _sort="-family") == [a, b]
    since = client.get(f"/Observation/{o3}").json()["meta"]["lastUpdated"]
    assert search("Observation", _lastUpdated=f"ge{since}") == [o3]
    assert client.get("/Observation", params={"_summary": "count"}).json()["total"] == 3


def test_paging_with_next_links(client: httpx.Client) -> None:
    made = [client.post("/Patient", json=patient(f"P{i:02d}", f"M{i}")).json()["id"] for i in range(7)]
    seen: list[str] = []
    url: str | None = client.get("/Patient", params={"_count": "3", "_sort": "_id"}).request.url.__str__()
    pages = 0
    while url:
        bundle = client.get(url).json()
        assert bundle["total"] == 7
        seen += ids(bundle)
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages == 3 and seen == sorted(made)


def test_include_and_revinclude(client: httpx.Client) -> None:
    a = client.post("/Patient", json=patient()).json()["id"]
    o1 = client.post("/Observation", json=observation(a)).json()["id"]
    o2 = client.post("/Observation", json=observation(a, "29463-7")).json()["id"]
    inc = client.get("/Observation", params={"_include": "Observation:subject"}).json()
    assert sorted(ids(inc)) == sorted([o1, o2]) and ids(inc, "include") == [a]
    assert inc["total"] == 2
    rev = client.get("/Patient", params={"_id": a, "_revinclude": "Observation:subject"}).json()
    assert ids(rev) == [a] and sorted(ids(rev, "include")) == sorted([o1, o2])


def test_conditional_create(client: httpx.Client) -> None:
    header = {"If-None-Exist": f"identifier={MRN_SYSTEM}|MRN77"}
    first = client.post("/Patient", json=patient(mrn="MRN77"), headers=header)
    again = client.post("/Patient", json=patient(mrn="MRN77"), headers=header)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    client.post("/Patient", json=patient(mrn="MRN78"))
    client.post("/Patient", json=patient(mrn="MRN78"))
    dup = client.post("/Patient", json=patient(mrn="MRN78"), headers={"If-None-Exist": "identifier=MRN78"})
    assert dup.status_code == 412


def test_transaction_rewrites_urn_uuid_and_is_atomic(client: httpx.Client) -> None:
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": patient(mrn="TX1"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                "resource": {
                    **observation("x"),
                    "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = client.post("/", json=tx)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    pid = out["entry"][0]["response"]["location"].split("/")[1]
    obs = out["entry"][1]["resource"]
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    before = client.get("/Patient", params={"_summary": "count"}).json()["total"]
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(mrn="TX2"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {**patient(mrn="TX3"), "id": "tx3"},
                "request": {"method": "PUT", "url": "Patient/tx3"},
            },
            {
                "resource": {"resourceType": "Patient", "birthDate": "bad"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    failed = client.post("/", json=bad)
    assert failed.status_code == 400 and failed.json()["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2]" in failed.json()["issue"][0]["expression"][0]
    assert client.get("/Patient", params={"_summary": "count"}).json()["total"] == before
    assert client.get("/Patient/tx3").status_code == 404


def test_batch_reports_each_entry(client: httpx.Client) -> None:
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(mrn="B1"), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "birthDate": "bad"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": "Patient?identifier=B1"}},
            {"request": {"method": "GET", "url": "Patient/nope"}},
        ],
    }
    out = client.post("/", json=batch).json()
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "400" and statuses[3] == "404"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert out["entry"][2]["resource"]["total"] == 1


def test_body_size_limit(tmp_path: Path) -> None:
    with EmbeddedFhirServer(tmp_path / "small.db", max_body=1000) as s:
        r = httpx.post(
            s.base_url + "/Patient", json=patient(text={"status": "generated", "div": "x" * 2000}), timeout=10
        )
        assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"


def test_export_end_to_end(server: EmbeddedFhirServer, client: httpx.Client) -> None:
    a = client.post("/Patient", json=patient()).json()["id"]
    b = client.post("/Patient", json=patient(mrn="MRN2")).json()["id"]
    client.post("/Observation", json=observation(a))
    client.post("/Observation", json=observation(b))
    client.put(
        "/Group/g1",
        json={
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{a}"}}],
        },
    )
    assert client.get("/$export").status_code == 400  # Prefer: respond-async is required
    kick = client.get("/$export", headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
    assert kick.status_code == 202
    status_url = kick.headers["content-location"]
    first = client.get(status_url)
    assert first.status_code == 202 and "x-progress" in first.headers and first.headers["retry-after"]
    manifest = _wait(client, status_url)
    counts = {o["type"]: o["count"] for o in manifest["output"]}
    assert counts == {"Group": 1, "Observation": 2, "Patient": 2}
    for out in manifest["output"]:
        lines = client.get(out["url"]).content.splitlines()
        assert len(lines) == out["count"] and all(
            orjson.loads(x)["resourceType"] == out["type"] for x in lines
        )
    group = _wait(
        client,
        client.get(
            "/Group/g1/$export", params={"_type": "Patient,Observation"}, headers={"Prefer": "respond-async"}
        ).headers["content-location"],
    )
    exported = {o["type"]: o["count"] for o in group["output"]}
    assert exported == {"Observation": 1, "Patient": 1}
    patient_level = _wait(
        client,
        client.get("/Patient/$export", headers={"Prefer": "respond-async"}).headers["content-location"],
    )
    levels = {o["type"]: o["count"] for o in patient_level["output"]}
    assert levels["Patient"] == 2 and levels["Observation"] == 2  # (Group is in the Patient compartment)
    cancel = client.get("/$export", headers={"Prefer": "respond-async"}).headers["content-location"]
    assert client.delete(cancel).status_code == 202
    assert client.get(cancel).status_code == 404
    assert (
        client.get("/$export", params={"_type": "Nope"}, headers={"Prefer": "respond-async"}).status_code
        == 400
    )


def _wait(client: httpx.Client, url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = client.get(url)
        if r.status_code == 200:
            return r.json()  # type: ignore[no-any-return]
        assert r.status_code == 202, r.text
        time.sleep(0.1)
    raise AssertionError("export did not finish")


def test_concurrent_writers_keep_versions_consistent(
    client: httpx.Client, server: EmbeddedFhirServer
) -> None:
    pid = client.put("/Patient/shared", json={**patient(), "id": "shared"}).json()["id"]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with httpx.Client(base_url=server.base_url, timeout=30) as c:
                for i in range(5):
                    r = c.put(f"/Patient/{pid}", json={**patient(f"W{n}-{i}"), "id": pid})
                    assert r.status_code == 200, r.text
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    hist = client.get(f"/Patient/{pid}/_history", params={"_count": "100"}).json()
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in hist["entry"])
    assert versions == list(range(1, 22)) and hist["total"] == 21
    assert client.get(f"/Patient/{pid}").headers["etag"] == 'W/"21"'


def test_restart_keeps_data_and_preload_is_idempotent(tmp_path: Path) -> None:
    (bundle,) = generate(tmp_path / "samples")
    db = tmp_path / "fhir.db"
    with EmbeddedFhirServer(db, preload=bundle) as s:
        c = httpx.Client(base_url=s.base_url, timeout=10)
        total = c.get("/Patient", params={"_summary": "count"}).json()["total"]
        assert total == 6
        pid = c.post("/Patient", json=patient(mrn="EXTRA")).json()["id"]
        imaging = c.get("/ImagingStudy", params={"modality": "CT", "_include": "ImagingStudy:subject"}).json()
        assert imaging["total"] == 6 and len(ids(imaging, "include")) == 6
        c.close()
    with EmbeddedFhirServer(db, preload=bundle) as s:
        c = httpx.Client(base_url=s.base_url, timeout=10)
        assert c.get(f"/Patient/{pid}").status_code == 200
        assert c.get("/Patient", params={"_summary": "count"}).json()["total"] == 7
        some = c.get("/Patient", params={"identifier": f"{MRN_SYSTEM}|MRN1001"}).json()["entry"][0][
            "resource"
        ]
        assert some["meta"]["versionId"] == "1"  # the preload did not add versions
        c.close()
