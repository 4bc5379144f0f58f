"""Stopping a C-GET / C-MOVE part-way against the embedded PACS: the caller's ``cancel`` and the
cohort limiter's Stopped (raised by the per-instance hook) both send C-CANCEL, end the retrieve
well before the whole study and leave the PACS answering; a stopped cohort pull records the study
as not done and a resumed pull fetches it whole."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kit.cohort.limiter import Stopped
from kit.cohort.retrieve import Source
from kit.dicom import _cancel
from kit.dicom.dimse import PacsClient, RetrieveCancelledError
from tests.conftest import free_port
from tests.integration.cohort_pull.conftest import settings_for
from tests.integration.cohort_pull.helpers import CountingPACS, Study
from tests.integration.retrieve_cancel.helpers import (
    AFTER,
    BIG,
    SLACK,
    StopAfter,
    after,
    files,
    resumed_pull,
    stopped_pull,
)


@pytest.fixture(scope="module")
def pacs_data(tmp_path_factory: pytest.TempPathFactory, studies: tuple[Path, list[Study]]) -> Path:
    folder = tmp_path_factory.mktemp("pacs") / "data"
    server = CountingPACS(folder, port=0)
    server.import_files([studies[0]])
    server.store.close()
    return folder


class _Deaf(CountingPACS):
    """A PACS that ignores C-CANCEL and sends slowly (0.1 s per instance)."""

    def _on_get(self, event: Any) -> Iterator[Any]:
        self._record(event)
        instances = self._matching_instances(event)
        yield len(instances)
        for instance in instances:
            time.sleep(0.1)
            yield 0xFF00, self._read(instance, self._accepted_syntaxes(event))


def _serve(cls: type[CountingPACS], tmp_path: Path, pacs_data: Path, **kwargs: Any) -> CountingPACS:
    shutil.copytree(pacs_data, tmp_path / "pacs")
    server = cls(tmp_path / "pacs", port=0, **kwargs)
    server.start()
    return server


@pytest.fixture
def store_port() -> int:
    return free_port()


@pytest.fixture
def pacs(tmp_path: Path, pacs_data: Path, store_port: int) -> Iterator[CountingPACS]:
    server = _serve(CountingPACS, tmp_path, pacs_data,
                    move_destinations={"KITSCU": ("127.0.0.1", store_port)})
    try:
        yield server
    finally:
        server.close()


def _client(pacs: CountingPACS, store_port: int = 0) -> PacsClient:
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, aet="KITSCU", timeout=10)
    client.store_port = store_port
    return client


def _retrieve(client: PacsClient, method: str, study: str, dest: Path, **kwargs: Any) -> pl.DataFrame:
    call = client.get if method == "c-get" else client.move
    return call(study_uid=study, dest=dest, **kwargs)


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_cancel_after_n_instances_ends_the_retrieve_and_the_pacs_still_serves(
        tmp_path: Path, pacs: CountingPACS, store_port: int,
        studies: tuple[Path, list[Study]], method: str) -> None:
    big = studies[1][0]
    client = _client(pacs, store_port)
    dest = tmp_path / "cut"
    with pytest.raises(RetrieveCancelledError) as caught:
        _retrieve(client, method, big.uid, dest, cancel=lambda: files(dest) >= AFTER)
    err = caught.value
    assert err.status == 0xFE00 and "cancelled" in str(err)
    assert AFTER <= err.received.height <= AFTER + SLACK
    assert set(err.received["sop_instance_uid"]) <= set(big.sops)
    assert len(pacs.sent) <= AFTER + SLACK, f"the PACS sent {len(pacs.sent)} of {BIG}"
    pacs.wait_idle()  # the association was released (or aborted), not left open
    full = _retrieve(client, method, big.uid, tmp_path / "full")
    assert set(full["sop_instance_uid"]) == set(big.sops)


def test_an_event_set_from_another_thread_cancels(tmp_path: Path, pacs: CountingPACS,
                                                  studies: tuple[Path, list[Study]]) -> None:
    big = studies[1][0]
    dest = tmp_path / "cut"
    dest.mkdir()
    event = after(dest)
    with pytest.raises(RetrieveCancelledError) as caught:
        _client(pacs).get(study_uid=big.uid, dest=dest, cancel=event)
    assert caught.value.received.height < BIG
    assert len(pacs.sent) < BIG


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_already_cancelled_asks_nothing(tmp_path: Path, pacs: CountingPACS, store_port: int,
                                        studies: tuple[Path, list[Study]], method: str) -> None:
    with pytest.raises(RetrieveCancelledError, match="after 0 instance"):
        _retrieve(_client(pacs, store_port), method, studies[1][0].uid, tmp_path / "x",
                  cancel=lambda: True)
    assert pacs.retrieves == [] and pacs.sent == []


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_the_limiters_stopped_in_the_per_instance_hook_ends_the_retrieve(
        tmp_path: Path, pacs: CountingPACS, store_port: int,
        studies: tuple[Path, list[Study]], method: str) -> None:
    """The cohort pull's path: Source.dimse's hook (limiter.images) raises Stopped. It used to be
    answered 0xA700 and the whole study still came (then a RetrieveError "local write failed")."""
    big = studies[1][0]
    settings = settings_for(pacs)
    source = Source(method, dataclasses.replace(settings.pacs, store_port=store_port))  # type: ignore[arg-type]
    hook = StopAfter()
    with pytest.raises(Stopped):
        _retrieve(source.dimse(hook), method, big.uid, tmp_path / "cut")
    assert hook.calls == AFTER  # no hook call (no limiter wait) once stopped
    assert len(pacs.sent) <= AFTER + SLACK, f"the PACS sent {len(pacs.sent)} of {BIG}"
    pacs.wait_idle()


def test_a_peer_that_ignores_c_cancel_is_aborted_after_the_grace(
        tmp_path: Path, pacs_data: Path, studies: tuple[Path, list[Study]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cancel, "GRACE", 0.5)
    big = studies[1][0]
    server = _serve(_Deaf, tmp_path, pacs_data)
    try:
        dest = tmp_path / "cut"
        start = time.monotonic()
        with pytest.raises(RetrieveCancelledError) as caught:
            _client(server).get(study_uid=big.uid, dest=dest, cancel=lambda: files(dest) >= AFTER)
        took = time.monotonic() - start
        assert caught.value.received.height == files(dest) < BIG
        assert took < BIG * 0.1, f"took {took:.1f}s: the whole study"  # 4 s would be the whole study
        server.wait_idle()
        assert server.sent and len(server.sent) < BIG
    finally:
        server.close()


def test_a_stopped_pull_leaves_the_study_not_done_and_a_resumed_pull_fetches_it_whole(
        tmp_path: Path, pacs: CountingPACS, studies: tuple[Path, list[Study]]) -> None:
    wanted = studies[1]
    out = tmp_path / "out"
    settings = settings_for(pacs)
    stopped_pull(wanted, out, settings)
    assert len(pacs.sent) <= AFTER + SLACK, f"the PACS sent {len(pacs.sent)} of {BIG}"
    asked = len(pacs.retrieves)
    resumed_pull(wanted, out, settings)
    assert pacs.retrieves[asked:].count(wanted[0].uid) == 1


@pytest.mark.parametrize("method", ["c-get", "c-move"])
def test_a_cancel_check_that_raises_cancels_and_its_error_is_raised(
        tmp_path: Path, pacs: CountingPACS, store_port: int, studies: tuple[Path, list[Study]],
        method: str) -> None:
    big = studies[1][0]
    dest = tmp_path / "cut"

    def check() -> bool:
        if files(dest) >= AFTER:
            raise LookupError("the caller's own check failed")
        return False

    with pytest.raises(LookupError, match="own check"):
        _retrieve(_client(pacs, store_port), method, big.uid, dest, cancel=check)
    assert len(pacs.sent) <= AFTER + SLACK
    pacs.wait_idle()
