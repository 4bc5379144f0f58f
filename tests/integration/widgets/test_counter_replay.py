"""The HL7 counter counts a paced replay into the kit's own MLLP listener (real sender, real peer)."""

from __future__ import annotations

from pathlib import Path

from kit import examples
from kit.hl7.message import split_messages
from kit.hl7.mllp import MLLPListener, MLLPSender
from kit.widgets import StoreCounter, paced


def test_the_counter_counts_a_paced_replay(tmp_path: Path) -> None:
    messages = list(split_messages(examples.hl7_feed().read_bytes()))[:12]
    ticks = iter(float(k) for k in range(1000))
    with MLLPListener(tmp_path / "feed.db") as listener:
        counter = StoreCounter(listener.store, clock=lambda: next(ticks))
        seen = []
        with MLLPSender("127.0.0.1", listener.port, timeout=10) as sender:
            for message in paced(messages, per_second=200):
                assert sender.send(message).code.value == "AA"
                seen.append(counter.refresh())  # the listener stored it before it answered AA
        counter.stop()
    assert seen == list(range(1, 13))
    rate = counter.rate
    assert rate["count"].to_list() == [0, *range(1, 13), 12]
    assert rate["per_second"].to_list()[1:13] == [1.0] * 12  # one message per (fake) second
