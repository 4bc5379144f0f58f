"""kit.hl7.archive: an HL7 file read chunk by chunk gives exactly the tables of read_file (concatenated),
with message numbers and reused control ids carried across chunks, malformed messages mid-stream, the
whole-file encoding rule; write_tables and `kit hl7 parse --out-dir` stream to parquet."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import kit.hl7.archive as archive
from kit.cli import cli
from kit.errors import InvalidInputError, KitError
from kit.examples import hl7_feed
from kit.examples.hl7 import feed
from kit.hl7.archive import read_file_chunks, write_tables
from kit.hl7.frames import SCHEMAS, TABLES, read_file

from . import test_fuzz_fast as fuzz
from .test_fast_tables import PID, msg


def _write(tmp_path: Path, data: str | bytes, name: str = "feed.hl7") -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def _joined(path: Path, chunk_bytes: int,
            tables: list[str] | None = None) -> tuple[dict[str, pl.DataFrame], int]:
    chunks = list(read_file_chunks(path, tables=tables, chunk_bytes=chunk_bytes))
    return {t: pl.concat([c[t] for c in chunks], how="vertical") for t in chunks[0]}, len(chunks)


def assert_chunks_equal(path: Path, sizes: tuple[int, ...] = (1, 1500, 1 << 20),
                        tables: list[str] | None = None) -> dict[str, pl.DataFrame]:
    whole = read_file(path, tables=tables)
    for size in sizes:
        joined, _ = _joined(path, size, tables)
        assert list(joined) == list(whole)
        for t in whole:
            assert_frame_equal(joined[t], whole[t], check_exact=True, check_dtypes=True)
    return whole


def test_sample_feed_in_many_chunks_equals_both_paths() -> None:
    path = hl7_feed()
    whole = assert_chunks_equal(path)
    slow = read_file(path, vectorised=False)
    for t in TABLES:
        assert_frame_equal(whole[t], slow[t], check_exact=True)
    joined, n = _joined(path, 1)
    assert n == whole["messages"].height  # a chunk per message: every cut point is used
    for table in ("messages", "results", "orders"):
        assert_chunks_equal(path, (2000,), tables=[table])


def _archive() -> str:
    """Generated messages with the hard cases between good ones: reused and repeated control ids far
    apart, unreadable and non-standard messages, skipped rows, MLLP frames, CRLF, batches, escapes."""
    base = list(feed())
    parts = ["junk before the first message\r"]
    for i in range(40):
        parts.append(base[i % len(base)] + "\n")
        if i == 5:
            parts.append(msg("ADT^A01", PID.format(mrn="M1"), cid="REUSED"))  # first of its key
            parts.append(msg("ADT^A08", PID.format(mrn="M1"), cid="SAME"))
        if i == 12:
            parts.append("MSH|^~\\&\r")  # unreadable: skipped as messages
            parts.append("MSH$^~\\&$APP$FAC$$$20260101$$ORM^O01$C4$P$2.5\rPID$1$$M4\rORC$NW$P\r")
            parts.append(msg("ORU^R01", "OBR|1|||X", "OBX|1|NM|A||1", cid="no-pid"))  # skipped in orders
        if i == 20:
            parts.append("\x0b" + msg("ADT^A08", PID.format(mrn="M1"), cid="SAME") + "\x1c\r")  # same content
            parts.append("FHS|^~\\&|X\rBHS|^~\\&\r")
        if i == 30:
            parts.append(msg("ADT^A01", PID.format(mrn="M2"), cid="REUSED"))  # other content: reused
            parts.append(msg("SIU^S12", "SCH||||||", PID.format(mrn="M1"), cid="no-sch-id", end="\r\n"))
            parts.append(msg("ORM^O01", PID.format(mrn="M\\F\\9"), "ORC|NW|P\\T\\1|F", "OBR|1|P|F|C^T\\R\\x"))
            parts.append("MSH|^~\\&|APP|FAC|||20260101||ADT^A01|C5|P\rPid|bad\r")
    return "".join(parts)


def test_generated_archive_with_malformed_messages_mid_stream(tmp_path: Path) -> None:
    path = _write(tmp_path, _archive())
    whole = assert_chunks_equal(path, (300, 4000))
    reused = whole["messages"].filter(pl.col("reused_control_id"))["control_id"].to_list()
    assert reused == ["REUSED"]  # the second SAME has the same content: a duplicate, not reused
    skipped = whole["skipped"]
    assert skipped["message_number"][0] is None  # the junk before the first MSH
    assert set(skipped["table"]) >= {"messages", "orders", "appointments"}
    assert skipped["message_number"].drop_nulls().max() > 30  # counted across chunks
    _, n = _joined(path, 3000)
    assert n > 5


@pytest.mark.parametrize("head", [b"\r\n", b"\xef\xbb\xbf\x0b"])
def test_bom_framing_and_latin1_anywhere_in_the_file(tmp_path: Path, head: bytes) -> None:
    text = _archive()
    utf8 = head + text.replace("M\\F\\9", "Zürich").encode("utf-8")
    assert_chunks_equal(_write(tmp_path, utf8, "utf8.hl7"), (2500,))
    # one Latin-1 byte near the end: the whole file is Latin-1, also the chunks read before it
    latin = utf8 + msg("ADT^A01", PID.format(mrn="Zéro"), cid="L1").encode("latin-1")
    whole = assert_chunks_equal(_write(tmp_path, latin, "latin1.hl7"), (2500,))
    assert "ZÃ¼rich" in whole["patients"]["patient_id"].to_list()


def test_a_message_larger_than_a_chunk_and_cut_points_across_blocks(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    big = msg("ORU^R01", PID.format(mrn="BIG"), "OBR|1|||X",
              *(f"OBX|{i}|ST|C||{'x' * 50}" for i in range(1, 400)), cid="BIG")
    base = list(feed())
    text = "\n".join(base[:5]) + "\n" + big + "\n".join(base[5:9])
    path = _write(tmp_path, text)
    monkeypatch.setattr(archive, "_BLOCK", 7)  # blocks smaller than "\rMSH": cut points straddle them
    assert_chunks_equal(path, (1, 1000))
    pieces = list(archive._byte_chunks(path, 1000))
    assert b"".join(pieces) == path.read_bytes()
    assert all(p.startswith(b"MSH") for p in pieces[1:])
    assert max(map(len, pieces)) < len(big) + 1000 + 100


def test_empty_and_messageless_files(tmp_path: Path) -> None:
    for name, data in (("empty.hl7", b""), ("junk.hl7", b"hello\rworld\n"), ("bom.hl7", b"\xef\xbb\xbf")):
        path = _write(tmp_path, data, name)
        assert_chunks_equal(path, (1, 100))
        with pytest.raises(InvalidInputError, match="no HL7 message"):
            write_tables(path, tmp_path / "out")
        assert not list((tmp_path / "out").iterdir())
    with pytest.raises(InvalidInputError):
        list(read_file_chunks(tmp_path / "missing.hl7"))
    with pytest.raises(InvalidInputError):
        list(read_file_chunks(tmp_path / "empty.hl7", tables=["nope"]))


def test_write_tables_streams_every_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _write(tmp_path, _archive(), "a.hl7")
    b = hl7_feed()
    sizes: list[int] = []
    real = archive.FF.read_chunk

    def recording(data: Any, *args: Any) -> Any:
        sizes.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(archive.FF, "read_chunk", recording)
    counts = write_tables([a, b], tmp_path / "out", chunk_bytes=2000)
    assert max(sizes) < 4000 and len(sizes) > 10  # never the whole file at once
    wa, wb = read_file(a), read_file(b)
    for t in TABLES:
        got = pl.read_parquet(tmp_path / "out" / f"{t}.parquet")
        assert dict(got.schema) == SCHEMAS[t]
        assert_frame_equal(got, pl.concat([wa[t], wb[t]]), check_exact=True)
        assert counts.filter(pl.col("table") == t)["rows"].item() == got.height
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t}.parquet" for t in TABLES)


def test_cli_parse_out_dir_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, _archive())
    sizes: list[int] = []
    real = archive.FF.read_chunk

    def recording(data: Any, *args: Any) -> Any:
        sizes.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(archive.FF, "read_chunk", recording)
    monkeypatch.setattr(archive, "DEFAULT_CHUNK_BYTES", 3000)
    result = CliRunner().invoke(cli, ["hl7", "parse", str(path), "--out-dir", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert len(sizes) > 3 and max(sizes) < path.stat().st_size
    whole = read_file(path)
    for t in TABLES:
        assert_frame_equal(pl.read_parquet(tmp_path / "t" / f"{t}.parquet"), whole[t], check_exact=True)
        assert f"{t}" in result.stdout
    empty = _write(tmp_path, b"nothing here\r", "none.hl7")
    failed = CliRunner().invoke(cli, ["hl7", "parse", str(empty), "--out-dir", str(tmp_path / "t2")])
    assert failed.exit_code == 1 and "no HL7 message" in failed.stderr


_DIR = Path(tempfile.mkdtemp(prefix="hl7archivefuzz"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz.feed(), min_size=1, max_size=3), st.integers(1, 600), st.booleans())
def test_fuzz_chunks_equal_the_whole_file(feeds: list[str], chunk_bytes: int, latin: bool) -> None:
    text = "\n".join(feeds)
    data = text.encode("utf-8", "surrogatepass") + (b"\xe9" if latin else b"")
    path = Path(tempfile.mkstemp(dir=_DIR, suffix=".hl7")[1])
    path.write_bytes(data)
    try:
        try:
            whole: dict[str, pl.DataFrame] | None = read_file(path)
        except KitError:
            whole = None
        try:
            joined: dict[str, pl.DataFrame] | None = _joined(path, chunk_bytes)[0]
        except KitError:
            joined = None
        assert (whole is None) == (joined is None)
        if whole is not None and joined is not None:
            for t in TABLES:
                assert_frame_equal(joined[t], whole[t], check_exact=True)
    finally:
        path.unlink()
