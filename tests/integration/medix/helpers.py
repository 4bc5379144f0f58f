"""Peers for the Medix tests: a recording webhook receiver, a throttling TCP proxy, a client, studies."""

from __future__ import annotations

import json
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from pydicom.uid import generate_uid

from kit.examples.dicom import random_ct_files
from tests.integration.http_peer import trickle as trickle_bytes

TOKEN = "medix-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD = ["0", "1", "2", "3", "4", "5"]


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 recording every webhook POST (headers and JSON body) in order.

    ``fail_first``: answer 500 to the first N requests (recorded in ``failed``).
    ``hang``: seconds to sleep before answering each request (a receiver that hangs).
    ``trickle``: answer every request a byte every 20 ms, a status line and headers that never
    end (recorded in ``failed``), until the client hangs up.
    """

    def __init__(self, *, fail_first: int = 0, hang: float = 0.0, trickle: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.trickle = trickle
        self.received: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.on_status: Callable[[str], None] | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                record = {"path": self.path, "headers": dict(self.headers.items()), "body": body,
                          "at": time.monotonic()}
                if receiver.hang:
                    time.sleep(receiver.hang)
                if receiver.trickle:
                    with receiver.cond:
                        receiver.failed.append(record)
                        receiver.cond.notify_all()
                    return trickle_bytes(self.wfile, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000, 0.02)
                with receiver.cond:
                    fail = len(receiver.failed) < receiver.fail_first
                    (receiver.failed if fail else receiver.received).append(record)
                    receiver.cond.notify_all()
                self.send_response(500 if fail else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if not fail and receiver.on_status is not None:
                    receiver.on_status(str(body.get("Status")))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def statuses(self) -> list[str]:
        with self.cond:
            return [r["body"]["Status"] for r in self.received]

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 60.0) -> list[str]:
        """Wait until ``predicate(statuses)``; the statuses (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [r["body"]["Status"] for r in self.received]
                if predicate(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook statuses {got} after {timeout}s")
                self.cond.wait(min(left, 0.2))

    def wait_final(self, timeout: float = 60.0) -> list[str]:
        """Wait for a terminal status (5, -3 or -4)."""
        return self.wait_for(lambda s: bool(s) and s[-1] in ("5", "-3", "-4"), timeout)


class ThrottleProxy:
    """A TCP proxy on 127.0.0.1 to ``upstream`` passing at most ``rate`` bytes/s each way (slow link)."""

    def __init__(self, upstream: tuple[str, int], *, rate: int = 1 << 20, chunk: int = 16384) -> None:
        self.upstream = upstream
        self.rate = rate
        self.chunk = chunk
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    break
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


def client(address: str, **kwargs: Any) -> httpx.Client:
    """An httpx client for the service with the token."""
    return httpx.Client(base_url=address, headers=AUTH, timeout=30, **kwargs)


def request_download(address: str, study: str, hook: str, headers: dict[str, str] | None = None) -> str:
    """POST a download; the job id."""
    with client(address) as c:
        r = c.post("/api/study/download", json={"StudyInstanceUID": study, "WebhookUri": hook,
                                                "WebhookHeaders": headers or {}})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["JobId"]
    return job_id


def zip_members(data: bytes, folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> bytes of every file in a zip (written to ``folder`` to read it)."""
    path = folder / "study.zip"
    path.write_bytes(data)
    with zipfile.ZipFile(path) as archive:
        return {Path(n).stem: archive.read(n) for n in archive.namelist()}


def dataset_bytes(blob: bytes) -> bytes:
    """A Part 10 file's bytes after its preamble and file meta group (the data set as encoded)."""
    assert blob[128:132] == b"DICM"
    assert blob[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) FileMetaInformationGroupLength
    length = int.from_bytes(blob[140:144], "little")
    return blob[144 + length:]


def make_study(folder: Path, count: int, *, size: int = 128) -> tuple[str, list[Path]]:
    """``count`` CT files of one new study (random pixels): its UID and the paths."""
    study = generate_uid()
    return study, random_ct_files(folder, count, patient_id="MRN9100", patient_name="Medix^Test",
                                  study_uid=study, accession_number="ACC9100", size=size, seed=count)

