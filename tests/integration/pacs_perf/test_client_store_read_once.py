"""PacsClient.store reads each file once (kept within a memory budget, read again past it)
and still answers for every instance, also when a file goes bad between check and send."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from kit.dicom import dimse
from kit.dicom._outgoing import Outgoing
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import DicomFileError
from kit.examples.dicom import random_ct_files


def _files(folder: Path, n: int, seed: int) -> list[Path]:
    return random_ct_files(folder, n, patient_id="READONCE", size=16, seed=seed)


@pytest.mark.parametrize("budget", [0, 40_000, dimse.KEEP_CHECKED_BYTES])
def test_store_within_and_past_the_budget_is_byte_identical(pacs: EmbeddedPACS, tmp_path: Path,
                                                             budget: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dimse, "KEEP_CHECKED_BYTES", budget)
    files = _files(tmp_path / f"src-{budget}", 6, seed=budget % 97)
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=20)
    frame = client.store(files)
    assert frame["status"].to_list() == [0] * 6
    assert frame["path"].to_list() == [str(f) for f in files]  # input order
    stored = {i.sop_instance_uid: i.path for i in pacs.store}
    for path in files:
        ds = dcmread(path)
        back = dcmread(stored[str(ds.SOPInstanceUID)])
        assert back.PixelData == ds.PixelData and back.PatientID == ds.PatientID


def test_a_file_gone_after_its_check_stops_the_store_after_the_previous_answer(
        pacs: EmbeddedPACS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the budget a file is read again when sent: if it is gone by then, the store fails
    with a DicomFileError, after the previous instance was sent and answered (stored)."""
    monkeypatch.setattr(dimse, "KEEP_CHECKED_BYTES", 0)
    files = _files(tmp_path / "src", 3, seed=5)
    checked = Outgoing.of
    seen: list[Path] = []

    def of(item: Path, *, keep: bool = False) -> Outgoing:
        out = checked(item, keep=keep)
        seen.append(item)
        if len(seen) == 3:  # all checked: the second file vanishes before it is sent
            files[1].unlink()
        return out

    monkeypatch.setattr(Outgoing, "of", staticmethod(of))
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=20)
    with pytest.raises(DicomFileError):
        client.store(files)
    assert [i.sop_instance_uid for i in pacs.store] == [str(dcmread(files[0]).SOPInstanceUID)]
    assert client.echo() >= 0  # the PACS still serves


def test_get_frame_is_sorted_by_instance_as_polars_sorts_it(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    files = _files(tmp_path / "src", 12, seed=11)
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=20)
    client.store(files)
    got = client.get(study_uid=str(dcmread(files[0]).StudyInstanceUID), dest=tmp_path / "back")
    assert got.height == 12
    assert got.equals(got.sort("sop_instance_uid"))
    assert sorted(got["sop_instance_uid"].to_list()) == got["sop_instance_uid"].to_list()
