"""Helpers of the retrieve-cancel tests: a cancel after N instances, and a hook that stops like the
cohort limiter does."""

from __future__ import annotations

import threading
from pathlib import Path

from kit.cohort.limiter import Stopped

#: The big study's instance count, and after how many the tests stop it.
BIG, AFTER = 40, 5
#: Instances a peer may still send after our cancel (in flight when it was sent).
SLACK = 3


def files(folder: Path) -> int:
    """``.dcm`` files written in ``folder``."""
    return sum(1 for p in folder.iterdir() if p.suffix == ".dcm") if folder.is_dir() else 0


def after(folder: Path, n: int = AFTER) -> threading.Event:
    """An event that is set (by a watcher thread) once ``folder`` holds ``n`` files: the caller's
    cancel, set from outside the retrieve."""
    event = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.002):
            if files(folder) >= n:
                event.set()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    event.stop_watching = done.set  # type: ignore[attr-defined]
    return event


class StopAfter:
    """A per-instance hook that raises :class:`Stopped` from the ``n``-th instance on (what
    :meth:`kit.cohort.limiter.LocalLimiter.images` does once its job is stopped)."""

    def __init__(self, n: int = AFTER, delay: float = 0.0) -> None:
        self.n, self.delay, self.calls = n, delay, 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.calls += 1
            calls = self.calls
        if self.delay:
            threading.Event().wait(self.delay)
        if calls >= self.n:
            raise Stopped("stopped")
