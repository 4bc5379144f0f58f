"""`kit status` probes every configured service, DICOMweb included (issue #14 item 9)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from kit.stack import Stack
from tests.conftest import free_port
from tests.integration.conftest import OrthancServer
from tests.integration.real_systems.conftest import run_kit, stack_env


def test_status_names_a_dead_dicomweb_base(stack: Stack, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": dead, "KIT_DICOMWEB_TIMEOUT": "3"}
    result = run_kit(tmp_path, "status", env=env)
    assert result.returncode == 1, result.stdout
    assert result.stderr.strip() == "kit: error: not answering: dicomweb"
    assert dead in result.stdout


def test_status_probes_a_live_dicomweb(stack: Stack, orthanc: OrthancServer, tmp_path: Path) -> None:
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": orthanc.dicomweb}
    result = run_kit(tmp_path, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"pacs", "dicomweb", "fhir", "mllp"}
    assert rows["dicomweb"]["ok"] and rows["dicomweb"]["address"] == orthanc.dicomweb


def test_status_reads_frames_from_the_video_stream(stack: Stack, tmp_path: Path) -> None:
    live = urlsplit(stack.services["video"].address)
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": stack.services["dicomweb"].address,
           "KIT_ENDOSCOPY_STREAM_URL": f"http://user:pw@{live.netloc}{live.path}"}
    result = run_kit(tmp_path, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"pacs", "dicomweb", "fhir", "mllp", "video"}
    video = rows["video"]
    assert video["ok"] and video["address"] == f"http://***@{live.netloc}{live.path}", video
    assert video["detail"].startswith("streams (12 fps declared, 320x240, first frame in "), video
    assert "pw" not in result.stdout


@pytest.mark.parametrize("kind", ["udp with nothing sending", "http without video"])
def test_status_names_a_video_stream_that_gives_no_frame(kind: str, stack: Stack, tmp_path: Path) -> None:
    # a UDP stream has no connection to try: only reading a frame tells; an HTTP port may answer without video
    url = (f"udp://127.0.0.1:{free_port()}" if kind.startswith("udp")
           else f"http://127.0.0.1:{stack.port('fhir')}/fhir/R4/metadata")
    env = {**stack_env(stack), "KIT_DICOMWEB_BASE": stack.services["dicomweb"].address,
           "KIT_ENDOSCOPY_STREAM_URL": url, "KIT_ENDOSCOPY_TIMEOUT": "2"}
    started = time.monotonic()
    result = run_kit(tmp_path, "status", "--json", env=env)
    assert time.monotonic() - started < 30
    assert result.returncode == 1 and result.stderr.strip() == "kit: error: not answering: video"
    rows = {r["service"]: r for r in json.loads(result.stdout)}
    assert not rows["video"]["ok"] and rows["video"]["address"] == url
    assert rows["video"]["detail"].split(":")[0] in ("PeerTimeoutError", "VideoSourceError"), rows["video"]
    assert all(rows[s]["ok"] for s in ("pacs", "dicomweb", "fhir", "mllp"))


def test_which_settings_make_the_video_stream_a_system_to_probe(stack: Stack) -> None:
    from kit.config import EndoscopySettings, Settings
    from kit.demo import uses_video

    assert uses_video(stack.client_settings())             # a running stack's own stream
    assert uses_video(Settings())                          # nothing configured: the stack's default ports
    others = dataclasses.replace(Settings(), given=frozenset({"pacs", "fhir", "hl7"}))
    assert not uses_video(others)                          # other systems named, the stream left default
    assert uses_video(dataclasses.replace(others, given=frozenset({"pacs", "endoscopy"})))
    assert uses_video(dataclasses.replace(others, endoscopy=EndoscopySettings(stream_url="udp://10.0.0.9:5000")))
