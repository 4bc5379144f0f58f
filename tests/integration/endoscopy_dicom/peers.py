"""Helpers for the endoscopy DICOM tests: worklist files for dcmtk/Orthanc, dcmtk's wlmscpfs, frames."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from kit.dicom.matching import worklist_items_from_cohort
from kit.endoscopy.frame import Frame
from tests.conftest import free_port, peer_env, require_tool, spawned, wait_for_port

ROOT = Path(__file__).resolve().parents[3]
CLIP = ROOT / "data" / "samples" / "endoscopy" / "MRN1001-ES2.mp4"
CLIP_FRAMES = 36
TODAY_ACCESSION = "ACCTODAY01"


def clip_frames() -> Iterator[Frame]:
    """The sample clip decoded by a bare PyAV loop, as Frames (a stand-in for any frame source)."""
    with av.open(str(CLIP)) as container:
        for i, video in enumerate(container.decode(video=0)):
            yield Frame(i, float(video.time), video.to_ndarray(format="rgb24"), time.monotonic())


def today_item(station: str = "ENDO2") -> Dataset:
    """A colonoscopy scheduled today on ``station`` for a patient of its own."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Today^Tom", "MRN7001", "19700101", "M"
    ds.AccessionNumber, ds.StudyInstanceUID = TODAY_ACCESSION, generate_uid()
    ds.RequestedProcedureID, ds.RequestedProcedureDescription = "RP7001", "COLONOSCOPY"
    ds.ReferringPhysicianName = "Referrer^Kit"
    sps = Dataset()
    sps.Modality, sps.ScheduledStationAETitle = "ES", station
    sps.ScheduledProcedureStepStartDate = dt.date.today().strftime("%Y%m%d")
    sps.ScheduledProcedureStepStartTime = "080000"
    sps.ScheduledProcedureStepID, sps.ScheduledProcedureStepDescription = "SPS7001", "COLONOSCOPY"
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def items() -> list[Dataset]:
    """The cohort's worklist (3 ES, 2 CT/MR) plus today's colonoscopy on ENDO2."""
    return [*worklist_items_from_cohort(), today_item()]


def _dump(ds: Dataset, indent: str = "") -> list[str]:
    lines = []
    for elem in ds:
        tag = f"({elem.tag.group:04x},{elem.tag.element:04x})"
        if elem.VR == "SQ":
            lines.append(f"{indent}{tag} SQ (Sequence with undefined length)")
            for item in elem.value:
                lines.append(f"{indent}  (fffe,e000) na (Item with undefined length)")
                lines += _dump(item, indent + "    ")
                lines.append(f"{indent}  (fffe,e00d) na (ItemDelimitationItem)")
            lines.append(f"{indent}(fffe,e0dd) na (SequenceDelimitationItem)")
        else:
            lines.append(f"{indent}{tag} {elem.VR} [{elem.value}]")
    return lines


def write_worklist_files(folder: Path, datasets: list[Dataset]) -> list[Path]:
    """``.wl`` files made by dcmtk's dump2dcm from a text dump of each item (not by pydicom)."""
    dump2dcm = require_tool("dump2dcm")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, ds in enumerate(datasets):
        text = folder / f"item{n:02d}.dump"
        text.write_text("\n".join(_dump(ds)) + "\n", encoding="latin-1")
        path = folder / f"item{n:02d}.wl"
        subprocess.run([dump2dcm, "-q", "+te", str(text), str(path)], check=True, capture_output=True,
                       timeout=30)
        text.unlink()
        out.append(path)
    return out


@contextmanager
def wlmscpfs(tmp: Path, datasets: list[Dataset], aet: str = "WLSCP") -> Iterator[tuple[int, str]]:
    """dcmtk's worklist SCP over ``.wl`` files; yields (port, AE title); stopped by PID."""
    exe = require_tool("wlmscpfs")
    folder = tmp / "wldb" / aet
    write_worklist_files(folder, datasets)
    (folder / "lockfile").touch()
    port = free_port()
    with spawned([exe, "-dfp", str(tmp / "wldb"), "-dfr", str(port)], env=peer_env(),
                 log=tmp / "wlmscpfs.log") as proc:
        wait_for_port(port, proc=proc)
        yield port, aet
