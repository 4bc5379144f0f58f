"""StoreCounter counts a real message store and charts its rate; paced spreads a replay out (no timing)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kit import examples
from kit.errors import InvalidInputError
from kit.hl7.message import parse_message, split_messages
from kit.hl7.store import MessageStore
from kit.widgets import StoreCounter, paced
from kit.widgets.charts import RATE_SCHEMA
from kit.widgets.hl7 import MAX_SAMPLES, rate_samples


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def feed() -> list[str]:
    return list(split_messages(examples.hl7_feed().read_bytes()))


def _add(store: MessageStore, raws: list[str]) -> None:
    for raw in raws:
        store.add(parse_message(raw), raw, "test")


def test_count_and_rate_follow_the_store(tmp_path: Path, feed: list[str]) -> None:
    clock = Clock()
    with MessageStore(tmp_path / "feed.db") as store:
        counter = StoreCounter(store, clock=clock)
        assert counter.value == 0 and counter.rate.rows() == [(0.0, 0, 0.0)]
        _add(store, feed[:4])
        clock.now += 0.5
        assert counter.refresh() == 4 and counter.value == 4 and counter.widget.value == 4
        clock.now += 0.5
        _add(store, feed[4:10])
        counter.refresh()
        rate = counter.rate
        assert rate.schema == RATE_SCHEMA
        assert rate["count"].to_list() == [0, 4, 10]
        assert rate["seconds"].to_list() == [0.0, 0.5, 1.0]
        # each point: messages over the last second (at least the gap to the point before)
        assert rate["per_second"].to_list() == [0.0, 8.0, 10.0]
        chart = counter.figure.data[0]
        assert list(chart.x) == rate["seconds"].to_list() and list(chart.y) == rate["per_second"].to_list()
        counter.stop()  # never started: still shows the final count
        assert counter.value == 10 and repr(counter) == "StoreCounter(10 messages stored)"


def test_rate_samples_window() -> None:
    samples = [(0.0, 0), (0.2, 1), (0.4, 3), (1.4, 3), (1.6, 13), (5.0, 13)]
    rate = rate_samples(samples, window=1.0)
    assert rate["per_second"].to_list() == pytest.approx([0.0, 5.0, 7.5, 2.0 / 1.2, 10.0 / 1.2, 0.0])
    assert rate_samples([]).schema == RATE_SCHEMA and rate_samples([]).is_empty()
    with pytest.raises(InvalidInputError):
        rate_samples(samples, window=0)


def test_samples_are_bounded(tmp_path: Path) -> None:
    clock = Clock()
    with MessageStore(tmp_path / "feed.db") as store:
        counter = StoreCounter(store, clock=clock)
        for _ in range(MAX_SAMPLES + 10):
            clock.now += 0.1
            counter.refresh()
        assert counter.rate.height == MAX_SAMPLES == len(counter.figure.data[0].x)


def test_paced_spreads_a_replay_out() -> None:
    clock, slept = Clock(), []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    replay = paced(range(10), per_second=4, sleep=sleep, clock=clock)
    assert len(replay) == 10
    assert list(replay) == list(range(10))
    assert slept == pytest.approx([0.25] * 9)
    # a slow consumer gets the next item at once, without a burst to catch up afterwards
    slept.clear()
    seen = []
    for item in paced(range(4), per_second=4, sleep=sleep, clock=clock):
        seen.append(item)
        if item == 1:
            clock.now += 2.0
    assert seen == [0, 1, 2, 3] and slept == pytest.approx([0.25, 0.25])
    with pytest.raises(InvalidInputError):
        paced([], per_second=0)


def test_rate_frame_is_typed_when_empty() -> None:
    assert rate_samples([], window=2.0).equals(pl.DataFrame(schema=RATE_SCHEMA))
