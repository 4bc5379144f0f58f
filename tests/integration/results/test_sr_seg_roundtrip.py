"""SR and SEG of a result stored to real PACSes, found again, retrieved and read back to the same result.

Peers: a Debian Orthanc (DIMSE + DICOMweb, tests/integration/conftest.py) and kit's EmbeddedPACS
(which checks every received data set before answering Success). Sent with kit's PacsClient and
with dcmtk's storescu in Implicit VR Little Endian; found with C-FIND; retrieved with WADO-RS and
C-GET; checked with dcmdump; parsed back with highdicom and kit.results.readback.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.dicom.web import DicomWebClient
from kit.results import AnalysisResult
from kit.results.readback import differences, read_seg, read_sr
from kit.results.seg import encode_seg
from kit.results.sr import encode_sr
from tests.conftest import peer_env, require_tool
from tests.integration.conftest import OrthancServer
from tests.unit.results import dicom_cases as cases

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class Encoded:
    """A result, its sources and its SR and SEG, also as files."""

    def __init__(self, folder: Path) -> None:
        self.sources = cases.ct()
        self.result: AnalysisResult = cases.regions_and_measurements(self.sources)
        seg = encode_seg(self.result, self.sources)
        assert seg is not None
        self.seg: Dataset = seg
        self.sr: Dataset = encode_sr(self.result, self.sources, seg)
        self.sr_file, self.seg_file = folder / "sr.dcm", folder / "seg.dcm"
        self.sr.save_as(self.sr_file, enforce_file_format=True)
        self.seg.save_as(self.seg_file, enforce_file_format=True)

    @property
    def study(self) -> str:
        return self.result.subject.study_instance_uid


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Encoded:
    return Encoded(tmp_path_factory.mktemp("encoded"))


def _dcmdump_sop_class(path: Path) -> str:
    out = subprocess.run([require_tool("dcmdump"), "-Un", "+P", "0008,0016", str(path)], env=peer_env(),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split("[", 1)[1].split("]", 1)[0].strip("\x00 ")


def _one(folder: Path, frame_uids: list[str], uid: str) -> Path:
    assert uid in frame_uids
    (path,) = [p for p in folder.rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True)
               .SOPInstanceUID == uid]
    return path


def _read_back_and_compare(encoded: Encoded, sr_path: Path, seg_path: Path) -> None:
    # highdicom itself parses what came back...
    sr = hd.sr.srread(sr_path)
    groups = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    assert {g.tracking_identifier for g in groups} == {"lesion 1", "lesion 2"}
    assert len(hd.seg.segread(seg_path).segment_numbers) == 2
    # ... and reads back to exactly what was sent
    assert differences(encoded.result, read_sr(sr_path, seg_path)) == []
    assert _dcmdump_sop_class(sr_path) == SR_CLASS
    assert _dcmdump_sop_class(seg_path) == SEG_CLASS


def _find_both(client: PacsClient, encoded: Encoded) -> None:
    for series, uid, sop_class in ((encoded.result.uid("sr-series"), encoded.result.uid("sr"), SR_CLASS),
                                   (encoded.result.uid("seg-series"), encoded.result.uid("seg"), SEG_CLASS)):
        found = client.find("IMAGE", study_instance_uid=encoded.study, series_instance_uid=series,
                            sop_instance_uid=uid, return_keys=["sop_instance_uid", "sop_class_uid"])
        assert found["sop_instance_uid"].to_list() == [uid]
        assert found["sop_class_uid"].to_list() == [sop_class]


# -- Orthanc -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def orthanc_with_result(orthanc: OrthancServer, encoded: Encoded) -> OrthancServer:
    client = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, aet="KITSCU", timeout=30)
    stored = client.store([*encoded.sources, encoded.sr, encoded.seg])
    assert stored["status"].to_list() == [0] * (len(encoded.sources) + 2)
    return orthanc


def _orthanc_client(orthanc: OrthancServer) -> PacsClient:
    return PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, aet="KITSCU", timeout=30)


def test_orthanc_c_find_then_wado_rs(orthanc_with_result: OrthancServer, encoded: Encoded,
                                     tmp_path: Path) -> None:
    _find_both(_orthanc_client(orthanc_with_result), encoded)
    web = DicomWebClient(orthanc_with_result.dicomweb, timeout=30)
    got_sr = web.get(encoded.study, encoded.result.uid("sr-series"), dest=tmp_path / "sr")
    got_seg = web.get(encoded.study, encoded.result.uid("seg-series"), dest=tmp_path / "seg")
    sr_path = _one(tmp_path / "sr", got_sr["sop_instance_uid"].to_list(), encoded.result.uid("sr"))
    seg_path = _one(tmp_path / "seg", got_seg["sop_instance_uid"].to_list(), encoded.result.uid("seg"))
    _read_back_and_compare(encoded, sr_path, seg_path)


def test_orthanc_c_get(orthanc_with_result: OrthancServer, encoded: Encoded, tmp_path: Path) -> None:
    client = _orthanc_client(orthanc_with_result)
    paths = {}
    for kind in ("sr", "seg"):
        got = client.get(study_uid=encoded.study, series_uid=encoded.result.uid(f"{kind}-series"),
                         sop_uid=encoded.result.uid(kind), dest=tmp_path / kind,
                         sop_classes=[SR_CLASS, SEG_CLASS])
        paths[kind] = _one(tmp_path / kind, got["sop_instance_uid"].to_list(), encoded.result.uid(kind))
    _read_back_and_compare(encoded, paths["sr"], paths["seg"])


def test_orthanc_resend_does_not_duplicate(orthanc_with_result: OrthancServer, encoded: Encoded) -> None:
    client = _orthanc_client(orthanc_with_result)
    again = cases.regions_and_measurements(encoded.sources)  # the same result, encoded anew
    seg = encode_seg(again, encoded.sources)
    client.store([encode_sr(again, encoded.sources, seg), seg])
    found = client.find("IMAGE", study_instance_uid=encoded.study,
                        series_instance_uid=encoded.result.uid("sr-series"), return_keys=["sop_instance_uid"])
    assert found["sop_instance_uid"].to_list() == [encoded.result.uid("sr")]


# -- the embedded PACS ---------------------------------------------------------------------------

@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    with EmbeddedPACS(tmp_path / "pacs", port=0, aet="KIT") as server:
        yield server


def test_embedded_pacs_accepts_and_returns_sr_and_seg(pacs: EmbeddedPACS, encoded: Encoded,
                                                      tmp_path: Path) -> None:
    client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", aet="KITSCU", timeout=30)
    stored = client.store([encoded.sr, encoded.seg])  # the receive check must pass both
    assert stored["status"].to_list() == [0, 0]
    _find_both(client, encoded)
    paths = {}
    for kind in ("sr", "seg"):
        got = client.get(study_uid=encoded.study, series_uid=encoded.result.uid(f"{kind}-series"),
                         dest=tmp_path / kind, sop_classes=[SR_CLASS, SEG_CLASS])
        paths[kind] = _one(tmp_path / kind, got["sop_instance_uid"].to_list(), encoded.result.uid(kind))
    _read_back_and_compare(encoded, paths["sr"], paths["seg"])
    held = {i.sop_instance_uid: i for i in pacs.store.instances()}
    for kind, sop_class in (("sr", SR_CLASS), ("seg", SEG_CLASS)):
        assert _dcmdump_sop_class(held[encoded.result.uid(kind)].path) == sop_class


@pytest.mark.parametrize("syntax_flag", ["-xi", "-xe"])  # Implicit / Explicit VR Little Endian
def test_embedded_pacs_accepts_sr_and_seg_from_dcmtk(pacs: EmbeddedPACS, encoded: Encoded,
                                                     syntax_flag: str, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    done = subprocess.run([storescu, "-R", syntax_flag, "-aec", "KIT", "-aet", "DCMTK", "127.0.0.1",
                           str(pacs.port), str(encoded.sr_file), str(encoded.seg_file)],
                          env=peer_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    held = {i.sop_instance_uid: i for i in pacs.store.instances()}
    assert {encoded.result.uid("sr"), encoded.result.uid("seg")} <= held.keys()
    syntax = {"-xi": "1.2.840.10008.1.2", "-xe": "1.2.840.10008.1.2.1"}[syntax_flag]
    assert {held[encoded.result.uid(k)].transfer_syntax_uid for k in ("sr", "seg")} == {syntax}
    read = read_sr(held[encoded.result.uid("sr")].path, held[encoded.result.uid("seg")].path)
    assert differences(encoded.result, read) == []
    assert len(read_seg(held[encoded.result.uid("seg")].path)) == 2
