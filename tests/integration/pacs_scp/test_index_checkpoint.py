"""The embedded PACS's index checkpoints its WAL off the commit path (kit._sqlite.WalCheckpointer):
never inside a group commit (SQLite's automatic checkpoint fsynced twice there with every receiver
waiting), by a receiver once it has answered; the WAL stays bounded; nothing is lost (issue 9, target 3)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kit._sqlite import WalCheckpointer
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.store import InstanceStore
from kit.errors import StoreError
from tests.integration.pacs_scp.conftest import make_instance


def _store(store: InstanceStore, number: int, **kwargs: Any) -> None:
    ds = make_instance("MRN1001", 0, 1, number, size=8)
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    body = data[132 + 12 + int.from_bytes(data[140:144], "little"):]
    meta = {"MediaStorageSOPClassUID": str(ds.SOPClassUID),
            "MediaStorageSOPInstanceUID": str(ds.SOPInstanceUID),
            "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID)}
    store.store_encoded(meta, body, **kwargs)


def _wal_frames(store: InstanceStore) -> int:
    """The WAL file's size (it restarts from its beginning after a complete checkpoint)."""
    wal = Path(f"{store.db_path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_commits_never_checkpoint_an_idle_caller_does(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    store._checkpointer = WalCheckpointer(store.db_path, every=5, hard=1000)
    for number in range(1, 13):
        _store(store, number, checkpoint=False)
    assert store._checkpointer.runs == 0  # 12 rows past `every`, yet no commit checkpointed
    grown = _wal_frames(store)
    assert store.checkpoint() and store._checkpointer.runs == 1
    assert not store.checkpoint()  # not due again
    for number in range(13, 16):
        _store(store, number, checkpoint=False)
    assert _wal_frames(store) <= grown  # the WAL restarted from its beginning
    assert len(store) == 15
    store.close()
    assert len(InstanceStore(tmp_path / "store")) == 15


def test_an_overdue_checkpoint_bounds_the_wal(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "store")
    store._checkpointer = WalCheckpointer(store.db_path, every=4, hard=10)
    sizes = []
    for number in range(1, 61):
        _store(store, number, checkpoint=False)  # nobody idle: the writer runs it once overdue
        sizes.append(_wal_frames(store))
    assert store._checkpointer.runs >= 5
    assert max(sizes[30:]) <= max(sizes[:15]) * 2  # bounded, not growing with the rows
    assert len(store) == 60


def test_the_receiver_checkpoints_after_answering(tmp_path: Path) -> None:
    files = []
    for number in range(1, 21):
        path = tmp_path / "src" / f"{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        make_instance("MRN1001", 0, 1, number, size=8).save_as(path, enforce_file_format=True)
        files.append(path)
    with EmbeddedPACS(tmp_path / "pacs") as pacs:
        pacs.store._checkpointer = WalCheckpointer(pacs.store.db_path, every=5, hard=1000)
        PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=30).store(files)
        assert pacs.store._checkpointer.runs >= 3
        assert len(pacs.store) == 20


def test_a_failed_checkpoint_is_retried_and_loses_nothing(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    # an in-process CLI test earlier in the run may have left the root logger at ERROR
    caplog.set_level(logging.WARNING, logger="kit.dicom.store")
    store = InstanceStore(tmp_path / "store")
    checkpointer = WalCheckpointer(store.db_path, every=2, hard=1000)
    store._checkpointer = checkpointer
    for number in range(1, 4):
        _store(store, number, checkpoint=False)
    real = checkpointer._db
    assert real is not None

    class Failing:
        def execute(self, sql: str) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

    checkpointer._db = Failing()  # type: ignore[assignment]
    assert store.checkpoint() is False
    assert "index checkpoint failed" in caplog.text
    with pytest.raises(StoreError):
        checkpointer.run()
    checkpointer._db = real
    assert store.checkpoint() is True
    assert len(store) == 3


def test_checkpointer_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        WalCheckpointer(tmp_path / "x.sqlite", every=10, hard=5)
