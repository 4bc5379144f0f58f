"""FrameBudget: the bytes of unfinished frames all connections hold, kept within its limit."""

from __future__ import annotations

from typing import Any

from kit.hl7._limits import FrameBudget


def _connections(n: int) -> list[Any]:
    """Stand-ins for the connections' tasks (the budget only keys on them)."""
    return [object() for _ in range(n)]


def test_frames_within_the_limit_are_kept_and_released() -> None:
    budget, (a, b) = FrameBudget(100), _connections(2)
    assert budget.hold(a, 1.0, 60) == [] and budget.hold(b, 2.0, 40) == []
    assert budget.held == 100
    assert budget.hold(a, 1.0, 0) == [] and budget.held == 40  # a's frame ended
    assert budget.hold(a, None, 0) == [] and budget.held == 40  # nothing held before or now


def test_past_the_limit_the_oldest_frames_are_given_up_first() -> None:
    budget, c = FrameBudget(100), _connections(4)
    for k, task in enumerate(c[:3]):
        assert budget.hold(task, float(k), 30) == []
    assert budget.hold(c[3], 3.0, 50) == [c[0], c[1]]  # 140 -> 80: the two that started first
    assert budget.held == 80
    assert budget.hold(c[0], None, 0) == []  # a cut connection ends: nothing more to release
    assert budget.held == 80


def test_the_frame_that_grows_may_be_the_oldest_one_given_up() -> None:
    budget, (old, young) = FrameBudget(100), _connections(2)
    budget.hold(old, 1.0, 10)
    budget.hold(young, 2.0, 60)
    assert budget.hold(old, 1.0, 50) == [old]  # 110: its own frame goes
    assert budget.held == 60
