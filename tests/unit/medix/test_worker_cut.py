"""An export cut by the disk bound leaves nothing behind, even when files land after the cut.

A file renamed or linked into place just before the watchdog renames the export folder can
land in the renamed folder while the watchdog's rmtree runs, and the rmtree (ignoring errors)
then leaves the folder. No real peer makes that interleaving happen on demand, so the
watchdog's rmtree is made to lose the race here.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import kit.services.medix_worker as worker
from kit.config import Settings
from kit.errors import StoreError
from kit.services.medix_protocol import DownloadRequest, MedixStatus
from kit.services.medix_store import JobStore


def test_files_landing_in_the_cut_folder_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_rmtree = shutil.rmtree

    def rmtree_losing_the_race(path: Path, ignore_errors: bool = False) -> None:
        if threading.current_thread().name.startswith("medix-watch-"):
            (Path(path) / "late.dcm").touch()  # linked in while the watchdog's rmtree ran
            return
        real_rmtree(path, ignore_errors=ignore_errors)

    def retrieve_over_the_bound(settings: Settings, mode: str, study_uid: str, dest: Path) -> pl.DataFrame:
        (dest / "big.dcm").write_bytes(b"\0" * 4096)  # over the bound: the watchdog cuts
        deadline = time.monotonic() + 10
        while dest.exists():
            assert time.monotonic() < deadline, "the watchdog never cut the export"
            time.sleep(0.01)
        raise StoreError("cannot write into the export folder")

    monkeypatch.setattr(worker.shutil, "rmtree", rmtree_losing_the_race)
    monkeypatch.setattr(worker, "retrieve", retrieve_over_the_bound)
    base = Settings()
    settings = dataclasses.replace(base, medix=dataclasses.replace(base.medix, max_export_bytes=1000,
                                                                   min_free_bytes=0))
    store = JobStore(tmp_path / "jobs.sqlite")
    workers = worker.ExportWorkers(store, settings, tmp_path, file_url=str, on_event=lambda: None)
    workers.exports.mkdir(parents=True)
    job = store.create(DownloadRequest("1.2.3", "http://127.0.0.1:9/hook", ()), max_unfinished=5)
    claimed = store.claim()
    assert job is not None and claimed is not None
    workers.run(claimed)
    done = store.get(job.id)
    assert done is not None and done.state == "failed" and "bound" in str(done.error)
    assert [code for code, _ in done.events][-1] == MedixStatus.EXPORT_FAILED
    assert not list(workers.exports.iterdir())
    store.close()
