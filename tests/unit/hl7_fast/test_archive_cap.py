"""kit.hl7.archive refuses a message longer than max_message_bytes once it has read that much of
it (a hostile multi-GB "message" is never read whole): a typed error naming the file and the
message's byte offset, exact at the limit, whatever the chunk and block sizes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kit.hl7.archive as archive
from kit.errors import InvalidInputError
from kit.examples.hl7 import feed
from kit.hl7.archive import read_file_chunks, write_tables

from .test_archive import assert_chunks_equal

GOOD = [m + "\n" for m in list(feed())[:6]]


def _file(tmp_path: Path, big: str, before: int = 3, name: str = "hostile.hl7") -> tuple[Path, int]:
    """Good messages, ``big`` after the first ``before`` of them, more good ones; (path, big's offset)."""
    head = "".join(GOOD[:before])
    path = tmp_path / name
    path.write_bytes((head + big + "".join(GOOD[before:])).encode())
    return path, len(head.encode())


def _message(size: int) -> str:
    """One message of exactly ``size`` bytes with its line end (a long OBX-5)."""
    head = GOOD[0].split("\r", 1)[0] + "\rOBX|1|TX|||"
    return head + "x" * (size - len(head) - 2) + "\r\n"


@pytest.mark.parametrize("chunk_bytes", [1, 700, 5000, 1 << 20])
def test_a_message_over_the_cap_is_refused_with_its_offset(tmp_path: Path, chunk_bytes: int) -> None:
    path, offset = _file(tmp_path, _message(4001))
    with pytest.raises(InvalidInputError) as err:
        for _ in read_file_chunks(path, chunk_bytes=chunk_bytes, max_message_bytes=4000):
            pass
    assert str(path) in str(err.value) and f"byte offset {offset:,}" in str(err.value)
    assert err.value.source == str(path)


@pytest.mark.parametrize("chunk_bytes", [1, 700, 5000, 1 << 20])
def test_a_message_at_the_cap_is_read_as_before(tmp_path: Path, chunk_bytes: int) -> None:
    path, _ = _file(tmp_path, _message(4000))
    assert_chunks_equal(path, (chunk_bytes,))  # equal to read_file, as without a cap
    for _ in read_file_chunks(path, chunk_bytes=chunk_bytes, max_message_bytes=4000):
        pass


def test_the_last_message_and_the_bytes_before_the_first_count_too(tmp_path: Path) -> None:
    last = tmp_path / "last.hl7"
    last.write_bytes(("".join(GOOD) + _message(3000)).encode())
    with pytest.raises(InvalidInputError, match=f"byte offset {len(''.join(GOOD).encode()):,}"):
        list(read_file_chunks(last, max_message_bytes=2999))
    junk = tmp_path / "junk.hl7"
    junk.write_bytes(b"j" * 5000 + "".join(GOOD).encode())
    with pytest.raises(InvalidInputError, match="byte offset 0 "):
        list(read_file_chunks(junk, chunk_bytes=100_000, max_message_bytes=4999))


def test_a_huge_single_message_is_refused_after_reading_about_the_cap(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4 MB "message" with no line starting MSH after it, blocks of 16 KB, a cap of 64 KB: the
    reader stops within a couple of blocks past the cap (before, it read the whole file)."""
    path = tmp_path / "one-line.hl7"
    path.write_bytes(GOOD[0].encode() + b"MSH|^~\\&|" + b"x" * (4 << 20))
    read = [0]
    real_open = archive._open

    def counting(p: object) -> Iterator[bytes]:
        for block in real_open(p):  # type: ignore[arg-type]
            read[0] += len(block)
            yield block

    monkeypatch.setattr(archive, "_BLOCK", 16 << 10)
    monkeypatch.setattr(archive, "_is_utf8", lambda p: True)  # count only the chunked read
    monkeypatch.setattr(archive, "_open", counting)
    with pytest.raises(InvalidInputError, match=f"byte offset {len(GOOD[0].encode()):,}"):
        list(read_file_chunks(path, chunk_bytes=4096, max_message_bytes=64 << 10))
    assert read[0] <= (64 << 10) + 3 * (16 << 10) + len(GOOD[0])


def test_write_tables_passes_the_cap_and_writes_nothing(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, _message(9000))
    out = tmp_path / "out"
    with pytest.raises(InvalidInputError, match="max_message_bytes"):
        write_tables(path, out, max_message_bytes=8000)
    assert not list(out.glob("*.parquet"))
    assert write_tables(path, out, max_message_bytes=9000)["rows"].sum() > 0


def test_a_bad_cap_is_refused(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, "")
    with pytest.raises(InvalidInputError, match="max_message_bytes must be at least 1"):
        list(read_file_chunks(path, max_message_bytes=0))


def test_the_default_cap_is_sane() -> None:
    assert archive.DEFAULT_CHUNK_BYTES <= archive.DEFAULT_MAX_MESSAGE_BYTES <= 256 << 20


_pieces = st.lists(st.one_of(st.sampled_from(GOOD), st.integers(60, 2500).map(_message),
                             st.sampled_from(["junk\r", "\x0b", "\x1c\r", "MSHx\r", "\n"])), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_pieces, st.integers(1, 3000), st.integers(1, 3000), st.integers(3, 64))
def test_the_cap_refuses_exactly_the_first_message_over_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: list[str], chunk_bytes: int, cap: int,
        block: int) -> None:
    """Against a reference: the file cut at every line starting MSH (the rule of the module)."""
    data = "".join(parts).encode()
    path = tmp_path / "fuzz.hl7"
    path.write_bytes(data)
    cuts = [0, *(m.start() + 1 for m in re.finditer(rb"[\r\n\x0b\x1c]MSH", data)), len(data)]
    over = [a for a, b in zip(cuts, cuts[1:], strict=False) if b - a > cap]
    monkeypatch.setattr(archive, "_BLOCK", block)
    if over:
        with pytest.raises(InvalidInputError, match=f"byte offset {over[0]:,} "):
            list(read_file_chunks(path, chunk_bytes=chunk_bytes, max_message_bytes=cap))
    else:
        list(read_file_chunks(path, chunk_bytes=chunk_bytes, max_message_bytes=cap))
