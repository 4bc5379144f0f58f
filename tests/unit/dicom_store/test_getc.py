"""``kit.dicom._getc`` (the C-GET answer path's readers in C) answers as the Python paths do.

- ``identity`` against :func:`kit.dicom._getphase.read_identity`'s Python walk, on generated data
  sets (explicit and implicit VR, both byte orders, sequences of defined and undefined length,
  nested, values outside ASCII) and on damaged ones: the same dict, or None where Python raises
  ValueError or a value is not ASCII -- never another answer;
- ``message`` through :meth:`kit.dicom._clientphase.ClientPhase.recv`: the same messages and the
  same errors as its Python path, on generated DIMSE streams read in pieces cut anywhere, damaged
  or not (the socket-level comparison with DataPhase: tests/integration/pacs_client_fast);
- under CI=true both are built and used.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kit.dicom import _clientphase, _getphase
from kit.dicom._clientphase import ClientPhase
from kit.dicom._command import encode_command
from kit.dicom._getphase import read_identity
from kit.dicom.received import MAX_DEPTH
from kit.errors import AssociationAbortedError, KitError
from tests.conftest import require_built

try:
    from kit.dicom import _getc
except ImportError:
    _getc = None  # type: ignore[assignment]
needs_c = pytest.mark.skipif(_getc is None, reason="kit.dicom._getc is not built")

SOP, STUDY, SERIES = 0x00080018, 0x0020000D, 0x0020000E
SYNTAXES = {"1.2.840.10008.1.2": (True, True), "1.2.840.10008.1.2.1": (False, True),
            "1.2.840.10008.1.2.2": (False, False)}


def test_the_c_readers_are_built_and_used() -> None:
    require_built(_getc, "kit.dicom._getc")
    assert _clientphase._c_message is _getc.message
    assert _getphase._c_identity is _getc.identity


# -- identity ---------------------------------------------------------------------------------


def _python_walk(data: bytes, syntax: str) -> Any:
    """read_identity without the C walk: its dict, or the ValueError's text."""
    saved, _getphase._c_identity = _getphase._c_identity, None
    try:
        return read_identity(data, syntax)
    except ValueError as exc:
        return ("ValueError", str(exc))
    finally:
        _getphase._c_identity = saved


def _c_walk(data: bytes, syntax: str) -> Any:
    implicit, little = SYNTAXES[syntax]
    return _getc.identity(data, implicit, little, MAX_DEPTH)


def _agrees(data: bytes, syntax: str) -> None:
    slow = _python_walk(data, syntax)
    fast = _c_walk(data, syntax)
    if fast is None:  # declined: only where Python raises, or a value is not ASCII
        assert isinstance(slow, tuple) or any("\ufffd" in v for v in slow.values()), (slow, data)
        return
    assert isinstance(slow, dict), (slow, fast)
    assert {tag: v for tag, v in zip((SOP, STUDY, SERIES), fast, strict=True) if v is not None} == slow
    assert read_identity(data, syntax) == slow  # the C walk in place: the same dict


def _element(tag: int, vr: bytes, value: bytes, implicit: bool, little: bool) -> bytes:
    order = "little" if little else "big"
    head = (tag >> 16).to_bytes(2, order) + (tag & 0xFFFF).to_bytes(2, order)
    if implicit or tag >> 16 == 0xFFFE:
        return head + len(value).to_bytes(4, order) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"OF"):
        return head + vr + b"\x00\x00" + len(value).to_bytes(4, order) + value
    return head + vr + len(value).to_bytes(2, order) + value


def _undefined(tag: int, vr: bytes, items: list[bytes], implicit: bool, little: bool) -> bytes:
    """An undefined-length sequence of undefined-length items."""
    order = "little" if little else "big"

    def marker(elem: int, length: int) -> bytes:
        return (0xFFFE).to_bytes(2, order) + elem.to_bytes(2, order) + length.to_bytes(4, order)

    head = _element(tag, vr, b"", implicit, little)[:-4] + (0xFFFFFFFF).to_bytes(4, order)
    body = b"".join(marker(0xE000, 0xFFFFFFFF) + item + marker(0xE00D, 0) for item in items)
    return head + body + marker(0xE0DD, 0)


_UID = st.text(alphabet="0123456789.", min_size=0, max_size=64)
_TAGS = st.sampled_from([0x00080016, SOP, 0x00080020, 0x00100010, 0x0018_0050, STUDY, SERIES,
                         0x00200011, 0x7FE00010, 0x00091010])
_VRS = st.sampled_from([b"UI", b"CS", b"OB", b"SQ", b"UN", b"LO", b"OW", b"UT", b"DA"])


@st.composite
def _datasets(draw: st.DrawFn) -> tuple[bytes, str]:
    syntax = draw(st.sampled_from(sorted(SYNTAXES)))
    implicit, little = SYNTAXES[syntax]

    def elements(depth: int) -> bytes:
        out = []
        for tag in sorted(draw(st.lists(_TAGS, max_size=6))):
            kind = draw(st.integers(0, 5 if depth < 3 else 3))
            if kind <= 2:
                value = draw(_UID).encode() if tag in (SOP, STUDY, SERIES) else draw(st.binary(max_size=20))
                pads = st.sampled_from([b"\x00", b" ", b"\xc3\xa9", b"", b" \x00"])
                if draw(st.booleans()):
                    value = draw(pads) + value + draw(pads)
                out.append(_element(tag, draw(_VRS), value, implicit, little))
            elif kind == 3:  # a defined-length value of any VR, holding anything
                out.append(_element(tag, draw(_VRS), draw(st.binary(max_size=40)), implicit, little))
            else:  # an undefined-length sequence (SQ or UN: then its items are implicit VR)
                vr = draw(st.sampled_from([b"SQ", b"UN"]))
                items = [elements(depth + 1) for _ in range(draw(st.integers(0, 2)))]
                out.append(_undefined(tag, vr, items, implicit, little))
        return b"".join(out)

    data = bytearray(elements(0))
    for pos, value in draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3)):
        if data:
            data[pos % len(data)] = value
    cut = draw(st.one_of(st.none(), st.integers(0, 10_000)))
    return bytes(data if cut is None else data[:cut % (len(data) + 1)]), syntax


@needs_c
@settings(max_examples=400, deadline=None)
@given(case=_datasets())
@example(case=(b"", "1.2.840.10008.1.2.1"))
@example(case=(_element(SOP, b"UI", b"1.2\xff", False, True), "1.2.840.10008.1.2.1"))
# the usual padding, every time: an odd-length UID ends in NUL (PS3.5 6.2); a sloppy writer's spaces
@example(case=(_element(SOP, b"UI", b"1.2\x00", False, True), "1.2.840.10008.1.2.1"))
@example(case=(_element(STUDY, b"UI", b"\x00 1.23 \x00", True, True), "1.2.840.10008.1.2"))
def test_identity_is_the_python_walk(case: tuple[bytes, str]) -> None:
    _agrees(*case)


@needs_c
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), syntax=st.sampled_from(sorted(SYNTAXES)))
def test_identity_on_any_bytes(data: bytes, syntax: str) -> None:
    _agrees(data, syntax)


@needs_c
def test_identity_nesting_past_the_depth_bound_is_left_to_python() -> None:
    implicit, little = True, True
    inner = b""
    for _ in range(MAX_DEPTH + 2):
        inner = _undefined(0x00081140, b"SQ", [inner], implicit, little)
    data = _element(SOP, b"UI", b"1.2", implicit, little) + inner \
        + _element(STUDY, b"UI", b"7", implicit, little)
    assert _c_walk(data, "1.2.840.10008.1.2") is None
    assert _python_walk(data, "1.2.840.10008.1.2")[0] == "ValueError"


# -- message ----------------------------------------------------------------------------------


def _phase(stream: bytes, cuts: list[int]) -> ClientPhase:
    """A ClientPhase reading ``stream`` from memory, each read ending at the next cut."""
    assoc: Any = SimpleNamespace(is_requestor=True, acceptor=SimpleNamespace(maximum_length=0),
                                 requestor=SimpleNamespace(maximum_length=0))
    phase = ClientPhase(assoc, 2.0, "test")
    ends = sorted({c % (len(stream) + 1) for c in cuts if c % (len(stream) + 1)}) + [len(stream)]
    pos = [0]

    def recv_some(view: memoryview) -> int:
        start = pos[0]
        stop = next((e for e in ends if e > start), len(stream))
        n = min(len(view), stop - start)
        if n <= 0:
            raise AssociationAbortedError("the peer closed the connection", peer="test")
        view[:n] = stream[start:start + n]
        pos[0] += n
        return n

    phase._recv_some = recv_some  # type: ignore[method-assign]
    phase._abort_transport = lambda reason: None  # type: ignore[method-assign]
    return phase


def read_messages(phase: Any) -> list[Any]:
    """What a phase reads: (context, command, data set) per message, up to 64, then its KitError."""
    out: list[Any] = []
    try:
        for _ in range(64):
            msg = phase.recv()
            out.append((msg.context_id, sorted(msg.command.items()), msg.dataset))
    except KitError as exc:
        out.append((type(exc).__name__, str(exc)))
    return out


def _read_all(stream: bytes, cuts: list[int], c: bool) -> list[Any]:
    saved = _clientphase._c_message
    _clientphase._c_message = saved if c else None
    try:
        return read_messages(_phase(stream, cuts))
    finally:
        _clientphase._c_message = saved


def _pdus(cx: int, command: bytes, data: bytes | None, fragment: int, kind: int = 0x04) -> bytes:
    """A message as P-DATA-TF PDUs of one PDV each (``fragment`` bytes at most; 0: one PDU each)."""
    out = []
    for part, flag in ((command, 0x01), (data, 0x00)):
        if part is None:
            continue
        step = fragment or max(len(part), 1)
        pieces = [part[i:i + step] for i in range(0, len(part), step)] or [b""]
        for i, piece in enumerate(pieces):
            control = flag | (0x02 if i == len(pieces) - 1 else 0x00)
            pdv = struct.pack(">IBB", len(piece) + 2, cx, control) + piece
            out.append(struct.pack(">BBI", kind, 0, len(pdv)) + pdv)
    return b"".join(out)


def _command(status: int, sop: str, data: bool, extra: bytes = b"") -> bytes:
    """A command set with ``extra`` bytes after it (before it if they start with ``^``): elements the
    codec must keep, skip or refuse as decode_command does."""
    body = encode_command({0x00000002: "1.2.840.10008.5.1.4.1.1.2", 0x00000100: 0x0001, 0x00000110: 3,
                           0x00000800: 1 if data else 0x0101, 0x00000900: status, 0x00001000: sop})
    return extra[1:] + body if extra[:1] == b"^" else body + extra


_EXTRA = st.sampled_from([b"", struct.pack("<HHI", 0x0008, 0x0058, 4) + b"1.2\x00",
                          struct.pack("<HHI", 0x0000, 0x0800, 4) + b"\x01\x01\x00\x00",
                          struct.pack("<HHI", 0x0000, 0x1000, 2), b"\x00\x00",
                          b"^" + struct.pack("<HHI", 0x0008, 0x0058, 4) + b"1.2\x00",  # ^: before it
                          struct.pack("<HHI", 0x0000, 0x0800, 2) + b"\x01\x01",
                          struct.pack("<HHI", 0x0000, 0x0800, 3) + b"\x01\x01\x00"])
_MESSAGES = st.lists(st.tuples(st.integers(1, 255), st.integers(0, 0xFFFF), st.one_of(
    st.none(), st.binary(max_size=2000)), st.sampled_from([0, 1, 7, 100, 4096]), _EXTRA),
    min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(messages=_MESSAGES, cuts=st.lists(st.integers(0, 20_000), max_size=8), tail=st.binary(max_size=40),
       damage=st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=2),
       merge=st.sampled_from(["", "two commands", "data past the end"]))
def test_message_reads_what_the_python_path_reads(messages: list[tuple[int, int, bytes | None, int, bytes]],
                                                  cuts: list[int], tail: bytes,
                                                  damage: list[tuple[int, int]], merge: str) -> None:
    stream = bytearray(b"".join(_pdus(cx, _command(status, f"1.2.3.{i}", data is not None, extra), data, frag)
                                for i, (cx, status, data, frag, extra) in enumerate(messages)) + tail)
    if merge:  # PDVs past a message's end in its last PDU: the C path leaves that PDU to Python
        last = struct.pack(">IBB", 4, 1, 0x02) + b"ab"  # a last data fragment
        head = _pdus(1, _command(0, "9.9", merge == "data past the end"), None, 0)
        pdvs = head[6:] + (head[6:] if merge == "two commands" else last + last)
        stream = bytearray(struct.pack(">BBI", 4, 0, len(pdvs)) + pdvs) + stream
    for pos, value in damage:
        stream[pos % len(stream)] = value
    slow = _read_all(bytes(stream), cuts, c=False)
    assert _read_all(bytes(stream), cuts, c=True) == slow
    assert slow[-1][0] in {"AssociationAbortedError", "DicomProtocolError", "PduInterrupt"}


def test_message_of_the_usual_c_get_shape_is_taken_by_c() -> None:
    """An instance's command and data set PDUs, and a pending C-GET-RSP: one C call each, not declined."""
    if _getc is None:
        pytest.skip("kit.dicom._getc is not built")
    pending = _pdus(3, _command(0xFF00, "", False), None, 0)
    stream = _pdus(3, _command(0, "1.2.3", True), b"\x08\x00" * 2000, 0) + pending
    buf = bytearray(stream)
    first = _getc.message(buf, 0, len(buf), 1 << 22, 1 << 20, -1, 1 << 23)
    assert first is not None and len(first) == 4 and first[1] == 3 and first[3] == b"\x08\x00" * 2000
    second = _getc.message(buf, first[0], len(buf), 1 << 22, 1 << 20, -1, 1 << 23)
    assert second is not None and second[0] == len(buf) and second[3] is None
    assert _getc.message(buf, 0, 3, 1 << 22, 1 << 20, -1, 1 << 23) == (6, 0)  # a header in pieces
    assert _getc.message(buf, 0, 0, 1 << 22, 1 << 20, -1, 1 << 23) == (6, -1)  # nothing yet: idle
    assert _getc.message(buf, 0, 20, 1 << 22, 1 << 20, -1, 1 << 23)[1] == 0  # inside the first PDU
    assert _getc.message(buf, 0, len(buf), 1 << 22, 1 << 20, 100, 1 << 23) is None  # over max_data
    assert _getc.message(buf, 0, len(buf), 100, 1 << 20, -1, 1 << 23) is None  # a PDU over the limit
    assert _getc.message(buf, 0, len(buf), 1 << 22, 1 << 20, -1, 1000) is None  # to be spilled
    with pytest.raises(ValueError):
        _getc.message(buf, 5, 2, 1 << 22, 1 << 20, -1, 1 << 23)


@needs_c
def test_message_bounds_are_exact() -> None:
    """Each bound declines one byte past it and takes the bound itself (Python then raises or spills)."""
    command = _command(0, "1.2.3", True)
    buf = bytearray(_pdus(3, command, b"\x08\x00" * 50, 0))
    first = struct.unpack(">I", buf[2:6])[0]  # the command PDU's length; then the data PDU's
    second = len(buf) - 6 - first - 6
    assert second == 4 + 2 + 100
    size = dict(limit=max(first, second), max_command=len(command), max_data=100, spill_at=100)

    def read(**change: int) -> Any:
        bounds = {**size, **change}
        return _getc.message(buf, 0, len(buf), bounds["limit"], bounds["max_command"], bounds["max_data"],
                             bounds["spill_at"])

    assert read() is not None and read()[3] == b"\x08\x00" * 50
    for bound in size:
        assert read(**{bound: size[bound] - 1}) is None, bound


@needs_c
def test_a_message_across_two_contexts_is_left_to_python() -> None:
    """A command on one presentation context and its data set on another: C declines, both paths agree."""
    data_pdu = _pdus(5, b"", b"\x08\x00" * 10, 0)[-32:]  # the data PDU alone: header, PDV of 4 + 22
    assert data_pdu[:6] == struct.pack(">BBI", 4, 0, 26) and data_pdu[10] == 5
    stream = _pdus(3, _command(0, "1.2.3", True), None, 0) + data_pdu
    assert _getc.message(bytearray(stream), 0, len(stream), 1 << 22, 1 << 20, -1, 1 << 23) is None
    slow = _read_all(stream, [], c=False)
    assert _read_all(stream, [], c=True) == slow and slow[-1][0] == "DicomProtocolError"
