"""Nulls through a SyncJob against the embedded FHIR server (issue 8 #8): stored resources stay whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kit.fhir.client import FhirClient
from kit.fhir.server import EmbeddedFhirServer
from kit.hub import FieldMapping, ResourceMapping, Strategy, SyncJob
from kit.hub.syncmap import get_path

SYS = "http://hospital.example/mrn-nulls"
STRATEGIES = [Strategy.SOURCE_WINS, Strategy.DEST_WINS, Strategy.NEWEST_WINS, Strategy.MERGE, Strategy.MANUAL]


def mapping(delete: bool) -> ResourceMapping:
    return ResourceMapping(
        "Patient",
        ("mrn", SYS),
        [
            FieldMapping("name[0].family", "family", required=True),
            FieldMapping("telecom[system=email].value", "email", delete_on_null=delete),
            FieldMapping("telecom[system=phone].value", "phone", delete_on_null=delete),
            FieldMapping("birthDate", "dob", transform="date_to_iso", delete_on_null=delete),
        ],
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FhirClient]:
    folder: Path = tmp_path_factory.mktemp("hub-nulls")
    server = EmbeddedFhirServer(folder / "fhir.db", port=0)
    server.start()
    try:
        with FhirClient(server.base_url, timeout=10) as c:
            yield c
    finally:
        server.stop()


def _table(mrn: str, email: str | None, phone: str | None, dob: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "mrn": [mrn],
            "family": ["Doe"],
            "email": [email],
            "phone": [phone],
            "dob": [dob],
            "updated_at": ["2099-01-01T00:00:00Z"],
        },
        schema={
            "mrn": pl.Utf8,
            "family": pl.Utf8,
            "email": pl.Utf8,
            "phone": pl.Utf8,
            "dob": pl.Utf8,
            "updated_at": pl.Utf8,
        },
    )


def _stored(client: FhirClient, mrn: str) -> dict[str, Any]:
    found = list(client.search("Patient", {"identifier": f"{SYS}|{mrn}"}))
    assert len(found) == 1
    return found[0]


def _whole(resource: dict[str, Any]) -> None:
    assert all("value" in t for t in resource.get("telecom", [])), resource.get("telecom")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_null_cells_keep_remote_values(client: FhirClient, strategy: Strategy) -> None:
    mrn = f"keep-{strategy.value}"
    SyncJob(mapping(False)).run(_table(mrn, "a@x.org", "+1555", "1970-01-02"), client)
    report = SyncJob(mapping(False), strategy).run(_table(mrn, None, "+1999", None), client)
    stored = _stored(client, mrn)
    _whole(stored)
    assert get_path(stored, "telecom[system=email].value") == "a@x.org"
    assert stored["birthDate"] == "1970-01-02"
    expected = {Strategy.SOURCE_WINS: "+1999", Strategy.NEWEST_WINS: "+1999", Strategy.MERGE: "+1999"}
    assert get_path(stored, "telecom[system=phone].value") == expected.get(strategy, "+1555")
    assert report.ok
    if strategy is Strategy.MANUAL:
        (conflict,) = report.conflicts
        assert set(conflict.fields) == {"telecom[system=phone].value"}  # the null is no conflict


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_delete_on_null_removes_whole_elements(client: FhirClient, strategy: Strategy) -> None:
    mrn = f"delete-{strategy.value}"
    SyncJob(mapping(True)).run(_table(mrn, "a@x.org", "+1555", "1970-01-02"), client)
    job = SyncJob(mapping(True), strategy)
    report = job.run(_table(mrn, None, "+1555", None), client)
    assert report.ok, report.frame
    if strategy is Strategy.MANUAL:
        (conflict,) = report.conflicts
        job.resolve(conflict.conflict_id, "local", client)
    stored = _stored(client, mrn)
    _whole(stored)
    if strategy is Strategy.DEST_WINS:
        assert get_path(stored, "telecom[system=email].value") == "a@x.org"
    else:
        assert stored["telecom"] == [{"system": "phone", "value": "+1555"}]
        assert "birthDate" not in stored


def test_a_null_remote_value_is_filled(client: FhirClient) -> None:
    SyncJob(mapping(False)).run(_table("fill", None, "+1555", None), client)
    created = _stored(client, "fill")
    _whole(created)
    assert "birthDate" not in created and get_path(created, "telecom[system=email].value") is None
    SyncJob(mapping(False), Strategy.MERGE).run(_table("fill", "b@x.org", "+1555", "1980-05-06"), client)
    stored = _stored(client, "fill")
    assert (
        get_path(stored, "telecom[system=email].value") == "b@x.org" and stored["birthDate"] == "1980-05-06"
    )
