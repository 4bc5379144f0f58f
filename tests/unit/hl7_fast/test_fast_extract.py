"""The vectorised field extraction (kit.hl7.frames_fast._extract) equals the per-message path.

Cases for what the extractor does differently from a plain split: a field read by two tables
(MSH-10 whole for most tables, MSH-10.1 for ``results``; PID-3.1 for every table), columns whose
repetition, component or subcomponent split is skipped when no value holds the separator, escapes
resolved on the rows that hold the escape character only, a segment's lines copied before the split,
``results`` built in the same pass as the other tables, and the messages whose patient ids are read
for a subset of the file. Hypothesis drives generated fields through every table (``results``
included) one table at a time and all at once: fast == slow, and only KitError leaves.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from kit.errors import KitError
from kit.hl7 import frames as F
from kit.hl7 import frames_fast
from kit.hl7.frames import TABLES, read_file

MSH = "MSH|^~\\&|APP|FAC|KIT|R|20260315093000||{type}|{cid}|P|2.5.1"


def msg(kind: str, *segments: str, cid: str = "C1", end: str = "\r") -> str:
    return end.join([MSH.format(type=kind, cid=cid), *segments]) + end


def _same(path: Path, tables: list[str] | None = None) -> dict[str, pl.DataFrame]:
    fast, slow = read_file(path, tables=tables), read_file(path, tables=tables, vectorised=False)
    assert list(fast) == list(slow)
    for name in fast:
        assert_frame_equal(fast[name], slow[name], check_exact=True)
    return fast


def _write(tmp_path: Path, text: str, name: str = "feed.hl7") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


# escapes that unescape to a text holding another escape: resolving twice would change them
TWICE = ["\\X5C\\F\\X5C\\", "\\E\\F\\E\\", "\\X5C\\S\\X5C\\", "\\X5C\\X41\\X5C\\", "\\E\\.br\\E\\"]


@pytest.mark.parametrize("esc", TWICE)
@pytest.mark.parametrize("tables", [None, ["results"], ["messages"], ["messages", "results"],
                                    ["orders", "results", "documents"]])
def test_a_field_read_twice_is_unescaped_once_for_each(tmp_path: Path, esc: str,
                                                       tables: list[str] | None) -> None:
    # MSH-10 is read whole (control_id) and as its first component (results' control_id), PID-3.1
    # by every table: one extraction's unescaping must not show in the other's values
    # (no value of a column holds a separator, so the columns are not split: the same values)
    text = "".join([
        msg("ORU^R01", f"PID|1||{esc}", "OBR|1|P|F|C", f"OBX|1|ST|{esc}||{esc}|{esc}", cid=esc),
        msg("ORU^R01", "PID|1||M2", "OBR|1|P|F|C", "OBX|1|ST|C||v", cid=f"A{esc}"),
        msg("MDM^T02", f"PID|1||{esc}", f"TXA|1|DT||||||||||{esc}", f"OBX|1|TX|||{esc}", cid=f"{esc}B"),
    ])
    out = _same(_write(tmp_path, text), tables)
    if tables is None or "results" in tables:
        assert out["results"]["control_id"][0] == F._comp(esc, F.STANDARD_ENCODING, 1)
    # and with a separator in one value of each column: split columns
    split = text.replace(f"|{esc}|P|", f"|{esc}^x|P|", 1).replace(f"OBX|1|ST|{esc}|", f"OBX|1|ST|{esc}^y|")
    _same(_write(tmp_path, split, "split.hl7"), tables)


def test_separators_only_in_some_rows_of_a_column(tmp_path: Path) -> None:
    # the split of a column is skipped when no value holds the separator: here one value does
    rows = [msg("ADT^A08", f"PID|1||M{i}^^^AUTH&1.2&ISO^MR||Fam{i}^Giv||19700101|F|||S^^C^ST^1^CH||1",
                "PV1|1|I|W^R^B", cid=f"C{i}") for i in range(5)]
    rows += [msg("ADT^A08", "PID|1||X~Y^^^A&B&C^MR~Z||F~G^H||19700101|F|||S&T^U~V^^C||2~3",
                 "PV1|1|I~O|W&1^R~S^B", cid="odd"),
             msg("ADT^A08", "PID|1||\\S\\^^^\\T\\&x^\\R\\||\\F\\^\\E\\||19700101|F|||\\.br\\", "PV1|1|I",
                 cid="esc")]
    _same(_write(tmp_path, "".join(rows)))


def test_results_with_the_other_tables_in_one_pass_and_alone(tmp_path: Path) -> None:
    text = "".join([
        msg("ORU^R01", "PID|1||M1", "OBX|1|NM|before-obr||1", "OBR|1|P1|F1|C^T^S||||||||||||||||A1",
            "OBX|2|NM|X^Y^Z|s|2.5|u|1-3|H|||F|||20260315093000", "OBR|2|P2|F2|D", "OBX|3|ST|Q||t~u^v&w",
            cid="C1"),
        msg("MDM^T02", "PID|1||M2", "TXA|1|DT||||||||||DOC", "OBX|1|TX|||text", cid="C2"),
        msg("ORU^R01", "OBX|1|NM|A||x", cid="no-pid"),
        "MSH|^~\\&#|APP|FAC|||20260101||ORU^R01|C4|P|2.5\rPID|1||M4\rOBR|1||F\rOBX|1|NM|A||7\r",
        msg("ORU^R01", "PID|1||M5", "OBR|1||F5", "OBX|1|NM|A||8", "bad line", cid="C5"),
    ])
    path = _write(tmp_path, text)
    every = _same(path)
    for table in TABLES:  # (skipped: its rows are those of the tables asked for)
        one = _same(path, [table])
        if table != "skipped":
            assert_frame_equal(one[table], every[table], check_exact=True)
    assert every["results"].height == 5  # C5 holds a line that is not a segment: skipped whole


def test_patient_ids_read_for_some_messages_only(tmp_path: Path) -> None:
    # documents, orders, appointments and visits read the PID lines of their own messages only
    text = "".join([
        msg("ADT^A01", "PID|1||A1", "PV1|1|I", cid="C1"),
        msg("MDM^T02", "PID|1||D1", "PID|2||D2", "TXA|1|DT||||||||||DOC", cid="C2"),
        msg("ORM^O01", "PV1|1|O", "PID|1||O1", "ORC|NW|P", cid="C3"),
        msg("SIU^S12", "SCH|A", "PID|1||\\F\\S1", cid="C4"),
        msg("MDM^T02", "TXA|1|DT||||||||||DOC2", cid="C5"),
    ])
    path = _write(tmp_path, text)
    for tables in (["documents"], ["orders"], ["appointments"], ["visits"], ["messages", "documents"],
                   ["documents", "orders", "appointments", "visits"]):
        _same(path, tables)


def test_compact_copies_and_changes_nothing() -> None:
    lines = pl.Series(["PID|1||M", "OBX|1|ST|\x00x", "", "MSH|^~\\&|\x00"] * 3)
    sparse = lines.filter(pl.Series([True, False, True, True] * 3))
    assert frames_fast._compact(sparse).to_list() == sparse.to_list()


# -- hypothesis ------------------------------------------------------------------------------------
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_DIR = Path(tempfile.mkdtemp(prefix="hl7extract"))

ESC = ["\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\.br\\", "\\X41\\", "\\X5C\\", "\\XZZ\\", "\\", "\\H\\",
       "\\.sp\\", *TWICE]
atom = st.one_of(st.text(alphabet="AZaz09 .-é", max_size=4), st.sampled_from(ESC),
                 st.sampled_from(["20260315093000", "2026", "20260315093000.5+0100", "1", " 2 "]))
leaf = st.lists(atom, max_size=2).map("".join)
comp = st.lists(leaf, min_size=1, max_size=3).map("&".join)
rep = st.lists(comp, min_size=1, max_size=4).map("^".join)
field = st.one_of(leaf, leaf, rep, st.lists(rep, min_size=1, max_size=3).map("~".join))
SEGS = {"ADT^A01": ["EVN", "PID", "PV1"], "ORU^R01": ["PID", "ORC", "OBR", "OBX", "OBX", "OBR", "OBX"],
        "ORM^O01": ["PID", "ORC", "OBR", "ZDS"], "SIU^S12": ["SCH", "PID", "AIS", "AIG", "AIL", "AIP"],
        "MDM^T02": ["PID", "TXA", "OBX", "OBX"]}


@st.composite
def segment(draw: st.DrawFn, name: str) -> str:
    fields = draw(st.lists(field, max_size=20))
    key = {"PID": 3, "SCH": 1, "TXA": 12}.get(name)
    if key and draw(st.integers(0, 4)):
        fields += [""] * (key - len(fields))
        fields[key - 1] = draw(leaf) + "ID"
    return "|".join([name, *fields])


@st.composite
def feed(draw: st.DrawFn) -> str:
    out = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(list(SEGS)))
        cid = draw(st.one_of(field, st.just("C1")))
        head = MSH.format(type=kind, cid=cid).replace("|APP|", f"|{draw(st.sampled_from(['APP', 'A^B']))}|")
        lines = [head, *(draw(segment(n)) for n in SEGS[kind] if draw(st.integers(0, 5)))]
        end = draw(st.sampled_from(["\r", "\n", "\r\n"]))
        out.append(end.join(lines) + end)
    return draw(st.sampled_from(["", "\n"])).join(out)


def _read(path: Path, tables: list[str] | None, vectorised: bool) -> dict[str, pl.DataFrame] | None:
    try:
        return read_file(path, tables=tables, vectorised=vectorised)
    except KitError:
        return None


@FUZZ
@given(feed(), st.sampled_from([None, ["results"], ["messages", "results"], *([t] for t in TABLES[:-1])]))
def test_generated_fields_fast_equals_slow(text: str, tables: list[str] | None) -> None:
    path = Path(tempfile.mkstemp(dir=_DIR, suffix=".hl7")[1])
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        fast, slow = _read(path, tables, True), _read(path, tables, False)
        assert (fast is None) == (slow is None)
        if fast is not None and slow is not None:
            assert list(fast) == list(slow)
            for name in fast:
                assert_frame_equal(fast[name], slow[name], check_exact=True)
    finally:
        path.unlink()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(alphabet="ab^~\\&é", max_size=3), min_size=20, max_size=50).map("|".join),
                min_size=1, max_size=30),
       st.sets(st.integers(0, 46), min_size=1, max_size=8))
def test_split_by_list_equals_split_exact(lines: list[str], wanted: set[int]) -> None:
    # far pieces (PV1-44, -45) of lines not much longer are cut by str.split (as here), near ones by
    # str.split_exact: the same pieces, "" past a line's end
    series, order = pl.Series(lines), sorted(wanted | {47})
    got = frames_fast._split(series, order)
    for i in order:
        want = series.str.split_exact("|", order[-1]).struct.field(f"field_{i}").fill_null("")
        assert got[i].to_list() == want.to_list() == [(x.split("|") + [""] * 50)[i] for x in lines]


def test_visits_with_short_and_long_pv1_lines(tmp_path: Path) -> None:
    long = "PV1|1|I|W^R^B||||D^F^G|||SVC|||||||||V1" + "|" * 24 + "|20260315093000|20260316\\F\\"
    text = "".join([msg("ADT^A01", "PID|1||M1", long, cid="C1"),
                     msg("ADT^A01", "PID|1||M2", "PV1|1|O", cid="C2"),
                     msg("ADT^A01", "PID|1||M3", long.replace("|V1|", "|V~2|") + "|more|fields", cid="C3")])
    out = _same(_write(tmp_path, text), ["visits"])
    assert out["visits"]["admit_time"].null_count() == 1
