"""Latency a user feels: whole processes, against ``python -c pass`` (issue 9, target 6).

    python bench/startup.py [RUNS]      # RUNS per command (default 7), median kept

Each command runs as a fresh process, RUNS times, interleaved (pass, import kit,
kit --help, kit pacs echo, import pynetdicom, pass, ...) so a busy moment hits all
of them alike. Per command: the median and the best wall time, the median CPU
time of the process (user + system, from ``wait4``: what load on the machine
changes least) and the median's overhead over ``python -c pass``. ``kit pacs
echo`` C-ECHOes the embedded PACS, started once here (``kit serve --only pacs
--pacs-port 0``) and stopped by PID. ``python -c "import pynetdicom"`` is
printed beside it as what the echo no longer pays: a clean C-ECHO runs on a
plain socket (:mod:`kit.dicom._echo_fast`) and imports neither pynetdicom nor
pydicom nor numpy; only an echo the fast path hands back (a rejection, an
abort, TLS, an audit sink) imports them, through ``PacsClient``.

Bytecode is cached, as after ``pip install`` (which compiles every module): the
commands run without ``PYTHONDONTWRITEBYTECODE``, so the warm-up run writes the
``__pycache__`` files of an editable checkout. (With it set and no cache, every
kit module is compiled from source in every process: about 25 ms more CPU for
the echo, 10 ms for ``--help``.)

Targets: ``kit --help`` under 0.3 s, ``kit pacs echo`` under 0.5 s, ``import kit``
under 0.5 s, each as a whole process (interpreter start included). Ends with
``RATIO startup <what> target/actual = <x>`` lines on the median wall time (1 or
more means the target is met) and the same on the best run
(``target/best``).
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


#: the environment of every command (see the module docstring on bytecode)
ENV = dict(os.environ)


def run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one whole process."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        _pid, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.exit(f"{' '.join(args)} failed ({proc.returncode}): {err.read().decode()[-500:]}")
    return took, usage.ru_utime + usage.ru_stime


def start_pacs(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([*KIT, "serve", "--only", "pacs", "--pacs-port", "0", "--data-dir", str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
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
    ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    pacs, url = start_pacs(tmp / "pacs")
    try:
        commands = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "import kit": [PYTHON, "-c", "import kit"],
            "kit --help": [*KIT, "--help"],
            "kit pacs echo": [*KIT, "pacs", "echo", "--url", url],
            "import pynetdicom": [PYTHON, "-c", "import pynetdicom"],
        }
        for args in commands.values():  # warm the page cache once
            run(args)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, args in commands.items():
                took, used = run(args)
                times[name].append(took)
                cpu[name].append(used)
    finally:
        stop(pacs)
        shutil.rmtree(tmp, ignore_errors=True)
    report(runs, times, cpu)


def report(runs: int, times: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    base, base_best = statistics.median(times["python -c pass"]), min(times["python -c pass"])
    load = os.getloadavg()[0]
    print(f"{runs} runs each, whole processes; {os.cpu_count()} CPUs, load average {load:.1f}; "
          "bytecode cached")
    print(f"{'':<18} {'median':>7} {'best':>7} {'worst':>7} {'cpu':>7}   over python -c pass "
          f"(median / best)")
    for name, ts in times.items():
        target = TARGETS.get(name)
        note = f"   target {target:.1f} s" if target else ""
        print(f"{name:<18} {statistics.median(ts):7.3f} {min(ts):7.3f} {max(ts):7.3f} "
              f"{statistics.median(cpu[name]):7.3f}   {statistics.median(ts) - base:+.3f} / "
              f"{min(ts) - base_best:+.3f} s{note}")
    for name, target in TARGETS.items():
        print(f"RATIO startup {name} target/actual = {target / statistics.median(times[name]):.2f}")
    for name, target in TARGETS.items():
        print(f"RATIO startup {name} target/best = {target / min(times[name]):.2f}")


if __name__ == "__main__":
    main()
