"""Shared test helpers: tools that must exist under CI, free ports, processes stopped by PID."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[1]


#: dcmtk's tools; pynetdicom installs console scripts with the same names, so look in the
#: system folders first and check that what we found is really dcmtk.
DCMTK_TOOLS = frozenset({"echoscu", "storescu", "findscu", "getscu", "movescu", "storescp", "dcmdump"})


def require_tool(name: str) -> str:
    """Path of an executable; skip the test if absent locally, fail under CI=true."""
    candidates = [f"/usr/bin/{name}", f"/usr/sbin/{name}", shutil.which(name)]
    path = next((c for c in candidates if c and Path(c).is_file() and _is_expected(name, c)), None)
    if path is None:
        missing(f"{name} is not installed (Debian packages orthanc orthanc-dicomweb dcmtk)", "install it")
    return path


def missing(message: str, remedy: str) -> NoReturn:
    """Skip the test for something this machine lacks; under CI=true, fail it (.ci/run must ``remedy``)."""
    if IN_CI:
        pytest.fail(f"{message} and CI=true: .ci/run must {remedy}")
    pytest.skip(message)


def require_built(module: object, name: str) -> None:
    """One of kit's optional C modules (None when pip had no compiler): skip, or fail under CI=true."""
    if module is None:
        missing(f"{name} is not built (no C compiler at install time)", "build it")


def _is_expected(name: str, path: str) -> bool:
    if name not in DCMTK_TOOLS:
        return True
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 30.0,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts connections on host:port (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_until(condition: Callable[[], object], what: str = "timed out", seconds: float = 20.0) -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def open_fds(collect: bool = False) -> int:
    """Descriptors this process has open (Linux /proc). ``collect``: run the garbage collector
    first, so that what earlier tests in this process (an xdist worker runs many) left for it is
    closed before a test takes its baseline, not during the test."""
    if collect:
        gc.collect()
    return len(os.listdir("/proc/self/fd"))


def peer_env() -> dict[str, str]:
    """Environment for Debian's dcmtk and Orthanc: TCP_NODELAY=1 or they crawl on loopback."""
    return {**os.environ, "TCP_NODELAY": "1"}


@contextmanager
def spawned(args: Sequence[str], *, cwd: str | Path | None = None,
            env: dict[str, str] | None = None, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process for the duration of a block; stop it by PID afterwards."""
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(list(args), cwd=cwd, env=env or peer_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_pid(proc)
        if log:
            out.close()  # type: ignore[union-attr]


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process (by PID), then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextmanager
def syn_dropping_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops each further SYN, so a
    connect to it neither succeeds nor fails until its timeout (a host that drops packets)."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", port))
                except BlockingIOError:
                    pass
                fillers.append(filler)
            time.sleep(0.2)
            yield port
        finally:
            for filler in fillers:
                filler.close()
