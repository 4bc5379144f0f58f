"""C-GET of compressed instances by a retriever that only accepts uncompressed syntaxes.

The sample endoscopy stills are JPEG Baseline. A retriever that proposes only
uncompressed transfer syntaxes (getscu's default, the kit client's first choice)
must still receive them: the PACS decompresses them, as Orthanc does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGBaseline8Bit

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.examples import dicom_dir
from kit.examples.cohort import patient
from tests.integration.pacs_scp.conftest import run

ES = patient("MRN1001").studies[1]


@pytest.fixture
def es_pacs(tmp_path: Path) -> EmbeddedPACS:
    files = sorted((dicom_dir() / ES.mrn / ES.key).rglob("*.dcm"))
    assert files and all(dcmread(f).file_meta.TransferSyntaxUID == JPEGBaseline8Bit for f in files)
    pacs = EmbeddedPACS(tmp_path / "store")
    assert pacs.import_files(files) == len(files)
    pacs.start()
    yield pacs  # type: ignore[misc]
    pacs.stop()


def _originals() -> dict[str, np.ndarray]:
    return {str(ds.SOPInstanceUID): ds.pixel_array for ds in
            (dcmread(f) for f in (dicom_dir() / ES.mrn / ES.key).rglob("*.dcm"))}


def test_kit_client_gets_decompressed_pixels(es_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    client = PacsClient("127.0.0.1", es_pacs.port, called_aet=es_pacs.aet, timeout=20)
    got = client.get(study_uid=ES.study_uid, dest=tmp_path / "got")
    originals = _originals()
    assert got.height == len(originals) == 4
    for path in got["path"]:
        ds = dcmread(path)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)])


def test_getscu_gets_decompressed_pixels(es_pacs: EmbeddedPACS, tmp_path: Path) -> None:
    out = tmp_path / "getscu"
    out.mkdir()
    result = run("getscu", "-S", "-aec", es_pacs.aet, "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={ES.study_uid}", "127.0.0.1", str(es_pacs.port))
    assert result.returncode == 0, result.stderr
    originals = _originals()
    received = [dcmread(p) for p in out.iterdir()]
    assert len(received) == 4
    for ds in received:
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)])
