"""Benchmark: an HL7 v2 file of mixed messages to the OBX results table.

kit (``kit.hl7.frames.read_file(path, tables=["results"])``, the vectorised
path) against python-hl7 (``hl7.parse`` per message, then a walk over the OBX
segments into rows and a polars frame) and hl7apy
(``parse_message(find_groups=False)`` per message, same walk). The
alternatives run on a sample of the same file (they are slow); the figures
compared are messages per second, each the best of three runs.

    python bench/hl7.py [N]          # N messages (default 100,000)

Sections are separate functions called from ``main()``; add new ones there
(e.g. the MLLP round trip).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# this file is called hl7.py: keep its folder off sys.path so "import hl7" finds python-hl7
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import polars as pl  # noqa: E402

from kit.examples.hl7 import feed  # noqa: E402
from kit.hl7.frames import read_file  # noqa: E402
from kit.hl7.message import split_messages  # noqa: E402

DEFAULT_N = 100_000
PYTHON_HL7_SAMPLE = 5_000
HL7APY_SAMPLE = 300


def make_file(n: int, directory: Path) -> Path:
    """A file of ``n`` messages cycling through the sample feed, each with its own control id."""
    base = list(feed())
    path = directory / f"mixed-{n}.hl7"
    with path.open("w", encoding="utf-8", newline="") as out:
        for i in range(n):
            text = base[i % len(base)]
            head, _, rest = text.partition("\r")
            fields = head.split("|")
            fields[9] = f"B{i:09d}"
            # vary the report text so values are not repeated verbatim across the file
            out.write("|".join(fields) + "\r" + rest.replace("Findings:", f"Findings ({i}):") + "\n")
    return path


def _timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall-clock time of ``repeat`` runs (the machine may be shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def kit_results(path: Path) -> pl.DataFrame:
    return read_file(path, tables=["results"])["results"]


def python_hl7_results(messages: list[str]) -> pl.DataFrame:
    import hl7

    rows = []
    for text in messages:
        msg = hl7.parse(text)
        if str(msg.segment("MSH")[9][0][0]) == "MDM":
            continue
        control_id = str(msg.segment("MSH")[10])
        try:
            patient_id = str(msg.segment("PID")[3][0][0])
        except KeyError:
            patient_id = ""
        obr: object = None
        for seg in msg:
            name = str(seg[0])
            if name == "OBR":
                obr = seg
            elif name == "OBX":
                accession = ""
                if obr is not None:
                    accession = str(obr[18]) if len(obr) > 18 and str(obr[18]) else str(obr[3])  # type: ignore
                value = msg.unescape(str(seg[5])) if len(seg) > 5 else ""
                rows.append({"control_id": control_id, "patient_id": patient_id,
                             "accession_number": accession, "set_id": str(seg[1]), "value_type": str(seg[2]),
                             "observation_code": str(seg[3][0][0]) if len(seg) > 3 else "",
                             "value": value, "units": str(seg[6]) if len(seg) > 6 else ""})
    return pl.DataFrame(rows)


def hl7apy_results(messages: list[str]) -> pl.DataFrame:
    from hl7apy.parser import parse_message

    rows = []
    for text in messages:
        msg = parse_message(text, find_groups=False)
        if msg.msh.msh_9.msh_9_1.value == "MDM":
            continue
        control_id = msg.msh.msh_10.value
        pid = msg.children.get("PID") if hasattr(msg.children, "get") else None
        patient_id = pid[0].pid_3.cx_1.value if pid else ""
        accession = ""
        for seg in msg.children:
            if seg.name == "OBR":
                accession = seg.obr_18.value or seg.obr_3.ei_1.value
            elif seg.name == "OBX":
                rows.append({"control_id": control_id, "patient_id": patient_id,
                             "accession_number": accession, "set_id": seg.obx_1.value,
                             "value_type": seg.obx_2.value,
                             "observation_code": seg.obx_3.to_er7().split("^")[0],
                             "value": seg.obx_5.to_er7(), "units": seg.obx_6.to_er7()})
    return pl.DataFrame(rows)


def bench_results_frame(n: int) -> list[str]:
    """The results-frame comparison; returns its RATIO lines."""
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(n, Path(tmp))
        size_mb = path.stat().st_size / 1e6
        messages = list(split_messages(path.read_bytes()))
        print(f"file: {n:,} messages, {size_mb:.1f} MB")

        t_kit, df = _timed(lambda: kit_results(path))
        assert isinstance(df, pl.DataFrame)
        kit_rate = n / t_kit
        print(f"kit read_file -> results   {df.height:>9,} rows  {t_kit:8.2f} s  {kit_rate:>12,.0f} msgs/s")

        sample = messages[:PYTHON_HL7_SAMPLE]
        t_p, dp = _timed(lambda: python_hl7_results(sample))
        assert isinstance(dp, pl.DataFrame)
        p_rate = len(sample) / t_p
        print(f"python-hl7 (sample {len(sample):,})  {dp.height:>9,} rows  {t_p:8.2f} s"
              f"  {p_rate:>12,.0f} msgs/s")

        sample = messages[:HL7APY_SAMPLE]
        t_a, da = _timed(lambda: hl7apy_results(sample))
        assert isinstance(da, pl.DataFrame)
        a_rate = len(sample) / t_a
        print(f"hl7apy (sample {len(sample):,})       {da.height:>9,} rows  {t_a:8.2f} s"
              f"  {a_rate:>12,.0f} msgs/s")
    return [f"RATIO hl7 results frame msgs/s kit/python-hl7 = {kit_rate / p_rate:.1f}",
            f"RATIO hl7 results frame msgs/s kit/hl7apy = {kit_rate / a_rate:.1f}"]


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else DEFAULT_N
    ratios: list[str] = []
    ratios += bench_results_frame(n)
    # further sections (e.g. MLLP round trip) append their RATIO lines here
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
