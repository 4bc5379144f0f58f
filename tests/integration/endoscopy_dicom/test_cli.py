"""``kit endoscopy worklist`` and ``kit endoscopy capture`` against the embedded PACS, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from tests.integration.endoscopy_dicom.peers import CLIP, CLIP_FRAMES, TODAY_ACCESSION, items

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[EmbeddedPACS]:
    with EmbeddedPACS(tmp_path / "pacs", port=0, worklist=items()) as server:
        yield server


def kit(pacs: EmbeddedPACS, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the kit command in a subprocess, pointed at the PACS by KIT_* settings (as a user would)."""
    env = {"KIT_PACS_PORT": str(pacs.port), "KIT_PACS_HOST": "127.0.0.1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "kit.cli", "endoscopy", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_worklist_json_today_station_and_performed(pacs: EmbeddedPACS) -> None:
    out = kit(pacs, "worklist", "--json")
    assert out.returncode == 0, out.stderr
    assert sorted(r["accession_number"] for r in json.loads(out.stdout)) == [
        "ACC100102", "ACC100302", "ACC100602", TODAY_ACCESSION]
    today = kit(pacs, "worklist", "--today", "--json")
    assert [r["accession_number"] for r in json.loads(today.stdout)] == [TODAY_ACCESSION]
    room = kit(pacs, "worklist", "--station", "ENDO2", "--date", "20260203", "--json")
    assert json.loads(room.stdout) == []
    table = kit(pacs, "worklist", "--station", "ENDO1")
    assert table.returncode == 0 and "ACC100602" in table.stdout
    assert json.loads(kit(pacs, "worklist", "--performed", "--json").stdout) == []
    misuse = kit(pacs, "worklist", "--today", "--date", "20260203")
    assert misuse.returncode == 2 and "not both" in misuse.stderr


def test_capture_prints_the_stored_uids_and_they_are_in_the_pacs(pacs: EmbeddedPACS) -> None:
    out = kit(pacs, "capture", str(CLIP), "--accession", "ACC100102", "--stills", "2", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["kind"] for r in rows] == ["still", "still", "clip"]
    assert rows[-1]["number_of_frames"] == CLIP_FRAMES
    assert rows[-1]["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.102"
    assert "found them again" in out.stderr
    client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
    study = client.worklist(accession_number="ACC100102")["study_instance_uid"][0]
    stored = set()
    for series in {r["series_instance_uid"] for r in rows}:
        stored |= set(client.find("IMAGE", study_instance_uid=study, series_instance_uid=series)
                      ["sop_instance_uid"].to_list())
    assert stored == {r["sop_instance_uid"] for r in rows}
    performed = json.loads(kit(pacs, "worklist", "--performed", "--accession", "ACC100102", "--json").stdout)
    assert [r["study_instance_uid"] for r in performed] == [study]


def test_capture_failures_are_one_line(pacs: EmbeddedPACS, tmp_path: Path) -> None:
    none = kit(pacs, "capture", str(CLIP), "--accession", "ACC999999")
    assert none.returncode == 1 and none.stderr.count("\n") == 1
    assert none.stderr.startswith("kit: error: NotFoundError: no worklist item with accession number "
                                  "'ACC999999'")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 not a video" * 100)
    bad = kit(pacs, "capture", str(garbage), "--accession", "ACC100102")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "VideoFileError" in bad.stderr  # an InvalidInputError
    url = kit(pacs, "capture", "rtsp://127.0.0.1:1/live", "--accession", "ACC100102")
    assert url.returncode == 2 and "needs --seconds" in url.stderr
    dead = kit(pacs, "capture", "rtsp://127.0.0.1:1/live", "--accession", "ACC100102", "--seconds", "2")
    assert dead.returncode == 1 and "PeerUnreachableError" in dead.stderr, dead.stderr
    client = PacsClient("127.0.0.1", pacs.port, called_aet="KIT", timeout=10)
    study = client.worklist(accession_number="ACC100102")["study_instance_uid"][0]
    assert client.find("STUDY", study_instance_uid=study)["number_of_study_related_instances"].to_list() in (
        [], [0], [None]), "nothing stored by a failed capture"
