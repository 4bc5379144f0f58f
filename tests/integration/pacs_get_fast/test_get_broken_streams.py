"""A hostile PACS breaks a C-GET mid-instance: cut mid-dataset, A-ABORT or another PDU mid
P-DATA, a fragment on another presentation context, fragment and PDU lengths that lie, a PDU
larger than any limit.

On every path (slow: :func:`kit.dicom._fastnet.c_get` with a :class:`FileReceiver`; fast:
:func:`kit.dicom._getphase.get_loop`, unnamed and named files) the association ends with a
KitError, the instance answered success before the break is on disk whole, nothing was answered
for the broken one, no temporary or half file is left and no file made ahead stays open.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from kit.dicom import _getphase
from tests.integration.pacs_get_fast.test_get_answer_path import _ahead, _run
from tests.integration.pacs_get_fast.test_get_hostile_uids import (
    DATA,
    FRAGMENT,
    _answers,
    _store_rq_raw,
)

BIG = bytes(range(256)) * 40  # 10 KiB: three data fragments of 4 KiB
ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00"
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def _pdus(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from(">I", raw, pos + 2)
        out.append(raw[pos:pos + 6 + length])
        pos += 6 + length
    return out


def _second() -> list[bytes]:
    """The PDUs of the instance that breaks: command, then three data fragments."""
    pdus = _pdus(_store_rq_raw(2, b"1.2.840.2", BIG))
    assert len(pdus) == 4
    return pdus


def _recontext(pdu: bytes, cx: int) -> bytes:
    return pdu[:10] + bytes([cx]) + pdu[11:]


def _lie(pdu: bytes, pdv_length: int) -> bytes:
    return pdu[:6] + struct.pack(">I", pdv_length) + pdu[10:]


BREAKS = {
    "cut-mid-dataset": lambda p: p[0] + p[1] + p[2][:2000],
    "cut-mid-pdu-header": lambda p: p[0] + p[1] + p[2][:3],
    "abort-mid-dataset": lambda p: p[0] + p[1] + ABORT,
    "release-mid-dataset": lambda p: p[0] + p[1] + RELEASE_RQ,
    "other-context-mid-dataset": lambda p: p[0] + p[1] + _recontext(p[2], 3) + p[3],
    "pdv-longer-than-its-pdu": lambda p: p[0] + p[1] + _lie(p[2], len(p[2])),
    "pdv-shorter-than-2": lambda p: p[0] + p[1] + _lie(p[2], 1),
    "pdu-longer-than-sent": lambda p: p[0] + p[1] + p[2][:2] + struct.pack(">I", 1 << 20) + p[2][6:],
    "pdu-over-any-limit": lambda p: p[0] + p[1] + p[2][:2] + struct.pack(">I", 0xFFFFFFF0) + p[2][6:],
    "data-before-command": lambda p: p[1] + p[0] + p[2] + p[3],
    "command-after-data": lambda p: p[0] + p[1] + p[0] + p[2] + p[3],
}


@pytest.mark.parametrize("kind", ["slow", "linked", "named", "inline"])
@pytest.mark.parametrize("brk", sorted(BREAKS))
def test_a_broken_instance_is_never_answered_and_leaves_nothing(tmp_path: Path, brk: str,
                                                                  kind: str) -> None:
    stream = _store_rq_raw(1, b"1.2.840.1", DATA) + BREAKS[brk](_second())
    dest = tmp_path / kind
    result, sent, files, rows, errors = _run(stream, dest, FRAGMENT, fast=kind != "slow",
                                             cancel_after=None, unnamed=kind in ("linked", "inline"),
                                             pooled=kind != "inline")
    assert isinstance(result, tuple) and result[0] in {"AssociationAbortedError", "DicomProtocolError",
                                                      "PduInterrupt", "PeerTimeoutError"}
    assert [status for status, _ in _answers(sent)] == [0]  # the first only, a success
    assert [(name, data[-len(DATA):]) for name, data in files] == [("1.2.840.1.dcm", DATA)]
    assert [row[4] for row in rows] == ["1.2.840.1.dcm"] and errors == []
    assert _ahead(dest) == 0  # no file made ahead left open
    if brk == "pdu-over-any-limit":  # refused from its header: A-ABORT, its body never read
        assert sent.endswith(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06")


@pytest.mark.parametrize("first", [0, 5, 200, 300_000])
def test_a_short_write_finishes_the_file_without_copying_the_data_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: int) -> None:
    """writev writes at most 2 GiB - 4 KiB at once (Linux): the rest of a large data set (a video)
    follows from where it stopped, without a second copy of it in memory (tracemalloc's peak)."""
    real_writev = os.writev

    def short_writev(fd: int, buffers: Any) -> int:  # the kernel takes only ``first`` bytes
        views, room = [], first
        for buffer in buffers:
            views.append(memoryview(buffer)[:room])
            room -= len(views[-1])
        return real_writev(fd, views) if first else 0

    body = os.urandom(4 << 20)
    monkeypatch.setattr(_getphase.os, "writev", short_writev)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        _getphase._write_all(fd, b"H" * 256, body)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"H" * 256 + body
    assert peak < len(body) // 2
