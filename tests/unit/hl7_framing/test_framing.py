"""MLLP framing: incremental decoding in arbitrary pieces, garbage, oversize, unterminated frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kit.errors import MLLPFramingError
from kit.hl7.framing import CR, FS, VT, FrameError, MLLPDecoder, frame

payloads = st.lists(st.binary(min_size=1, max_size=200).map(
    lambda b: b.replace(VT, b"v").replace(FS, b"f")), min_size=1, max_size=6)


@given(payloads, st.lists(st.integers(1, 50), min_size=1, max_size=30))
def test_any_split_gives_the_same_frames(messages: list[bytes], cuts: list[int]) -> None:
    stream = b"\r\n".join(frame(m) for m in messages)
    decoder, out, i, k = MLLPDecoder(), [], 0, 0
    while i < len(stream):
        step = cuts[k % len(cuts)]
        out += decoder.feed(stream[i:i + step])
        i, k = i + step, k + 1
    out += decoder.flush()
    assert out == messages


def test_split_end_bytes_and_missing_cr() -> None:
    """FS ends a frame at once, its CR (in the next read, or missing) skipped: a sender that
    omits the CR and waits for its ACK gets it."""
    d = MLLPDecoder()
    assert d.feed(VT + b"MSH|a" + FS) == [b"MSH|a"]
    assert not d.in_frame and not d.between_frames  # a CR may follow
    assert d.feed(CR + VT + b"MSH|b" + FS + VT + b"MSH|c" + FS + CR) == [b"MSH|b", b"MSH|c"]
    assert not d.in_frame and d.between_frames
    assert d.feed(VT + b"MSH|d" + FS) == [b"MSH|d"]
    assert [e.kind for e in d.feed(b"x") if isinstance(e, FrameError)] == ["garbage"]  # not a CR
    assert d.feed(VT + b"MSH|e" + FS) == [b"MSH|e"] and d.flush() == []


def test_garbage_reported_once_per_read_then_resync() -> None:
    d = MLLPDecoder()
    out = d.feed(b"hello" + VT + b"MSH|x" + FS + CR + b"  \r\n")
    assert [type(o) for o in out] == [FrameError, bytes]
    assert out[0].kind == "garbage" and out[1] == b"MSH|x"  # type: ignore[union-attr]
    assert d.feed(b"\r\n") == []


def test_oversize_is_reported_and_drained() -> None:
    d = MLLPDecoder(max_message_bytes=10)
    out = d.feed(VT + b"x" * 8)
    assert out == []
    out = d.feed(b"y" * 100)
    assert [o.kind for o in out if isinstance(o, FrameError)] == ["oversize"]
    assert d.buffered == 0
    assert d.feed(b"z" * 100 + FS + CR + frame(b"ok")) == [b"ok"]


def test_unterminated_frame() -> None:
    d = MLLPDecoder()
    out = d.feed(VT + b"abc" + VT + b"def" + FS + CR)
    assert isinstance(out[0], FrameError) and out[0].kind == "unterminated" and out[1] == b"def"
    d.feed(VT + b"partial")
    tail = d.flush()
    assert len(tail) == 1 and isinstance(tail[0], FrameError) and tail[0].kind == "unterminated"
    assert isinstance(tail[0].to_exception(), MLLPFramingError)


def test_frame_refuses_block_characters() -> None:
    with pytest.raises(MLLPFramingError):
        frame(b"a\x1cb")
    assert frame("é") == VT + "é".encode() + FS + CR
