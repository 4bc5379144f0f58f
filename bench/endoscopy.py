"""Benchmark: endoscopy video in the kit against what a user would write by hand.

Sections (each a function returning its ``RATIO`` lines; ``main()`` runs them in order):

- ``decode``: decode-to-numpy frames per second of :class:`kit.endoscopy.source.FrameSource`
  (capture thread, bounded buffer, :class:`~kit.endoscopy.frame.Frame` objects) against a bare
  PyAV loop (``container.decode(video=0)`` and ``frame.to_ndarray(format="rgb24")``) on the same
  file, in the same run: the sample clip remuxed ``LOOPS`` times into one longer file, runs
  alternated, the median of ``RUNS`` each (the median of the paired runs' ratios is printed
  too: on a shared machine it drifts less). The kit's overhead should stay under 10 %
  (ratio >= 0.9).

    python bench/endoscopy.py              # every section
    python bench/endoscopy.py decode       # only these sections

Add a section: write ``bench_<name>() -> list[str]`` and list it in :data:`SECTIONS`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av

from kit import examples
from kit.endoscopy.source import FrameSource

#: the sample clip (36 frames) is repeated this many times into the decoded file
LOOPS = 10
#: runs per contender, alternated; the ratio is the median of the runs' pairwise ratios
RUNS = 15


def looped_clip(directory: Path, loops: int = LOOPS) -> Path:
    """The sample clip's packets repeated ``loops`` times into one MP4 (no re-encoding)."""
    clip = examples.endoscopy_clip()
    out_path = directory / f"clip-x{loops}.mp4"
    with av.open(str(clip)) as src:
        template = src.streams.video[0]
        packets = [(bytes(p), p.pts, p.dts, p.duration, p.is_keyframe) for p in src.demux(template) if p.size]
        period = max(p[1] + p[3] for p in packets) - min(p[1] for p in packets)
        with av.open(str(out_path), "w") as out:
            stream = out.add_stream_from_template(template)
            for k in range(loops):
                for data, pts, dts, duration, key in packets:
                    packet = av.Packet(data)
                    packet.pts, packet.dts, packet.duration = pts + k * period, dts + k * period, duration
                    packet.time_base = template.time_base
                    packet.is_keyframe = key
                    packet.stream = stream
                    out.mux(packet)
    return out_path


def bare_pyav(path: Path) -> int:
    """What a user writes without the kit: decode every frame to an RGB array."""
    n = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def kit_source(path: Path) -> int:
    n = 0
    with FrameSource(path) as source:
        for _ in source:
            n += 1
    return n


def _alternated(contenders: dict[str, Callable[[], int]],
                runs: int) -> dict[str, tuple[list[float], int]]:
    """``{name: (seconds of each run, frames)}``, runs interleaved (a shared machine drifts)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    frames: dict[str, int] = {}
    for name, fn in contenders.items():   # warm-up: imports, caches, the file in the page cache
        frames[name] = fn()
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            frames[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (t, frames[name]) for name, t in times.items()}


def bench_decode(runs: int = RUNS, loops: int = LOOPS) -> list[str]:
    """Decode-to-numpy fps: FrameSource vs a bare PyAV loop, same file, same run."""
    with tempfile.TemporaryDirectory(prefix="kit-bench-endo-") as tmp:
        path = looped_clip(Path(tmp), loops)
        result = _alternated({"pyav": lambda: bare_pyav(path), "kit": lambda: kit_source(path)}, runs)
    (runs_pyav, n_pyav), (runs_kit, n_kit) = result["pyav"], result["kit"]
    if n_kit != n_pyav:
        raise SystemExit(f"frame counts differ: kit {n_kit}, PyAV {n_pyav}")
    t_pyav, t_kit = statistics.median(runs_pyav), statistics.median(runs_kit)
    # each kit run against the PyAV run just before it: the machine's load drifts less within a pair
    ratio = statistics.median(p / k for p, k in zip(runs_pyav, runs_kit, strict=True))
    print(f"decode {n_pyav} frames (320x240 H.264, the sample clip x{loops}), median of {runs} runs each:")
    print(f"  bare PyAV loop          {t_pyav:7.3f} s  {n_pyav / t_pyav:8.0f} frames/s")
    print(f"  kit FrameSource         {t_kit:7.3f} s  {n_kit / t_kit:8.0f} frames/s")
    print(f"  kit/PyAV of the medians: {t_pyav / t_kit:.2f}; median of the {runs} paired runs' ratios: "
          f"{ratio:.2f}")
    return [f"RATIO endoscopy decode kit/pyav = {t_pyav / t_kit:.2f}"]


#: the sections, in the order they run
SECTIONS: dict[str, Callable[[], list[str]]] = {
    "decode": bench_decode,
}


def main(argv: list[str]) -> None:
    wanted = argv[1:] or list(SECTIONS)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    ratios: list[str] = []
    for name in wanted:
        ratios += SECTIONS[name]()
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
