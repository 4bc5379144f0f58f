"""A hostile PACS names our files: the SOP Instance UID of each C-STORE sub-operation of a C-GET.

- escaping, empty, dot, padded, over-long, NUL and non-UID names: the fast path
  (:func:`kit.dicom._getphase.get_loop` with a :class:`PooledReceiver`, unnamed or named files)
  answers, writes and reports exactly what the slow path (:func:`kit.dicom._fastnet.c_get` with a
  :class:`FileReceiver`) does, nothing lands outside the destination folder, only KitError leaves;
- two different UIDs that read the same (non-ASCII bytes, which the command decoder replaces)
  never share one file: neither is answered success (a valid UID is ASCII digits and dots);
- the same UID twice in one C-GET, or a file left by an earlier retrieve: the last one sent is on
  disk, whole, under the path its row names, on both paths.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kit.dicom._command import C_STORE_RQ, decode_command, encode_command
from kit.dicom._fastnet import FileReceiver
from kit.dicom._getphase import PooledReceiver
from tests.integration.pacs_get_fast.test_get_answer_path import CT, _frame, _get_rsp, _run

FRAGMENT = 4096
SYNTAX = "1.2.840.10008.1.2.1"
DATA = b"\x08\x00\x16\x00\x02\x00\x00\x001\x00"


def _store_rq_raw(msg_id: int, uid: bytes, data: bytes) -> bytes:
    """A C-STORE-RQ whose (0000,1000) holds the raw bytes ``uid`` (not ASCII-encoded by us)."""
    command = encode_command({0x00000002: CT, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                              0x00000700: 0, 0x00000800: 1})
    command += struct.pack("<HHI", 0x0000, 0x1000, len(uid)) + uid
    return _frame(1, command, data, FRAGMENT)


def _answers(sent: bytes) -> list[tuple[int, bytes]]:
    """(status, echoed UID) of each C-STORE-RSP we sent (single-PDU commands, after the C-GET-RQ)."""
    out = []
    pos = 0
    while pos + 6 <= len(sent):
        (length,) = struct.unpack_from(">I", sent, pos + 2)
        kind, body = sent[pos], sent[pos + 6:pos + 6 + length]
        pos += 6 + length
        if kind != 0x04:  # an A-ABORT we sent
            continue
        pdv_len = struct.unpack_from(">I", body, 0)[0]
        if body[5] & 0x01:  # a command fragment (ours are whole)
            command = decode_command(bytes(body[6:4 + pdv_len]))
            if int.from_bytes(command[0x0100], "little") == 0x8001:
                out.append((int.from_bytes(command[0x0900], "little"), command[0x1000]))
    return out


def _three(stream: bytes, base: Path) -> dict[str, Any]:
    """The slow path's and the fast path's (unnamed and named files) runs of ``stream``; errors
    by type (their text names the temporary file each path used)."""
    runs = {}
    for kind in ("slow", "linked", "named"):
        result, sent, files, rows, errors = _run(stream, base / kind, FRAGMENT, fast=kind != "slow",
                                                 cancel_after=None, unnamed=kind == "linked")
        runs[kind] = (result, sent, files, rows, [e.split(":")[0] for e in errors])
    return runs


HOSTILE = [b"../x", b"../../x", b"a/b", b"/etc/x", b"", b".", b"..", b"/", b"\x00", b"  ",
           b".recv-1-2-3-p0.part", b"1.2.3\x00.4", b"1.2.3\x00\x00", b"1.2.3 ", b" 1.2.3",
           b"9" * 300, b"1.2\\..\\..\\x", b"*?<>|\n\t", b"1.2.3.dcm", b"\\", b"~"]


@pytest.mark.parametrize("uid", HOSTILE, ids=[repr(u)[:24] for u in HOSTILE])
def test_a_hostile_uid_is_handled_as_the_slow_path_does(tmp_path: Path, uid: bytes) -> None:
    stream = (_store_rq_raw(1, uid, DATA) + _store_rq_raw(2, b"1.2.840.5", DATA)
              + _get_rsp(0xFF00, 1, FRAGMENT) + _get_rsp(0x0000, None, FRAGMENT))
    runs = _three(stream, tmp_path)
    assert runs["linked"] == runs["slow"] and runs["named"] == runs["slow"]
    result, sent, files, rows, errors = runs["linked"]
    assert isinstance(result, dict) and result["Status"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["linked", "named", "slow"]  # none escaped
    for kind in runs:
        assert all(p.is_file() and not p.is_symlink() for p in (tmp_path / kind).iterdir())
    answers = _answers(sent)
    assert len(answers) == 2 and answers[1][0] == 0
    assert ("1.2.840.5.dcm", DATA) in [(n, d[-len(DATA):]) for n, d in files]
    if answers[0][0] == 0:  # accepted: a plain file in the folder, under the name its row gives
        assert len(files) == 2 and len(rows) == 2 and rows[0][4] in {n for n, _ in files}
    else:
        assert answers[0][0] == 0xA700 and errors and len(files) == 1


def test_uids_that_decode_alike_never_share_a_file(tmp_path: Path) -> None:
    """Bytes outside ASCII are decoded to U+FFFD: 1.2.<0xFF> and 1.2.<0xFE> would both be written
    to one file and both answered success (the first one then lost). Neither is a UID: refused,
    on every path."""
    stream = (_store_rq_raw(1, b"1.2.\xff", DATA + b"A") + _store_rq_raw(2, b"1.2.\xfe", DATA + b"B")
              + _store_rq_raw(3, b"1.2.840.5", DATA) + _get_rsp(0x0000, None, FRAGMENT))
    for kind in ("linked", "named", "slow"):
        result, sent, files, rows, errors = _run(stream, tmp_path / kind, FRAGMENT, fast=kind != "slow",
                                                 cancel_after=None, unnamed=kind == "linked")
        assert isinstance(result, dict)
        assert [status for status, _ in _answers(sent)] == [0xA700, 0xA700, 0]
        assert [name for name, _ in files] == ["1.2.840.5.dcm"] and len(rows) == 1
        assert len(errors) == 2 and all("unusable SOP Instance UID" in e for e in errors)


def test_the_same_uid_twice_and_over_an_earlier_file(tmp_path: Path) -> None:
    """The last instance sent under a UID is on disk, whole, where its rows say, on both paths
    (each success was true when sent: the later one replaced the file after its answer)."""
    stream = (_store_rq_raw(1, b"1.2.840.7", DATA + b"first") + _store_rq_raw(2, b"1.2.840.8", DATA)
              + _store_rq_raw(3, b"1.2.840.7", DATA + b"second!") + _get_rsp(0x0000, None, FRAGMENT))
    base = tmp_path / "twice"
    base.mkdir()
    runs = _three(stream, base)
    assert runs["linked"] == runs["slow"] and runs["named"] == runs["slow"]
    result, sent, files, rows, errors = runs["linked"]
    assert [status for status, _ in _answers(sent)] == [0, 0, 0] and not errors
    on_disk = dict(files)
    assert sorted(on_disk) == ["1.2.840.7.dcm", "1.2.840.8.dcm"]
    assert on_disk["1.2.840.7.dcm"].endswith(DATA + b"second!")
    assert [row[4] for row in rows] == ["1.2.840.7.dcm", "1.2.840.8.dcm", "1.2.840.7.dcm"]
    assert rows[-1][5] == len(on_disk["1.2.840.7.dcm"])  # the last row is the file on disk


@pytest.mark.parametrize("kind", ["slow", "linked", "named"])
def test_a_file_from_an_earlier_retrieve_is_replaced_whole(tmp_path: Path, kind: str) -> None:
    (tmp_path / "1.2.840.7.dcm").write_bytes(b"stale" * 1000)
    (tmp_path / "1.2.840.8.dcm").mkdir()  # not a file: cannot be replaced, answered 0xA700
    receiver = FileReceiver(tmp_path, None, None) if kind == "slow" else PooledReceiver(tmp_path, None, None)
    if isinstance(receiver, PooledReceiver):
        receiver.unnamed = kind == "linked" and receiver.unnamed
        receiver.pooled = True
        receiver.pool.top_up(2)
        statuses = [receiver.place(uid, CT, SYNTAX, DATA)[0] for uid in ("1.2.840.7", "1.2.840.8")]
    else:
        statuses = [receiver.write(uid, CT, SYNTAX, DATA) for uid in ("1.2.840.7", "1.2.840.8")]
    receiver.discard()
    assert statuses == [0, 0xA700] and len(receiver.errors) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.840.7.dcm", "1.2.840.8.dcm"]  # none aside
    assert (tmp_path / "1.2.840.7.dcm").read_bytes().endswith(DATA)
    assert len((tmp_path / "1.2.840.7.dcm").read_bytes()) < 1000


@settings(max_examples=40, deadline=None)
@given(uids=st.lists(st.binary(min_size=0, max_size=80) | st.lists(st.sampled_from(
    [b"1", b".", b"\xff", b"\xfe", b"/", b"\x00", b" "]), max_size=3).map(b"".join),
    min_size=1, max_size=8))
@example(uids=[b"1.2.\xff", b"1.2.\xfe"])
def test_no_uid_escapes_or_shares_a_file(tmp_path_factory: pytest.TempPathFactory,
                                         uids: list[bytes]) -> None:
    """Any bytes as UIDs: only KitError (here: none), every file directly in the folder, and two
    successes share a file only when their UIDs are the same UID (padding aside)."""
    stream = b"".join(_store_rq_raw(i + 1, uid, DATA + bytes([i])) for i, uid in enumerate(uids))
    base = tmp_path_factory.mktemp("uids")
    result, sent, files, rows, errors = _run(stream + _get_rsp(0x0000, None, FRAGMENT), base / "d",
                                             FRAGMENT, fast=True, cancel_after=None)
    assert isinstance(result, dict)
    assert [p.name for p in base.iterdir()] == ["d"]
    answers = _answers(sent)
    assert len(answers) == len(uids)
    succeeded = [uid.rstrip(b"\x00 ") for uid, (status, _) in zip(uids, answers, strict=True)
                 if status == 0]
    by_file: dict[str, set[bytes]] = {}
    for uid, row in zip(succeeded, rows, strict=True):
        by_file.setdefault(row[4], set()).add(uid)
    assert all(len(same) == 1 for same in by_file.values())
    assert sorted(by_file) == sorted(name for name, _ in files)
