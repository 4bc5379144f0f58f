"""``kit cohort pull`` interrupted (SIGINT) mid-study against the embedded PACS: the study under
way is cancelled at the PACS at once (it used to arrive whole before the process could exit), is
not recorded as done, and the next run fetches it whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cohort_pull.helpers import CountingPACS, Study, folder_contents, make_studies
from tests.integration.retrieve_cancel.helpers import AFTER, BIG, SLACK

KIT = [sys.executable, "-m", "kit.cli"]
#: Instances a second the pull may take: the whole study takes BIG / RATE = 4 s at the PACS.
RATE = 10


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Study]:
    folder = tmp_path_factory.mktemp("studies")
    return folder, make_studies(folder, 1, per_study=BIG, prefix="CLI")[0]


@pytest.fixture
def pacs(tmp_path: Path, big: tuple[Path, Study]) -> Iterator[CountingPACS]:
    server = CountingPACS(tmp_path / "pacs", port=0)
    server.import_files([big[0]])
    server.start()
    try:
        yield server
    finally:
        server.close()


def _args(cohort: Path, out: Path, pacs: CountingPACS) -> list[str]:
    return [*KIT, "cohort", "pull", str(cohort), "--out-dir", str(out), "--port", str(pacs.port),
            "--called-aet", pacs.aet, "--images-per-second", str(RATE), "--max-associations", "1"]


def test_sigint_mid_study_cancels_it_at_the_pacs_and_a_rerun_fetches_it_whole(
        tmp_path: Path, pacs: CountingPACS, big: tuple[Path, Study]) -> None:
    study = big[1]
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"study_instance_uid\n{study.uid}\n")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_COHORT_BACKOFF": "0.1", "NO_COLOR": "1"})
    proc = subprocess.Popen(_args(cohort, out, pacs), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(pacs.sent) < AFTER:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the pull never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    pacs.wait_idle()
    assert len(pacs.sent) <= AFTER + SLACK, f"the PACS sent {len(pacs.sent)} of {BIG} after the interrupt"
    assert study.uid not in folder_contents(out)
    rerun = subprocess.run(_args(cohort, out, pacs), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert folder_contents(out) == {study.uid: set(study.sops)}
