"""add_sink and remove_sink agree on which sink is which (a bound method is a new object each time)."""

from __future__ import annotations

from kit import audit


def test_a_bound_method_added_can_be_removed_by_an_equal_bound_method() -> None:
    events: list[object] = []
    before = audit.sinks()
    audit.add_sink(events.extend)
    audit.add_sink(events.extend)  # equal: added once
    assert len(audit.sinks()) == len(before) + 1
    audit.remove_sink(events.extend)  # another bound-method object, equal to the one added
    assert audit.sinks() == before
