"""The embedded PACS's receive path under faults (issue 9, target 3): a receiving process killed
with SIGKILL loses nothing it acknowledged; a failed file sync fails exactly that instance; the
data phase's hold on pynetdicom's reactor neither delays the association nor its release."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

import kit.dicom._fastnet as fastnet
import kit.dicom.store as store_module
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.store import InstanceStore
from tests.conftest import free_port, peer_env, wait_for_port
from tests.integration.pacs_scp.conftest import dcmtk, make_instance
from tests.integration.pacs_scp.test_group_commit import _SENT, _body, _sender_files, store_concurrently
from tests.integration.pacs_scp.test_robustness import echo_ok, leftovers

SENDERS = 4

_SERVE = """
import sys, time
from kit.dicom.scp import EmbeddedPACS
pacs = EmbeddedPACS(sys.argv[1], port=int(sys.argv[2]), aet="KIT")
pacs.start()
while True:
    time.sleep(1)
"""


def test_sigkill_while_receiving_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    """Four storescu senders into a PACS process that is killed with SIGKILL mid-transfer: on
    reopening the store, every instance a sender saw acknowledged is there, indexed once, byte
    for byte what was sent and readable; no temporary file is left; the store serves again."""
    folders = _sender_files(tmp_path / "src")
    root, port = tmp_path / "pacs", free_port()
    server = subprocess.Popen([sys.executable, "-c", _SERVE, str(root), str(port)], start_new_session=True)
    try:
        wait_for_port(port, timeout=60, proc=server)  # type: ignore[arg-type]
        senders = [subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "KIT", "127.0.0.1", str(port),
                                     *map(str, paths)], env=peer_env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for paths in folders]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some, not all, have been stored
            stored = list((root / "files").rglob("*.dcm")) if (root / "files").exists() else []
            if len(stored) >= 20:
                break
            time.sleep(0.005)
        os.kill(server.pid, signal.SIGKILL)
        server.wait(30)
        outputs = [p.communicate(timeout=60)[0] for p in senders]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(30)
    acked = [Path(m.group(1)) for out in outputs for m in _SENT.finditer(out) if m.group(2) == "Success"]
    assert acked, outputs  # the kill came after some acknowledgements...
    assert len(acked) < SENDERS * len(folders[0])  # ...and before the end
    store = InstanceStore(root)
    try:
        by_uid = {i.sop_instance_uid: i for i in store}
        for path in acked:
            sent = dcmread(path)
            held = by_uid[str(sent.SOPInstanceUID)]
            assert _body(held.path) == _body(path)
            assert dcmread(held.path).PixelData == sent.PixelData
        assert len(list(store.files_dir.rglob("*.dcm"))) == len(store)  # indexed once, none unindexed
        assert leftovers(store) == []
    finally:
        store.close()
    with EmbeddedPACS(root) as pacs:  # the reopened store receives again
        again = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=60).store(
            [p for paths in folders for p in paths])
        assert set(again["status"].to_list()) == {0}
        assert len(pacs.store) == SENDERS * len(folders[0])


def test_a_failed_file_sync_fails_exactly_that_instance(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """fdatasync fails (a fault no peer can cause, hence the patch) for the files of chosen
    instances while four associations store at once: exactly those are answered 0xA700 and
    leave no file and no row; every other instance is acknowledged, durable and readable."""
    folders = _sender_files(tmp_path / "src")
    doomed = {str(dcmread(paths[i], stop_before_pixels=True).SOPInstanceUID)
              for paths in folders for i in (3, 17)}
    real = store_module._fdatasync

    def flaky(fd: int) -> None:
        head = Path(os.readlink(f"/proc/self/fd/{fd}")).read_bytes()[:4096]  # fd is write-only
        if any(uid.encode() in head for uid in doomed):
            raise OSError(5, "Input/output error")
        real(fd)

    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        monkeypatch.setattr(store_module, "_fdatasync", flaky)
        client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=60)

        rows = store_concurrently(client, folders)
        assert len(rows) == SENDERS * len(folders[0])
        failed = {r["sop_instance_uid"]: r["status"] for r in rows if r["status"] != 0}
        assert failed == dict.fromkeys(doomed, 0xA700)
        stored = {i.sop_instance_uid: i.path for i in pacs.store}
        assert set(stored) == {r["sop_instance_uid"] for r in rows} - doomed
        assert len(list(pacs.store.files_dir.rglob("*.dcm"))) == len(stored)
        for uid, path in stored.items():
            assert str(dcmread(path).SOPInstanceUID) == uid
        assert leftovers(pacs.store) == []
        assert echo_ok(pacs)


def test_a_folder_removed_before_the_commit_is_made_again(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The series folder disappears between the write and the group commit (an operator
    cleaning up): the commit makes it again (and syncs it), the instance is stored and readable."""
    real = store_module._make_dirs
    removed: list[str] = []

    def make_then_lose(folder: str) -> frozenset[str]:
        made = real(folder)
        if not removed:
            os.rmdir(folder)
            removed.append(folder)
        return made

    store = InstanceStore(tmp_path / "store")
    try:
        monkeypatch.setattr(store_module, "_make_dirs", make_then_lose)
        ds = make_instance("MRN1001", 0, 1, 1)
        held = store.store_dataset(ds)
        assert removed and Path(removed[0]).is_dir()
        assert held.path.parent == Path(removed[0])
        assert dcmread(held.path).SOPInstanceUID == ds.SOPInstanceUID
        assert [i.sop_instance_uid for i in store] == [str(ds.SOPInstanceUID)]
        assert leftovers(store) == []
    finally:
        store.close()


def test_a_short_writev_is_continued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """os.writev may write less than asked (a signal, a full disk nearly): the rest follows, in order."""
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, parts: real(fd, [bytes(parts[0])[:3]]))
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        store_module._write_all(fd, [b"abcdef", memoryview(b"ghi"), b"", b"jklmnop"])
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcdefghijklmnop"


def test_the_data_phase_hold_delays_neither_the_association_nor_its_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's reactor parks while the fast path owns the socket, but only then: it still
    sends the A-ASSOCIATE-AC at once, and the end of the data phase wakes it at once for the
    release (with a park of 30 s, either mistake would make each association take 30 s)."""
    monkeypatch.setattr(fastnet, "HOLD_PARK", 30.0)
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        started = time.monotonic()
        for _ in range(3):
            assert echo_ok(pacs)
        path = tmp_path / "one.dcm"
        make_instance("MRN1001", 0, 1, 1).save_as(path, enforce_file_format=True)
        sent = subprocess.run([dcmtk("storescu"), "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(path)],
                              env=peer_env(), capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert time.monotonic() - started < 25.0
        assert len(pacs.store) == 1


def test_a_parked_reactor_wakes_when_released() -> None:
    """release_dul wakes a reactor parked in the held check (no wait for the park to time out)."""

    class _State:
        current_state = "Sta6"

    class _Dul:
        state_machine = _State()
        event_queue: queue.Queue[str] = queue.Queue()  # nothing read before the hold

        def _is_transport_event(self) -> bool:
            raise AssertionError("the original check must not run while held")

    class _Assoc:
        dul = _Dul()

    assoc = _Assoc()
    idle = fastnet.hold_dul(assoc, park=True)  # type: ignore[arg-type]
    assert fastnet.hold_dul(assoc) is idle  # held once: the same hold
    hold = vars(assoc.dul)["_is_transport_event"]
    old_park = fastnet.HOLD_PARK
    fastnet.HOLD_PARK = 60.0
    try:
        returned = threading.Event()
        t = threading.Thread(target=lambda: (hold(), returned.set()))
        t.start()
        assert idle.wait(10)
        fastnet.release_dul(assoc)  # type: ignore[arg-type]
        assert returned.wait(10)
        t.join(10)
    finally:
        fastnet.HOLD_PARK = old_park
    assert "_is_transport_event" not in vars(assoc.dul)
