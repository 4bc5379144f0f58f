"""Stopping a WADO-RS retrieve part-way, as a C-GET/C-MOVE stops (test_cancel_embedded.py): the
caller's ``cancel`` gives :class:`RetrieveCancelledError` with what had arrived, a per-instance hook's
exception (the cohort limiter's Stopped) is raised again, and either way the streamed answer's
connection is closed at once (it used to stay open, half read, for as long as the exception lived),
with no ResourceWarning and the client usable for the next request. A stopped cohort pull over
WADO-RS leaves the study to be resumed whole; ``kit cohort pull --web`` under SIGINT too."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kit.cohort.limiter import LocalLimiter, Stopped
from kit.cohort.retrieve import Source, fetch
from kit.config import DicomWebSettings, load_settings
from kit.dicom.dimse import RetrieveCancelledError
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.web import DicomWebClient
from kit.dicom.web_server import EmbeddedDicomWeb
from kit.errors import StoreError
from tests.conftest import free_port
from tests.integration.cohort_pull.helpers import Study, folder_contents
from tests.integration.conftest import OrthancServer
from tests.integration.retrieve_cancel.helpers import (
    AFTER,
    BIG,
    StopAfter,
    StopsAt,
    files,
    resumed_pull,
    stopped_pull,
)


class Web:
    """The embedded PACS and its DICOMweb server over one store, holding the studies."""

    def __init__(self, folder: Path, studies: Path) -> None:
        self.pacs = EmbeddedPACS(folder, port=0)
        self.pacs.import_files([studies])
        self.pacs.start()
        self.web = EmbeddedDicomWeb(self.pacs.store, port=0)
        self.web.start()

    @property
    def port(self) -> int:
        return int(self.web.base_url.split(":")[2].split("/")[0])

    def close(self) -> None:
        self.web.stop()
        self.pacs.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, studies: tuple[Path, list[Study]]) -> Iterator[Web]:
    web = Web(tmp_path_factory.mktemp("pacs"), studies[0])
    try:
        yield web
    finally:
        web.close()


def _open_to(port: int) -> set[tuple[str, int]]:
    """This process's established TCP connections to ``port`` on loopback (their local addresses)."""
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}


def _client(server: Web) -> DicomWebClient:
    return DicomWebClient(server.web.base_url, timeout=10)


def test_cancel_after_n_instances_raises_retrieve_cancelled_and_closes_the_stream(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    big = studies[1][0]
    client = _client(server)
    before = _open_to(server.port)
    dest = tmp_path / "cut"
    gc.collect()  # earlier tests' garbage (an unclosed socket of theirs) is not this retrieve's leak
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RetrieveCancelledError) as caught:
            client.get(big.uid, dest=dest, cancel=lambda: files(dest) >= AFTER)
        err = caught.value
        assert "WADO-RS cancelled after 5 instance(s)" in str(err) and err.peer == client.base
        assert err.received.height == files(dest) == AFTER  # checked after each instance
        assert set(err.received["sop_instance_uid"]) <= set(big.sops)
        # closed now, while the exception (and its traceback) is still held
        assert _open_to(server.port) - before == set(), "the half-read answer's connection is still open"
        del caught, err
        gc.collect()
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)
                and "socket" in str(w.message)], [str(w.message) for w in seen]
    full = client.get(big.uid, dest=tmp_path / "full")  # the same client, the next request
    assert set(full["sop_instance_uid"]) == set(big.sops)


def test_a_per_instance_hook_that_raises_stops_the_stream_and_its_error_is_raised(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    big = studies[1][0]
    client = _client(server)
    before = _open_to(server.port)
    hook = StopAfter()
    with pytest.raises(Stopped):
        client.get(big.uid, dest=tmp_path / "cut", on_instance=hook)
    assert hook.calls == AFTER  # no hook call once stopped
    assert files(tmp_path / "cut") == AFTER
    assert _open_to(server.port) - before == set()
    again = client.get(studies[1][1].uid, dest=tmp_path / "small")
    assert set(again["sop_instance_uid"]) == set(studies[1][1].sops)


def test_a_local_write_failure_mid_stream_closes_the_stream_too(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    """Any exception in the loop, not only a cancel: here the disk (the folder becomes a file)."""
    big = studies[1][0]
    client = _client(server)
    before = _open_to(server.port)
    dest = tmp_path / "cut"

    def vanish() -> None:
        if files(dest) == AFTER:
            for path in dest.iterdir():
                path.unlink()
            dest.rmdir()
            dest.write_bytes(b"")

    with pytest.raises(StoreError, match="cannot write an instance under") as caught:
        client.get(big.uid, dest=dest, on_instance=vanish)
    assert _open_to(server.port) - before == set(), "open while the exception lives"
    del caught


def test_already_cancelled_asks_nothing(tmp_path: Path) -> None:
    """Nothing listens at this address: an asked server would be an unreachable error."""
    client = DicomWebClient(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5)
    with pytest.raises(RetrieveCancelledError, match="after 0 instance"):
        client.get("1.2.3.4", dest=tmp_path / "x", cancel=lambda: True)


def test_a_cancel_check_that_raises_ends_the_retrieve_with_its_error(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    dest = tmp_path / "cut"

    def check() -> bool:
        if files(dest) >= AFTER:
            raise LookupError("the caller's own check failed")
        return False

    before = _open_to(server.port)
    with pytest.raises(LookupError, match="own check"):
        _client(server).get(studies[1][0].uid, dest=dest, cancel=check)
    assert files(dest) == AFTER
    assert _open_to(server.port) - before == set()


def _source(server: Web) -> Source:
    return Source("wado", dicomweb=DicomWebSettings(base=server.web.base_url, timeout=10))


def test_a_stopped_wado_fetch_leaves_nothing_and_closes_the_stream(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    """The cohort's unit of work: the limiter's Stopped ends the study's stream; nothing of the study
    stays (not in the partial folder, not published), the study is left to be fetched whole."""
    big = studies[1][0]
    source = _source(server)
    before = _open_to(server.port)

    limiter = StopsAt(1, 1000.0)
    with pytest.raises(Stopped) as caught:
        fetch(source, big.uid, tmp_path / "out", limiter, partial_dir=tmp_path / "partial")
    assert limiter.count == AFTER
    assert _open_to(server.port) - before == set(), "open while the exception lives"
    del caught
    assert not list((tmp_path / "partial").iterdir()) and not (tmp_path / "out" / big.uid).exists()
    done = fetch(source, big.uid, tmp_path / "out", LocalLimiter(1, 1000.0), partial_dir=tmp_path / "partial")
    assert done.instances == BIG


def test_a_stopped_wado_pull_leaves_the_study_not_done_and_a_resumed_pull_fetches_it_whole(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    settings = load_settings(env={"KIT_DICOMWEB_BASE": server.web.base_url, "KIT_COHORT_BACKOFF": "0.1"})
    stopped_pull(studies[1], tmp_path / "out", settings, "wado")
    resumed_pull(studies[1], tmp_path / "out", settings, "wado")


def test_sigint_mid_wado_study_stops_the_pull_and_a_rerun_fetches_it_whole(
        tmp_path: Path, server: Web, studies: tuple[Path, list[Study]]) -> None:
    study = studies[1][0]
    cohort = tmp_path / "cohort.csv"
    cohort.write_text(f"study_instance_uid\n{study.uid}\n")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "kit.cli", "cohort", "pull", str(cohort), "--out-dir", str(out),
            "--base", server.web.base_url, "--images-per-second", "10", "--max-associations", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_COHORT_BACKOFF": "0.1", "NO_COLOR": "1"})
    partial = out / ".kit-cohort" / "partial"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while sum(files(p) for p in partial.glob("*")) < AFTER:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the pull never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")
    assert study.uid not in folder_contents(out)
    rerun = subprocess.run(args, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert folder_contents(out) == {study.uid: set(study.sops)}


@pytest.mark.orthanc
def test_cancel_against_orthanc_closes_the_stream_and_the_client_goes_on(
        tmp_path: Path, orthanc: OrthancServer, studies: tuple[Path, list[Study]]) -> None:
    big = studies[1][0]
    for path in sorted((studies[0] / big.uid).rglob("*.dcm")):
        orthanc.upload(path)
    client = DicomWebClient(orthanc.dicomweb, timeout=20)
    before = _open_to(orthanc.http_port)
    dest = tmp_path / "cut"
    with pytest.raises(RetrieveCancelledError) as caught:
        client.get(big.uid, dest=dest, cancel=lambda: files(dest) >= AFTER)
    assert caught.value.received.height == files(dest) == AFTER
    assert _open_to(orthanc.http_port) - before == set(), "open while the exception lives"
    full = client.get(big.uid, dest=tmp_path / "full")
    assert set(full["sop_instance_uid"]) == set(big.sops)
