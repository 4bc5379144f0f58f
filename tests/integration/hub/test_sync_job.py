"""A SyncJob against the embedded FHIR server over HTTP (kit.fhir.client.FhirClient)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from kit.hub import ConflictStore, FieldMapping, ResourceMapping, Strategy, SyncJob

server_mod = pytest.importorskip("kit.fhir.server", reason="kit.fhir.server (D2) not available yet")
client_mod = pytest.importorskip("kit.fhir.client", reason="kit.fhir.client (D1) not available yet")

SYS = "http://hospital.example/mrn"
MAPPING = ResourceMapping(
    "Patient",
    ("mrn", SYS),
    [
        FieldMapping("name[0].family", "family", required=True),
        FieldMapping("name[0].given", "given", transform="as_list", reverse_transform="first"),
        FieldMapping("gender", "sex", transform="gender", reverse_transform="gender_to_hl7"),
        FieldMapping("birthDate", "dob", transform="date_to_iso", reverse_transform="iso_to_date"),
    ],
)


@pytest.fixture(scope="module")
def fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("hub")
    server = server_mod.EmbeddedFhirServer(folder / "fhir.db", port=0)
    server.start()
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture
def client(fhir_base: str) -> Iterator[object]:
    with client_mod.FhirClient(fhir_base, timeout=10) as c:
        yield c


def frame(families: list[str], prefix: str) -> pl.DataFrame:
    n = len(families)
    return pl.DataFrame(
        {
            "mrn": [f"{prefix}{i}" for i in range(n)],
            "family": families,
            "given": ["Ann"] * n,
            "sex": ["F"] * n,
            "dob": ["1980-02-03"] * n,
        }
    )


def test_create_then_skip_then_update(client: object) -> None:
    job = SyncJob(MAPPING, Strategy.SOURCE_WINS)
    first = job.run(frame(["A", "B", "C"], "cu"), client)  # type: ignore[arg-type]
    assert first.counts["created"] == 3 and first.ok, first.frame
    again = job.run(frame(["A", "B", "C"], "cu"), client)  # type: ignore[arg-type]
    assert again.counts["skipped"] == 3, again.frame
    changed = job.run(frame(["A", "Bee", "C"], "cu"), client)  # type: ignore[arg-type]
    assert changed.frame["action"].to_list() == ["skipped", "updated", "skipped"]
    pulled = job.pull(client, ["cu1"]).row(0, named=True)  # type: ignore[arg-type]
    assert (pulled["family"], pulled["given"], pulled["sex"]) == ("Bee", "Ann", "F")
    assert str(pulled["dob"]) == "1980-02-03"


def test_errors_do_not_stop_the_others(client: object) -> None:
    df = frame(["X", "Y"], "err").with_columns(pl.Series("sex", ["F", "nonsense"]))
    report = SyncJob(MAPPING).run(df, client)  # type: ignore[arg-type]
    assert report.frame["action"].to_list() == ["created", "error"]
    assert not report.ok


def test_dest_wins_and_manual_resolution(client: object, tmp_path: Path) -> None:
    SyncJob(MAPPING).run(frame(["Orig"], "man"), client)  # type: ignore[arg-type]
    kept = SyncJob(MAPPING, Strategy.DEST_WINS).run(frame(["New"], "man"), client)  # type: ignore[arg-type]
    assert kept.frame["action"].to_list() == ["skipped"]
    with ConflictStore(tmp_path / "conflicts.db") as store:
        job = SyncJob(MAPPING, Strategy.MANUAL, conflicts=store)
        report = job.run(frame(["New"], "man"), client)  # type: ignore[arg-type]
        assert report.frame["action"].to_list() == ["conflict"]
        cid = report.frame["conflict_id"][0]
        assert store.frame()["conflict_id"].to_list() == [cid]
        done = job.resolve(cid, "local", client)  # type: ignore[arg-type]
        assert done.action.value == "updated"
        assert store.frame().height == 0
        assert job.pull(client, ["man0"])["family"].to_list() == ["New"]  # type: ignore[arg-type]
