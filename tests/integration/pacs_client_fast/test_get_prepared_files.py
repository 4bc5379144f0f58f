"""C-GET creates each instance's temporary file ahead (FileReceiver.prepare): the same files,
nothing left behind, failures still answered 0xA700 and reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from kit.dicom._fastnet import FileReceiver
from kit.dicom.dimse import PacsClient, RetrieveError
from kit.dicom.scp import EmbeddedPACS
from kit.examples.dicom import random_ct_files


def test_get_leaves_only_the_instances(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    files = random_ct_files(tmp_path / "src", 5, patient_id="PREP", size=16, seed=4)
    client = PacsClient("127.0.0.1", pacs.port, called_aet=pacs.aet, timeout=20)
    client.store(files)
    dest = tmp_path / "back"
    got = client.get(study_uid=str(dcmread(files[0]).StudyInstanceUID), dest=dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{u}.dcm" for u in got["sop_instance_uid"])
    for path in files:
        ds = dcmread(path)
        assert dcmread(dest / f"{ds.SOPInstanceUID}.dcm").PixelData == ds.PixelData
    with pytest.raises(RetrieveError):
        client.get(study_uid="1.2.3.4.5.404", dest=tmp_path / "none")
    assert list((tmp_path / "none").iterdir()) == []


def test_prepare_write_discard(tmp_path: Path) -> None:
    receiver = FileReceiver(tmp_path, None, None)
    receiver.prepare()
    receiver.prepare()  # one spare at most
    hidden = list(tmp_path.iterdir())
    assert len(hidden) == 1 and hidden[0].name.startswith(".recv-")
    assert receiver.write("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", b"\x08\x00") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]  # written through the spare
    assert receiver.write("../x", "1.2", "1.2.840.10008.1.2.1", b"\x08\x00") == 0xA700  # refused: no file
    receiver.prepare()
    receiver.discard()
    receiver.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]


def test_a_failing_prepare_is_met_and_reported_by_the_write(tmp_path: Path) -> None:
    receiver = FileReceiver(tmp_path / "gone", None, None)
    receiver.prepare()  # no such folder: nothing made, nothing raised
    assert receiver.write("1.2.3", "1.2", "1.2.840.10008.1.2.1", b"\x08\x00") == 0xA700
    assert receiver.errors and "No such file" in receiver.errors[0]
