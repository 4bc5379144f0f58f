"""A live counter of the messages in an MLLP listener's store, with a rate chart (ipywidgets + plotly).

Only wiring: the count comes from :meth:`kit.hl7.store.MessageStore.count`, the
chart from :func:`kit.widgets.charts.rate_figure`. :func:`paced` spreads a replay
out in time, so a sample feed that would arrive in a blink can be watched::

    counter = StoreCounter(listener.store)
    counter.start(interval=0.1)
    counter                                   # the number and the rate, live
    with MLLPSender("127.0.0.1", listener.port) as sender:
        sender.send_many(paced(messages, per_second=15), progress=True)
    counter.stop()
    counter.rate                              # seconds, count, per_second
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, Generic, TypeVar

import ipywidgets as widgets
import polars as pl

from kit.errors import InvalidInputError
from kit.hl7.store import MessageStore
from kit.widgets.charts import RATE_SCHEMA, rate_figure, update_rate

__all__ = ["MAX_SAMPLES", "Paced", "StoreCounter", "paced", "rate_samples"]

T = TypeVar("T")

#: Samples a counter keeps and charts (at 0.2 s a sample: the last 4 minutes).
MAX_SAMPLES: Final = 1200


def rate_samples(samples: Sequence[tuple[float, int]], *, window: float = 1.0) -> pl.DataFrame:
    """Messages per second at each sample, over the ``window`` seconds before it.

    Parameters
    ----------
    samples : sequence of (float, int)
        ``(seconds since start, count)``, in time order.
    window : float
        Seconds each rate looks back over (at least the gap to the sample
        before, so a slow refresh still gives a rate).

    Returns
    -------
    polars.DataFrame
        :data:`~kit.widgets.charts.RATE_SCHEMA`: ``seconds``, ``count`` and
        ``per_second`` (0 for the first sample).
    """
    if window <= 0:
        raise InvalidInputError(f"window must be positive, got {window}")
    rates: list[float] = []
    back = 0  # the earliest sample within the window of the current one: moves forward only
    for i, (t, n) in enumerate(samples):
        while back < i - 1 and samples[back + 1][0] <= t - window:
            back += 1
        t0, n0 = samples[back] if back < i else (t, n)
        rates.append((n - n0) / (t - t0) if t > t0 else 0.0)
    return pl.DataFrame({"seconds": [float(t) for t, _ in samples], "count": [int(n) for _, n in samples],
                         "per_second": rates}, schema=RATE_SCHEMA)


class StoreCounter(widgets.VBox):
    """The number of messages stored, and a chart of how many arrive per second, refreshed live.

    Parameters
    ----------
    store : MessageStore
        The store to count (e.g. ``listener.store``).
    description : str
        Label shown next to the number.
    window : float
        Seconds each point of the rate chart averages over.
    clock : callable
        Monotonic seconds (``time.monotonic``); tests pass their own.

    Attributes
    ----------
    widget : ipywidgets.IntText
        The number shown.
    figure : plotly.graph_objects.FigureWidget
        The rate chart.
    """

    def __init__(self, store: MessageStore, description: str = "messages stored", *, window: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0:
            raise InvalidInputError(f"window must be positive, got {window}")
        self.store = store
        self._clock = clock
        self._window = window
        self._t0 = clock()
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.widget = widgets.IntText(value=0, description=description, disabled=True,
                                      style={"description_width": "initial"})
        self.figure = rate_figure(pl.DataFrame(schema=RATE_SCHEMA), widget=True)
        super().__init__([self.widget, self.figure])
        self.refresh()

    @property
    def value(self) -> int:
        """The count last shown."""
        return int(self.widget.value)

    @property
    def rate(self) -> pl.DataFrame:
        """The samples so far with their rates (:func:`rate_samples`), as the chart shows them."""
        with self._lock:
            samples = list(self._samples)
        return rate_samples(samples, window=self._window)

    def __repr__(self) -> str:
        return f"StoreCounter({self.value} {self.widget.description})"

    def refresh(self) -> int:
        """Read the count now, add a sample, update the number and the chart; return the count."""
        with self._lock:
            count = self.store.count()
            self._samples.append((self._clock() - self._t0, count))
            self.widget.value = count
            update_rate(self.figure, rate_samples(list(self._samples), window=self._window))
        return count

    def start(self, interval: float = 0.2) -> None:
        """Refresh every ``interval`` seconds in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="store-counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresh (idempotent) and show the final count."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None
        self.refresh()


class Paced(Generic[T]):
    """What :func:`paced` returns: iterable (at the pace) and sized."""

    def __init__(self, items: Iterable[T], per_second: float, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not per_second > 0:
            raise InvalidInputError(f"per_second must be positive, got {per_second}")
        self.items = list(items)
        self.per_second = float(per_second)
        self._sleep, self._clock = sleep, clock

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        step = 1.0 / self.per_second
        due = self._clock()
        for k, item in enumerate(self.items):
            if k:
                now = self._clock()
                due = max(due + step, now)  # a late consumer gets the next item now, not a burst after
                if due > now:
                    self._sleep(due - now)
            yield item


def paced(items: Iterable[T], per_second: float, *, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> Paced[T]:
    """``items`` handed out at most ``per_second`` a second, so a replay can be watched.

    The result has a length, so ``tqdm`` (``send_many(..., progress=True)``)
    shows a whole bar.

    Parameters
    ----------
    items : iterable
        What to hand out (e.g. the messages of a feed).
    per_second : float
        The pace (> 0).
    sleep, clock : callable
        ``time.sleep`` and ``time.monotonic``; tests pass their own.
    """
    return Paced(items, per_second, sleep=sleep, clock=clock)
