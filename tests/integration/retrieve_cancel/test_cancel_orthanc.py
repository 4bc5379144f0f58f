"""Stopping a C-GET / C-MOVE part-way against a real Orthanc (C-CANCEL honoured by DCMTK's
providers), and a stopped cohort pull from Orthanc resumed to the whole study."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kit.cohort import CohortPull
from kit.cohort.limiter import LocalLimiter, Stopped
from kit.cohort.retrieve import Source
from kit.config import CohortSettings, PacsSettings, Settings, load_settings
from kit.dicom.dimse import PacsClient, RetrieveCancelledError, RetrieveError
from tests.conftest import free_port
from tests.integration.cohort_pull.helpers import Study, folder_contents, make_studies
from tests.integration.conftest import OrthancServer
from tests.integration.retrieve_cancel.helpers import AFTER, BIG, SLACK, StopAfter, files

pytestmark = pytest.mark.orthanc

#: Seconds the per-instance hook waits: the whole study takes at least BIG * DELAY.
DELAY = 0.1


@pytest.fixture(scope="module")
def loaded(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[OrthancServer, list[Study], int]:
    folder = tmp_path_factory.mktemp("studies")
    studies = make_studies(folder, 1, per_study=BIG, prefix="OBIG") + make_studies(folder, 1, prefix="OSML")
    for path in sorted(folder.rglob("*.dcm")):
        orthanc.upload(path)
    store_port = free_port()
    orthanc.add_modality("kit", "KITSCU", "127.0.0.1", store_port)
    return orthanc, studies, store_port


def _settings(server: OrthancServer, store_port: int) -> Settings:
    base = load_settings(env={})
    return dataclasses.replace(base, pacs=PacsSettings(
        host="127.0.0.1", port=server.dicom_port, called_aet=server.aet, aet="KITSCU", timeout=20.0,
        store_port=store_port), cohort=CohortSettings(backoff=0.1, max_backoff=0.5))


def _retrieve(client: PacsClient, method: str, study: str, dest: Path, **kwargs: Any) -> pl.DataFrame:
    call = client.get if method == "c-get" else client.move
    return call(study_uid=study, dest=dest, **kwargs)


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_cancel_after_n_instances_from_orthanc(loaded: tuple[OrthancServer, list[Study], int],
                                               tmp_path: Path, method: str) -> None:
    server, studies, store_port = loaded
    client = PacsClient.from_settings(_settings(server, store_port))
    dest = tmp_path / "cut"
    start = time.monotonic()
    with pytest.raises(RetrieveCancelledError) as caught:
        _retrieve(client, method, studies[0].uid, dest, cancel=lambda: files(dest) >= AFTER)
    took = time.monotonic() - start
    assert AFTER <= caught.value.received.height <= AFTER + SLACK
    assert files(dest) <= AFTER + SLACK
    print(f"{method}: cancelled after {caught.value.received.height} of {BIG} in {took:.2f}s")
    full = _retrieve(client, method, studies[0].uid, tmp_path / "full")  # Orthanc still serves
    assert set(full["sop_instance_uid"]) == set(studies[0].sops)


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_the_limiters_stopped_ends_an_orthanc_retrieve_promptly(
        loaded: tuple[OrthancServer, list[Study], int], tmp_path: Path, method: str) -> None:
    server, studies, store_port = loaded
    source = Source(method, _settings(server, store_port).pacs)  # type: ignore[arg-type]
    hook = StopAfter(delay=DELAY)
    start = time.monotonic()
    with pytest.raises(Stopped):
        _retrieve(source.dimse(hook), method, studies[0].uid, tmp_path / "cut")
    took = time.monotonic() - start
    assert hook.calls == AFTER
    # the whole study would take BIG * DELAY = 4 s in the hook alone; stopped, AFTER * DELAY + a grace
    assert took < BIG * DELAY, f"took {took:.2f}s"
    print(f"{method}: stopped after {hook.calls} of {BIG} in {took:.2f}s")


def test_a_stopped_pull_from_orthanc_resumes_to_the_whole_study(
        loaded: tuple[OrthancServer, list[Study], int], tmp_path: Path) -> None:
    server, studies, store_port = loaded
    cohort = pl.DataFrame({"study_instance_uid": [s.uid for s in studies]})
    out = tmp_path / "out"
    settings = _settings(server, store_port)
    job = CohortPull(cohort, out, settings=settings, progress=False, max_associations=1)
    seen: list[int] = []

    class StopsTheJob(LocalLimiter):
        def images(self, n: int = 1) -> None:
            seen.append(n)
            if len(seen) == AFTER:
                job.stop.set()
            super().images(n)

    job.limiter = StopsTheJob(1, 1000.0, stop=job.stop)
    report = job.run()
    assert len(seen) == AFTER  # no instance waited on the limiter after the stop
    assert dict(zip(report["study_instance_uid"], report["status"], strict=False)).get(studies[0].uid) \
        != "retrieved"
    assert studies[0].uid not in folder_contents(out)
    again = CohortPull(cohort, out, settings=settings, progress=False).run()
    assert set(again["status"]) == {"retrieved"}
    assert folder_contents(out) == {s.uid: set(s.sops) for s in studies}


def test_a_failed_sub_operation_from_orthanc_is_a_retrieve_error_not_a_broken_association(
        loaded: tuple[OrthancServer, list[Study], int], tmp_path: Path) -> None:
    """Orthanc (DCMTK) answers a failed C-STORE sub-operation (what a cancelled C-GET's in-flight
    instances get) with a C-GET-RSP whose command set carries (0008,0058); the C-GET used to
    break off with "malformed command set" instead of reporting the failure."""
    server, studies, store_port = loaded
    study = studies[1]
    dest = tmp_path / "dest"
    blocked = sorted(study.sops)[0]
    (dest / f"{blocked}.dcm").mkdir(parents=True)  # a local write that fails: a folder in the way
    client = PacsClient.from_settings(_settings(server, store_port))
    with pytest.raises(RetrieveError) as caught:
        client.get(study_uid=study.uid, dest=dest)
    err = caught.value
    assert err.failed == 1 and err.completed == len(study.sops) - 1
    assert set(err.received["sop_instance_uid"]) == set(study.sops) - {blocked}
    assert "local write failed" in str(err)
