"""C-MOVE of a large instance from Orthanc: the storage SCP keeps it on disk as it arrives.

Orthanc (its own process, so that tracemalloc here counts the client alone) moves an
18 MiB CT instance to PacsClient.move's storage SCP with SPILL_AT lowered to 1 MiB: the
file arrives byte for byte while the client allocates a few MiB (pynetdicom's receiver
held the data set whole, then copied it with its file meta: two copies), and no
temporary file is left beside it.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from pydicom import dcmread

from kit.dicom import _fastnet
from kit.dicom.dimse import PacsClient
from kit.examples.dicom import random_ct_files
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer

pytestmark = pytest.mark.orthanc

SPILL = 1 << 20


def test_a_large_instance_moved_from_orthanc_is_kept_on_disk_as_it_arrives(
        orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (big,) = random_ct_files(tmp_path / "big", 1, patient_id="MRN9301", size=3072, seed=31)
    (small,) = random_ct_files(tmp_path / "small", 1, patient_id="MRN9302", size=64, seed=32)
    for path in (big, small):
        orthanc.upload(path)
    port = free_port()
    orthanc.add_modality("kitmovebig", "KITMOVEBIG", "127.0.0.1", port)
    client = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, aet="KITSCU", timeout=30)
    monkeypatch.setattr(_fastnet, "SPILL_AT", SPILL)

    def move(path: Path, dest: Path) -> list[str]:
        frame = client.move(study_uid=str(dcmread(path, stop_before_pixels=True).StudyInstanceUID),
                            dest=dest, move_aet="KITMOVEBIG", store_port=port)
        return [str(p) for p in frame["path"]]

    move(small, tmp_path / "warm")  # the imports and the first association before the count
    tracemalloc.start()
    try:
        (got,) = move(big, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = big.stat().st_size
    assert peak < 8 * SPILL, f"{peak:,} bytes allocated to receive a {size:,}-byte instance"
    source, received = dcmread(big), dcmread(got)
    assert received.SOPInstanceUID == source.SOPInstanceUID
    assert received.PixelData == source.PixelData
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(got).name]
