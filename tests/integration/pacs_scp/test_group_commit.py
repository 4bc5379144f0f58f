"""Group commit in the embedded PACS: concurrent associations share fsyncs, and still nothing is
acknowledged before it is durable, readable and indexed exactly once (issue 9, target 3)."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path

import pytest
from pydicom import dcmread

import kit.dicom.store as store_module
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.dicom.scp import EmbeddedPACS
from tests.conftest import peer_env
from tests.integration.pacs_scp.conftest import dcmtk, make_instance
from tests.integration.pacs_scp.test_robustness import echo_ok, leftovers

SENDERS = 4
PER_SENDER = 30
_SENT = re.compile(r"Sending file: (\S+)\n(?:.*\n)*?.*Received Store Response \((\w+)")


def _sender_files(root: Path) -> list[list[Path]]:
    """SENDERS folders of PER_SENDER distinct instances (one study, several series)."""
    folders = []
    for sender in range(SENDERS):
        folder = root / f"sender{sender}"
        folder.mkdir(parents=True)
        paths = []
        for number in range(1, PER_SENDER + 1):
            ds = make_instance("MRN1001", 0, sender + 1, number, size=32)
            path = folder / f"{number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        folders.append(paths)
    return folders


def _body(path: Path) -> bytes:
    data = path.read_bytes()
    return data[144 + int.from_bytes(data[140:144], "little"):]


def store_concurrently(client: PacsClient, folders: list[list[Path]]) -> list[dict[str, object]]:
    """Each folder's files stored by its own thread at once; every stored row, failed ones included."""
    results: list[object] = [None] * len(folders)

    def send(i: int) -> None:
        try:
            results[i] = client.store(folders[i])
        except RetrieveError as exc:
            results[i] = exc.received

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(folders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [row for frame in results for row in frame.iter_rows(named=True)]  # type: ignore[attr-defined]


def test_four_concurrent_storescu_every_acknowledged_instance_durable_once(tmp_path: Path) -> None:
    """Four dcmtk storescu at once: each success-acknowledged instance is on disk, readable, byte
    for byte what was sent, indexed exactly once; some commits were shared between associations."""
    folders = _sender_files(tmp_path / "src")
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        procs = [subprocess.Popen([dcmtk("storescu"), "-v", "-aec", pacs.aet, "127.0.0.1", str(pacs.port),
                                   *map(str, paths)], env=peer_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for paths in folders]
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * SENDERS, outputs
        acked = [Path(m.group(1)) for out in outputs for m in _SENT.finditer(out) if m.group(2) == "Success"]
        assert len(acked) == SENDERS * PER_SENDER
        by_uid = {i.sop_instance_uid: i for i in pacs.store}
        assert len(by_uid) == len(pacs.store) == len(acked)
        on_disk = sorted(pacs.store.files_dir.rglob("*.dcm"))
        assert len(on_disk) == len(acked)  # exactly once
        for path in acked:
            sent = dcmread(path)
            stored = by_uid[str(sent.SOPInstanceUID)].path
            assert dcmread(stored).PixelData == sent.PixelData
            assert _body(stored) == _body(path)
        assert leftovers(pacs.store) == []
        assert max(pacs.store.commit_batches()) > 1  # associations did share commits
        assert sum(pacs.store.commit_batches()) == len(acked)
        assert echo_ok(pacs)


def test_failed_group_commit_answers_failure_and_keeps_nothing(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory fsync that fails (a fault no peer can cause, hence the patch) under four
    concurrent senders: every instance of that batch gets a failure status and leaves no file
    and no index row; every success is durable and readable; the service keeps serving."""
    real = store_module._fsync_dir
    calls = {"n": 0}
    lock = threading.Lock()

    def flaky(path: Path) -> None:
        with lock:
            calls["n"] += 1
            fail = calls["n"] % 3 == 0
        if fail:
            raise OSError(5, "Input/output error")
        real(path)

    folders = _sender_files(tmp_path / "src")
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        monkeypatch.setattr(store_module, "_fsync_dir", flaky)
        client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=60)

        rows = store_concurrently(client, folders)
        assert len(rows) == SENDERS * PER_SENDER
        ok = {r["sop_instance_uid"] for r in rows if r["status"] == 0}
        failed = {r["sop_instance_uid"] for r in rows if r["status"] != 0}
        assert ok and failed  # the fault hit some batches, not all
        assert {r["status"] for r in rows if r["status"] != 0} == {0xA700}
        stored = {i.sop_instance_uid: i.path for i in pacs.store}
        assert set(stored) == ok
        assert len(list(pacs.store.files_dir.rglob("*.dcm"))) == len(ok)
        for uid in ok:
            assert str(dcmread(stored[uid]).SOPInstanceUID) == uid
        assert leftovers(pacs.store) == []
        monkeypatch.undo()
        again = client.store([p for paths in folders for p in paths])  # the same files, now durable
        assert set(again["status"].to_list()) == {0}
        assert len(pacs.store) == SENDERS * PER_SENDER
        assert len(list(pacs.store.files_dir.rglob("*.dcm"))) == SENDERS * PER_SENDER
        assert echo_ok(pacs)


def test_fast_path_files_identical_to_pynetdicom_path(tmp_path: Path) -> None:
    """The fast receive path (file meta built from a dict, bytes written as received) stores the
    very file pynetdicom's own C-STORE path stores for the same sender (fast=False)."""
    folder = tmp_path / "src"
    folder.mkdir()
    paths = []
    for number, size in enumerate((8, 64, 200), start=1):
        path = folder / f"{number}.dcm"
        make_instance("MRN1002", 0, 1, number, size=size).save_as(path, enforce_file_format=True)
        paths.append(path)
    stored: list[dict[str, bytes]] = []
    for fast in (True, False):
        with EmbeddedPACS(tmp_path / f"pacs-{fast}", fast=fast) as pacs:
            result = subprocess.run([dcmtk("storescu"), "-aet", "SENDER", "-aec", pacs.aet, "127.0.0.1",
                                     str(pacs.port), *map(str, paths)], env=peer_env(),
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            stored.append({i.sop_instance_uid: i.path.read_bytes() for i in pacs.store})
    assert len(stored[0]) == 3
    assert stored[0] == stored[1]
