"""Capture to real PACSs: the embedded PACS and Orthanc (read back by dcmtk), and PACSs that refuse."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.endoscopy import procedures
from kit.endoscopy.capture import decode_clip
from kit.endoscopy.frame import Frame
from kit.endoscopy.store import capture_procedure
from kit.endoscopy.vendors import EXPLICIT_VR_LITTLE_ENDIAN, apply_overrides, profile
from kit.errors import DicomError, InvalidInputError, KitError, PeerDisconnectedError
from tests.conftest import free_port, peer_env, require_tool, spawned, wait_for_port
from tests.integration.conftest import OrthancServer
from tests.integration.endoscopy_dicom.peers import CLIP_FRAMES, clip_frames, items, write_worklist_files

pytestmark = pytest.mark.timeout(180)
VIDEO = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
STILL = "1.2.840.10008.5.1.4.1.1.77.1.1"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[EmbeddedPACS, PacsClient]]:
    with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as pacs:
        yield pacs, PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)


def stored(client: PacsClient, study: str) -> list[str]:
    found = client.find("IMAGE", study_instance_uid=study, series_instance_uid="*")
    return found["sop_instance_uid"].to_list()


def test_capture_into_the_worklist_study_then_found_and_decoded(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs, client = embedded
    procedure = procedures.find_procedure(client, "ACC100102")
    assert procedures.performed(client, accession="ACC100102").height == 0  # the PACS is empty
    cap = capture_procedure(client, procedure, clip_frames(), stills=3)
    assert [i.kind for i in cap.instances] == ["still", "still", "still", "clip"]
    assert all(i.found for i in cap.instances) and cap.frame["found"].all()
    clip = cap.clip
    assert clip is not None and clip.frame_indices == tuple(range(CLIP_FRAMES))
    assert [s.frame_indices[0] for s in cap.stills] == sorted(s.frame_indices[0] for s in cap.stills)
    uids = sorted(i.sop_instance_uid for i in cap.instances)
    assert sorted(stored(client, procedure.study_instance_uid)) == uids
    # the study now shows up among the procedures already in the PACS, with the worklist's identifiers
    done = procedures.performed(client, accession="ACC100102")
    assert done["study_instance_uid"].to_list() == [procedure.study_instance_uid]
    assert done["patient_id"].to_list() == ["MRN1001"] and done["modalities_in_study"][0].to_list() == ["ES"]
    # retrieved by C-GET naming its SOP class (so the PACS sends it as stored), the clip decodes to as many
    # frames as were captured
    got = client.get(study_uid=procedure.study_instance_uid, series_uid=clip.series_instance_uid,
                     sop_uid=clip.sop_instance_uid, sop_classes=[VIDEO],
                     dest=tmp_path / "got")
    (ds,) = [dcmread(p) for p in got["path"].to_list()]
    assert ds.SOPInstanceUID == clip.sop_instance_uid
    assert (ds.SOPClassUID, ds.AccessionNumber) == (VIDEO, "ACC100102")
    assert ds.file_meta.TransferSyntaxUID == clip.transfer_syntax_uid
    assert len(decode_clip(ds)) == CLIP_FRAMES == int(ds.NumberOfFrames)
    assert cap.locate(5) == (clip.sop_instance_uid, 6)
    first_still = cap.stills[0]
    assert cap.locate(first_still.frame_indices[0]) == (first_still.sop_instance_uid, None)


def test_chosen_stills_only_in_the_profiles_syntax(embedded) -> None:  # type: ignore[no-untyped-def]
    _, client = embedded
    raw = apply_overrides(profile("generic"), {"still_transfer_syntax": EXPLICIT_VR_LITTLE_ENDIAN})
    procedure = procedures.find_procedure(client, "ACC100302")
    cap = capture_procedure(client, procedure, clip_frames(), profile=raw, stills=[0, 17], clip=False)
    assert [(i.kind, i.frame_indices, i.transfer_syntax_uid) for i in cap.instances] == [
        ("still", (0,), EXPLICIT_VR_LITTLE_ENDIAN), ("still", (17,), EXPLICIT_VR_LITTLE_ENDIAN)]
    with pytest.raises(InvalidInputError, match=r"still frame\(s\) \[99\] never arrived"):
        capture_procedure(client, cap.procedure, clip_frames(), stills=[99], clip=False)


def _broken_source(kind: str) -> Iterator[Frame]:
    frames = clip_frames()
    for _ in range(5):
        yield next(frames)
    if kind == "not a frame":
        yield "garbage"  # type: ignore[misc]
    elif kind == "stream drops":
        raise PeerDisconnectedError("the stream stopped", peer="rtsp://127.0.0.1:1/live")
    else:  # frames of another size mid-capture
        import numpy as np
        yield Frame(5, 0.5, np.zeros((480, 640, 3), np.uint8))


@pytest.mark.parametrize(("kind", "error", "match"), [
    ("not a frame", InvalidInputError, "gave a str, not a Frame"),
    ("stream drops", PeerDisconnectedError, "the stream stopped"),
    ("size changes", InvalidInputError, "the clip is 320x240"),
])
def test_bad_frames_are_typed_errors_and_nothing_is_stored(embedded, kind: str, error: type[KitError],  # type: ignore[no-untyped-def]
                                                            match: str) -> None:
    _, client = embedded
    procedure = procedures.find_procedure(client, "ACC100602")
    with pytest.raises(error, match=match):
        capture_procedure(client, procedure, _broken_source(kind), stills=2)
    assert stored(client, procedure.study_instance_uid) == []
    with pytest.raises(InvalidInputError, match="gave no frames"):
        capture_procedure(client, procedure, iter(()), stills=2)
    # the PACS still takes a good capture afterwards
    assert len(capture_procedure(client, procedure, clip_frames(), stills=1).instances) == 2


def test_captured_instances_in_orthanc_read_back_by_dcmtk(orthanc: OrthancServer) -> None:
    dcmdump = require_tool("dcmdump")
    for old in orthanc.worklist_dir.glob("*.wl"):
        old.unlink()
    write_worklist_files(orthanc.worklist_dir, items())  # Orthanc's worklist plugin is the schedule here
    client = PacsClient("127.0.0.1", orthanc.dicom_port, called_aet=orthanc.aet, timeout=20)
    procedure = procedures.find_procedure(client, "ACC100602")
    cap = capture_procedure(client, procedure, clip_frames(), stills=2)
    assert all(i.found for i in cap.instances)
    with tempfile.TemporaryDirectory() as tmp:
        for inst in cap.instances:
            looked = orthanc.rest("POST", "/tools/lookup", inst.sop_instance_uid.encode(),
                                  content_type="text/plain")
            (orthanc_id,) = [m["ID"] for m in looked]
            path = Path(tmp) / f"{inst.kind}.dcm"
            path.write_bytes(orthanc.rest("GET", f"/instances/{orthanc_id}/file"))
            out = subprocess.run([dcmdump, "-M", str(path)], capture_output=True, text=True, timeout=30,
                                 env=peer_env()).stdout
            sop = "VideoEndoscopicImageStorage" if inst.kind == "clip" else "VLEndoscopicImageStorage"
            syntax = "MPEG4HighProfile/Level4.1" if inst.kind == "clip" else "JPEGBaseline"
            assert f"(0008,0016) UI ={sop}" in out
            assert f"(0002,0010) UI ={syntax}" in out
            assert "(0010,0020) LO [MRN1006]" in out and "(0008,0050) SH [ACC100602]" in out
            assert f"(0020,000d) UI [{procedure.study_instance_uid}]" in out
            assert "(0010,0010) PN [Huber^Felix]" in out and "(0008,0060) CS [ES]" in out
            if inst.kind == "clip":
                assert f"(0028,0008) IS [{CLIP_FRAMES}]" in out
                assert len(decode_clip(dcmread(path))) == CLIP_FRAMES


CT_ONLY = """
[[TransferSyntaxes]]
[Any]
TransferSyntax1 = JPEGBaseline
TransferSyntax2 = MPEG4HighProfile/Level4.1
TransferSyntax3 = LocalEndianExplicit
TransferSyntax4 = LittleEndianImplicit
[[PresentationContexts]]
[CTOnly]
PresentationContext1 = VerificationSOPClass\\Any
PresentationContext2 = CTImageStorage\\Any
[[Profiles]]
[CTOnly]
PresentationContexts = CTOnly
"""


def test_a_pacs_that_refuses_the_sop_class(embedded, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dcmtk's storescp configured for CT only refuses VL/Video Endoscopic: a DicomError says what to set."""
    _, client = embedded
    procedure = procedures.find_procedure(client, "ACC100102")
    storescp = require_tool("storescp")
    cfg = tmp_path / "ct-only.cfg"
    cfg.write_text(CT_ONLY)
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    with spawned([storescp, "-xf", str(cfg), "CTOnly", "-od", str(out), str(port)], env=peer_env(),
                 log=tmp_path / "storescp.log") as proc:
        wait_for_port(port, proc=proc)
        refusing = PacsClient("127.0.0.1", port, called_aet="STORESCP", timeout=10)
        with pytest.raises(DicomError, match="the PACS refuses .*VL Endoscopic Image Storage in JPEG Baseline"
                                             ".*set \\[endoscopy\\] overrides") as info:
            capture_procedure(refusing, procedure, clip_frames(), stills=1)
        assert "Video Endoscopic Image Storage" in str(info.value)
    assert list(out.iterdir()) == []


def test_a_pacs_that_refuses_mpeg4(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    """Orthanc with MPEG-4 switched off refuses the clip's transfer syntax; the stills alone go through."""
    server: OrthancServer = orthanc_factory(Mpeg4TransferSyntaxAccepted=False)
    write_worklist_files(server.worklist_dir, items())
    client = PacsClient("127.0.0.1", server.dicom_port, called_aet=server.aet, timeout=20)
    procedure = procedures.find_procedure(client, "ACC100102")
    with pytest.raises(DicomError, match="Video Endoscopic Image Storage in MPEG-4 AVC/H.264 High Profile"):
        capture_procedure(client, procedure, clip_frames(), stills=1)
    assert server.instances() == []
    cap = capture_procedure(client, procedure, clip_frames(), stills=1, clip=False)
    assert len(server.instances()) == 1 and cap.instances[0].found
