"""A progress bar the widgets show while they work (ipywidgets ``IntProgress``; no logic of its own).

A widget that retrieves, reads or sends puts a :class:`ProgressBar` among its
children and wraps the work in :meth:`ProgressBar.task`; the bar shows while a
task runs, hides when it ends well and stays (red, with the error's type) when
it fails::

    with self.progress.task("reading", total=len(paths)) as tick:
        for path in paths:
            read(path); tick()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ipywidgets as w

__all__ = ["ProgressBar"]


class ProgressBar(w.HBox):
    """An ``IntProgress`` with a label, shown while a :meth:`task` runs or after one failed.

    Attributes
    ----------
    value, total : int
        Steps done and steps in the last task.
    status : str
        What the last task was doing, and whether it ended (``"done"``) or
        failed (``"failed: <error type>"``).
    """

    def __init__(self) -> None:
        self._bar = w.IntProgress(value=0, min=0, max=1, layout=w.Layout(width="40%"))
        self._label = w.Label()
        super().__init__([self._bar, self._label], layout=w.Layout(display="none"))

    @property
    def value(self) -> int:
        return int(self._bar.value)

    @property
    def total(self) -> int:
        return int(self._bar.max)

    @property
    def status(self) -> str:
        return str(self._label.value)

    def __repr__(self) -> str:
        return f"ProgressBar({self.value}/{self.total}, {self.status!r})"

    @contextmanager
    def task(self, description: str, total: int = 1) -> Iterator[Callable[[int], None]]:
        """Show a task of ``total`` steps; yields ``tick(n=1)``; marks it done or failed on exit.

        The task's exception, if any, propagates unchanged.
        """
        self.layout.display = None
        self._bar.bar_style = "info"
        self._bar.max = max(int(total), 1)
        self._bar.value = 0
        self._label.value = f"{description} 0/{total}"

        def tick(n: int = 1) -> None:
            self._bar.value = min(self._bar.value + n, self._bar.max)
            self._label.value = f"{description} {self._bar.value}/{total}"

        try:
            yield tick
        except BaseException as exc:
            self._bar.bar_style = "danger"
            self._label.value = f"{description} {self._bar.value}/{total}: failed: {type(exc).__name__}"
            raise
        self._bar.value = self._bar.max
        self._bar.bar_style = "success"
        self._label.value = f"{description} {total}/{total}: done"
        self.layout.display = "none"

    @property
    def visible(self) -> bool:
        """Whether the bar is on screen (a task runs, or the last one failed)."""
        return self.layout.display != "none"
