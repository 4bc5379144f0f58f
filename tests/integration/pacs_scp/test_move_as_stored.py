"""C-MOVE sends compressed instances as stored: the embedded PACS offers each stored syntax its own context.

Before, one context per SOP class listed [JPEG Baseline, Explicit, Implicit]; the destination
accepted an uncompressed syntax and every JPEG VL Endoscopic still failed with 0xA702.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit, VLEndoscopicImageStorage

from tests.integration.pacs_scp.conftest import sample_stack_to_move_from


def test_move_of_jpeg_endoscopy_stills_arrives_as_stored(tmp_path: Path) -> None:
    with sample_stack_to_move_from(tmp_path) as (client, store_port):
        study = str(client.find("STUDY", modalities_in_study="ES")["study_instance_uid"][0])
        got = client.move(study_uid=study, dest=tmp_path / "moved", store_port=store_port)
    assert got.height > 0
    assert set(got["transfer_syntax_uid"]) == {JPEGBaseline8Bit}
    for path in got["path"]:
        ds = dcmread(path)
        assert ds.SOPClassUID == VLEndoscopicImageStorage
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert ds.pixel_array.shape[-1] == 3  # decodes
