"""MemoryBudget's accounting under any order of what associations do (Hypothesis).

Several connections' bounds share one budget; a program of steps (P-DATA bodies of
one or more PDVs, a message queued, the reactor taking one or coming back to an empty
queue, the connection closing, the reactor ending) runs against them as the PACS's
threads would. After every step the budget counts exactly what the bounds hold, never
less than nothing and never more than its limit; a PDU that finds no room (or takes a
command or data set past the bound) is refused and its association aborted, which gives
back what it held; once every association has ended, nothing is counted.
"""

from __future__ import annotations

import queue
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from kit.dicom._guard import MemoryBudget, MessageBound, _ServedQueue

LIMIT = 1000
CONNECTIONS = 3


def _body(*pdvs: tuple[int, bool]) -> bytes:
    """A P-DATA-TF body of PDVs of ``size`` bytes each, the last-fragment bit as given."""
    return b"".join(struct.pack(">IBB", size + 2, 1, 0x02 if last else 0x00) + b"\x00" * size
                    for size, last in pdvs)


pdu = st.lists(st.tuples(st.integers(0, 400), st.booleans()), min_size=1, max_size=3)
connection = st.integers(0, CONNECTIONS - 1)
event = st.sampled_from(["queued", "taken", "idle", "closed", "ended"])
step = st.one_of(st.tuples(st.just("pdu"), connection, pdu), st.tuples(event, connection, st.none()))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_the_budget_counts_what_the_connections_hold_and_gives_it_all_back(program: list) -> None:
    budget = MemoryBudget(LIMIT)
    bounds = [MessageBound(LIMIT, budget) for _ in range(CONNECTIONS)]
    queues = [_ServedQueue(b, budget) for b in bounds]
    for kind, k, pdvs in program:
        bound, q = bounds[k], queues[k]
        if kind == "pdu":
            why = bound.add(_body(*pdvs))
            if why is not None:  # over the budget, or one set over the bound: aborted
                budget.drop_waiting(bound)  # the association is aborted: its connection closes
                budget.close(bound)  # and its reactor ends
        elif kind == "queued":  # after the close too: a message the DUL finished meanwhile
            q.put(object())
        elif kind == "taken" and q.qsize():
            q.get(block=False)
        elif kind == "idle":
            try:
                q.get(block=False)
            except queue.Empty:
                pass
        elif kind == "closed":
            budget.drop_waiting(bound)
        elif kind == "ended":
            budget.close(bound)
        assert budget.used == sum(b.reserved for b in bounds)
        assert 0 <= budget.used <= LIMIT
        assert all(b.reserved >= 0 for b in bounds)
        assert budget.peak >= budget.used
    for bound in bounds:
        budget.close(bound)
    assert budget.used == 0


def test_a_pdu_that_finds_no_room_is_refused_and_the_others_go_on() -> None:
    budget = MemoryBudget(LIMIT)
    first, second = MessageBound(LIMIT, budget), MessageBound(LIMIT, budget)
    assert first.add(_body((600, False))) is None
    why = second.add(_body((500, True)))
    assert why is not None and "max_in_memory" in why
    assert budget.used == 600 + 0 and second.reserved == 0
    assert first.add(_body((300, True))) is None
    assert budget.used == 900


def test_a_message_is_given_back_when_the_reactor_comes_for_the_next() -> None:
    budget = MemoryBudget(LIMIT)
    bound = MessageBound(LIMIT, budget)
    q = _ServedQueue(bound, budget)
    assert bound.add(_body((100, True), (200, True))) is None  # a command set and its data set
    q.put("first")
    assert bound.add(_body((50, True))) is None
    q.put("second")
    assert budget.used == 350
    assert q.get(block=False) == "first"  # served now: still counted
    assert budget.used == 350
    assert q.get(block=False) == "second"  # the reactor is done with the first
    assert budget.used == 50
    try:
        q.get(block=False)  # back to an empty queue: done with the second
    except queue.Empty:
        pass
    assert budget.used == 0
