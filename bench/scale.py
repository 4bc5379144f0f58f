"""Benchmark: the DICOM index and HL7 -> frames on Dask, 1 worker vs 2, and the Dask path's cost.

    python bench/scale.py [--size N] [--repeat R]

Generates, in a temporary folder (never kept), N small CT files (default 2,400,
``kit.examples.dicom.random_ct_files``, in 4 series) and 8 HL7 files of N*25
messages in all (the sample feed cycled, fresh control ids), then times on the
same inputs, in the same run, the contenders taking turns (best of R, default 2):

* the local path: ``index_dicom(files, workers=1)``; ``read_file`` per HL7 file;
* ``kit.scale`` on a LocalCluster of 1 worker process, and of 2 (the jobs
  ``index_dataset`` in partitions of 128 files, ``hl7_dataset`` one partition per
  file), each writing its partitioned parquet dataset.

Printed: files (messages) per second of each, the parallel efficiency of 2
workers (speedup / 2), the per-file overhead of the Dask path against the local
path (ms per file: task scheduling, the transfer of results, writing parquet),
and a projection from the measured per-file cost of one worker: the wall time
for 10 million instances on W workers, and the workers needed for a 24 h window.
The machine this runs on may be shared: its efficiency is a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# keep bench/ off sys.path (it holds hl7.py, which would shadow python-hl7)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from kit.config import DaskSettings  # noqa: E402
from kit.dicom.index import index_dicom, list_files  # noqa: E402
from kit.examples.dicom import random_ct_files  # noqa: E402
from kit.examples.hl7 import feed  # noqa: E402
from kit.hl7.frames import read_file  # noqa: E402
from kit.scale.cluster import dask_client  # noqa: E402
from kit.scale.dicom import index_dataset  # noqa: E402
from kit.scale.frames import hl7_dataset  # noqa: E402

TARGET = 10_000_000  # instances of the projection
WINDOW_H = 24.0
HL7_FILES = 8
HL7_PER_FILE = 25  # HL7 messages per DICOM file of --size
INDEX_CHUNK = 128


def make_dicom(n: int, folder: Path) -> list[str]:
    for k in range(4):
        random_ct_files(folder / f"series{k}", n // 4 + (k < n % 4), patient_id=f"MRN91{k:02d}", seed=k,
                        size=16)
    return list_files([folder])


def make_hl7(n: int, folder: Path) -> list[Path]:
    """``HL7_FILES`` files holding ``n`` messages in all, each with its own control id."""
    base = list(feed())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(HL7_FILES):
        path = folder / f"archive-{f}.hl7"
        with path.open("w", encoding="utf-8", newline="") as out:
            for i in range(f, n, HL7_FILES):
                head, _, rest = base[i % len(base)].partition("\r")
                fields = head.split("|")
                fields[9] = f"S{i:09d}"
                out.write("|".join(fields) + "\r" + rest + "\n")
        paths.append(path)
    return paths


def _turns(contenders: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Best wall time of each contender, run in turns ``repeat`` times (a busy spell of a shared
    machine falls on all alike)."""
    best = dict.fromkeys(contenders, math.inf)
    for _ in range(repeat):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _report(what: str, unit: str, n: int, t: dict[str, float]) -> tuple[float, float, list[str]]:
    """Print one job's figures; (seconds per item on one worker without the job's fixed cost,
    efficiency of 2 workers, RATIO lines)."""
    speedup = t["dask-1"] / t["dask-2"]
    efficiency = speedup / 2
    per_item = max(t["dask-1"] - t["fixed"], 1e-9) / n
    overhead_ms = (per_item - t["local"] / n) * 1e3
    print(f"{what}: {n:,} {unit}")
    for name, label in (("local", "local path, 1 process"), ("dask-1", "Dask, 1 worker"),
                        ("dask-2", "Dask, 2 workers")):
        print(f"  {label:<24} {t[name]:7.2f} s  {n / t[name]:>10,.0f} {unit}/s")
    print(f"  speedup 2 workers / 1    {speedup:7.2f}    parallel efficiency {efficiency:.2f}")
    print(f"  Dask job fixed cost      {t['fixed']:7.2f} s (the same job on one {unit[:-1]})")
    print(f"  Dask path overhead       {overhead_ms:+7.3f} ms per {unit[:-1]} (1 worker, fixed cost "
          f"taken out, vs local)")
    slug = what.split()[0].lower()
    return per_item, efficiency, [
        f"RATIO scale {slug} {unit}/s dask-2-workers/dask-1-worker = {speedup:.2f}",
        f"RATIO scale {slug} parallel efficiency 2 workers = {efficiency:.2f}",
        f"RATIO scale {slug} {unit}/s dask-1-worker/local = {t['local'] / t['dask-1']:.2f}"]


def _projection(per_item: float, efficiency: float, unit: str, io_ms: float = 0.0) -> None:
    """Wall time for TARGET items at the measured per-item cost of one worker: with every worker
    on its own cores (ideal), at the efficiency measured here (a floor on a shared machine) and,
    with ``io_ms``, ideal plus an assumed storage read per item (inputs here are in the page cache)."""
    work = TARGET * per_item  # worker-seconds
    eff = min(max(efficiency, 0.05), 1.0)
    cols = [("ideal", work, 1.0), (f"at eff {eff:.2f}", work, eff)]
    if io_ms:
        cols.append((f"+{io_ms:g} ms read", TARGET * (per_item + io_ms / 1e3), 1.0))
    print(f"  projection for {TARGET:,} {unit} at {per_item * 1e3:.3f} ms each on one worker:")
    print("    workers" + "".join(f"{label:>16}" for label, _, _ in cols))
    for w in (1, 4, 16, 64):
        print(f"    {w:>7}" + "".join(f"{total / (w * (e if w > 1 else 1.0)) / 3600:14.2f} h"
                                      for _, total, e in cols))
    need = ", ".join(f"{math.ceil(total / (WINDOW_H * 3600 * e))} ({label})" for label, total, e in cols)
    print(f"    workers for a {WINDOW_H:g} h window: {need}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2400, help="DICOM files (HL7 messages: 25x)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--io-ms", type=float, default=2.0,
                        help="assumed storage read per DICOM file in the projection (network file system)")
    args = parser.parse_args()
    ratios: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kit-bench-scale-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        files = make_dicom(args.size, root / "dicom")
        hl7_files = make_hl7(args.size * HL7_PER_FILE, root / "hl7")
        tiny = make_hl7(1, root / "hl7-tiny")[:1]
        for f in [*files, *hl7_files]:  # warm the page cache for every contender
            Path(f).read_bytes()
        print(f"generated {len(files):,} DICOM files and {args.size * HL7_PER_FILE:,} HL7 messages in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
        start = time.perf_counter()
        with dask_client("local", DaskSettings(workers=1)) as one, \
                dask_client("local", DaskSettings(workers=2)) as two:
            two.wait_for_workers(2)
            print(f"two LocalClusters up in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            idx = _turns({
                "fixed": lambda: index_dataset(files[:1], root / "idx0", client=one),
                "local": lambda: index_dicom(files, workers=1),
                "dask-1": lambda: index_dataset(files, root / "idx1", client=one, chunk=INDEX_CHUNK),
                "dask-2": lambda: index_dataset(files, root / "idx2", client=two, chunk=INDEX_CHUNK),
            }, args.repeat)
            hl7 = _turns({
                "fixed": lambda: hl7_dataset(tiny, root / "hl7-0", client=one),
                "local": lambda: [read_file(f) for f in hl7_files],
                "dask-1": lambda: hl7_dataset(hl7_files, root / "hl7-1", client=one),
                "dask-2": lambda: hl7_dataset(hl7_files, root / "hl7-2", client=two),
            }, args.repeat)
        per_file, eff, lines = _report("DICOM index", "files", len(files), idx)
        ratios += lines
        _projection(per_file, eff, "instances", args.io_ms)
        per_msg, eff_h, lines = _report("HL7 -> frames", "messages", args.size * HL7_PER_FILE, hl7)
        ratios += lines
        _projection(per_msg, eff_h, "messages")
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
