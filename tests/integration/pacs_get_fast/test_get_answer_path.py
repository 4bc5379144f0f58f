"""The C-GET answer path (kit.dicom._getphase): files made ahead, the answer before the bookkeeping.

- fast == slow: :func:`get_loop` with a :class:`PooledReceiver` sends the same bytes, writes the
  same files, keeps the same rows and errors and ends the same way (fields or KitError) as
  :func:`kit.dicom._fastnet.c_get` with a plain FileReceiver, on generated and damaged C-GET
  streams over real sockets (Hypothesis, bounded);
- durability: a real peer (pynetdicom's C-GET SCP) finds each instance complete at its final
  path when it receives our C-STORE-RSP, even with a slow rename;
- the pool, as the receiver uses it (named and unnamed): bounded, nothing left behind, a failing
  folder answered 0xA700 and reported (the pool itself: tests/unit/dicom_store/test_spare_pool.py).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import CTImageStorage
from pynetdicom import evt

from kit.dicom import _getphase
from kit.dicom._clientphase import ClientPhase
from kit.dicom._command import C_GET_RSP, C_STORE_RQ, NO_DATASET, encode_command
from kit.dicom._fastnet import FileReceiver, c_get
from kit.dicom._getphase import PooledReceiver, get_loop
from kit.dicom._spares import POOL_LIMIT
from kit.dicom.dimse import PacsClient
from kit.errors import KitError
from kit.examples.dicom import random_ct_files
from tests.integration.pacs_get_fast.scp import serving_get

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = {1: "1.2.840.10008.1.2.1", 3: "1.2.840.10008.1.2"}  # accepted storage contexts


def _phase(sock: socket.socket, fragment: int) -> ClientPhase:
    """A ClientPhase on a connected socket, without an association (framing and reading only)."""
    assoc: Any = SimpleNamespace(is_requestor=True, acceptor=SimpleNamespace(maximum_length=fragment),
                                 requestor=SimpleNamespace(maximum_length=0))
    phase = ClientPhase.__new__(ClientPhase)
    ClientPhase.__init__(phase, assoc, 2.0, "test")
    phase._sock = sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 2, 0))
    sock.settimeout(None)
    phase._kernel = True
    return phase


def _frame(cx: int, command: bytes, data: bytes | None, fragment: int) -> bytes:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        phase = _phase(ours, fragment)
        return b"".join(bytes(p) for p in phase.frame(cx, command, data))


def _store_rq(cx: int, msg_id: int, sop: str, data: bytes, fragment: int) -> bytes:
    return _frame(cx, encode_command({0x00000002: CT, 0x00000100: C_STORE_RQ, 0x00000110: msg_id,
                                      0x00000700: 0, 0x00000800: 1, 0x00001000: sop}), data, fragment)


def _get_rsp(status: int, remaining: int | None, fragment: int) -> bytes:
    fields: dict[int, int | str] = {0x00000100: C_GET_RSP, 0x00000120: 1, 0x00000800: NO_DATASET,
                                    0x00000900: status}
    if remaining is not None:
        fields[0x00001020] = remaining
    return _frame(1, encode_command(fields), None, fragment)


def _run(stream: bytes, dest: Path, fragment: int, *, fast: bool, cancel_after: int | None,
         unnamed: bool = True, pooled: bool = True) -> tuple[Any, bytes, list[tuple[str, bytes]], list[Any],
                                                              list[str]]:
    """What one C-GET client does with the peer's ``stream``: its result, the bytes it sent,
    the files it left, its rows and errors (``pooled``: files made ahead from the start, else
    each made as its instance comes)."""
    dest.mkdir()
    receiver = PooledReceiver(dest, "1.2.9", None) if fast else FileReceiver(dest, "1.2.9", None)
    if isinstance(receiver, PooledReceiver):
        receiver.unnamed = unnamed and receiver.unnamed
        receiver.pooled = pooled
    calls = [0]

    def cancelled() -> bool:
        calls[0] += 1
        return cancel_after is not None and calls[0] > cancel_after

    ours, theirs = socket.socketpair()
    sent = bytearray()
    with ours, theirs:
        phase = _phase(ours, fragment)

        def peer() -> None:
            try:
                theirs.sendall(stream)
                theirs.shutdown(socket.SHUT_WR)
                while chunk := theirs.recv(65536):
                    sent.extend(chunk)
            except OSError:
                pass

        thread = threading.Thread(target=peer)
        thread.start()
        receiver.prepare()
        try:
            if fast:
                assert isinstance(receiver, PooledReceiver)
                result: Any = get_loop(phase, 1, GET_MODEL, b"\x08\x00\x52\x00\x00\x00\x00\x00", SYNTAXES,
                                       receiver, cancelled)
            else:
                result = c_get(phase, 1, GET_MODEL, b"\x08\x00\x52\x00\x00\x00\x00\x00", SYNTAXES,
                               receiver.write, receiver.prepare, cancelled)
        except KitError as exc:
            result = (type(exc).__name__, str(exc))
        finally:
            receiver.discard()
            ours.shutdown(socket.SHUT_RDWR)
        thread.join(10)
    files = sorted((p.name, p.read_bytes()) for p in dest.iterdir())
    rows = [(*row[:4], Path(row[4]).name, row[5]) for row in receiver.rows]
    return result, bytes(sent), files, rows, receiver.errors


_UIDS = st.sampled_from(["1.2.3.4", "1.2.3.5", "1.2.840.99.1", "", "../up", ".hidden", "9" * 60])
_OPS = st.lists(st.one_of(
    st.tuples(st.just("store"), st.sampled_from([1, 3, 5]), st.integers(0, 0xFFFF), _UIDS,
              st.binary(min_size=0, max_size=2000)),
    st.tuples(st.just("pending"), st.sampled_from([0xFF00, 0xFF01]),
              st.one_of(st.none(), st.integers(0, 20)))), max_size=8)


@settings(max_examples=40, deadline=None)
@given(ops=_OPS, final=st.sampled_from([0x0000, 0xB000, 0xA702, None]),
       fragment=st.sampled_from([0, 64, 120, 4096]), cut=st.one_of(st.none(), st.integers(0, 30_000)),
       damage=st.one_of(st.none(), st.tuples(st.integers(0, 30_000), st.integers(0, 255))),
       cancel_after=st.one_of(st.none(), st.integers(0, 6)), unnamed=st.booleans(), pooled=st.booleans())
def test_answer_path_equals_c_get(tmp_path_factory: pytest.TempPathFactory, ops: list[Any],
                                  final: int | None, fragment: int, cut: int | None,
                                  damage: tuple[int, int] | None, cancel_after: int | None,
                                  unnamed: bool, pooled: bool) -> None:
    parts: list[bytes] = []
    for op in ops:
        if op[0] == "store":
            _, cx, msg_id, sop, data = op
            parts.append(_store_rq(cx, msg_id, sop, data, fragment))
        else:
            parts.append(_get_rsp(op[1], op[2], fragment))
    if final is not None:
        parts.append(_get_rsp(final, None, fragment))
    stream = bytearray(b"".join(parts))
    if cut is not None and stream:
        del stream[cut % len(stream):]
    if damage is not None and stream:
        stream[damage[0] % len(stream)] = damage[1]
    base = tmp_path_factory.mktemp("get")
    slow = _run(bytes(stream), base / "slow", fragment, fast=False, cancel_after=cancel_after)
    fast = _run(bytes(stream), base / "fast", fragment, fast=True, cancel_after=cancel_after,
                unnamed=unnamed, pooled=pooled)
    assert fast == slow
    result = fast[0]
    assert isinstance(result, dict) or result[0] in {"AssociationAbortedError", "DicomProtocolError",
                                                     "PduInterrupt", "PeerTimeoutError"}
    assert not any(name.endswith(".part") for name, _ in fast[2])  # nothing left behind


# -- a real peer: pynetdicom's C-GET SCP -----------------------------------------------------------


def _ahead(dest: Path) -> int:
    """Files this process holds open in ``dest`` (made ahead: unnamed ones show as ``#ino``)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(f"{dest}/")
    return count


@pytest.fixture
def get_scp(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """A pynetdicom C-GET SCP serving 40 small CT instances; at each of our C-STORE-RSPs (when it
    asks its handler for the next instance) it checks the folder ``state.dest``."""
    files = random_ct_files(tmp_path / "src", 40, patient_id="DURABLE", size=16, seed=3)
    datasets = [pydicom.dcmread(p) for p in files]
    state = SimpleNamespace(dest=tmp_path / "dest", problems=[], most_parts=0, datasets=datasets,
                            study=str(datasets[0].StudyInstanceUID))

    def check(ds: Any) -> None:
        path = state.dest / f"{ds.SOPInstanceUID}.dcm"
        if not path.is_file():
            state.problems.append(f"{path.name} not at its final path when its success arrived")
            return
        if pydicom.dcmread(path).PixelData != ds.PixelData:
            state.problems.append(f"{path.name} incomplete when its success arrived")
        state.most_parts = max(state.most_parts, _ahead(state.dest))

    def on_get(event: evt.Event) -> Iterator[Any]:
        yield len(datasets)
        previous = None
        for ds in datasets:
            if previous is not None:
                check(previous)  # its C-STORE-RSP (success) has just arrived
            yield 0xFF00, ds
            previous = ds
        if previous is not None:
            check(previous)

    with serving_get(on_get) as state.port:
        yield state


@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "inline"])
@pytest.mark.parametrize("unnamed", [True, False], ids=["linked", "renamed"])
def test_each_file_is_at_its_final_path_before_the_peer_sees_success(
        get_scp: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, unnamed: bool, pooled: bool) -> None:
    real_replace, real_link = os.replace, os.link

    def slow_replace(*args: Any, **kwargs: Any) -> None:  # slow: an answer sent before it would show
        time.sleep(0.02)
        real_replace(*args, **kwargs)

    def slow_link(*args: Any, **kwargs: Any) -> None:
        time.sleep(0.02)
        real_link(*args, **kwargs)

    monkeypatch.setattr(_getphase.os, "replace", slow_replace)
    monkeypatch.setattr(_getphase.os, "link", slow_link)
    if not unnamed:
        monkeypatch.setattr(_getphase, "_TMPFILE", 0)
    # every creation slow (the pool from the third instance on), or none (never)
    monkeypatch.setattr(_getphase, "SLOW_CREATE", -1.0 if pooled else 60.0)
    client = PacsClient("127.0.0.1", get_scp.port, called_aet="GETSCP", timeout=20)
    got = client.get(study_uid=get_scp.study, dest=get_scp.dest, sop_classes=[CTImageStorage])
    assert got.height == len(get_scp.datasets)
    assert get_scp.problems == []
    if pooled:
        assert 0 < get_scp.most_parts <= POOL_LIMIT  # files made ahead, never more than the limit
    else:
        assert get_scp.most_parts == 0  # none made ahead: each as its instance came
    assert sorted(p.name for p in get_scp.dest.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in get_scp.datasets)
    assert _ahead(get_scp.dest) == 0  # nothing left open
    again = client.get(study_uid=get_scp.study, dest=get_scp.dest, sop_classes=[CTImageStorage])
    assert again.height == got.height  # over the files already there: replaced, nothing left aside
    assert sorted(p.name for p in get_scp.dest.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in get_scp.datasets)
    assert get_scp.problems == []


def test_an_answer_before_the_rename_is_seen_by_the_peer(get_scp: SimpleNamespace,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: a receiver that answers first and renames later is caught."""
    real = os.replace
    late: list[threading.Thread] = []

    def late_replace(src: Any, dst: Any) -> None:
        def later() -> None:
            time.sleep(0.05)
            real(src, dst)

        thread = threading.Thread(target=later)
        thread.start()
        late.append(thread)

    monkeypatch.setattr(_getphase, "_TMPFILE", 0)  # named files, renamed (late) into place
    monkeypatch.setattr(_getphase.os, "replace", late_replace)
    client = PacsClient("127.0.0.1", get_scp.port, called_aet="GETSCP", timeout=20)
    client.get(study_uid=get_scp.study, dest=get_scp.dest, sop_classes=[CTImageStorage])
    for thread in late:
        thread.join(5)
    assert any("not at its final path" in p for p in get_scp.problems)


def test_a_refused_link_falls_back_to_renamed_files(get_scp: SimpleNamespace,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No /proc or an LSM refusing linkat: the same files, named and renamed from then on."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(_getphase.os, "link", refuse)
    client = PacsClient("127.0.0.1", get_scp.port, called_aet="GETSCP", timeout=20)
    got = client.get(study_uid=get_scp.study, dest=get_scp.dest, sop_classes=[CTImageStorage])
    assert got.height == len(get_scp.datasets) and get_scp.problems == []
    assert sorted(p.name for p in get_scp.dest.iterdir()) == sorted(
        f"{ds.SOPInstanceUID}.dcm" for ds in get_scp.datasets)
    assert _ahead(get_scp.dest) == 0


# -- the pool ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "named"])
def test_pool_is_bounded_and_leaves_nothing(tmp_path: Path, unnamed: bool) -> None:
    receiver = PooledReceiver(tmp_path, None, None)
    receiver.unnamed = unnamed and receiver.unnamed
    receiver.pooled = True
    receiver.pool.top_up(1000)
    deadline = time.monotonic() + 10
    while _ahead(tmp_path) < POOL_LIMIT and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert _ahead(tmp_path) == POOL_LIMIT  # never more than the limit
    for i in range(3 * POOL_LIMIT):
        status, _, _ = receiver.place(f"1.2.{i}", CT, SYNTAXES[1], b"\x08\x00\x16\x00\x00\x00\x00\x00")
        assert status == 0
        receiver.pool.top_up(POOL_LIMIT)
        assert _ahead(tmp_path) <= POOL_LIMIT + 1  # the pool and the directory descriptor
    receiver.discard()
    receiver.discard()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"1.2.{i}.dcm" for i in range(3 * POOL_LIMIT))
    assert receiver.pool._thread is not None and not receiver.pool._thread.is_alive()
    assert _ahead(tmp_path) == 0


def test_a_folder_gone_mid_way_is_answered_a700_and_reported(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    receiver = PooledReceiver(dest, None, None)
    receiver.pooled = True
    receiver.pool.top_up(2)
    time.sleep(0.05)
    for p in dest.iterdir():  # the folder goes away under us (another process cleans up)
        p.unlink()
    dest.rmdir()
    statuses = [receiver.place(f"1.2.{i}", CT, SYNTAXES[1], b"\x08\x00")[0] for i in range(4)]
    receiver.pool.top_up(4)
    assert statuses[-1] == 0xA700 and statuses.count(0) == 0
    assert receiver.errors and any("No such file" in e for e in receiver.errors)
    receiver.discard()
    assert not dest.exists()


@pytest.mark.parametrize(("slow", "pooled"), [
    ((), False),  # every file quick to make: no thread
    ((0, 2), False),  # two slow of five: a creation preempted on a busy machine does not count
    ((0, 3, 6, 9), False),  # never three within five
    ((1, 2, 3), True),  # three in a row
    ((0, 2, 4), True),  # three of five
], ids=["fast", "two-of-five", "spread", "three-in-a-row", "three-of-five"])
def test_the_pool_turns_on_once_making_files_proves_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         slow: tuple[int, ...], pooled: bool) -> None:
    """Each creation is timed (a fake clock: the slow ones take 1 ms, the others 20 us); files come
    from the pool's thread only once SLOW_TO_POOL of the last SLOW_WINDOW were slow, and then do."""
    data = b"\x08\x00\x16\x00\x00\x00\x00\x00"
    now = [0.0]
    monkeypatch.setattr(_getphase, "perf_counter", lambda: now[0])
    receiver = PooledReceiver(tmp_path, None, None)
    real, made = receiver._new_temp, [0]

    def timed() -> tuple[str, int]:
        now[0] += 1e-3 if made[0] in slow else 20e-6
        made[0] += 1
        return real()

    monkeypatch.setattr(receiver, "_new_temp", timed)
    try:
        for i in range(12):
            assert receiver.place(f"1.2.{i}", CT, SYNTAXES[1], data)[0] == 0
        assert receiver.pooled is pooled and made[0] == 12
        assert receiver.pool._thread is None  # place never starts it: get_loop's top_up does
        if pooled:  # from now on the pool's files are used, none made here
            receiver.pool.top_up(2)
            deadline = time.monotonic() + 10
            while len(receiver.pool._shared.ready) < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            assert receiver.place("1.2.99", CT, SYNTAXES[1], data)[0] == 0
            assert made[0] == 12 and len(receiver.pool._shared.ready) == 1  # one of the thread's two
    finally:
        receiver.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"1.2.{i}.dcm" for i in range(12)] + (["1.2.99.dcm"] if pooled else []))
    assert _ahead(tmp_path) == 0
