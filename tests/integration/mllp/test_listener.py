"""The kit's MLLP listener: bad input gets clear NAKs and the listener keeps serving; concurrency; idle."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from kit.errors import ConfigError
from kit.hl7.framing import CR, FS, VT
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener, MLLPSender
from tests.integration.mllp.conftest import exchange, frame, msa, numbered


def _connect(listener: MLLPListener) -> socket.socket:
    return socket.create_connection(("127.0.0.1", listener.port), timeout=10)


def _still_serves(listener: MLLPListener, sock: socket.socket | None = None, i: int = 999) -> None:
    """A normal message is answered AA (on ``sock`` if given, else a new connection) and stored."""
    text = numbered(i, "OK")
    if sock is None:
        with MLLPSender("127.0.0.1", listener.port, timeout=10) as sender:
            assert sender.send(text).control_id == f"OK{i:06d}"
    else:
        assert msa(exchange(sock, frame(text))[0]) == ("AA", f"OK{i:06d}")
    assert listener.store is not None
    assert f"OK{i:06d}" in listener.store.messages()["control_id"].to_list()


def test_garbage_bytes_get_ar_and_connection_stays_usable(listener: MLLPListener) -> None:
    with _connect(listener) as sock:
        reply = exchange(sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0]
        m = parse_message(reply)
        assert (m.get("MSA-1"), m.get("MSA-2")) == ("AR", "")
        assert "framing" in m.get("MSA-3").lower() and m.get("ERR-3.1") == "100"
        _still_serves(listener, sock, 1)
    assert listener.counts["framing_errors"] >= 1
    assert listener.store is not None and listener.store.counters()["framing_errors"] >= 1


def test_frame_without_end_bytes_then_close(listener: MLLPListener) -> None:
    with _connect(listener) as sock:
        sock.sendall(VT + numbered(5, "P").encode())
    time.sleep(0.2)
    _still_serves(listener, None, 2)
    assert listener.store is not None
    assert "P000005" not in listener.store.messages()["control_id"].to_list()


def test_50_mb_frame_is_rejected_and_listener_still_serves(listener: MLLPListener) -> None:
    big = numbered(6, "BIG").encode() + b"OBX|1|TX|X||" + b"A" * (50 * 1024 * 1024) + b"\r"
    with _connect(listener) as sock:
        reply = exchange(sock, VT + big + FS + CR, timeout=60)[0]
        code, control_id = msa(reply)
        assert code == "AR" and "exceeds" in parse_message(reply).get("MSA-3")
        _still_serves(listener, sock, 3)  # the rest of the big frame was drained, same connection
    _still_serves(listener, None, 4)
    assert listener.store is not None
    assert "BIG000006" not in listener.store.messages()["control_id"].to_list()


@pytest.mark.parametrize(("payload", "code", "err"), [
    (b"PID|1||MRN1001^^^KITHOSP^MR\rPV1|1|O\r", "AR", "100"),                     # no MSH
    (b"MSH|^^~\\|ADT|KITHOSP|KIT|R|20260101||ADT^A01|E1|P|2.5.1\r", "AR", "102"),  # bad encoding chars
    (b"MSH|^~\\&|ADT|KITHOSP|KIT|R|20260101||QQQ^Z99|E2|P|2.5.1\rPID|1||X\r", "AR", "200"),  # unknown type
    (b"MSH|^~\\&|ADT|KITHOSP|KIT|R|20260101||ADT^A01||P|2.5.1\rPID|1||X\r", "AR", "101"),    # no MSH-10
    (b"MSH|^~\\&|ADT|KITHOSP|KIT|R|20260101||ADT^A01|E3|P|2.5.1\rPID1||X\r", "AE", "100"),   # bad segment
])
def test_malformed_messages_get_nak_with_err(listener: MLLPListener, payload: bytes, code: str,
                                             err: str) -> None:
    with _connect(listener) as sock:
        reply = parse_message(exchange(sock, frame(payload))[0])
        assert reply.get("MSA-1") == code
        assert reply.get("ERR-3.1") == err, reply.to_er7()
        if err == "200":  # parsed fine: the NAK names the rejected message
            assert reply.get("MSA-2") == "E2"
        _still_serves(listener, sock, 10)
    assert listener.store is not None and listener.store.count() == 1
    assert listener.counts["rejected"] == 1


def test_duplicates_stored_once_and_acked_again(listener: MLLPListener) -> None:
    with MLLPSender("127.0.0.1", listener.port, timeout=10) as sender:
        first = sender.send(numbered(7, "DUP"))
        again = sender.send(numbered(7, "DUP"))
    assert first.code.value == again.code.value == "AA"
    assert "duplicate" in again.text and "duplicate" not in first.text
    assert listener.store is not None and listener.store.count() == 1
    assert listener.store.counters()["duplicates"] == 1


def test_several_messages_in_one_write_are_all_acked_in_order(listener: MLLPListener) -> None:
    texts = [numbered(i, "B") for i in range(20)]
    with _connect(listener) as sock:
        sock.settimeout(10)
        sock.sendall(b"".join(frame(t) for t in texts))
        replies: list[str] = []
        from kit.hl7.framing import MLLPDecoder
        decoder = MLLPDecoder()
        while len(replies) < len(texts):
            replies += [f.decode() for f in decoder.feed(sock.recv(65536)) if isinstance(f, bytes)]
    assert [msa(r) for r in replies] == [("AA", f"B{i:06d}") for i in range(20)]


def test_concurrent_clients(listener: MLLPListener) -> None:
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with MLLPSender("127.0.0.1", listener.port, timeout=20) as sender:
                df = sender.send_many(numbered(k * 100 + i, "C") for i in range(50))
                assert df["ack_code"].to_list() == ["AA"] * 50
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert listener.store is not None and listener.store.count() == 500
    assert listener.counts["connections"] >= 10


def test_idle_connection_is_closed(tmp_path: Path) -> None:
    with MLLPListener(tmp_path / "idle.db", idle_timeout=0.3) as listener, _connect(listener) as sock:
        sock.settimeout(5)
        start = time.monotonic()
        assert sock.recv(10) == b""
        assert time.monotonic() - start < 4


def test_on_message_and_frames_replay(tmp_path: Path) -> None:
    seen: list[str] = []
    with MLLPListener(tmp_path / "cb.db", on_message=lambda m: seen.append(m.control_id)) as listener:
        with MLLPSender("127.0.0.1", listener.port) as sender:
            sender.send_many([numbered(i, "F") for i in range(10)])
        assert listener.store is not None
        frames = listener.store.frames()
        since = listener.store.since(5)
    assert seen == [f"F{i:06d}" for i in range(10)]
    assert frames["messages"]["control_id"].to_list() == seen
    assert since["id"].to_list() == list(range(6, 11))


def test_port_in_use_is_a_config_error(listener: MLLPListener, tmp_path: Path) -> None:
    other_sock = socket.socket()
    other_sock.bind(("127.0.0.1", 0))
    other_sock.listen()
    try:
        blocked = MLLPListener(tmp_path / "b.db", port=other_sock.getsockname()[1])
        with pytest.raises(ConfigError):
            blocked.start()
    finally:
        other_sock.close()
    assert listener.address == f"mllp://127.0.0.1:{listener.port}"
    listener.stop()
    listener.stop()  # idempotent
