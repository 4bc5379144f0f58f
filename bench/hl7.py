"""Benchmark: an HL7 v2 file of mixed messages to each table, and MLLP round trips.

``results``: kit (``kit.hl7.frames.read_file(path, tables=["results"])``, the
vectorised path) against python-hl7 and hl7apy building the same table.

``tables``: the other six tables (``messages``, ``patients``, ``visits``,
``orders``, ``appointments``, ``documents``), one at a time.

Every comparison builds the same table, column for column (the kit schema), from
the same input, a file on disk: kit ``read_file(path, tables=[table])`` over the
whole file; python-hl7 over a file of the file's first messages (a whole number
of cycles of the sample feed, so the same mix), read and split by
``hl7.split_file``, then ``hl7.parse`` per message, ``extract_field`` for each
column (which unescapes), ``hl7.parse_datetime`` for dates, the same rules for
which message gives which row, and a polars frame with the kit schema. kit's
table of the sample file is checked to have python-hl7's rows and columns.
hl7apy (``parse_message(find_groups=False)`` per message, results only: at ~75
messages/s more would take minutes) builds the results columns it has names for.

Timing: an untimed warm-up per side (kit on the sample file, python-hl7 on
one cycle of the feed), then ``ROUNDS`` rounds in which kit
and python-hl7 take turns (who goes first alternates), so that a busy spell of a
shared machine falls on both; the ratio is the median of the rounds' ratios
(each round's two runs share the machine's mood), each side's median rate and
the ratios' spread are printed beside it.

    python bench/hl7.py [N] [M] [--only=results,tables,mllp]
    # N messages (default 100,000), M MLLP round trips per side (2,000); --only picks sections

Sections are separate functions called from ``main()``; add new ones there.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# this file is called hl7.py: keep its folder off sys.path so "import hl7" finds python-hl7
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import polars as pl  # noqa: E402

from kit.examples.hl7 import feed  # noqa: E402
from kit.hl7.frames import SCHEMAS, read_file  # noqa: E402

DEFAULT_N = 100_000
#: python-hl7's sample, every table: 10 cycles of the 63-message sample feed (the file's mix; about
#: as long a run as kit's over the whole file, so that a round's two runs share the machine alike)
PYTHON_HL7_SAMPLE = 630
#: the warm-up's sample: one cycle
WARM_UP_SAMPLE = 63
HL7APY_SAMPLE = 100
#: timed rounds per table after the warm-up (seven tables: keep the script under a minute)
ROUNDS = 7


def make_file(n: int, directory: Path) -> Path:
    """A file of ``n`` messages cycling through the sample feed, each with its own control id."""
    base = list(feed())
    path = directory / f"mixed-{n}.hl7"
    with path.open("w", encoding="utf-8", newline="") as out:
        for i in range(n):
            text = base[i % len(base)]
            head, _, rest = text.partition("\r")
            fields = head.split("|")
            fields[9] = f"B{i:09d}"
            # vary the report text so values are not repeated verbatim across the file
            out.write("|".join(fields) + "\r" + rest.replace("Findings:", f"Findings ({i}):") + "\n")
    return path


def _timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall-clock time of ``repeat`` runs (the machine may be shared) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _rounds(kit: Callable[[], pl.DataFrame], other: Callable[[], pl.DataFrame], n_kit: int,
            n_other: int) -> tuple[list[float], list[float], pl.DataFrame, pl.DataFrame]:
    """Messages/s of ``kit`` (``n_kit`` messages) and ``other`` (``n_other``) in ``ROUNDS`` rounds,
    the two taking turns (who goes first alternates); and their last tables."""
    kit_rates: list[float] = []
    other_rates: list[float] = []
    df = dp = pl.DataFrame()
    for r in range(ROUNDS):
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            if side == 0:
                df = kit()
                kit_rates.append(n_kit / (time.perf_counter() - start))
            else:
                dp = other()
                other_rates.append(n_other / (time.perf_counter() - start))
    return kit_rates, other_rates, df, dp


def _ratio(kit_rates: list[float], other_rates: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of the rounds' kit/other ratios."""
    ratios = [k / o for k, o in zip(kit_rates, other_rates, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def _same_table(kit: pl.DataFrame, other: pl.DataFrame, table: str) -> None:
    """python-hl7's table has kit's columns and, on the same messages, kit's number of rows."""
    if other.columns != kit.columns or other.height != kit.height:
        raise AssertionError(f"{table}: python-hl7 built {other.height} rows {other.columns}, "
                             f"kit {kit.height} rows {kit.columns} from the same messages")


def _python_hl7_messages(path: Path) -> list[str]:
    """python-hl7's own reading of a file: the text, split into messages by ``hl7.split_file``."""
    import hl7

    return list(hl7.split_file(path.read_bytes().decode("utf-8")))


def kit_results(path: Path) -> pl.DataFrame:
    return read_file(path, tables=["results"])["results"]


def python_hl7_results(path: Path) -> pl.DataFrame:
    """The results table built message by message with python-hl7 (see :func:`_p_results`)."""
    return python_hl7_table("results", path)


def hl7apy_results(messages: list[str]) -> pl.DataFrame:
    from hl7apy.parser import parse_message

    rows = []
    for text in messages:
        msg = parse_message(text, find_groups=False)
        if msg.msh.msh_9.msh_9_1.value == "MDM":
            continue
        control_id = msg.msh.msh_10.value
        pid = msg.children.get("PID") if hasattr(msg.children, "get") else None
        patient_id = pid[0].pid_3.cx_1.value if pid else ""
        accession = ""
        for seg in msg.children:
            if seg.name == "OBR":
                accession = seg.obr_18.value or seg.obr_3.ei_1.value
            elif seg.name == "OBX":
                rows.append({"control_id": control_id, "patient_id": patient_id,
                             "accession_number": accession, "set_id": seg.obx_1.value,
                             "value_type": seg.obx_2.value,
                             "observation_code": seg.obx_3.to_er7().split("^")[0],
                             "value": seg.obx_5.to_er7(), "units": seg.obx_6.to_er7()})
    return pl.DataFrame(rows)


def bench_results_frame(path: Path, n: int, sample: Path, warm: Path) -> list[str]:
    """The results-frame comparison; returns its RATIO lines."""
    kit_sample = kit_results(sample)  # warm-ups (and kit's table of python-hl7's messages)
    python_hl7_results(warm)
    kit_rates, p_rates, df, dp = _rounds(lambda: kit_results(path), lambda: python_hl7_results(sample),
                                         n, PYTHON_HL7_SAMPLE)
    _same_table(kit_sample, dp, "results")
    kit_rate, p_rate = statistics.median(kit_rates), statistics.median(p_rates)
    ratio, low, high = _ratio(kit_rates, p_rates)
    print(f"kit read_file -> results   {df.height:>9,} rows  {n / kit_rate:8.2f} s"
          f"  {kit_rate:>12,.0f} msgs/s")
    print(f"python-hl7 (sample {PYTHON_HL7_SAMPLE:,})  {dp.height:>9,} rows"
          f"  {PYTHON_HL7_SAMPLE / p_rate:8.2f} s  {p_rate:>12,.0f} msgs/s")
    print(f"  kit/python-hl7 {ratio:.1f}: median of {ROUNDS} rounds (range {low:.1f}-{high:.1f})")

    messages = _python_hl7_messages(sample)[:HL7APY_SAMPLE]
    hl7apy_results(messages)  # warm-up
    t_a, da = _timed(lambda: hl7apy_results(messages))
    assert isinstance(da, pl.DataFrame)
    a_rate = len(messages) / t_a
    print(f"hl7apy (sample {len(messages):,})       {da.height:>9,} rows  {t_a:8.2f} s"
          f"  {a_rate:>12,.0f} msgs/s")
    return [f"RATIO hl7 results frame msgs/s kit/python-hl7 = {ratio:.1f}",
            f"RATIO hl7 results frame msgs/s kit/hl7apy = {kit_rate / a_rate:.1f}"]


# -- the other tables, python-hl7 message by message ------------------------------------------------
def _f(seg: Any, field: int, comp: int = 1, sub: int = 1) -> str:
    """python-hl7's unescaped leaf at SEG-field.comp.sub (first repetition), "" if absent."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, field, 1, comp, sub))
    except IndexError:
        return ""


def _when(value: str) -> dt.datetime | None:
    import hl7

    if not value:
        return None
    try:
        return hl7.parse_datetime(value).replace(tzinfo=None)
    except (ValueError, TypeError):
        return None


def _first(msg: Any, name: str) -> Any:
    try:
        return msg.segment(name)
    except KeyError:
        return None


def _header(msg: Any) -> tuple[str, str, str, str]:
    msh = msg.segment("MSH")
    code, trigger = _f(msh, 9, 1), _f(msh, 9, 2)
    return _f(msh, 10), code, trigger, f"{code}^{trigger}" if trigger else code


def _patient_id(msg: Any) -> str:
    return _f(_first(msg, "PID"), 3, 1)


def _p_messages(msg: Any, seen: dict[tuple[str, str, str], str]) -> list[dict[str, Any]]:
    msh = msg.segment("MSH")
    cid, _code, trigger, mtype = _header(msg)
    key = (_f(msh, 3), _f(msh, 4), cid)
    digest = hashlib.sha256(str(msg).encode()).hexdigest()
    return [{"control_id": cid, "message_type": mtype, "trigger": trigger, "message_time": _when(_f(msh, 7)),
             "event_time": _when(_f(_first(msg, "EVN"), 2)), "sending_application": key[0],
             "sending_facility": key[1], "receiving_application": _f(msh, 5),
             "receiving_facility": _f(msh, 6),
             "version": _f(msh, 12), "processing_id": _f(msh, 11), "patient_id": _patient_id(msg),
             "segment_count": len(msg), "reused_control_id": seen.setdefault(key, digest) != digest}]


def _p_patients(msg: Any, seen: object) -> list[dict[str, Any]]:
    pid = _first(msg, "PID")
    if pid is None or not _f(pid, 3):
        return []
    birth = _when(_f(pid, 7))
    return [{"control_id": _header(msg)[0], "message_time": _when(_f(msg.segment("MSH"), 7)),
             "patient_id": _f(pid, 3), "assigning_authority": _f(pid, 3, 4), "identifier_type": _f(pid, 3, 5),
             "family": _f(pid, 5, 1), "given": _f(pid, 5, 2), "birth_date": birth.date() if birth else None,
             "sex": _f(pid, 8), "street": _f(pid, 11, 1), "city": _f(pid, 11, 3), "state": _f(pid, 11, 4),
             "postal_code": _f(pid, 11, 5), "country": _f(pid, 11, 6), "phone": _f(pid, 13)}]


def _p_visits(msg: Any, seen: object) -> list[dict[str, Any]]:
    pv1 = _first(msg, "PV1")
    if pv1 is None:
        return []
    cid, _code, _trigger, mtype = _header(msg)
    return [{"control_id": cid, "message_type": mtype, "patient_id": _patient_id(msg),
             "patient_class": _f(pv1, 2), "location": _f(pv1, 3, 1), "room": _f(pv1, 3, 2),
             "bed": _f(pv1, 3, 3),
             "attending_doctor_id": _f(pv1, 7, 1), "attending_doctor_family": _f(pv1, 7, 2),
             "attending_doctor_given": _f(pv1, 7, 3), "hospital_service": _f(pv1, 10),
             "visit_number": _f(pv1, 19), "admit_time": _when(_f(pv1, 44)),
             "discharge_time": _when(_f(pv1, 45))}]


def _p_orders(msg: Any, seen: object) -> list[dict[str, Any]]:
    cid, _code, _trigger, mtype = _header(msg)
    if mtype not in ("ORM^O01", "OML^O21", "ORU^R01") or not _patient_id(msg):
        return []
    groups: list[dict[str, Any]] = []
    for seg in msg:
        name = str(seg[0])
        if name == "ORC" or (name == "OBR" and (not groups or "OBR" in groups[-1])):
            groups.append({})
        if groups and name in ("ORC", "OBR", "ZDS"):
            groups[-1].setdefault(name, seg)
    rows = []
    for g in groups:
        orc, obr = g.get("ORC"), g.get("OBR")
        filler = _f(obr, 3) or _f(orc, 3)
        rows.append({"control_id": cid, "message_type": mtype, "patient_id": _patient_id(msg),
                     "order_control": _f(orc, 1), "placer_order_number": _f(obr, 2) or _f(orc, 2),
                     "filler_order_number": filler, "accession_number": _f(obr, 18) or filler,
                     "service_code": _f(obr, 4, 1), "service_text": _f(obr, 4, 2),
                     "service_system": _f(obr, 4, 3),
                     "order_status": _f(orc, 5), "result_status": _f(obr, 25), "modality": _f(obr, 24),
                     "ordered_time": _when(_f(orc, 9)), "observation_time": _when(_f(obr, 7)),
                     "study_instance_uid": _f(g.get("ZDS"), 1)})
    return rows


def _p_appointments(msg: Any, seen: object) -> list[dict[str, Any]]:
    cid, code, trigger, _mtype = _header(msg)
    sch = _first(msg, "SCH")
    if code != "SIU" or trigger not in ("S12", "S13", "S14", "S15", "S26") or sch is None:
        return []
    placer, filler = _f(sch, 1), _f(sch, 2)
    if not placer and not filler:
        return []
    ais, ail, aig = _first(msg, "AIS"), _first(msg, "AIL"), _first(msg, "AIG")
    start = (_when(_f(sch, 11, 4)) or _when(_f(ais, 4)) or _when(_f(ail, 6)) or _when(_f(aig, 8)))
    end = _when(_f(sch, 11, 5))
    minutes = _f(ais, 7) or _f(sch, 9)
    if end is None and start is not None and minutes.isdigit():
        end = start + dt.timedelta(minutes=int(minutes))
    return [{"control_id": cid, "trigger": trigger, "patient_id": _patient_id(msg),
             "appointment_id": placer or filler, "placer_appointment_id": placer,
             "filler_appointment_id": filler,
             "accession_number": _f(sch, 27), "start_time": start, "end_time": end,
             "duration_minutes": int((end - start).total_seconds() // 60) if start and end else None,
             "status": _f(sch, 25), "reason": _f(sch, 7, 2) or _f(sch, 7, 1), "appointment_type": _f(sch, 8),
             "service_code": _f(ais, 3, 1), "service_text": _f(ais, 3, 2), "resource_id": _f(aig, 3),
             "resource_type": _f(aig, 4), "location": _f(ail, 3), "personnel_id": _f(_first(msg, "AIP"), 3)}]


def _p_documents(msg: Any, seen: object) -> list[dict[str, Any]]:
    cid, code, trigger, _mtype = _header(msg)
    txa = _first(msg, "TXA")
    if code != "MDM" or trigger not in ("T02", "T04") or not _patient_id(msg) or not _f(txa, 12):
        return []
    text = "\n".join(msg.unescape(str(seg[5])) if len(seg) > 5 else "" for seg in msg if str(seg[0]) == "OBX")
    return [{"control_id": cid, "trigger": trigger, "patient_id": _patient_id(msg),
             "unique_document_number": _f(txa, 12), "document_type": _f(txa, 2),
             "activity_time": _when(_f(txa, 4)), "completion_status": _f(txa, 17),
             "availability_status": _f(txa, 19), "accession_number": _f(txa, 15), "text": text}]


def _number(value: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value.strip())
    except ValueError:
        return None


def _p_results(msg: Any, seen: object) -> list[dict[str, Any]]:
    cid, code, _trigger, _mtype = _header(msg)
    if code == "MDM":
        return []
    patient_id, obr, rows = _patient_id(msg), None, []
    for seg in msg:
        name = str(seg[0])
        if name == "OBR":
            obr = seg
        elif name == "OBX":
            filler, value_type = _f(obr, 3), _f(seg, 2)
            value, time_ = _whole(msg, seg, 5), _f(seg, 14)
            rows.append({
                "control_id": cid, "patient_id": patient_id, "accession_number": _f(obr, 18) or filler,
                "placer_order_number": _f(obr, 2), "filler_order_number": filler, "service_code": _f(obr, 4),
                "set_id": _number(_f(seg, 1), int), "value_type": value_type,
                "observation_code": _f(seg, 3, 1), "observation_text": _f(seg, 3, 2),
                "observation_system": _f(seg, 3, 3), "observation_sub_id": _f(seg, 4), "value": value,
                "value_numeric": _number(value, float) if value_type == "NM" else None, "units": _f(seg, 6),
                "reference_range": _whole(msg, seg, 7), "abnormal_flags": _whole(msg, seg, 8),
                "result_status": _f(seg, 11),
                "observation_time": _when(time_) if time_ else _when(_f(obr, 7))})
    return rows


def _whole(msg: Any, seg: Any, field: int) -> str:
    """A whole field (components and repetitions), unescaped."""
    return msg.unescape(str(seg[field])) if len(seg) > field else ""


#: the six tables of the ``tables`` section (bench/memory.py builds these too)
_PYTHON_HL7: dict[str, Callable[[Any, Any], list[dict[str, Any]]]] = {
    "messages": _p_messages, "patients": _p_patients, "visits": _p_visits, "orders": _p_orders,
    "appointments": _p_appointments, "documents": _p_documents}
TABLES = tuple(_PYTHON_HL7)


def python_hl7_table(table: str, path: Path) -> pl.DataFrame:
    """``table`` built message by message with python-hl7 from the file at ``path``."""
    import hl7

    build = _p_results if table == "results" else _PYTHON_HL7[table]
    seen: dict[tuple[str, str, str], str] = {}
    rows: list[dict[str, Any]] = []
    for text in _python_hl7_messages(path):
        rows.extend(build(hl7.parse(text), seen))
    return pl.DataFrame(rows, schema=SCHEMAS[table], orient="row")


def bench_tables(path: Path, n: int, sample: Path, warm: Path) -> list[str]:
    """Each of the six other tables: kit's vectorised read_file against python-hl7; returns RATIO lines."""
    ratios = []
    print(f"{'table':<13} {'kit rows':>9} {'kit msgs/s':>11}   {'python-hl7 rows':>15} {'msgs/s':>8}"
          f"   kit/python-hl7: median (range) of {ROUNDS} rounds")
    for table in TABLES:
        kit_sample = read_file(sample, tables=[table])[table]  # warm-ups (and kit's table of the sample)
        python_hl7_table(table, warm)
        kit_rates, p_rates, df, dp = _rounds(
            lambda t=table: read_file(path, tables=[t])[t],  # type: ignore[misc]
            lambda t=table: python_hl7_table(t, sample), n, PYTHON_HL7_SAMPLE)  # type: ignore[misc]
        _same_table(kit_sample, dp, table)
        kit_rate, p_rate = statistics.median(kit_rates), statistics.median(p_rates)
        ratio, low, high = _ratio(kit_rates, p_rates)
        print(f"{table:<13} {df.height:>9,} {kit_rate:>11,.0f}   {dp.height:>15,} {p_rate:>8,.0f}"
              f"   {ratio:6.1f} ({low:.1f}-{high:.1f})")
        ratios.append(f"RATIO hl7 {table} frame msgs/s kit/python-hl7 = {ratio:.1f}")
    return ratios


# -- MLLP: round trips (kit MLLPSender vs python-hl7 MLLPClient), listener throughput 1 vs 8 -------
MLLP_N = 2_000
MLLP_ROUNDS = 7
MLLP_SENDERS = 8
#: the many-sender rounds send this many times the messages of a one-sender round, so that both
#: rounds of a pair last about as long: a stall of the shared machine or disk (tens of ms) then
#: weighs alike on both, not four times as much on the shorter round
MLLP_MANY_FACTOR = 3


def _mllp_messages(prefix: str, n: int) -> list[str]:
    """``n`` messages of the sample feed, MSH-10 ``prefix`` + a number (none is a duplicate)."""
    base = list(feed())
    out = []
    for i in range(n):
        head, _, rest = base[i % len(base)].partition("\r")
        fields = head.split("|")
        fields[9] = f"{prefix}{i:09d}"
        out.append("|".join(fields) + "\r" + rest)
    return out


def _mllp_listener(store: Path) -> tuple[Any, int]:
    """``kit hl7 listen`` on an ephemeral port in its own process (as a hospital runs it); (process, port)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "from kit.cli import main; main()", "hl7", "listen",
                             "--port", "0", "--store", str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # "mllp  mllp://127.0.0.1:PORT"
    if not line.startswith("mllp"):
        proc.kill()
        raise RuntimeError(f"kit hl7 listen did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def _listener_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the listener process has used so far (Linux /proc; else None)."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _bare(sock: Any, text: str) -> None:
    """The floor: one send, one receive, nothing checked (what neither client can do without)."""
    sock.sendall(b"\x0b" + text.encode() + b"\x1c\r")
    if not sock.recv(65536):
        raise AssertionError("the listener closed the connection")


def _python_hl7_acked(client: Any, text: str, control_id: str) -> None:
    reply = client.send_message(text)
    if f"MSA|AA|{control_id}\r".encode() not in reply:
        raise AssertionError(f"no AA for {control_id}: {reply[:200]!r}")


def bench_mllp(n: int) -> list[str]:
    """MLLP on loopback against one kit listener (``kit hl7 listen`` in its own process, SQLite
    ``synchronous=FULL``, every AA after its commit), all in this run; returns the RATIO lines.

    - round trips: kit ``MLLPSender.send`` (which checks that MSA-2 is the message's MSH-10 and
      returns the typed ACK) against python-hl7's ``MLLPClient.send_message`` (its reply checked
      here for ``MSA|AA|<id>``), ``n`` messages each, each on its own kept connection, both warmed
      up alike (300 messages each), then *taking turns message by message* (who goes first
      alternates), so that a busy spell of a shared machine falls on both alike. Round trips/s =
      1 / the median round trip (robust to the stalls a busy machine adds at random); the mean is
      printed beside it. Both wait on the same listener's fsync'ed commit, which is nearly all of
      a round trip: the ratio compares what each client adds to it. A third side in the same
      turns, a bare socket (send, receive, nothing checked), gives the floor: the listener and
      the kernel, which neither client can avoid; each client's median minus it is what the
      client adds. kit's line is the sender as installed (its round trip in C, ``_leanc``, where
      pip built it); a fourth side in the same turns is kit's lean path in Python, what a kit
      installed without a C compiler does (printed, not a target). The listener's own CPU per
      message (its process, from /proc) is printed too;
    - listener throughput: messages/s stored and acknowledged with one python-hl7 sender and with
      ``MLLP_SENDERS`` at once (group commit; connected before the clock starts, ``n / 2``
      messages a round for one sender, ``MLLP_MANY_FACTOR`` times that between the many, so that
      both rounds last about as long), ``MLLP_ROUNDS`` pairs of rounds back to back (who
      goes first alternates); the ratio is the median of the pairs' ratios (a pair shares the
      machine's and the disk's mood of the moment), each side's median and best beside it.
    """
    import itertools
    import socket
    import statistics
    import threading

    import hl7.client

    from kit.hl7 import sender as sender_module
    from kit.hl7.mllp import MLLPSender

    built = sender_module._leanc  # the round trip in C (kit/hl7/_leanc.c), where pip built it
    kit_times: list[float] = []
    p_times: list[float] = []
    bare_times: list[float] = []
    py_times: list[float] = []  # kit's lean round trip in Python (where no C compiler was found)
    kit_cpu = p_cpu = py_cpu = 0.0  # the client's own CPU time (this thread), system calls included
    listener_cpu: float | None = None
    one_rates: list[float] = []
    many_rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = _mllp_listener(Path(tmp) / "bench.db")
        try:
            with MLLPSender("127.0.0.1", port) as sender, \
                    MLLPSender("127.0.0.1", port) as in_python, \
                    hl7.client.MLLPClient("127.0.0.1", port) as client, \
                    socket.create_connection(("127.0.0.1", port)) as bare:

                def python_lean(text: str) -> None:
                    """kit's lean round trip in Python, as a kit installed without a C compiler."""
                    sender_module._leanc = None  # type: ignore[assignment]
                    try:
                        in_python.send(text)
                    finally:
                        sender_module._leanc = built

                # warm up all sides alike (imports, caches, the store's first pages)
                warm = zip(_mllp_messages("W", 300), _mllp_messages("V", 300), _mllp_messages("U", 300),
                           _mllp_messages("Y", 300), strict=True)
                for i, (mine, theirs, floor, lean) in enumerate(warm):
                    sender.send(mine)
                    _python_hl7_acked(client, theirs, f"V{i:09d}")
                    _bare(bare, floor)
                    if built is not None:
                        python_lean(lean)
                kit_msgs, p_msgs = _mllp_messages("K", n), _mllp_messages("P", n)
                bare_msgs, py_msgs = _mllp_messages("B", n), _mllp_messages("Y", n)
                clock, cpu = time.perf_counter, time.thread_time
                orders = list(itertools.permutations(range(3 if built is None else 4)))
                before = _listener_cpu(proc.pid)
                for i in range(n):
                    for side in orders[i % len(orders)]:
                        if side == 3:  # the switch of path is timed too: two stores, ~0.1 us
                            start, used = clock(), cpu()
                            python_lean(py_msgs[i])
                            py_times.append(clock() - start)
                            py_cpu += cpu() - used
                        elif side == 0:
                            start, used = clock(), cpu()
                            sender.send(kit_msgs[i])
                            kit_times.append(clock() - start)
                            kit_cpu += cpu() - used
                        elif side == 1:
                            start, used = clock(), cpu()
                            _python_hl7_acked(client, p_msgs[i], f"P{i:09d}")
                            p_times.append(clock() - start)
                            p_cpu += cpu() - used
                        else:
                            start = clock()
                            _bare(bare, bare_msgs[i])
                            bare_times.append(clock() - start)
                after = _listener_cpu(proc.pid)
                if before is not None and after is not None:
                    listener_cpu = (after - before) / (len(orders[0]) * n)

            def senders(count: int, prefix: str, total: int) -> float:
                """``count`` python-hl7 clients, connected before the clock starts, send ``total``
                messages between them at once; messages/s from the start to the last ACK."""
                each = total // count
                clients = [hl7.client.MLLPClient("127.0.0.1", port) for _ in range(count)]
                msgs = [_mllp_messages(f"{prefix}{k}-", each) for k in range(count)]
                go = threading.Barrier(count + 1)

                def run(k: int) -> None:
                    go.wait()
                    for i, text in enumerate(msgs[k]):
                        _python_hl7_acked(clients[k], text, f"{prefix}{k}-{i:09d}")

                threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
                for t in threads:
                    t.start()
                go.wait()
                start = time.perf_counter()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - start
                for c in clients:
                    c.close()
                return count * each / elapsed

            per_round = max(MLLP_SENDERS, n // 2)
            per_many = MLLP_MANY_FACTOR * per_round
            for r in range(MLLP_ROUNDS):
                if r % 2 == 0:
                    one_rates.append(senders(1, f"A{r}-", per_round))
                    many_rates.append(senders(MLLP_SENDERS, f"B{r}-", per_many))
                else:
                    many_rates.append(senders(MLLP_SENDERS, f"B{r}-", per_many))
                    one_rates.append(senders(1, f"A{r}-", per_round))
        finally:
            proc.terminate()
            proc.wait(10)

    kit_rate, p_rate = 1 / statistics.median(kit_times), 1 / statistics.median(p_times)
    floor = statistics.median(bare_times)
    print("MLLP, one kit listener (kit hl7 listen, SQLite synchronous=FULL, AA after commit)")
    print(f"round trips, {n:,} each, in turns:   median         mean   (round trips/s)   client CPU"
          "   median round trip, over the bare socket")
    sides = [("kit MLLPSender" + (" (C)" if built is not None else ""), kit_rate, kit_times, kit_cpu),
             ("python-hl7 MLLPClient", p_rate, p_times, p_cpu)]
    if py_times:
        sides.append(("kit, lean path in Python", 1 / statistics.median(py_times), py_times, py_cpu))
    for label, rate, times, used in sides:
        print(f"  {label:<26} {rate:>10,.0f} {len(times) / sum(times):>12,.0f}"
              f"   {used / len(times) * 1e6:>18.1f} us/msg   {1e6 / rate:>8.1f} us,"
              f" +{1e6 / rate - floor * 1e6:.1f} us")
    print(f"  {'bare socket (the floor)':<26} {1 / floor:>10,.0f} {len(bare_times) / sum(bare_times):>12,.0f}"
          f"   {'':>18}          {floor * 1e6:>8.1f} us: the listener and the kernel, in both round trips")
    if listener_cpu is not None:
        print(f"  listener process CPU per message: {listener_cpu * 1e6:.1f} us (the same for every side)")
    if py_times:
        print(f"  kit's lean path in Python (no C compiler at install)/python-hl7:"
              f" {1 / statistics.median(py_times) / p_rate:.2f} (information, not a target)")
    elif built is None:
        print("  kit.hl7._leanc is not built: kit's line is its lean path in Python")
    pairs = [many / one for many, one in zip(many_rates, one_rates, strict=True)]
    print(f"listener throughput, {MLLP_ROUNDS} pairs of rounds of {per_round:,} messages (1 sender) and"
          f" {per_many:,} ({MLLP_SENDERS} senders), about as long (msgs/s):")
    for label, rates in (("1 sender", one_rates), (f"{MLLP_SENDERS} senders", many_rates)):
        print(f"  {label:<12} median {statistics.median(rates):>7,.0f}  best {max(rates):>7,.0f}"
              f"   rounds: {' '.join(f'{x:,.0f}' for x in rates)}")
    print(f"  {MLLP_SENDERS}/1 per pair: {' '.join(f'{x:.2f}' for x in pairs)}")
    return [f"RATIO mllp round trips/s kit/python-hl7 = {kit_rate / p_rate:.2f}",
            f"RATIO mllp listener msgs/s {MLLP_SENDERS} senders/1 sender = {statistics.median(pairs):.2f}"]


def main(argv: list[str]) -> None:
    only = next((a.split("=", 1)[1].split(",") for a in argv[1:] if a.startswith("--only=")),
                ["results", "tables", "mllp"])
    args = [a for a in argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else DEFAULT_N
    ratios: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = make_file(n, Path(tmp))
        # python-hl7's sample and the warm-up's: the same first messages
        sample, warm = make_file(min(n, PYTHON_HL7_SAMPLE), Path(tmp)), make_file(WARM_UP_SAMPLE, Path(tmp))
        print(f"file: {n:,} messages, {path.stat().st_size / 1e6:.1f} MB; python-hl7 reads the first"
              f" {PYTHON_HL7_SAMPLE:,} ({PYTHON_HL7_SAMPLE // 63} cycles of the sample feed) from a file"
              " of their own")
        if "results" in only:
            ratios += bench_results_frame(path, n, sample, warm)
        if "tables" in only:
            ratios += bench_tables(path, n, sample, warm)
    if "mllp" in only:
        ratios += bench_mllp(int(args[1]) if len(args) > 1 else MLLP_N)
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main(sys.argv)
