"""Fixtures for the MLLP tests: an in-process listener on an ephemeral port, and test messages."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.examples.hl7 import feed
from kit.hl7.framing import MLLPDecoder, frame
from kit.hl7.message import parse_message
from kit.hl7.mllp import MLLPListener
from tests.conftest import require_built

FEED = list(feed())


def numbered(i: int, prefix: str = "T") -> str:
    """The sample feed's message i % len(feed) with MSH-10 set to prefix + i (unique)."""
    head, _, rest = FEED[i % len(FEED)].partition("\r")
    fields = head.split("|")
    fields[9] = f"{prefix}{i:06d}"
    return "|".join(fields) + "\r" + rest


@pytest.fixture(params=["c", "python"])
def lean_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The sender's lean round trip in C (``kit/hl7/_leanc.c``, built by pip install) and, where
    the C one is not built, in Python: each test using this runs on both."""
    from kit.hl7 import sender

    if request.param == "python":
        monkeypatch.setattr(sender, "_leanc", None)
    else:
        require_built(sender._leanc, "kit.hl7._leanc")
    return str(request.param)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[MLLPListener]:
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=30.0) as running:
        yield running


def exchange(sock: socket.socket, data: bytes, timeout: float = 10.0) -> list[str]:
    """Send raw bytes and return the first decoded reply frame(s) as text."""
    sock.settimeout(timeout)
    sock.sendall(data)
    decoder = MLLPDecoder()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("listener closed the connection")
        frames = [f for f in decoder.feed(chunk) if isinstance(f, bytes)]
        if frames:
            return [f.decode() for f in frames]


def msa(reply: str) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK text."""
    m = parse_message(reply)
    return m.get("MSA-1"), m.get("MSA-2")


__all__ = ["FEED", "exchange", "frame", "msa", "numbered"]


def hog(port: int, count: int = 8000, prefix: str = "HOG", timeout: float = 0.5) -> socket.socket:
    """A peer that sends ``count`` messages (MSH-10 ``prefix`` + number) whose ACKs are as long as
    they are, and reads none (a small receive window): sends until the kernel's buffers are full."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(timeout)
    wide = "R" * 199  # MSH-5/MSH-6, echoed in each ACK
    data = b"".join(frame(f"MSH|^~\\&|A|F|{wide}|{wide}|20260101||ADT^A01|{prefix}{i}|P|2.5.1\r")
                    for i in range(count))
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent:sent + 65536])
    except (TimeoutError, ConnectionError):
        pass  # the kernel's buffers are full too (or the listener cut it off)
    return sock
