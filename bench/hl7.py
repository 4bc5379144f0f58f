"""Benchmark: an HL7 v2 file of mixed messages to the OBX results table.

kit (``kit.hl7.frames.read_file(path, tables=["results"])``, the vectorised
path) against python-hl7 (``hl7.parse`` per message, then a walk over the OBX
segments into rows and a polars frame) and hl7apy
(``parse_message(find_groups=False)`` per message, same walk). The
alternatives run on a sample of the same file (they are slow); the figures
compared are messages per second, each the best of three runs.

    python bench/hl7.py [N] [M]      # N messages (default 100,000), M MLLP round trips (2,000)

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


# -- MLLP round trips (E2) --------------------------------------------------------------------------
MLLP_N = 2_000


def bench_mllp_round_trips(n: int) -> list[str]:
    """MLLP send + AA round trips/s on loopback: kit MLLPSender vs python-hl7's MLLPClient.

    Both talk to the same kit MLLPListener (which commits every message to SQLite,
    synchronous=FULL, before its AA), with the same ``n`` messages (fresh MSH-10 per
    client so none is a duplicate). Returns its RATIO line.
    """
    import hl7.client

    from kit.hl7.mllp import MLLPListener, MLLPSender

    base = list(feed())

    def messages(prefix: str) -> list[str]:
        out = []
        for i in range(n):
            head, _, rest = base[i % len(base)].partition("\r")
            fields = head.split("|")
            fields[9] = f"{prefix}{i:09d}"
            out.append("|".join(fields) + "\r" + rest)
        return out

    kit_msgs, p_msgs = messages("K"), messages("P")
    with tempfile.TemporaryDirectory() as tmp, MLLPListener(Path(tmp) / "bench.db") as listener:
        with MLLPSender("127.0.0.1", listener.port) as sender:
            sender.send(base[0])  # warm up: connection, imports
            t_kit, acks = _timed(lambda: [sender.send(m) for m in kit_msgs])
        assert isinstance(acks, list) and all(a.code.value == "AA" for a in acks)
        with hl7.client.MLLPClient("127.0.0.1", listener.port) as client:
            t_p, replies = _timed(lambda: [client.send_message(m) for m in p_msgs])
        assert isinstance(replies, list) and all(b"MSA|AA|" in r for r in replies)
        assert listener.store is not None and listener.store.count() == 2 * n + 1
    kit_rate, p_rate = n / t_kit, n / t_p
    print(f"MLLP round trips, {n:,} messages (listener: kit, SQLite synchronous=FULL)")
    print(f"kit MLLPSender          {t_kit:8.2f} s  {kit_rate:>10,.0f} round trips/s")
    print(f"python-hl7 MLLPClient   {t_p:8.2f} s  {p_rate:>10,.0f} round trips/s")
    return [f"RATIO mllp round trips/s kit/python-hl7 = {kit_rate / p_rate:.2f}"]


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else DEFAULT_N
    ratios: list[str] = []
    ratios += bench_results_frame(n)
    ratios += bench_mllp_round_trips(int(argv[2]) if len(argv) > 2 else MLLP_N)
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
