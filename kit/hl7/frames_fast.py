"""Vectorised HL7 tables for files: every table of :mod:`kit.hl7.frames` (pure).

Written by hand for speed (no library builds frames from ER7 without a Python
object per field). The file's text is split into segment lines once, by polars;
the lines of each wanted segment are copied compact (polars kernels over a
sparse subset of the file's buffers cost ~3x), cut into fields once, and a field
is cut into repetitions, components and subcomponents, or looked at for escapes,
only where one of its values holds the separator or the escape character; the
MSH and PID values every table uses are read once. Python runs only where a
value needs it: escapes other than
``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\.br\\`` (see :func:`kit.hl7.frames._escaped`), dates
that are not plain ``YYYY[MM..][.S][+ZZZZ]`` digits (:func:`kit.hl7.typed.parse_dtm`
per distinct value), the reason text of the rare skipped appointment, and whole
messages that do not use the standard ``|^~\\&`` delimiters or hold a line that
is not a valid segment: those take the per-message builders of
:mod:`kit.hl7.frames`.

Every table is the same, column for column and row for row, as the per-message
path (``read_file(..., vectorised=False)``), ``skipped`` rows included: the
tests in ``tests/unit/hl7_fast`` hold them equal on the sample feed, on edge
cases and under hypothesis fuzzing. A change of semantics in
:mod:`kit.hl7.typed` or :mod:`kit.hl7.frames` must be made here too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import polars as pl

from kit.errors import HL7ParseError, KitError
from kit.hl7 import frames as F
from kit.hl7.message import STANDARD_ENCODING, parse_message, unescape
from kit.hl7.typed import MDM_TRIGGERS, SIU_TRIGGERS, parse_dtm

__all__ = ["FAST_TABLES", "ReusedFn", "lines_frame", "read_chunk", "read_tables"]

#: The tables built here from the fields of single segments (``results`` is built here too).
FAST_TABLES = ("messages", "patients", "visits", "orders", "appointments", "documents")

_DTM = pl.Datetime("us")
#: the characters ``str.isspace()`` is true for (``str.strip()`` strips these; polars' own set differs)
PY_SPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
            "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()
_BATCH = ["FHS", "BHS", "BTS", "FTS"]
_ORDER_TYPES = ["ORM^O01", "OML^O21", "ORU^R01"]
# a DTM in its usual form: parsed by polars; anything else non-empty goes to parse_dtm
_PLAIN_DTM = r"^[0-9]{4}(?:[0-9]{2}){0,5}(?:\.[0-9]{1,6})?(?:[+-][0-9]{4})?$"
_MAX_DT = dt.datetime(9999, 12, 31, 23, 59, 59, 999999)


# -- lines -----------------------------------------------------------------------------------------
def _has_bom(data: bytes) -> bool:
    # a one-byte search first: bytes.find of the three-byte mark is ~10x slower than memchr
    return b"\xef" in data and _BOM_BYTES in data


def _whole(data: bytes | str) -> tuple[pl.DataFrame, bool]:
    """The text as polars strings in which CR ends a segment; and whether a line may start with a BOM."""
    if isinstance(data, bytes):
        if data[:3] == _BOM_BYTES:
            data = data[3:]
        if not any(b in data for b in (b"\x00", b"\x0b", b"\x1c")):
            try:  # lines at LF by polars' (parallel) CSV reader, one column: the CRs are split next
                lines = pl.read_csv(data, has_header=False, separator="\x00", quote_char=None,
                                    new_columns=["line"], infer_schema=False, encoding="utf8")
                return lines.select(pl.col("line").fill_null("")), _has_bom(data)
            except pl.exceptions.PolarsError:  # not UTF-8
                pass
        for b in (b"\n", b"\x0b", b"\x1c"):  # ASCII bytes never occur inside a UTF-8 sequence
            if b in data:
                data = data.replace(b, b"\r")
        try:  # UTF-8 checked and copied by polars, not decoded to a Python str
            return pl.Series("line", [data], pl.Binary).cast(pl.String).to_frame(), _has_bom(data)
        except pl.exceptions.PolarsError:  # not UTF-8: Latin-1, as kit.hl7.message.decode reads it
            data = data.decode("latin-1")
    for ch in ("\n", "\x0b", "\x1c"):
        if ch in data:
            data = data.replace(ch, "\r")
    return pl.DataFrame({"line": [data]}), _BOM in data


def lines_frame(data: bytes | str) -> tuple[pl.DataFrame, str | None]:
    """Segment lines (``line``, ``seg``, ``msg`` 1-based, ``ok``) as :func:`kit.hl7.message.segment_lines`
    and :func:`kit.hl7.message.group_messages` give them; and the first line before the first MSH.

    Bytes are UTF-8 (a leading byte-order mark dropped), else Latin-1, as
    :func:`kit.hl7.message.decode` reads them. CR, LF, CRLF, VT and FS end a
    segment whatever else the text holds (a CRLF gives an empty line, dropped as
    blank), a byte-order mark at the start of a line is dropped, blank lines and
    FHS/BHS/BTS/FTS envelope lines are dropped. ``ok`` is true for a line that
    starts with a valid segment name and the field separator (or is only the name).
    """
    line = pl.col("line")
    whole, bom = _whole(data)
    df = whole.select(line.str.split("\r")).explode("line")
    if bom:
        df = df.with_columns(line.str.strip_chars_start(_BOM))
    seg = line.str.slice(0, 3)
    df = df.with_columns(seg.alias("seg"), line.str.contains(F._FIELD_OK).alias("ok"))
    if df.filter(~pl.col("ok") & (line.str.len_bytes() > 0)).height:  # blank or odd lines: the full rules
        batch = (pl.col("seg").is_in(_BATCH) & ((line.str.len_chars() == 3)
                                                | ~line.str.slice(3, 1).str.contains(r"^[A-Za-z0-9]$")))
        df = df.filter(line.str.strip_chars(PY_SPACE) != "").filter(~batch)
    else:  # every line is empty or a valid segment: only envelopes to drop
        df = df.filter(pl.col("ok") & ~pl.col("seg").is_in(_BATCH))
    df = df.with_columns((pl.col("seg") == "MSH").cum_sum().cast(pl.UInt32).alias("msg"))
    leading = None
    if df.height and df["msg"][0] == 0:
        leading = str(df["line"][0])
        df = df.filter(pl.col("msg") > 0)
    return df, leading


def _split_bad(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(lines of the messages the vectorised path takes, lines of the others)."""
    if df["ok"].all():  # the usual case: only the headers to check
        msh = df.filter(pl.col("seg") == "MSH")
        bad = msh.filter(~pl.col("line").str.starts_with(F._STANDARD_MSH))["msg"]
    else:
        ok = pl.col("ok") & ((pl.col("seg") != "MSH") | pl.col("line").str.starts_with(F._STANDARD_MSH))
        bad = df.filter(~ok)["msg"].unique()
    if not bad.len():
        return df, df.clear()
    is_bad = pl.col("msg").is_in(bad.implode())
    return df.filter(~is_bad), df.filter(is_bad)


# -- values ----------------------------------------------------------------------------------------
def _unesc(v: str) -> str:
    return unescape(v, STANDARD_ENCODING)


_KIND_FN = {"w": F._flat_whole, "r": F._flat_whole, "c": F._flat_comp, "s": _unesc}


def _compact(line: pl.Series) -> pl.Series:
    """``line`` with its text copied into buffers of its own.

    A subset of the lines (one segment's) shares the buffers of the whole file, and
    every polars string kernel on such a sparse view array copies it again: one copy
    here is cheaper. The lines of a clean message start with a segment name, so
    stripping NULs at the start changes nothing; it is the cheapest kernel that copies.
    """
    return line.str.strip_chars_start("\x00")


#: the characters that make a field more than its text: separators within a field, the escape
_SPECIAL = r"[\\^~&]"


def _pieces(values: pl.Series, by: str, count: int, *, plain: bool = False) -> list[pl.Series]:
    """The first ``count`` pieces of every value cut at ``by`` (``""`` where a value has fewer).

    No value holding ``by`` (the usual case for ``~`` and ``&``, and for ``^`` in many
    fields; ``plain``: known not to) costs one scan or none, not a split; the pieces are new
    series or ``values`` itself."""
    if plain or not values.str.contains(by, literal=True).any():
        empty = pl.repeat("", values.len(), dtype=pl.String, eager=True)
        return [values, *(empty for _ in range(count - 1))]
    parts = values.str.split_exact(by, count - 1)
    return [parts.struct.field(f"field_{i}").fill_null("") for i in range(count)]


def _split(line: pl.Series, wanted: list[int]) -> dict[int, pl.Series]:
    """Pieces ``wanted`` (sorted, 0-based) of every line cut at ``|`` (``""`` where a line has fewer).

    ``split_exact`` costs about twice per piece it gives what ``split`` costs per piece of the
    line: far pieces (PV1-44) of lines not much longer (estimated on a sample) are cut by ``split``."""
    if wanted[-1] < 30:
        sample = 0.0
    else:
        sample = float(line.head(1000).str.count_matches("|", literal=True).mean() or 0.0)  # type: ignore[arg-type]
    if sample and 0.55 * (sample + 1) + 0.5 * len(wanted) < wanted[-1] + 1:
        parts = line.str.split("|").list
        return {i: parts.get(i, null_on_oob=True).fill_null("") for i in wanted}
    exact = line.str.split_exact("|", wanted[-1]).struct
    return {i: exact.field(f"field_{i}").fill_null("") for i in wanted}


def _extract(df: pl.DataFrame, seg: str, specs: dict[str, tuple[str, int, int, int]], *,
             first: bool) -> pl.DataFrame:
    """Values of segment ``seg`` (the first per message, or every one), unescaped, as string columns.

    A spec is ``(kind, field, component, subcomponent)``: kind ``w`` the first
    repetition whole (as ``Message.get("SEG-n")``), ``r`` every repetition
    (flattened), ``c`` component (``"SEG-n.c"``), ``s`` subcomponent (``"SEG-n.c.s"``).
    """
    lines = df.select("msg", "row", "line").filter(df["seg"] == seg)
    if first and seg != "MSH":  # (an MSH starts a message: there is one per message)
        lines = lines.filter(pl.col("msg").is_first_distinct())
    offset = 1 if seg == "MSH" else 0  # "MSH|^~\\&|..." splits to MSH, MSH-2, MSH-3...
    numbers = sorted({s[1] for s in specs.values()})
    line = _compact(lines["line"])
    pieces = _split(line, [n - offset for n in numbers])
    fields = {n: pieces[n - offset] for n in numbers}
    # a field none of whose values holds a separator or the escape character (most): read as it is;
    # a field read whole only (kind r) needs only the escapes looked for
    whole = {n for n in numbers if all(s[0] == "r" for s in specs.values() if s[1] == n)}
    plain = {n: n not in whole and not fields[n].str.contains(_SPECIAL).any() for n in numbers}
    escapes = {n: not plain[n] and fields[n].str.contains("\\", literal=True).any() for n in numbers}
    firsts = {n: _pieces(fields[n], "~", 1, plain=plain[n])[0]
              for n in sorted({s[1] for s in specs.values() if s[0] != "r"})}
    comps: dict[int, int] = {}
    for kind, n, comp, _sub in specs.values():
        if kind in "cs":
            comps[n] = max(comps.get(n, 0), comp)
    parts = {n: _pieces(firsts[n], "^", k, plain=plain[n]) for n, k in comps.items()}
    out = []
    for name, (kind, n, comp, sub) in specs.items():
        value = fields[n] if kind == "r" else firsts[n] if kind == "w" else parts[n][comp - 1]
        if kind == "s":
            value = _pieces(value, "&", sub, plain=plain[n])[sub - 1]
        if escapes[n]:
            value = F._escaped(value, _KIND_FN[kind])
        out.append(value.alias(name))
    return pl.DataFrame([lines["msg"], lines["row"], *out])


def _w(n: int) -> tuple[str, int, int, int]:
    return ("w", n, 0, 0)


def _c(n: int, comp: int, sub: int = 0) -> tuple[str, int, int, int]:
    return ("s" if sub else "c", n, comp, sub)


_FILL = {4: "0101000000", 6: "01000000", 8: "000000", 10: "0000", 12: "00", 14: ""}


def _dtm(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(wall-clock Datetime, UTC offset in minutes or null) of DTM strings, exactly as
    :func:`kit.hl7.typed.parse_dtm` reads them (null where it gives None)."""
    v, n = pl.col("v"), pl.col("v").str.len_bytes()
    df = series.to_frame("v").with_columns(
        (v.str.contains(r"^[0-9]+$") & n.is_in(list(_FILL))).alias("simple"), n.alias("n"))
    chain: Any = pl.when(n == 14).then(v)
    for size, tail in _FILL.items():  # YYYY[MM[DD[HH[MM[SS]]]]] completed to 14 digits
        chain = chain.when(n == size).then(pl.concat_str(v, pl.lit(tail)))
    df = df.with_columns(pl.when("simple").then(chain.otherwise(None)).alias("filled"))
    filled = pl.col("filled")
    ok = (filled.str.slice(0, 4) != "0000") & (filled.str.slice(12, 2).cast(pl.Int32) < 60)
    out = df.select(pl.when(ok).then(filled.str.strptime(_DTM, "%Y%m%d%H%M%S", strict=False)).alias("t"),
                    pl.lit(None, pl.Int32).alias("o"), (~pl.col("simple") & (n > 0)).alias("rest"))
    t, o = out["t"], out["o"]
    if out["rest"].any():  # fractions, offsets or unusual text
        index = out["rest"].arg_true()
        values = series.gather(index)
        plain = values.str.contains(_PLAIN_DTM)
        if plain.any():  # fractions and offsets: polars
            where = index.filter(plain)
            pt, po = _dtm_plain(values.filter(plain))
            t, o = t.scatter(where, pt), o.scatter(where, po)
        if not plain.all():  # anything else: parse_dtm itself, once per distinct value
            where, odd = index.filter(~plain), values.filter(~plain).to_list()
            parsed = {s: parse_dtm(s) for s in set(odd)}
            t = t.scatter(where, pl.Series([_naive(parsed[s]) for s in odd], dtype=_DTM))
            o = o.scatter(where, pl.Series([_offset(parsed[s]) for s in odd], dtype=pl.Int32))
    return t.alias(series.name), o.alias(f"{series.name}_off")


def _dtm_plain(values: pl.Series) -> tuple[pl.Series, pl.Series]:
    """:func:`_dtm` of values matching ``_PLAIN_DTM`` (digits, a fraction, an offset)."""
    v = pl.col("v")
    digits = v.str.extract(r"^([0-9]+)")
    filled = pl.concat_str([digits, pl.lit("0101000000").str.slice(digits.str.len_chars() - 4)])
    frac = v.str.extract(r"\.([0-9]+)").str.pad_end(6, "0").cast(pl.Int64).fill_null(0)
    off = v.str.extract(r"([+-][0-9]{4})$")
    minutes = off.str.slice(1, 2).cast(pl.Int32) * 60 + off.str.slice(3, 2).cast(pl.Int32)
    ok = ((filled.str.slice(0, 4) != "0000") & (filled.str.slice(12, 2).cast(pl.Int32) < 60)
          & (off.is_null() | (minutes < 1440)))
    base = filled.str.strptime(_DTM, "%Y%m%d%H%M%S", strict=False)
    sign = pl.when(off.str.starts_with("-")).then(-1).otherwise(1)
    df = values.to_frame("v").select(
        pl.when(ok).then(base + pl.duration(microseconds=frac)).alias("t"),
        pl.when(ok).then(sign * minutes).cast(pl.Int32).alias("o"))
    return df["t"], df["o"]


def _naive(value: dt.datetime | None) -> dt.datetime | None:
    return value.replace(tzinfo=None) if value is not None else None


def _offset(value: dt.datetime | None) -> int | None:
    off = value.utcoffset() if value is not None else None
    return int(off.total_seconds() // 60) if off is not None else None


def _with_dtm(df: pl.DataFrame, *cols: str, offsets: bool = False) -> pl.DataFrame:
    out = []
    for c in cols:
        t, o = _dtm(df[c])
        out += [t, o] if offsets else [t]
    return df.with_columns(out)


def _blank_to_null(df: pl.DataFrame, table: str) -> pl.DataFrame:
    schema = F.SCHEMAS[table]
    return df.with_columns(pl.when(pl.col(c) == "").then(None).otherwise(pl.col(c)).alias(c)
                           for c, t in schema.items() if t == pl.String)


def _typed(df: pl.DataFrame, table: str) -> pl.DataFrame:
    """``msg`` plus the table's columns in order, typed, blanks null."""
    schema = F.SCHEMAS[table]
    df = df.select("msg", *(pl.col(c).cast(t) for c, t in schema.items()))
    return _blank_to_null(df, table)


def _skips(df: pl.DataFrame, table: str, reason: str | pl.Expr) -> pl.DataFrame:
    """``skipped`` rows (plus ``msg``) for the messages of ``df`` (columns msg, control_id, message_type)."""
    r = pl.lit(reason) if isinstance(reason, str) else reason
    out = df.select("msg", pl.col("msg").cast(pl.Int64).alias("message_number"), "control_id",
                    "message_type", pl.lit(table).alias("table"), r.str.slice(0, 1000).alias("reason"))
    return _blank_to_null(out, "skipped")


# -- the tables --------------------------------------------------------------------------------------
_MSH_MORE = {"sending_application": _c(3, 1), "sending_facility": _c(4, 1), "receiving_application": _c(5, 1),
             "receiving_facility": _c(6, 1), "version": _c(12, 1), "processing_id": _c(11, 1)}


class _Feed:
    """The clean messages' lines, with the MSH values every table uses, computed once."""

    def __init__(self, df: pl.DataFrame, *, all_msh: bool, results: bool) -> None:
        self.df = df
        specs = {"control_id": _w(10), "code": _c(9, 1), "trigger": _c(9, 2), "msh7": _w(7)}
        if all_msh:
            specs |= _MSH_MORE
        if results:  # the results table's control id is MSH-10.1, the others' MSH-10 whole
            specs["result_control_id"] = _c(10, 1)
        msh = _extract(df, "MSH", specs, first=True)
        self.msh = msh.with_columns(
            pl.when(pl.col("trigger") != "").then(pl.concat_str("code", pl.lit("^"), "trigger"))
            .otherwise(pl.col("code")).alias("message_type"),
            # lines of a message are consecutive rows: its segments run to the next MSH
            (pl.col("row").shift(-1, fill_value=df.height) - pl.col("row")).cast(pl.Int32)
            .alias("segment_count"),
        ).drop("row")
        self._pid: pl.DataFrame | None = None

    def pid(self, msgs: pl.DataFrame | None = None) -> pl.DataFrame:
        """msg and ``patient_id`` (PID-3.1 of the first PID; ``""`` if none) for every message, or for
        those of ``msgs`` (only their PID lines are read, unless every message's are at hand)."""
        if msgs is None or self._pid is not None:
            if self._pid is None:
                self._pid = self._patient_ids(self.df, self.msh)
            return self._pid if msgs is None else msgs.select("msg").join(self._pid, on="msg", how="left")
        return self._patient_ids(_lines_of(self, ["PID"], msgs), msgs)

    @staticmethod
    def _patient_ids(lines: pl.DataFrame, msgs: pl.DataFrame) -> pl.DataFrame:
        pid = _extract(lines, "PID", {"patient_id": _c(3, 1)}, first=True).drop("row")
        return msgs.select("msg").join(pid, on="msg", how="left").with_columns(
            pl.col("patient_id").fill_null(""))


def _lines_of(feed: _Feed, segments: list[str], msgs: pl.DataFrame) -> pl.DataFrame:
    """The lines of ``segments`` in the messages ``msgs``."""
    return feed.df.filter(pl.col("seg").is_in(segments)).filter(pl.col("msg").is_in(msgs["msg"].implode()))


def _messages(feed: _Feed) -> pl.DataFrame:
    evn = _extract(feed.df, "EVN", {"evn2": _w(2)}, first=True).drop("row")
    out = (feed.msh.join(evn, on="msg", how="left").join(feed.pid(), on="msg", how="left")
           .with_columns(pl.col("evn2").fill_null("")))
    out = _with_dtm(out, "msh7", "evn2").rename({"msh7": "message_time", "evn2": "event_time"})
    return out.with_columns(pl.lit(False).alias("reused_control_id"))


def _reused(messages: pl.DataFrame, lines: pl.DataFrame) -> pl.DataFrame:
    """``reused_control_id`` over all messages (in input order): same sender and control id as an
    earlier message, other content (:func:`kit.hl7.message.content_hash` hashes exactly the lines)."""
    key = [pl.col(c).fill_null("") for c in ("sending_application", "sending_facility", "control_id")]
    dup = messages.filter(pl.struct(key).is_duplicated())
    if not dup.height:
        return messages
    texts = (lines.filter(pl.col("msg").is_in(dup["msg"].implode())).group_by("msg", maintain_order=True)
             .agg(pl.col("line").str.join("\r").alias("_text")))
    dup = dup.join(texts, on="msg", how="left").with_columns(
        (pl.col("_text") != pl.col("_text").first().over(key)).alias("_reused"))
    return messages.join(dup.select("msg", "_reused"), on="msg", how="left").with_columns(
        pl.coalesce("_reused", pl.lit(False)).alias("reused_control_id")).drop("_reused")


_PATIENT = {"patient_id": _c(3, 1), "family": _c(5, 1, 1), "given": _c(5, 2), "birth_date": _w(7),
            "sex": _w(8), "assigning_authority": _c(3, 4, 1), "identifier_type": _c(3, 5),
            "street": _c(11, 1, 1), "city": _c(11, 3), "state": _c(11, 4), "postal_code": _c(11, 5),
            "country": _c(11, 6), "phone": _c(13, 1)}


def _patients(feed: _Feed) -> tuple[pl.DataFrame, pl.DataFrame]:
    pid = _extract(feed.df, "PID", _PATIENT, first=True).drop("row")
    pid = feed.msh.join(pid, on="msg", how="inner")
    skipped = _skips(pid.filter(pl.col("patient_id") == ""), "patients",
                     str(HL7ParseError("PID-3 patient identifier is empty", segment="PID", field=3)))
    rows = _with_dtm(pid.filter(pl.col("patient_id") != ""), "msh7", "birth_date")
    rows = rows.with_columns(pl.col("birth_date").dt.date()).rename({"msh7": "message_time"})
    return _typed(rows, "patients"), skipped


_VISIT = {"patient_class": _w(2), "location": _c(3, 1), "room": _c(3, 2), "bed": _c(3, 3),
          "attending_doctor_id": _c(7, 1), "attending_doctor_family": _c(7, 2, 1),
          "attending_doctor_given": _c(7, 3), "hospital_service": _w(10), "visit_number": _c(19, 1),
          "admit_time": _w(44), "discharge_time": _w(45)}


def _visits(feed: _Feed) -> pl.DataFrame:
    pv1 = _extract(feed.df, "PV1", _VISIT, first=True).drop("row")
    rows = feed.msh.join(pv1, on="msg", how="inner")
    rows = rows.join(feed.pid(rows), on="msg", how="left")
    return _typed(_with_dtm(rows, "admit_time", "discharge_time"), "visits")


def _orders(feed: _Feed) -> tuple[pl.DataFrame, pl.DataFrame]:
    msgs = feed.msh.filter(pl.col("message_type").is_in(_ORDER_TYPES))
    msgs = msgs.join(feed.pid(msgs), on="msg", how="left")
    no_pid = msgs.filter(pl.col("patient_id") == "")
    msgs = msgs.filter(pl.col("patient_id") != "")
    df = _lines_of(feed, ["ORC", "OBR", "ZDS"], msgs)
    # groups as kit.hl7.typed._orders: an ORC opens one, an OBR too unless it follows the group's ORC
    heads = df.filter(pl.col("seg").is_in(["ORC", "OBR"])).select("msg", "row", "seg")
    after_orc = (pl.col("seg").shift(1) == "ORC") & (pl.col("msg").shift(1) == pl.col("msg"))
    heads = heads.with_columns(
        ((pl.col("seg") == "ORC") | ~after_orc.fill_null(False)).cum_sum().alias("group"),
        ((pl.col("seg") == "ORC") | ~after_orc.fill_null(False)).alias("opens"))
    starts = heads.filter("opens").select("row", "group", pl.col("msg").alias("gmsg"))
    zds = df.filter(pl.col("seg") == "ZDS").select("msg", "row").join_asof(
        starts, on="row", strategy="backward").filter(pl.col("gmsg") == pl.col("msg"))
    zds = zds.filter(pl.col("group").is_first_distinct()).select("row", "group")
    orc = _extract(df, "ORC", {"orc_placer": _c(2, 1), "orc_filler": _c(3, 1), "order_control": _w(1),
                               "order_status": _w(5), "ordered_time": _w(9)}, first=False)
    obr = _extract(df, "OBR", {"placer_order_number": _c(2, 1), "filler_order_number": _c(3, 1),
                               "accession_number": _c(18, 1), "service_code": _c(4, 1),
                               "service_text": _c(4, 2), "service_system": _c(4, 3),
                               "observation_time": _w(7), "result_status": _w(25), "modality": _w(24)},
                   first=False)
    uid = _extract(df, "ZDS", {"study_instance_uid": _c(1, 1)}, first=False)
    groups = heads.filter("opens").select("group", "msg")
    rows = (groups.join(heads.filter(pl.col("seg") == "ORC").select("row", "group"), on="group", how="left")
            .join(orc.drop("msg"), on="row", how="left").drop("row")
            .join(heads.filter(pl.col("seg") == "OBR").select("row", "group"), on="group", how="left")
            .join(obr.drop("msg"), on="row", how="left").drop("row")
            .join(zds, on="group", how="left").join(uid.drop("msg"), on="row", how="left").drop("row")
            .sort("group"))
    strings = [c for c in (*orc.columns, *obr.columns, *uid.columns) if c not in ("msg", "row")]
    rows = rows.with_columns(pl.col(c).fill_null("") for c in strings).with_columns(
        pl.when(pl.col("placer_order_number") != "").then("placer_order_number")
        .otherwise("orc_placer").alias("placer_order_number"),
        pl.when(pl.col("filler_order_number") != "").then("filler_order_number")
        .otherwise("orc_filler").alias("filler_order_number"))
    rows = rows.with_columns(pl.when(pl.col("accession_number") != "").then("accession_number")
                             .otherwise("filler_order_number").alias("accession_number"))
    rows = _with_dtm(rows, "ordered_time", "observation_time")
    rows = msgs.join(rows, on="msg", how="inner").sort("group")
    without = msgs.filter(~pl.col("msg").is_in(groups["msg"].implode()))
    skipped = pl.concat([
        _skips(no_pid, "orders", pl.col("message_type") + " without a PID-3 patient identifier"),
        _skips(without, "orders", pl.col("message_type") + " without an ORC or OBR segment")])
    return _typed(rows, "orders"), skipped.sort("msg", maintain_order=True)


_SCH = {"placer_appointment_id": _c(1, 1), "filler_appointment_id": _c(2, 1), "sch11_4": _c(11, 4),
        "sch11_5": _c(11, 5), "sch9": _w(9), "status": _c(25, 1), "reason72": _c(7, 2), "reason71": _c(7, 1),
        "appointment_type": _c(8, 1), "accession_number": _c(27, 1)}
_INT = r"^[0-9]{1,9}$"


def _int_expr(col: str) -> pl.Expr:
    """:func:`kit.hl7.typed._int`: up to 9 ASCII digits after stripping whitespace, else null."""
    s = pl.col(col).str.strip_chars(PY_SPACE)
    return pl.when(s.str.contains(_INT)).then(s.cast(pl.Int64, strict=False))


def _appointments(feed: _Feed) -> tuple[pl.DataFrame, pl.DataFrame]:
    msgs = feed.msh.filter((pl.col("code") == "SIU") & pl.col("trigger").is_in(sorted(SIU_TRIGGERS)))
    df = _lines_of(feed, ["SCH", "AIS", "AIL", "AIG", "AIP"], msgs)
    rows = msgs.join(feed.pid(msgs), on="msg", how="left")
    for seg, specs in (("SCH", _SCH), ("AIS", {"ais4": _w(4), "ais7": _w(7), "service_code": _c(3, 1),
                                             "service_text": _c(3, 2)}),
                       ("AIL", {"ail6": _w(6), "location": _c(3, 1)}),
                       ("AIG", {"aig8": _w(8), "resource_id": _c(3, 1), "resource_type": _c(4, 1)}),
                       ("AIP", {"personnel_id": _c(3, 1)})):
        part = _extract(df, seg, specs, first=True).drop("row")
        rows = rows.join(part, on="msg", how="left").with_columns(pl.col(c).fill_null("") for c in specs)
    no_id = rows.filter((pl.col("placer_appointment_id") == "") & (pl.col("filler_appointment_id") == ""))
    rows = rows.filter((pl.col("placer_appointment_id") != "") | (pl.col("filler_appointment_id") != ""))
    rows = _with_dtm(rows, "sch11_4", "ais4", "ail6", "aig8", "sch11_5", offsets=True)
    cands = ["sch11_4", "ais4", "ail6", "aig8"]
    chain: Any = pl.when(pl.col(cands[0]).is_not_null()).then(pl.col(f"{cands[0]}_off"))
    for c in cands[1:]:  # the offset of the first candidate that parsed
        chain = chain.when(pl.col(c).is_not_null()).then(pl.col(f"{c}_off"))
    start_off = chain.otherwise(None)
    a, b = _int_expr("ais7"), _int_expr("sch9")
    rows = rows.with_columns(
        pl.coalesce(*cands).alias("start_time"), start_off.alias("start_off"),
        pl.when(a.is_not_null() & (a != 0)).then(a).otherwise(b).alias("_minutes"))
    add = pl.col("sch11_5").is_null() & pl.col("start_time").is_not_null() & pl.col("_minutes").is_not_null()
    computed = pl.col("start_time") + pl.duration(minutes=pl.col("_minutes"))
    rows = rows.with_columns(
        (add & (computed > pl.lit(_MAX_DT, _DTM))).fill_null(False).alias("_overflow"),
        pl.when(add).then(computed).otherwise("sch11_5").alias("end_time"),
        pl.when(add).then("start_off").otherwise("sch11_5_off").alias("end_off"))
    both = pl.col("start_time").is_not_null() & pl.col("end_time").is_not_null()
    diff = ((pl.col("end_time") - pl.duration(minutes=pl.col("end_off").fill_null(0)))
            - (pl.col("start_time") - pl.duration(minutes=pl.col("start_off").fill_null(0)))
            ).dt.total_microseconds()
    rows = rows.with_columns(
        (both & (pl.col("start_off").is_null() != pl.col("end_off").is_null())).fill_null(False)
        .alias("_mixed"),
        pl.when(both).then(diff).alias("_diff"))
    rows = rows.with_columns(
        (~pl.col("_overflow") & ~pl.col("_mixed") & (pl.col("_diff") < 0)).fill_null(False)
        .alias("_backwards"),
        (pl.col("_diff") // 60_000_000).alias("duration_minutes"))
    fractional = rows.filter(pl.col("_diff").is_not_null() & (pl.col("_diff") % 1_000_000 != 0))
    if fractional.height:  # Python's float total_seconds() // 60, exactly
        mins = [int(dt.timedelta(microseconds=d).total_seconds() // 60) for d in fractional["_diff"]]
        rows = rows.join(pl.DataFrame({"msg": fractional["msg"], "_m": mins}), on="msg", how="left")
        rows = rows.with_columns(pl.coalesce("_m", "duration_minutes").alias("duration_minutes")).drop("_m")
    in_range = pl.col("duration_minutes").is_between(F._INT32[0], F._INT32[1]).fill_null(True)
    bad = pl.col("_overflow") | pl.col("_mixed") | pl.col("_backwards") | ~in_range
    skipped = [_skips(no_id, "appointments", str(HL7ParseError(
        "SIU without an appointment id (SCH-1 placer and SCH-2 filler are empty)", segment="SCH", field=1)))]
    problems = rows.filter(bad)
    if problems.height:
        skipped.append(_appointment_skips(problems))
    rows = rows.filter(~bad).with_columns(
        pl.when(pl.col("placer_appointment_id") != "").then("placer_appointment_id")
        .otherwise("filler_appointment_id").alias("appointment_id"),
        pl.when(pl.col("reason72") != "").then("reason72").otherwise("reason71").alias("reason"))
    return _typed(rows, "appointments"), pl.concat(skipped).sort("msg", maintain_order=True)


def _appointment_skips(problems: pl.DataFrame) -> pl.DataFrame:
    """The reasons kit.hl7.typed gives, in the order it meets them (rare rows: Python)."""
    reasons = []
    for r in problems.select("_overflow", "_mixed", "_backwards", "_minutes", "message_type", "control_id",
                             "duration_minutes").iter_rows(named=True):
        if r["_overflow"]:
            reasons.append(str(HL7ParseError(
                f"appointment duration of {r['_minutes']} minutes is out of range", segment="AIS", field=7)))
        elif r["_mixed"]:
            reasons.append("TypeError: can't compare offset-naive and offset-aware datetimes")
        elif r["_backwards"]:
            reasons.append(str(HL7ParseError(
                f"{r['message_type']} {r['control_id']!r}: appointment ends before it starts")))
        else:
            reasons.append(str(HL7ParseError(f"duration_minutes {r['duration_minutes']} is out of range")))
    return _skips(problems.with_columns(pl.Series("_reason", reasons, pl.String)), "appointments",
                  pl.col("_reason"))


_TXA = {"unique_document_number": _c(12, 1), "document_type": _w(2), "activity_time": _w(4),
        "completion_status": _w(17), "availability_status": _w(19), "accession_number": _c(15, 1)}


def _documents(feed: _Feed) -> tuple[pl.DataFrame, pl.DataFrame]:
    msgs = feed.msh.filter((pl.col("code") == "MDM") & pl.col("trigger").is_in(sorted(MDM_TRIGGERS)))
    df = _lines_of(feed, ["TXA", "OBX"], msgs)
    txa = _extract(df, "TXA", _TXA, first=True).drop("row")
    rows = msgs.join(feed.pid(msgs), on="msg", how="left").join(txa, on="msg", how="left").with_columns(
        pl.col(c).fill_null("") for c in _TXA)
    ok = (pl.col("patient_id") != "") & (pl.col("unique_document_number") != "")
    skipped = _skips(rows.filter(~ok), "documents", pl.col("message_type")
                     + " without a PID-3 patient identifier or TXA-12 document number")
    rows = rows.filter(ok)
    obx = _extract(df.filter(pl.col("msg").is_in(rows["msg"].implode())), "OBX", {"text": ("r", 5, 0, 0)},
                   first=False)
    text = obx.group_by("msg").agg(pl.col("text").sort_by("row").str.join("\n"))
    rows = _with_dtm(rows.join(text, on="msg", how="left"), "activity_time")
    return _typed(rows, "documents"), skipped


# -- results -----------------------------------------------------------------------------------------
_OBR_RESULT = {"obr18": _c(18, 1), "placer_order_number": _c(2, 1), "filler_order_number": _c(3, 1),
               "service_code": _c(4, 1), "obr_time": _c(7, 1)}
_OBX_RESULT = {"set_id": _c(1, 1), "value_type": _c(2, 1), "observation_code": _c(3, 1),
               "observation_text": _c(3, 2), "observation_system": _c(3, 3), "observation_sub_id": _c(4, 1),
               "value": ("r", 5, 0, 0), "units": _c(6, 1), "reference_range": ("r", 7, 0, 0),
               "abnormal_flags": ("r", 8, 0, 0), "result_status": _c(11, 1), "observation_time": _c(14, 1)}


def _results(feed: _Feed) -> pl.DataFrame:
    """``results`` as strings (``msg`` plus :data:`kit.hl7.frames._RESULT_RAW`), as
    :func:`kit.hl7.frames._result_rows` gives them: one row per OBX of a message that is not MDM."""
    msgs = feed.msh.filter(pl.col("code") != "MDM").select(
        "msg", pl.col("result_control_id").alias("control_id"))
    df = _lines_of(feed, ["OBR", "OBX"], msgs)
    obx = _extract(df, "OBX", _OBX_RESULT, first=False)
    obr = _extract(df, "OBR", _OBR_RESULT, first=False).rename({"row": "obr_row"})
    # the parent OBR: the last OBR line before the OBX in the same message (rows are in file order)
    obx = obx.join_asof(obr.select("obr_row", pl.col("msg").alias("obr_msg")), left_on="row",
                        right_on="obr_row", strategy="backward")
    obx = obx.with_columns(pl.when(pl.col("obr_msg") == pl.col("msg")).then(pl.col("obr_row"))
                           .alias("obr_row")).drop("obr_msg")
    out = (obx.join(msgs, on="msg", how="inner").join(obr.drop("msg"), on="obr_row", how="left")
           .join(feed.pid(), on="msg", how="left").sort("row"))
    out = out.with_columns(pl.col(c).fill_null("") for c in (*_OBR_RESULT, "patient_id"))
    return out.with_columns(
        pl.when(pl.col("obr18") != "").then(pl.col("obr18")).otherwise(pl.col("filler_order_number"))
        .alias("accession_number")).select("msg", *F._RESULT_RAW)


# -- the slow subset and the whole -----------------------------------------------------------------
def _slow(bad: pl.DataFrame, tables: list[str],
          results: bool) -> tuple[dict[str, pl.DataFrame], list[dict[str, Any]]]:
    """The per-message builders of :mod:`kit.hl7.frames` for the messages the fast path does not take
    (``results`` as strings, see :func:`_results`)."""
    rows: dict[str, list[dict[str, Any]]] = {t: [] for t in tables}
    msgs: dict[str, list[int]] = {t: [] for t in tables}
    result_rows: list[list[str]] = []
    result_msgs: list[int] = []
    skipped: list[dict[str, Any]] = []
    seen: dict[tuple[str, str, str], str] = {}
    grouped = bad.group_by("msg", maintain_order=True).agg(pl.col("line"))
    for number, lines in grouped.iter_rows():
        try:
            m = parse_message("\r".join(lines))
        except KitError as exc:
            skipped.append(F._skip(number, None, "messages", exc))
            continue
        before = {t: len(rows[t]) for t in tables}
        F._rows_of(m, number, rows, skipped, seen)
        for t in tables:
            msgs[t] += [number] * (len(rows[t]) - before[t])
        if results:
            try:
                found = F._result_rows(m)
            except Exception as exc:  # noqa: BLE001 - as kit.hl7.frames.to_frames: a skipped row
                skipped.append(F._skip(number, m, "results", exc))
                continue
            result_rows += found
            result_msgs += [number] * len(found)
    out = {t: F._frame(rows[t], t).select(pl.Series("msg", msgs[t], pl.UInt32), pl.all()) for t in tables}
    if results:
        raw = dict.fromkeys(F._RESULT_RAW, pl.String)
        frame = (pl.DataFrame(result_rows, schema=raw, orient="row") if result_rows
                 else pl.DataFrame(schema=raw))
        out["results"] = frame.select(pl.Series("msg", result_msgs, pl.UInt32), pl.all())
    return out, skipped


_BUILD = {"patients": _patients, "orders": _orders, "appointments": _appointments, "documents": _documents}


def read_tables(data: bytes | str, wanted: tuple[str, ...]) -> dict[str, pl.DataFrame]:
    """Every wanted table of :func:`kit.hl7.frames.read_file` from a file's bytes (or text), vectorised.

    ``wanted`` is in :data:`kit.hl7.frames.TABLES` order and includes ``skipped``.
    """
    return read_chunk(data, wanted, _reused)[0]


#: ``reused(messages, lines)``: the messages table (with ``msg``) with ``reused_control_id`` set
ReusedFn = Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame]


def read_chunk(data: bytes | str, wanted: tuple[str, ...],
               reused: ReusedFn) -> tuple[dict[str, pl.DataFrame], int]:
    """:func:`read_tables` with the ``reused_control_id`` rule given (one that remembers earlier
    chunks, for :mod:`kit.hl7.archive`); and the number of messages (MSH lines) in ``data``."""
    df, leading = lines_frame(data)
    n_messages = int(df["msg"].max() or 0) if df.height else 0  # type: ignore[arg-type]
    skipped = [F._skipped_frame([F._leading_skip(leading)])] if leading is not None else []
    out: dict[str, pl.DataFrame] = {}
    mine = [t for t in wanted if t in FAST_TABLES]
    results = "results" in wanted
    # the messages the per-message path takes (those it cannot read are skipped rows, whatever the tables)
    good, bad = _split_bad(df)
    slow, slow_skipped = _slow(bad, mine, results) if bad.height else ({}, [])
    parts: list[pl.DataFrame] = [F._skipped_frame(slow_skipped).select(
        pl.col("message_number").cast(pl.UInt32).alias("msg"), pl.all())] if slow_skipped else []
    if mine or results:
        feed = _Feed(good.with_row_index("row"), all_msh="messages" in mine, results=results)
        for table in [*mine, "results"] if results else mine:
            if table == "messages":
                rows = _typed(_messages(feed), "messages")
            elif table == "visits":
                rows = _visits(feed)
            elif table == "results":
                rows = _results(feed)
            else:
                rows, skips = _BUILD[table](feed)
                parts.append(skips.select("msg", *F.SCHEMAS["skipped"]))
            if table in slow:
                rows = pl.concat([rows, slow[table]]).sort("msg", maintain_order=True)
            if table == "messages":
                rows = reused(rows, df)
            out[table] = F._type_results(rows.drop("msg")) if table == "results" else rows.drop("msg")
    if parts:
        skipped.append(pl.concat(parts).sort("msg", maintain_order=True).drop("msg"))
    out["skipped"] = F._skipped_frame(skipped) if skipped else F.empty_frames(["skipped"])["skipped"]
    return {t: out[t] for t in wanted}, n_messages
