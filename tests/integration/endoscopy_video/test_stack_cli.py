"""The video service in the embedded stack, and `kit endoscopy frames` as a user runs it (real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.endoscopy.source import FrameSource
from kit.stack import SERVICES, Stack
from tests.conftest import free_port, stop_pid
from tests.integration.endoscopy_video.conftest import CLIP

KIT = [sys.executable, "-m", "kit.cli"]
ADDRESS = re.compile(r"^(\w+)\s+(\S+)$")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"KIT_CONFIG": "", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **extra})
    return env


def _kit(cwd: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KIT, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(60)
def test_the_stack_runs_the_video_service_and_points_clients_at_it() -> None:
    assert "video" in SERVICES
    with Stack.ephemeral(services=("video",), preload=False) as stack:
        address = stack.addresses()["video"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/live\.ts", address)
        assert not address.endswith(":0/live.ts")
        assert stack.client_settings().endoscopy.stream_url == address
        with FrameSource(stack.client_settings().endoscopy.stream_url) as source:
            frame = source.read(timeout=15)
        assert frame is not None and frame.image.shape == (240, 320, 3)
        assert stack.failures() == {}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """`kit serve` on ephemeral ports (the video port through KIT_STACK_VIDEO_PORT=0)."""
    tmp = tmp_path / "serve"
    tmp.mkdir()
    proc = subprocess.Popen([*KIT, "serve", "--pacs-port", "0", "--fhir-port", "0", "--mllp-port", "0",
                             "--dicomweb-port", "0",
                             "--no-preload", "--data-dir", str(tmp / "stack")], cwd=tmp,
                            env=_env(KIT_STACK_VIDEO_PORT="0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    addresses: dict[str, str] = {}
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while len(addresses) < len(SERVICES) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = ADDRESS.match(line.strip())
        if match:
            addresses[match.group(1)] = match.group(2)
    try:
        if len(addresses) < len(SERVICES):
            pytest.fail(f"kit serve printed {addresses}")
        yield proc, addresses
    finally:
        stop_pid(proc)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_kit_serve_prints_the_stream_and_frames_reads_it(
        served: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path) -> None:
    proc, addresses = served
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/live\.ts", addresses["video"])
    result = _kit(tmp_path, "endoscopy", "frames", addresses["video"], "--count", "5", "--json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == list(range(5))
    assert all(r["shape"] == [240, 320, 3] and 0 < r["mean"] < 255 for r in records)
    assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)
    assert result.stderr.count("\n") == 1 and "5 frames from" in result.stderr
    # no URL: [stack] video_port (here from the environment) names the default stream
    port = addresses["video"].rsplit(":", 1)[1].split("/")[0]
    table = _kit(tmp_path, "endoscopy", "frames", "--count", "3", env=_env(KIT_STACK_VIDEO_PORT=port))
    assert table.returncode == 0, table.stderr
    assert "240x320x3" in table.stdout and "index" in table.stdout
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)                 # stops cleanly, the video service with the rest
    assert proc.wait(30) == 0


@pytest.mark.timeout(60)
def test_frames_of_a_file_to_a_table_file(tmp_path: Path) -> None:
    result = _kit(tmp_path, "endoscopy", "frames", str(CLIP), "--count", "36", "-o", "frames.csv")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "frames.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index,timestamp,shape,mean" and len(lines) == 37
    assert lines[1].startswith("0,0.0,")


@pytest.mark.timeout(90)
def test_frames_fails_with_one_line(tmp_path: Path) -> None:
    def failed(result: subprocess.CompletedProcess[str], *words: str) -> None:
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("kit: error: ") and all(w in lines[0] for w in words), lines
        assert "Traceback" not in result.stdout + result.stderr

    start = time.monotonic()
    failed(_kit(tmp_path, "endoscopy", "frames", f"http://127.0.0.1:{free_port()}/live.ts"),
           "PeerUnreachableError", "connection refused")
    assert time.monotonic() - start < 15
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        failed(_kit(tmp_path, "endoscopy", "frames", f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x",
                    "--timeout", "2"), "PeerTimeoutError", "within 2 s")
        assert time.monotonic() - start < 2 + 15
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    failed(_kit(tmp_path, "endoscopy", "frames", str(bad)), "VideoFileError", str(bad))
    # a file with fewer frames than asked: the frames are printed, then the failure
    short = _kit(tmp_path, "endoscopy", "frames", str(CLIP), "--count", "40")
    failed(short, "ended after 36 of 40 frames")
    assert "240x320x3" in short.stdout
    # credentials in the URL never show
    hidden = _kit(tmp_path, "endoscopy", "frames", f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/x")
    failed(hidden, "***@")
    assert "s3cret" not in hidden.stderr + hidden.stdout


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [("--count", "0"), ("--timeout", "-1"), ("--count", "x"), ("--bogus",)])
def test_frames_misuse_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = _kit(tmp_path, "endoscopy", "frames", str(CLIP), *args)
    assert result.returncode == 2 and not result.stdout and "Error: " in result.stderr


@pytest.mark.timeout(60)
def test_help_has_an_example_that_runs(tmp_path: Path) -> None:
    help_text = _kit(tmp_path, "endoscopy", "frames", "--help").stdout
    assert "Examples:" in help_text and "kit endoscopy frames" in help_text
    group = _kit(tmp_path, "endoscopy", "--help")
    assert group.returncode == 0 and "frames" in group.stdout
