"""Latency a user feels: whole processes, against ``python -c pass`` (issue 9, target 6).

    python bench/startup.py [RUNS]      # RUNS per command (default 7), median kept

Each command runs as a fresh process, RUNS times, interleaved (pass, import kit,
kit --help, kit pacs echo, pass, ...) so a busy moment hits all of them alike;
the median wall time is kept. ``kit pacs echo`` C-ECHOes the embedded PACS,
started once here (``kit serve --only pacs --pacs-port 0``) and stopped by PID.

Targets: ``kit --help`` under 0.3 s, ``kit pacs echo`` under 0.5 s, ``import kit``
under 0.5 s, each as a whole process (interpreter start included). Ends with
``RATIO startup <what> target/actual = <x>`` lines: 1 or more means the target is
met. The interpreter's own start (``python -c pass``) is printed beside them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
#: the console script a user runs (next to this interpreter), else the module
_SCRIPT = Path(PYTHON).parent / "kit"
KIT = [str(_SCRIPT)] if _SCRIPT.is_file() else [PYTHON, "-m", "kit.cli"]
TARGETS = {"import kit": 0.5, "kit --help": 0.3, "kit pacs echo": 0.5}


def run(args: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return took


def start_pacs(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([*KIT, "serve", "--only", "pacs", "--pacs-port", "0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            break
        found = re.search(r"dicom://\S+", line)
        if found:
            return proc, found.group(0)
    stop(proc)
    sys.exit("kit serve did not print the PACS address")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    tmp = Path(tempfile.mkdtemp(prefix="kit-startup-"))
    pacs, url = start_pacs(tmp / "pacs")
    try:
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "import kit": [PYTHON, "-c", "import kit"],
            "kit --help": [*KIT, "--help"],
            "kit pacs echo": [*KIT, "pacs", "echo", "--url", url],
        }
        for args in commands.values():  # warm the page cache once
            run(args)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, args in commands.items():
                times[name].append(run(args))
    finally:
        stop(pacs)
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["python -c pass"])
    print(f"{runs} runs each, median wall time of the whole process (min-max); {os.cpu_count()} CPUs")
    for name, ts in times.items():
        target = TARGETS.get(name)
        note = f"   target {target:.1f} s" if target else ""
        print(f"{name:<16} {statistics.median(ts):6.3f} s  ({min(ts):.3f}-{max(ts):.3f})  "
              f"{statistics.median(ts) - base:+.3f} s over python -c pass{note}")
    for name, target in TARGETS.items():
        print(f"RATIO startup {name} target/actual = {target / statistics.median(times[name]):.2f}")


if __name__ == "__main__":
    main()
