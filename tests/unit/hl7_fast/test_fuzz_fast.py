"""Hypothesis: the vectorised tables equal the per-message path, and only KitError leaves read_file.

Messages are mostly well-formed (standard delimiters, the segments each table reads, fields at the
positions it reads) so that the vectorised path, not its per-message fallback, is what is fuzzed;
values mix escapes, repetitions, components, dates with fractions and offsets, numbers and odd
characters; files mix line endings, byte-order marks, MLLP bytes, batches and truncation.
Bounded: well under a minute together.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kit.errors import KitError
from kit.hl7.frames import TABLES, read_file

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="hl7fastfuzz"))

ESCAPES = ["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\.br\\", "\\.sp\\", "\\.sp2\\", "\\.sp0\\",
           "\\X41\\", "\\XC3A9\\", "\\XZZ\\", "\\H\\", "\\", "\\P\\", "\\.sp99999\\"]
ODD = ["é", "Ω", "😀", "\t", " ", "\x1f", "\ufeff", "\x85", "٣", "²", "0", "-1", "999999999", "1234567890"]
DATES = ["20260315093000", "2026031509", "20260315", "2026", "20260315093000.1234+0100", "2026.5",
         "20260315093000-0530", "20260315093000+9999", "99991231235959", "00010101", "00000101", "20261341",
         "20261231235960", " 20260101", "20260315093000.1234567", "2026031509+0000", ""]
PLAIN = st.text(alphabet=st.sampled_from(list("ABCxyz019 .-_/")), max_size=5)
atom = st.one_of(PLAIN, PLAIN, st.sampled_from(ESCAPES), st.sampled_from(ODD), st.sampled_from(DATES))
value = st.lists(atom, max_size=3).map("".join)
field = (st.lists(st.lists(st.lists(value, min_size=1, max_size=2).map("&".join), min_size=1, max_size=4)
                  .map("^".join), min_size=1, max_size=2).map("~".join))
date = st.sampled_from(DATES)
date_field = st.one_of(date, date.map(lambda d: f"^^^{d}^{d[:8]}"),
                       st.tuples(date, date).map(lambda p: f"^^30^{p[0]}^{p[1]}"))
NAMES = ["PID", "PID", "PV1", "EVN", "ORC", "OBR", "OBR", "OBX", "ZDS", "SCH", "SCH", "AIS", "AIG", "AIL",
         "AIP", "TXA", "NTE", "ZXY", "MSA"]
NUMBERS = ["0", "30", " 15 ", "-5"]
KINDS = ["ADT^A01", "ADT^A08", "ORM^O01", "OML^O21", "ORU^R01", "SIU^S12", "SIU^S13", "SIU^S15", "SIU^S26",
         "SIU^S99", "MDM^T02", "MDM^T04", "MDM^T01", "ACK", "", "MD\\X4D\\^T02", "ORU^R01^ORU_R01"]


# the segments each message type is read from, and the field that must be set for it to give a row
BODY = {"ADT": ["EVN", "PID", "PV1"], "ORM": ["PID", "PV1", "ORC", "OBR", "ZDS", "OBR", "ORC", "ZDS"],
        "OML": ["PID", "ORC", "OBR", "OBR", "ZDS"], "ORU": ["PID", "OBR", "OBX", "ZDS", "ORC", "OBR", "OBX"],
        "SIU": ["SCH", "PID", "AIS", "AIG", "AIL", "AIP", "AIS"], "MDM": ["PID", "PV1", "TXA", "OBX", "OBX"],
        "ACK": ["MSA", "ERR"], "": ["NTE", "ZXY"]}
KEY = {"PID": 3, "SCH": 1, "TXA": 12}


@st.composite
def segment(draw: st.DrawFn, name: str) -> str:
    fields = draw(st.lists(st.one_of(field, date_field, st.just(""), st.sampled_from(NUMBERS)), max_size=28))
    key = KEY.get(name)
    if key and draw(st.integers(0, 5)):  # mostly an id, so that the message gives rows
        fields += [""] * (key - len(fields))
        fields[key - 1] = draw(st.sampled_from(["ID1", "ID2", "X\\F\\Y", "é"])) + fields[key - 1]
    return "|".join([name, *fields]) if fields or draw(st.booleans()) else name


@st.composite
def message(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(KINDS))
    control = draw(st.one_of(st.sampled_from(["C1", "C2", "C\\E\\1", ""]), value))
    app = draw(st.sampled_from(["APP", "APP", "OTHER", "A\\S\\B"]))
    enc = draw(st.sampled_from(["^~\\&"] * 8 + ["^~\\&#", "$*#%"]))
    msh = f"MSH|{enc}|{app}|FAC|KIT|R|{draw(st.sampled_from(DATES))}||{kind}|{control}|P|2.5.1"
    names = [n for n in BODY.get(kind[:3], BODY[""]) if draw(st.integers(0, 4))]
    extra = draw(st.lists(st.sampled_from(NAMES), max_size=3))
    names = draw(st.permutations(names + extra)) if draw(st.integers(0, 3)) == 0 else names + extra
    lines = [msh, *(draw(segment(n)) for n in names)]
    end = draw(st.sampled_from(["\r", "\r", "\n", "\r\n"]))
    return end.join(lines) + end


@st.composite
def feed(draw: st.DrawFn) -> str:
    msgs = draw(st.lists(message(), max_size=6))
    if msgs and draw(st.booleans()):  # the same message again: a duplicate, not a reused control id
        msgs.append(msgs[0])
    sep = draw(st.sampled_from(["\n", "", "\x1c\r\x0b", "\ufeff", "\r\n"]))
    head = draw(st.sampled_from(["", "\ufeff", "\x0b", "FHS|^~\\&|X\rBHS|^~\\&\r", "garbage\r"]))
    text = head + sep.join(msgs)
    if text and draw(st.integers(0, 4)) == 0:  # truncated
        text = text[:draw(st.integers(0, len(text)))]
    return text


def _write(text: str) -> Path:
    path = Path(tempfile.mkstemp(dir=_DIR, suffix=".hl7")[1])
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


def _read(path: Path, tables: list[str] | None, vectorised: bool) -> dict[str, object] | None:
    try:
        return dict(read_file(path, tables=tables, vectorised=vectorised))
    except KitError:
        return None


@FUZZ
@given(feed())
def test_every_table_fast_equals_slow(text: str) -> None:
    path = _write(text)
    try:
        fast, slow = _read(path, None, True), _read(path, None, False)
        assert (fast is None) == (slow is None)
        if fast is not None and slow is not None:
            assert list(fast) == list(TABLES) == list(slow)
            for name in TABLES:
                assert_frame_equal(fast[name], slow[name], check_exact=True)  # type: ignore[arg-type]
    finally:
        path.unlink()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feed(), st.sampled_from(["messages", "patients", "visits", "orders", "appointments", "documents"]))
def test_one_table_fast_equals_slow(text: str, table: str) -> None:
    path = _write(text)
    try:
        fast, slow = _read(path, [table], True), _read(path, [table], False)
        assert (fast is None) == (slow is None)
        if fast is not None and slow is not None:
            for name in (table, "skipped"):
                assert_frame_equal(fast[name], slow[name], check_exact=True)  # type: ignore[arg-type]
    finally:
        path.unlink()
