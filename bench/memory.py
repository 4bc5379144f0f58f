"""Benchmark: peak memory (RSS) of the kit against the alternative, as the input grows.

    python bench/memory.py [--dicom-files N] [--alt-dicom-files N] [--dicom-dir DIR]
                           [--hl7-messages M] [--alt-hl7-messages M] [--large-mb S] [--runs R]
                           [--only dicom,hl7,large]

Three workloads, each measured in a fresh process per figure:

* **DICOM index**: ``N`` CT files from :func:`kit.examples.dicom.random_ct_files`
  (generated into a temporary folder, 1,000 per sub-folder, or read from ``--dicom-dir``:
  a folder an earlier run of the same generator filled). kit: ``index_dicom(folder)``
  (the frame in memory, worker processes) and ``index_dicom(folder, out=...)`` (rows
  streamed to parquet). The alternative: a ``pydicom.dcmread(stop_before_pixels=True)``
  loop building the same table (the index's 25 columns and dtypes, checked equal to
  kit's frame), single process.
* **HL7 archive**: ``M`` messages cycling through the sample feed (``bench/hl7.py``'s
  file: every message its own control id). kit: ``read_file(path)`` (all seven tables
  in memory) and ``kit.hl7.archive.write_tables(path, out_dir)`` (what ``kit hl7 parse
  --out-dir`` runs: chunk by chunk to parquet). The alternative: python-hl7,
  ``hl7.parse`` once per message and ``bench/hl7.py``'s per-message builders of the same
  seven tables (``results`` with its 19 typed columns, and the six others), then polars
  frames; each side's rows per table are printed, and whether they agree.
* **A large instance**: one CT instance of ``S`` MiB (default 512) C-STOREd to dcmtk
  ``storescp --ignore``: kit's ``PacsClient.store`` (the file checked through a memory
  map and sent from it in pieces) against dcmtk ``storescu``.

At the default sizes a run takes long (on a busy 2-core machine: ~4 min to generate the
files, ~2.5 min per pydicom run at 100,000 files and per python-hl7 run at 100,000
messages, ~1 min per kit run at 1,000,000 messages); for a quick look:
``--dicom-files 10000 --hl7-messages 100000 --alt-hl7-messages 10000 --runs 1``.

The alternatives are slow (~1-5 thousand items/s), so they run at ``--alt-*`` sizes
(default: the kit's size for DICOM, 100,000 messages for HL7) and kit runs there too:
the RATIO lines compare the same files in the same run. Kit's streamed paths also run
at the full sizes (default 100,000 files, 1,000,000 messages) against the 1.5 GB limit.

Memory per figure, in a fresh process: its own high-water mark (``getrusage``
``RUSAGE_SELF``), the largest worker process's (``RUSAGE_CHILDREN``: kit's index pool,
joined at the end) and the process tree's summed RSS and PSS sampled every 50 ms with
psutil (where installed). The **peak** compared in the RATIO lines is the larger of the
own high-water mark and the tree's PSS (pages shared by forked workers counted once);
the LIMIT lines check the **upper bound** -- own + workers x largest worker, or the
tree's summed RSS if larger, counting shared pages once per process -- against 1.5 GB.
Each figure is measured ``--runs`` times in a row (default 3), kit and alternative taking
turns; every run is printed, then the median and the spread (max - min).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIMIT_MIB = 1536.0  # the 1.5 GB of the target
BENCH = Path(__file__).resolve().parent


# -- the workloads (run in the child process) ---------------------------------------------------------
def _dicom_kit(folder: str, out: str = "", workers: str = "auto", keep: str = "") -> dict[str, Any]:
    from kit.dicom.index import index_dicom

    n = int(workers) if workers != "auto" else None
    if out:
        written = index_dicom(folder, out=out, workers=n)
        return {"rows": written.rows, "workers": n or os.cpu_count() or 1}
    result = index_dicom(folder, workers=n)
    if keep:  # for the check that the alternative builds the same table
        result.frame.write_parquet(keep)
    return {"rows": result.frame.height, "workers": n or os.cpu_count() or 1}


def _ds_value(ds: Any, keyword: str, kind: str) -> Any:
    v = ds.get(keyword)
    if v is None or v == "":
        return None
    if kind == "str":
        return str(v)
    if kind == "date":
        return dt.datetime.strptime(str(v), "%Y%m%d").date()
    if kind == "time":
        s = str(v)
        return dt.time(int(s[0:2]), int(s[2:4] or 0), int(s[4:6] or 0))
    if kind == "int":
        return int(v)
    if kind == "float":
        return float(v)
    return [float(x) for x in (v if isinstance(v, list | tuple) or hasattr(v, "__iter__") else [v])]


def _keyword(column: str) -> str:
    special = {"patient_id": "PatientID", "study_instance_uid": "StudyInstanceUID",
               "series_instance_uid": "SeriesInstanceUID", "sop_instance_uid": "SOPInstanceUID",
               "sop_class_uid": "SOPClassUID"}
    return special.get(column) or "".join(p.capitalize() for p in column.split("_"))


def _dicom_pydicom(folder: str, check: str = "") -> dict[str, Any]:
    import polars as pl
    import pydicom

    from kit.dicom._header import COLUMNS
    from kit.dicom.index import INDEX_SCHEMA, list_files

    rows = []
    for f in sorted(list_files([folder])):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = [_ds_value(ds, _keyword(c), kind) for c, kind in COLUMNS[:-3]]
        rows.append((*row, str(ds.file_meta.TransferSyntaxUID), f, os.path.getsize(f)))
    frame = pl.DataFrame(rows, schema=INDEX_SCHEMA, orient="row")
    same = None
    if check and os.path.exists(check):
        same = frame.equals(pl.read_parquet(check))
    return {"rows": frame.height, "workers": 1, "same_as_kit": same}


def _hl7_kit(path: str, out_dir: str = "") -> dict[str, Any]:
    if out_dir:
        from kit.hl7.archive import write_tables

        counts = write_tables(path, out_dir)
        return {"rows": int(counts["rows"].sum()), "workers": 1,
                "tables": dict(zip(counts["table"], counts["rows"], strict=True))}
    from kit.hl7.frames import read_file

    tables = read_file(path)
    return {"rows": sum(df.height for df in tables.values()), "workers": 1,
            "tables": {t: df.height for t, df in tables.items()}}


def _load_bench_hl7() -> Any:
    spec = importlib.util.spec_from_file_location("bench_hl7", BENCH / "hl7.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hl7_python_hl7(path: str) -> dict[str, Any]:
    bench_hl7 = _load_bench_hl7()  # first: it keeps bench/ off sys.path, so "import hl7" is python-hl7
    import hl7
    import polars as pl

    from kit.hl7.frames import SCHEMAS
    from kit.hl7.message import split_messages

    # the six tables of bench/hl7.py's "tables" section and its results builder: kit's seven
    builders: dict[str, Callable[..., list[dict[str, Any]]]] = {**bench_hl7._PYTHON_HL7,
                                                                "results": bench_hl7._p_results}
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in builders}
    seen: dict[tuple[str, str, str], str] = {}
    for text in split_messages(Path(path).read_bytes()):
        msg = hl7.parse(text)
        for table, build in builders.items():
            rows[table].extend(build(msg, seen))
    frames = {t: pl.DataFrame(r, schema=SCHEMAS[t], orient="row") for t, r in rows.items()}
    return {"rows": sum(df.height for df in frames.values()), "workers": 1,
            "tables": {t: df.height for t, df in frames.items()}}


def _large_kit(path: str, port: str) -> dict[str, Any]:
    from kit.dicom.dimse import PacsClient

    frame = PacsClient("127.0.0.1", int(port), called_aet="STORESCP", timeout=300).store([path])
    if frame["status"].to_list() != [0]:
        raise SystemExit(f"kit store: {frame}")
    return {"rows": frame.height, "workers": 0}


def _dcmtk(name: str) -> str:
    """dcmtk's tool, by its folder: in an activated venv, pynetdicom's Python apps of the same
    names come first on PATH (its storescu reads the whole 512 MiB instance: 1.6 GB)."""
    tool = shutil.which(name, path="/usr/bin:/usr/local/bin")
    if tool is None:
        raise SystemExit(f"dcmtk {name} is not installed (Debian package dcmtk)")
    return tool


def _large_storescu(path: str, port: str) -> dict[str, Any]:
    proc = subprocess.Popen([_dcmtk("storescu"), "-aec", "STORESCP", "127.0.0.1", port, path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TCP_NODELAY": "1"})
    peak = 0
    while proc.poll() is None:  # its own high-water mark (monotonic: the last reading is the peak)
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.005)
    if proc.returncode != 0:
        raise SystemExit(f"storescu: {proc.communicate()[1].strip()[-500:]}")
    return {"rows": 1, "workers": 1, "tool_kib": peak}


WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {
    "dicom-kit": _dicom_kit, "dicom-pydicom": _dicom_pydicom,
    "hl7-kit": _hl7_kit, "hl7-python-hl7": _hl7_python_hl7,
    "large-kit": _large_kit, "large-storescu": _large_storescu,
}


def _hwm_kib(pid: int | str = "self") -> int:
    """The process's own high-water RSS (KiB, /proc VmHWM; 0 if gone). Not ``getrusage``'s
    ``ru_maxrss``: Linux carries that over an exec from the process that spawned it, so a child of a
    parent that once held 500 MiB reports at least 500 MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def child(name: str, kwargs: str) -> None:
    start = time.perf_counter()
    info = WORKLOADS[name](**json.loads(kwargs))
    info["seconds"] = time.perf_counter() - start
    info["self_kib"] = _hwm_kib() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info["children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # pool workers, joined
    print("RESULT " + json.dumps(info))


# -- the parent: one fresh process per figure ------------------------------------------------------------
def measure(name: str, **kwargs: str) -> dict[str, Any]:
    """Run one workload in a fresh process; its peak RSS (MiB) and what it reported."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, json.dumps(kwargs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tree_rss, tree_pss = _sample_tree(proc)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}): {err.strip()[-2000:]}")
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    info: dict[str, Any] = json.loads(result.removeprefix("RESULT "))
    own, worker = info["self_kib"] / 1024, info["children_kib"] / 1024
    bound = own + (worker * info["workers"] if worker > 0 else 0.0)
    info.update(own_mib=own, worker_mib=worker, tree_rss_mib=tree_rss, tree_pss_mib=tree_pss,
                peak_mib=max(own, tree_pss), bound_mib=max(bound, tree_rss))
    return info


def _sample_tree(proc: subprocess.Popen[str]) -> tuple[float, float]:
    """The largest summed RSS and summed PSS (shared pages split between the processes sharing them)
    of ``proc`` and its descendants, sampled every 50 ms; zeros without psutil."""
    try:
        import psutil
    except ImportError:
        proc.wait()
        return 0.0, 0.0
    rss = pss = 0
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        proc.wait()
        return 0.0, 0.0
    while proc.poll() is None:
        r = p_ = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    info = p.memory_full_info()
                    r, p_ = r + info.rss, p_ + getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        rss, pss = max(rss, r), max(pss, p_)
        time.sleep(0.05)
    return rss / 2 ** 20, pss / 2 ** 20


def _runs(label: str, figures: list[dict[str, Any]]) -> tuple[float, float]:
    """Print every run; return the medians of the peak and of the upper bound."""
    peaks, bounds = [f["peak_mib"] for f in figures], [f["bound_mib"] for f in figures]
    each, upper = ", ".join(f"{p:.0f}" for p in peaks), ", ".join(f"{b:.0f}" for b in bounds)
    print(f"{label}\n    peak RSS (MiB) runs [{each}] median {statistics.median(peaks):.0f} spread "
          f"{max(peaks) - min(peaks):.0f}; upper bound runs [{upper}]; rows {figures[0]['rows']:,}")
    for f in figures:
        print(f"      own {f['own_mib']:.0f}, largest worker {f['worker_mib']:.0f} x {f['workers']}, "
              f"tree RSS {f['tree_rss_mib']:.0f}, tree PSS {f['tree_pss_mib']:.0f}, {f['seconds']:.1f} s")
    return statistics.median(peaks), statistics.median(bounds)


def _limit(label: str, figures: tuple[float, float]) -> str:
    peak, bound = figures
    ok = bound < LIMIT_MIB
    return (f"LIMIT {label}: peak RSS {peak:.0f} MiB, upper bound {bound:.0f} MiB "
            f"{'<' if ok else '>='} {LIMIT_MIB:.0f} MiB: {'under' if ok else 'OVER'}")


def _generate_dicom(root: Path, n: int) -> None:
    from kit.examples.dicom import random_ct_files

    for k in range(0, n, 1000):
        random_ct_files(root / f"s{k // 1000:03d}", min(1000, n - k), patient_id=f"MRN9{k // 1000:03d}",
                        seed=k)


def _subset(root: Path, n: int, tmp: Path) -> Path:
    """A folder holding the first ``n`` files of ``root`` (symlinks: the same bytes)."""
    from kit.dicom.index import list_files

    files = sorted(list_files([root]))[:n]
    if len(files) < n:
        raise SystemExit(f"{root} holds {len(files)} files, fewer than {n}")
    sub = tmp / f"first-{n}"
    for f in files:
        rel = Path(f).relative_to(root)
        (sub / rel.parent).mkdir(parents=True, exist_ok=True)
        (sub / rel).symlink_to(f)
    return sub


def bench_dicom(args: argparse.Namespace, tmp: Path) -> list[str]:
    if args.dicom_dir:
        root = Path(args.dicom_dir).resolve()
    else:
        root = tmp / "ct"
        t = time.perf_counter()
        _generate_dicom(root, max(args.dicom_files, args.alt_dicom_files))
        print(f"generated {max(args.dicom_files, args.alt_dicom_files):,} CT files in "
              f"{time.perf_counter() - t:.0f}s", file=sys.stderr)
    n_alt = args.alt_dicom_files
    alt_dir = _subset(root, n_alt, tmp) if n_alt != _count(root) else root
    full_dir = _subset(root, args.dicom_files, tmp) if args.dicom_files != _count(root) else root
    out, keep = str(tmp / "index.parquet"), str(tmp / "kit-index.parquet")
    kit_mem, kit_stream, alt, full = [], [], [], []
    same = []
    for _ in range(args.runs):
        kit_mem.append(measure("dicom-kit", folder=str(alt_dir), workers=args.workers, keep=keep))
        kit_stream.append(measure("dicom-kit", folder=str(alt_dir), out=out, workers=args.workers))
        alt.append(measure("dicom-pydicom", folder=str(alt_dir), check=keep))
        same.append(alt[-1]["same_as_kit"])
        if args.dicom_files != n_alt:
            full.append(measure("dicom-kit", folder=str(full_dir), out=out, workers=args.workers))
    print(f"DICOM index, {n_alt:,} files (pydicom's table equal to kit's frame: {same})")
    m_kit = _runs(f"kit index_dicom, frame in memory ({n_alt:,} files)", kit_mem)
    m_stream = _runs(f"kit index_dicom(out=parquet) ({n_alt:,} files)", kit_stream)
    m_alt = _runs(f"pydicom dcmread loop -> same table ({n_alt:,} files)", alt)
    lines = [_limit(f"dicom index {n_alt:,} files kit in memory", m_kit),
             _limit(f"dicom index {n_alt:,} files kit streamed", m_stream),
             _limit(f"dicom index {n_alt:,} files pydicom", m_alt)]
    if full:
        m_full = _runs(f"kit index_dicom(out=parquet) ({args.dicom_files:,} files)", full)
        lines.append(_limit(f"dicom index {args.dicom_files:,} files kit streamed", m_full))
    what = f"RATIO memory dicom index {n_alt:,} files peak RSS"
    lines += [f"{what} pydicom/kit = {m_alt[0] / m_kit[0]:.2f}",
              f"{what} pydicom/kit-streamed = {m_alt[0] / m_stream[0]:.2f}"]
    return lines


def _count(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def bench_hl7(args: argparse.Namespace, tmp: Path) -> list[str]:
    make_file = _load_bench_hl7().make_file
    n_alt, n_full = args.alt_hl7_messages, args.hl7_messages
    small = make_file(n_alt, tmp)
    big = make_file(n_full, tmp) if n_full != n_alt else small
    print(f"HL7 files: {n_alt:,} messages {small.stat().st_size / 1e6:.0f} MB; {n_full:,} messages "
          f"{big.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
    kit_mem, kit_stream, alt, full = [], [], [], []
    for _ in range(args.runs):
        kit_mem.append(measure("hl7-kit", path=str(small)))
        kit_stream.append(measure("hl7-kit", path=str(small), out_dir=str(tmp / "tables")))
        alt.append(measure("hl7-python-hl7", path=str(small)))
        if n_full != n_alt:
            full.append(measure("hl7-kit", path=str(big), out_dir=str(tmp / "tables")))
    kit_rows, alt_rows = kit_mem[0]["tables"], alt[0]["tables"]
    same = {t: kit_rows.get(t) == n for t, n in alt_rows.items()}
    print(f"HL7 archive, {n_alt:,} messages (rows per table, python-hl7 {alt_rows}; kit the same: "
          f"{all(same.values())}{'' if all(same.values()) else f' {same}'})")
    m_kit = _runs(f"kit read_file, 7 tables in memory ({n_alt:,} msgs)", kit_mem)
    m_stream = _runs(f"kit write_tables, 7 tables to parquet ({n_alt:,} msgs)", kit_stream)
    m_alt = _runs(f"python-hl7 per message, the same 7 tables ({n_alt:,} msgs)", alt)
    lines = [_limit(f"hl7 archive {n_alt:,} msgs kit in memory", m_kit),
             _limit(f"hl7 archive {n_alt:,} msgs kit streamed", m_stream),
             _limit(f"hl7 archive {n_alt:,} msgs python-hl7", m_alt)]
    if full:
        m_full = _runs(f"kit write_tables, 7 tables to parquet ({n_full:,} msgs)", full)
        lines.append(_limit(f"hl7 archive {n_full:,} msgs kit streamed", m_full))
    what = f"RATIO memory hl7 archive {n_alt:,} msgs peak RSS"
    lines += [f"{what} python-hl7/kit = {m_alt[0] / m_kit[0]:.2f}",
              f"{what} python-hl7/kit-streamed = {m_alt[0] / m_stream[0]:.2f}"]
    return lines


def bench_large(args: argparse.Namespace, tmp: Path) -> list[str]:
    """One CT instance of ``--large-mb`` MiB C-STOREd to dcmtk storescp (``--ignore``: received,
    not written): kit's PacsClient.store (the file checked through a memory map, sent in pieces)
    against dcmtk storescu; each in a fresh process (storescu's own peak: its high-water mark)."""
    import math
    import socket

    from kit.examples.dicom import random_ct_files

    side = math.isqrt(args.large_mb * 2 ** 20 // 2)
    (path,) = random_ct_files(tmp / "large", 1, patient_id="LARGE", size=side, seed=1)
    size_mib = path.stat().st_size / 2 ** 20
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    scp = subprocess.Popen([_dcmtk("storescp"), "--ignore", "-aet", "STORESCP", port],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "TCP_NODELAY": "1"})
    try:
        time.sleep(0.5)
        kit_runs, alt_runs = [], []
        for _ in range(args.runs):
            kit_runs.append(measure("large-kit", path=str(path), port=port))
            alt_runs.append(measure("large-storescu", path=str(path), port=port))
    finally:
        scp.terminate()
        scp.wait(10)
    m_kit = _runs(f"kit PacsClient.store, one {size_mib:.0f} MiB instance", kit_runs)
    alt = [f["tool_kib"] / 1024 for f in alt_runs]
    each = ", ".join(f"{a:.0f}" for a in alt)
    print(f"dcmtk storescu, the same instance\n    its peak RSS (MiB) runs [{each}] median "
          f"{statistics.median(alt):.0f}")
    return [_limit(f"C-STORE of a {size_mib:.0f} MiB instance kit", m_kit),
            f"RATIO memory C-STORE {size_mib:.0f} MiB instance peak RSS storescu/kit = "
            f"{statistics.median(alt) / m_kit[0]:.2f}"]


def main(argv: list[str]) -> None:
    if argv[1:2] == ["--child"]:
        child(argv[2], argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dicom-files", type=int, default=100_000)
    parser.add_argument("--alt-dicom-files", type=int, default=None)
    parser.add_argument("--dicom-dir", default=None, help="index this folder (random_ct_files output)")
    parser.add_argument("--hl7-messages", type=int, default=1_000_000)
    parser.add_argument("--alt-hl7-messages", type=int, default=100_000)
    parser.add_argument("--workers", default="auto", help="kit's index worker processes (default: CPUs)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large-mb", type=int, default=512, help="the large instance's size (MiB)")
    parser.add_argument("--only", default="dicom,hl7,large")
    args = parser.parse_args(argv[1:])
    args.alt_dicom_files = args.alt_dicom_files or args.dicom_files
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kit-bench-memory-") as tmp:
        if "dicom" in args.only:
            lines += bench_dicom(args, Path(tmp))
        if "hl7" in args.only:
            lines += bench_hl7(args, Path(tmp))
        if "large" in args.only:
            lines += bench_large(args, Path(tmp))
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
