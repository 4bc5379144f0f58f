"""Helpers of the retrieve-cancel tests: a cancel after N instances, a hook that stops like the
cohort limiter does, and a cohort pull stopped mid-study then resumed."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl

from kit.cohort import CohortPull
from kit.cohort.limiter import LocalLimiter, Stopped
from kit.cohort.retrieve import Method
from kit.config import Settings
from tests.integration.cohort_pull.helpers import Study, folder_contents

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


class StopsAt(LocalLimiter):
    """A limiter whose ``stop`` is set at the ``after``-th instance (what Ctrl-C does to a job's
    limiter mid-study); that instance's wait then raises Stopped."""

    def __init__(self, *args: object, after: int = AFTER, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.after, self.count = after, 0

    def images(self, n: int = 1) -> None:
        self.count += n
        if self.count == self.after:
            self.stop.set()
        super().images(n)


def stopped_pull(wanted: list[Study], out: Path, settings: Settings, method: Method | None = None) -> None:
    """Pull ``wanted`` into ``out``, stopped at the AFTER-th instance of the first study: that study
    is not reported retrieved and nothing of it is on disk."""
    job = CohortPull(_cohort(wanted), out, settings=settings, method=method, progress=False,
                     max_associations=1)
    job.limiter = StopsAt(1, 1000.0, stop=job.stop)
    report = job.run()
    by_uid = dict(zip(report["study_instance_uid"], report["status"], strict=False))
    assert by_uid.get(wanted[0].uid) != "retrieved"
    assert wanted[0].uid not in folder_contents(out)


def resumed_pull(wanted: list[Study], out: Path, settings: Settings, method: Method | None = None) -> None:
    """Run the pull of ``wanted`` into ``out`` again: every study retrieved, whole."""
    again = CohortPull(_cohort(wanted), out, settings=settings, method=method, progress=False).run()
    assert set(again["status"]) == {"retrieved"}
    assert folder_contents(out) == {s.uid: set(s.sops) for s in wanted}


def _cohort(wanted: list[Study]) -> pl.DataFrame:
    return pl.DataFrame({"study_instance_uid": [s.uid for s in wanted]})
