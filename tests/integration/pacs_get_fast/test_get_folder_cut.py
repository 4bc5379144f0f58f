"""The destination folder taken away mid-retrieve (Medix cuts an export over its disk bound by
renaming the folder to ``<name>.over`` and removing it): from then on no instance is answered
success, and none lands in the moved folder, on either path.

The slow path (:class:`kit.dicom._fastnet.FileReceiver`) renames ``<dest>/.recv-*.part`` to
``<dest>/<uid>.dcm`` by path, so it fails (0xA700) once ``<dest>`` is gone. The fast path
(:class:`kit.dicom._getphase.PooledReceiver`) must too: a file made ahead is linked or renamed
at ``<dest>/<uid>.dcm`` resolved by path, never through a descriptor of the folder that moved.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.uid import CTImageStorage
from pynetdicom import evt

from kit.dicom import _getphase
from kit.dicom._fastnet import FileReceiver
from kit.dicom._getphase import PooledReceiver
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.examples.dicom import random_ct_files
from tests.integration.pacs_get_fast.scp import serving_get
from tests.integration.pacs_get_fast.test_get_answer_path import CT, SYNTAXES, _ahead

DATA = b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"
CUT_AT = 4  # instances answered before the folder goes


def _cut(dest: Path, how: str) -> Path:
    over = dest.with_name(dest.name + ".over")
    if how == "renamed":
        os.replace(dest, over)
    elif how == "removed":
        for _ in range(100):  # the pool's thread may still be making a file in it
            shutil.rmtree(dest, ignore_errors=True)
            if not dest.exists():
                break
    else:  # renamed, then removed: Medix's watchdog
        os.replace(dest, over)
        shutil.rmtree(over)
    return over


@pytest.mark.parametrize("how", ["renamed", "removed", "renamed-then-removed"])
@pytest.mark.parametrize("kind", ["linked", "named", "slow"])
def test_no_success_once_the_folder_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            how: str, kind: str) -> None:
    if kind == "named":
        monkeypatch.setattr(_getphase, "_TMPFILE", 0)
    dest = tmp_path / "export"
    dest.mkdir()
    receiver: PooledReceiver | FileReceiver = (FileReceiver(dest, None, None) if kind == "slow"
                                               else PooledReceiver(dest, None, None))
    if isinstance(receiver, PooledReceiver):
        receiver.pooled = True  # files made ahead in the folder before it goes

    def place(uid: str) -> int:
        if isinstance(receiver, PooledReceiver):
            status, size, final = receiver.place(uid, CT, SYNTAXES[1], DATA)
            if status == 0:
                receiver.record(uid, CT, SYNTAXES[1], size, final)
            receiver.pool.top_up(4)
            return status
        status = receiver.write(uid, CT, SYNTAXES[1], DATA)
        receiver.prepare()
        return status

    receiver.prepare()
    if isinstance(receiver, PooledReceiver):
        receiver.pool.top_up(4)
    before = [place(f"1.2.{i}") for i in range(CUT_AT)]
    assert before == [0] * CUT_AT
    if isinstance(receiver, PooledReceiver):  # files made ahead in the folder before it goes
        deadline = time.monotonic() + 10
        while len(receiver.pool._shared.ready) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(receiver.pool._shared.ready) == 4
    over = _cut(dest, how)
    after = [place(f"1.2.{i}") for i in range(CUT_AT, CUT_AT + 6)]
    receiver.discard()
    assert after == [0xA700] * 6  # what cannot be at <dest>/<uid>.dcm is never answered success
    assert [Path(r[4]).name for r in receiver.rows] == [f"1.2.{i}.dcm" for i in range(CUT_AT)]
    assert receiver.errors
    if how == "renamed":  # the files answered before the cut moved with it; nothing came after
        assert sorted(p.name for p in over.iterdir() if not p.name.endswith(".part")) == sorted(
            f"1.2.{i}.dcm" for i in range(CUT_AT))
    else:
        assert not over.exists()
    assert not dest.exists()
    assert _ahead(over) == 0 and _ahead(dest) == 0  # nothing left open


@pytest.fixture
def cutting_scp(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A pynetdicom C-GET SCP serving 12 CT instances that renames our destination folder to
    ``<name>.over`` once we have answered ``CUT_AT`` of them (as Medix's watchdog does), and
    records the status we answered for each."""
    files = random_ct_files(tmp_path / "src", 12, patient_id="CUT", size=16, seed=5)
    datasets = [pydicom.dcmread(p) for p in files]
    state = SimpleNamespace(dest=tmp_path / "export", datasets=datasets,
                            study=str(datasets[0].StudyInstanceUID), statuses=[])

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(datasets)
        for i, ds in enumerate(datasets):
            if i == CUT_AT:
                os.replace(state.dest, state.dest.with_name("export.over"))
            yield 0xFF00, ds

    def on_store_rsp(event: evt.Event) -> None:  # our C-STORE-RSPs as the PACS reads them
        msg = event.message
        if getattr(msg, "AffectedSOPInstanceUID", None) is not None and msg.Status is not None:
            state.statuses.append(int(msg.Status))

    with serving_get(on_get, on_recv=on_store_rsp) as state.port:
        yield state


@pytest.mark.parametrize("unnamed", [True, False], ids=["linked", "renamed"])
def test_a_real_get_into_a_cut_folder_fails_the_rest(cutting_scp: SimpleNamespace,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     unnamed: bool) -> None:
    if not unnamed:
        monkeypatch.setattr(_getphase, "_TMPFILE", 0)
    client = PacsClient("127.0.0.1", cutting_scp.port, called_aet="GETSCP", timeout=20)
    with pytest.raises(RetrieveError) as caught:
        client.get(study_uid=cutting_scp.study, dest=cutting_scp.dest, sop_classes=[CTImageStorage])
    err = caught.value
    total = len(cutting_scp.datasets)
    assert err.failed == total - CUT_AT and err.completed == CUT_AT
    assert err.received.height == CUT_AT
    assert "local write failed" in str(err)
    over = cutting_scp.dest.with_name("export.over")
    # nothing after the cut (named files made ahead moved with the folder: they stay there unused)
    names = sorted(p.name for p in over.iterdir() if not p.name.endswith(".part"))
    assert names == sorted(Path(p).name for p in err.received["path"])
    assert _ahead(over) == 0


def test_no_proc_falls_back_to_named_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without /proc (the link's source folder) unnamed files cannot be linked: named ones."""
    real_open = os.open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> int:
        if str(path).startswith("/proc"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(_getphase.os, "open", no_proc)
    receiver = PooledReceiver(tmp_path, None, None)
    statuses = [receiver.place(f"1.2.{i}", CT, SYNTAXES[1], DATA)[0] for i in range(3)]
    receiver.discard()
    assert statuses == [0, 0, 0] and not receiver.errors and not receiver.unnamed
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"1.2.{i}.dcm" for i in range(3)]
    assert _ahead(tmp_path) == 0
