"""read_frames: bounded reads from a source, the records `kit endoscopy frames --json` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit.endoscopy.probe import MAX_PROBE_FRAMES, read_frames
from kit.endoscopy.source import FrameSource
from kit.errors import VideoFileError

CLIP = Path(__file__).resolve().parents[3] / "data" / "samples" / "endoscopy" / "MRN1001-ES2.mp4"


def test_reads_the_frames_asked_for_as_the_cli_prints_them() -> None:
    sample = read_frames(str(CLIP), 5, timeout=30)
    with FrameSource(CLIP) as source:
        expected = [{"index": f.index, "timestamp": round(f.timestamp, 6), "shape": [240, 320, 3],
                     "mean": round(float(f.image.mean()), 3)} for f, _ in zip(source, range(5), strict=False)]
    assert list(sample.frames) == expected and sample.complete and sample.kind == "file"
    assert sample.nominal_fps == 12.0 and sample.first_frame_ms > 0 and sample.dropped == 0
    assert sample.as_dict()["frames"] == expected


def test_a_source_that_ends_first_gives_what_it_had() -> None:
    sample = read_frames(str(CLIP), MAX_PROBE_FRAMES, timeout=30)
    assert len(sample.frames) == 36 and not sample.complete
    assert [f["index"] for f in sample.frames] == list(range(36))


def test_failures_and_bounds(tmp_path: Path) -> None:
    with pytest.raises(VideoFileError, match="no such file"):
        read_frames(str(tmp_path / "missing.mp4"), 1, timeout=5)
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 4096)
    with pytest.raises(VideoFileError):
        read_frames(str(tmp_path / "bad.mp4"), 1, timeout=5)
    for count in (0, MAX_PROBE_FRAMES + 1, True):
        with pytest.raises(ValueError):
            read_frames(str(CLIP), count, timeout=5)
    with pytest.raises(ValueError):
        read_frames(str(CLIP), 1, timeout=0)
