"""Issue 7 items 5-10 and issue 8 item 9: the embedded PACS against broken and hostile peers.

Real peers (dcmtk storescu/findscu/echoscu) where they can produce the case; raw sockets
and hand-built PDUs (kit's own DataPhase as the client) for the rest.
"""

from __future__ import annotations

import resource
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from kit.dicom.scp import EmbeddedPACS
from kit.dicom.store import InstanceStore
from kit.errors import DicomFileError
from tests.integration.pacs_scp.conftest import encode, make_instance, poison_datasets, raw_store, run

pytestmark = pytest.mark.dcmtk


def echo_seconds(pacs: EmbeddedPACS, called: str | None = None) -> float:
    start = time.monotonic()
    result = run("echoscu", "-to", "10", "-ta", "10", "-aec", called or pacs.aet, "127.0.0.1",
                 str(pacs.port), timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - start


def _file(tmp: Path, name: str, ds: object) -> Path:
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
    return path


# -- item 5: nothing unreadable is acknowledged ----------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pynetdicom-path"])
def test_poison_data_sets_are_refused_and_nothing_is_kept(tmp_path: Path, fast: bool) -> None:
    with EmbeddedPACS(tmp_path / "pacs", fast=fast) as pacs:
        for name, (data, sop_uid, expected) in poison_datasets().items():
            status, comment = raw_store(pacs.port, pacs.aet, data, sop_uid=sop_uid)
            assert status == expected, (name, hex(status), comment)
            assert comment, name  # the reason travels in ErrorComment
        assert len(pacs.store) == 0
        assert not list(pacs.store.files_dir.rglob("*.dcm"))
        pacs.store.release_spares()  # the empty files made ahead for the next instances
        assert not [p for p in pacs.store.tmp_dir.iterdir()]
        good = make_instance("MRN1001", 0, 1, 1)
        assert raw_store(pacs.port, pacs.aet, encode(good), sop_uid=str(good.SOPInstanceUID)) == (0, "")
        implicit = make_instance("MRN1001", 0, 1, 6)
        assert raw_store(pacs.port, pacs.aet, encode(implicit, implicit=True),
                         sop_uid=str(implicit.SOPInstanceUID), syntax="1.2.840.10008.1.2")[0] == 0
        assert {i.sop_instance_uid for i in pacs.store} == {good.SOPInstanceUID, implicit.SOPInstanceUID}
    pacs.store.close()


def test_storescu_truncated_pixels_and_missing_study_are_refused(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    """dcmtk sends what it can parse: pixel data shorter than Rows x Columns, no Study UID."""
    short = make_instance("MRN1002", 0, 1, 1)
    short.PixelData = short.PixelData[:64]
    no_study = make_instance("MRN1002", 0, 1, 2)
    del no_study.StudyInstanceUID
    for path, status in ((_file(tmp_path, "short.dcm", short), "cannotunderstand"),
                         (_file(tmp_path, "nostudy.dcm", no_study), "datasetdoesnotmatch")):
        out = run("storescu", "-v", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(path))
        text = (out.stdout + out.stderr).lower().replace(" ", "")
        assert f"receivedstoreresponse(error:{status}" in text, text
    assert len(pacs.store) == 0
    ok = _file(tmp_path, "ok.dcm", make_instance("MRN1002", 0, 1, 3))
    assert run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(ok)).returncode == 0
    assert len(pacs.store) == 1


def test_store_encoded_checks_what_it_stores(tmp_path: Path) -> None:
    from pydicom.dataset import FileMetaDataset

    store = InstanceStore(tmp_path / "s")
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    for data in (b"", b"\x00" * 7, encode(make_instance("MRN1001", 0, 1, 1))[:-10]):
        with pytest.raises(DicomFileError):
            store.store_encoded(meta, data)
    assert len(store) == 0
    store.close()


# -- item 6: declared PDU lengths are bounded -------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 1e6


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pynetdicom-path"])
def test_pdu_over_the_negotiated_maximum_is_aborted_unread(tmp_path: Path, fast: bool) -> None:
    with EmbeddedPACS(tmp_path / "pacs", fast=fast, max_pdu=65536) as pacs:
        before = _rss_mb()
        for _ in range(2):
            ae = AE(ae_title="HUGEPDU")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
            assert assoc.is_established
            sock = assoc.dul.socket.socket  # type: ignore[union-attr]
            sock.sendall(struct.pack(">BBI", 0x04, 0, 1 << 30) + b"\x00" * 64)  # P-DATA-TF "of 1 GiB"
            deadline = time.monotonic() + 3
            while not assoc.is_aborted and time.monotonic() < deadline:
                time.sleep(0.02)
            assert assoc.is_aborted, "the PACS kept reading a 1 GiB PDU"
            ae.shutdown()
        assert _rss_mb() - before < 100
        assert echo_seconds(pacs) < 3


def test_pdu_just_under_the_limit_is_fine(tmp_path: Path) -> None:
    """Max PDU 16 KiB: storescu with 16 KiB PDUs stores a 512 KiB image."""
    big = _file(tmp_path, "big.dcm", make_instance("MRN1003", 0, 1, 1, size=512))
    with EmbeddedPACS(tmp_path / "pacs", max_pdu=16384) as pacs:
        out = run("storescu", "-pdu", "16384", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(big))
        assert out.returncode == 0, out.stderr
        assert len(pacs.store) == 1


def test_huge_association_request_is_aborted(pacs: EmbeddedPACS) -> None:
    with socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:
        s.sendall(struct.pack(">BBI", 0x01, 0, 1 << 30) + b"\x00" * 100)
        s.settimeout(5)
        data = s.recv(100)
        assert data[:1] == b"\x07" or data == b""  # A-ABORT, then closed
    assert echo_seconds(pacs) < 3


# -- item 7: wildcard bombs ---------------------------------------------------------------------

def test_findscu_wildcard_bomb_answers_quickly(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    ds = make_instance("MRN1004", 0, 1, 1)
    ds.StudyDescription = "a" * 64
    path = _file(tmp_path, "a64.dcm", ds)
    assert run("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), str(path)).returncode == 0
    for pattern, expect in (("*a" * 12 + "*b", 0), ("*a" * 30 + "*", 1), ("a*a?a" + "*a" * 10, 1)):
        out_dir = tmp_path / f"f{len(pattern)}-{expect}"
        out_dir.mkdir()
        start = time.monotonic()
        out = run("findscu", "-S", "-aec", pacs.aet, "-X", "-od", str(out_dir),
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyDescription={pattern}",
                  "-k", "StudyInstanceUID", "127.0.0.1", str(pacs.port))
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - start < 5
        assert len(list(out_dir.glob("rsp*.dcm"))) == expect, pattern


# -- item 8: idle connections, slowloris ---------------------------------------------------------

def test_idle_connection_flood_does_not_lock_anyone_out(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", request_timeout=1.5, max_pending=32) as pacs:
        idle = [socket.create_connection(("127.0.0.1", pacs.port), timeout=5) for _ in range(100)]
        try:
            assert echo_seconds(pacs) < 3  # 100 idle sockets > 64 associations > 32 pending
            time.sleep(2.0)  # past request_timeout: the server closed every idle socket
            closed = 0
            for s in idle:
                s.settimeout(2)
                try:
                    closed += s.recv(1) == b""
                except (ConnectionError, TimeoutError):
                    closed += 1
            assert closed == len(idle)
        finally:
            for s in idle:
                s.close()
        assert echo_seconds(pacs) < 3


def test_reconnecting_idle_flood_keeps_the_pacs_up(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", request_timeout=1.0, max_pending=32) as pacs:
        stop = threading.Event()
        opened = [0]

        def flood() -> None:
            held: list[socket.socket] = []
            while not stop.is_set():
                try:
                    held.append(socket.create_connection(("127.0.0.1", pacs.port), timeout=2))
                    opened[0] += 1
                except OSError:
                    pass
                if len(held) > 80:
                    held.pop(0).close()
                time.sleep(0.005)
            for s in held:
                s.close()

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            deadline = time.monotonic() + 15  # the flood is real before we measure (slow on a busy box)
            while opened[0] <= 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert opened[0] > 100
            for _ in range(3):
                assert echo_seconds(pacs) < 3
        finally:
            stop.set()
            flooder.join(10)


def test_slowloris_association_request_is_cut_at_the_deadline(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "pacs", request_timeout=1.0) as pacs, \
            socket.create_connection(("127.0.0.1", pacs.port), timeout=5) as s:
        s.sendall(struct.pack(">BBI", 0x01, 0, 200))
        start = time.monotonic()
        closed = False
        while time.monotonic() - start < 5:
            try:
                s.sendall(b"\x00")
                s.settimeout(0.3)
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - start < 3
        assert echo_seconds(pacs) < 3


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pynetdicom-path"])
def test_slowloris_pdu_is_aborted(tmp_path: Path, fast: bool) -> None:
    with EmbeddedPACS(tmp_path / "pacs", fast=fast, dimse_timeout=1.0, network_timeout=30) as pacs:
        ae = AE(ae_title="SLOWLORIS")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        assert assoc.is_established
        sock = assoc.dul.socket.socket  # type: ignore[union-attr]
        sock.sendall(struct.pack(">BBI", 0x04, 0, 1000))
        start = time.monotonic()
        while not assoc.is_aborted and time.monotonic() - start < 6:
            try:
                sock.send(b"\x00")  # one byte every 0.2 s: each read succeeds, the PDU never ends
            except OSError:
                break
            time.sleep(0.2)
        deadline = time.monotonic() + 2
        while not assoc.is_aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted and time.monotonic() - start < 5
        ae.shutdown()
        assert echo_seconds(pacs) < 3


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pynetdicom-path"])
def test_idle_association_is_timed_out(tmp_path: Path, fast: bool) -> None:
    with EmbeddedPACS(tmp_path / "pacs", fast=fast, network_timeout=1.0) as pacs:
        ae = AE(ae_title="IDLEASSOC")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        assert assoc.is_established
        start = time.monotonic()
        while assoc.is_established and time.monotonic() - start < 6:
            time.sleep(0.05)
        assert not assoc.is_established and time.monotonic() - start < 4
        ae.shutdown()
        assert echo_seconds(pacs) < 3


# -- item 9: unparsable date/time keys ------------------------------------------------------------

def test_findscu_invalid_date_range_is_refused(loaded_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    for key in ("StudyDate=abc-def", "StudyDate=20261345", "StudyTime=25-26"):
        out_dir = tmp_path / key.replace("=", "_")
        out_dir.mkdir()
        out = run("findscu", "-v", "-S", "-aec", loaded_pacs.aet, "-X", "-od", str(out_dir),
                  "-k", "QueryRetrieveLevel=STUDY", "-k", key, "-k", "StudyInstanceUID",
                  "127.0.0.1", str(loaded_pacs.port))
        text = (out.stdout + out.stderr).lower()
        assert not list(out_dir.glob("rsp*.dcm")), key  # was: every study
        assert "final find response (error: datasetdoesnotmatchsopclass)" in text, text
    good = tmp_path / "good"
    good.mkdir()
    out = run("findscu", "-S", "-aec", loaded_pacs.aet, "-X", "-od", str(good),
              "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyDate=20260101-20261231",
              "-k", "StudyInstanceUID", "127.0.0.1", str(loaded_pacs.port))
    assert out.returncode == 0 and list(good.glob("rsp*.dcm"))


# -- item 10: a crash between the index commit and removing the replaced file ----------------------

def test_replaced_duplicate_left_by_a_crash_loses_deterministically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = InstanceStore(root)
    first = make_instance("MRN1005", 0, 1, 1)
    stored1 = store.store_dataset(first)
    old_copy = tmp_path / "old.dcm"
    shutil.copy2(stored1.path, old_copy)
    second = make_instance("MRN1005", 0, 1, 1)
    second.StudyInstanceUID = second.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.99"  # moves the file
    second.SeriesDescription = "second version"
    stored2 = store.store_dataset(second)
    assert stored2.path != stored1.path and not stored1.path.exists()
    store.close()
    # the state a crash leaves between the commit of version 2 and unlinking version 1
    stored1.path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(old_copy, stored1.path)
    for _ in range(3):  # every restart: the committed version, and one file
        again = InstanceStore(root)
        (instance,) = again.instances()
        assert instance.path == stored2.path
        assert dcmread(instance.path).SeriesDescription == "second version"
        assert sorted(root.rglob("*.dcm")) == [stored2.path]
        again.close()


def test_rebuild_keeps_the_newest_of_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = InstanceStore(root)
    v1 = store.store_dataset(make_instance("MRN1005", 0, 1, 2))
    keep = tmp_path / "v1.dcm"
    shutil.copy2(v1.path, keep)
    newer = make_instance("MRN1005", 0, 1, 2)
    newer.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.98"
    v2 = store.store_dataset(newer)
    shutil.copy(keep, v1.path)  # stale copy back, older mtime kept below
    import os
    os.utime(v1.path, ns=(1, 1))
    assert store.rebuild() == 1
    assert [i.path for i in store.instances()] == [v2.path]
    assert not v1.path.exists()
    store.close()


# -- issue 8 item 9: the called AE title -------------------------------------------------------------

def test_wrong_called_aet_is_rejected_by_default(tmp_path: Path) -> None:
    with EmbeddedPACS(tmp_path / "p1") as pacs:
        out = run("echoscu", "-v", "-aec", "NOTKIT", "127.0.0.1", str(pacs.port))
        text = (out.stdout + out.stderr).lower()
        assert out.returncode != 0
        assert "rejected" in text and "called ae title not recognized" in text, text
        assert echo_seconds(pacs) < 3
    with EmbeddedPACS(tmp_path / "p2", accept_any_called_aet=True) as lenient:
        assert echo_seconds(lenient, "ANYTHING") < 3


def test_stack_setting_and_client_settings_use_the_pacs_aet(tmp_path: Path) -> None:
    from kit.config import StackSettings, load_settings
    from kit.dicom.dimse import PacsClient
    from kit.stack import Stack

    settings = load_settings(env={"KIT_STACK_PACS_ACCEPT_ANY_CALLED_AET": "true"})
    assert settings.stack.pacs_accept_any_called_aet is True
    assert load_settings(env={}).stack.pacs_accept_any_called_aet is False
    assert load_settings(env={}).pacs.called_aet == load_settings(env={}).stack.pacs_aet
    stack = Stack(StackSettings(pacs_port=0, fhir_port=0, mllp_port=0, data_dir=str(tmp_path),
                                pacs_aet="MYPACS"), services=("pacs",), preload=False)
    with stack:
        client_settings = stack.client_settings(load_settings(env={}))
        assert client_settings.pacs.called_aet == "MYPACS"
        p = client_settings.pacs
        PacsClient(p.host, p.port, called_aet=p.called_aet, timeout=10).echo()
        out = run("echoscu", "-aec", "KIT", "127.0.0.1", str(p.port))
        assert out.returncode != 0  # the default AE title is not this PACS's


# -- generic: a worker thread that dies takes the service down loudly -------------------------------

def test_dead_gate_thread_stops_the_listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A fault no peer can cause (hence the patch): the gate thread raises."""
    from kit.dicom._guard import GuardedServer
    from kit.stack import Stack

    def broken(self: GuardedServer, *args: object) -> None:
        raise RuntimeError("injected gate fault")

    stack = Stack.ephemeral(services=("pacs",), preload=False)
    with stack:
        pacs = stack.services["pacs"]
        assert isinstance(pacs, EmbeddedPACS) and pacs.running and stack.failures() == {}
        monkeypatch.setattr(GuardedServer, "_admit", broken)
        socket.create_connection(("127.0.0.1", pacs.port), timeout=5).close()
        deadline = time.monotonic() + 3
        while pacs.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pacs.running and isinstance(pacs.failure, RuntimeError)
        assert "pacs" in stack.failures()
        assert any(r.levelname == "CRITICAL" for r in caplog.records)
        time.sleep(0.6)
        with pytest.raises(OSError):  # nothing accepts into a void: the port is closed
            socket.create_connection(("127.0.0.1", pacs.port), timeout=2).close()
