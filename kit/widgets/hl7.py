"""A live counter of the messages in an MLLP listener's store (ipywidgets; no logic of its own)."""

from __future__ import annotations

import threading

import ipywidgets as widgets

from kit.hl7.store import MessageStore

__all__ = ["StoreCounter"]


class StoreCounter:
    """An ``IntText`` showing ``store.count()``, refreshed on demand or by a background timer.

    Parameters
    ----------
    store : MessageStore
        The store to count (e.g. ``listener.store``).
    description : str
        Label shown next to the number.
    """

    def __init__(self, store: MessageStore, description: str = "messages stored") -> None:
        self.store = store
        self.widget = widgets.IntText(value=store.count(), description=description, disabled=True,
                                      style={"description_width": "initial"})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def value(self) -> int:
        """The count last shown."""
        return int(self.widget.value)

    def refresh(self) -> int:
        """Read the count now, show it and return it."""
        self.widget.value = self.store.count()
        return self.value

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

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
