"""The DUL hold says the reactor is idle only once no event it read before the hold is pending.

The reactor checks the socket (the held check) and then, in the same turn, takes an event off its
queue and decodes it: a PDU read before the hold. Idle set at that check let the fast path look
(no message under way, queues empty) while pynetdicom decoded that PDU.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace

from kit.dicom._fastnet import hold_dul, release_dul


class _Dul:
    """The parts of pynetdicom's DULServiceProvider the hold reads."""

    def __init__(self) -> None:
        self.state_machine = SimpleNamespace(current_state="Sta6")
        self.event_queue: queue.Queue[str] = queue.Queue()

    def _is_transport_event(self) -> bool:  # the unheld check: "data on the socket"
        return True


def test_idle_waits_for_the_events_read_before_the_hold() -> None:
    dul = _Dul()
    assoc = SimpleNamespace(dul=dul)
    dul.event_queue.put("Evt10")  # a P-DATA-TF read just before the hold
    idle = hold_dul(assoc)  # type: ignore[arg-type]
    assert dul._is_transport_event() is False and not idle.is_set()  # held, but not idle yet
    dul.event_queue.get()  # the reactor decodes it in this same turn
    assert dul._is_transport_event() is False and idle.is_set()
    dul.state_machine.current_state = "Sta13"  # aborted: the socket is pynetdicom's again
    assert dul._is_transport_event() is True
    release_dul(assoc)  # type: ignore[arg-type]
    assert "_is_transport_event" not in vars(dul)
