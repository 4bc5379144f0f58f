"""The C-ECHO fast path (kit.dicom._echo_fast) against real peers and hostile raw sockets.

fast == library: against the embedded PACS (fast and pynetdicom acceptors), dcmtk
storescp and Orthanc, :func:`kit.dicom._echo_fast.echo` succeeds without running
the pynetdicom path, and puts on the wire the very bytes ``PacsClient.echo`` puts
there (a recording proxy in between). Where the peer refuses, aborts, answers
garbage or stays silent, it gives the error ``PacsClient.echo`` gives: same class,
same message, same rejection fields, whether it falls back to the pynetdicom path
(everything unclean) or raises itself (what costs time: refused, silence).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kit.config import PacsSettings
from kit.dicom import _echo_fast
from kit.dicom._echo_pdu import RELEASE_RP, EchoDeclined
from kit.dicom.dimse import PacsClient
from kit.dicom.scp import EmbeddedPACS
from kit.errors import KitError
from tests.conftest import free_port, peer_env, require_tool, spawned, syn_dropping_port, wait_for_port
from tests.integration.conftest import OrthancServer

Outcome = tuple[str, str, tuple[Any, ...]]


def canonical(config: PacsSettings) -> Outcome:
    """What PacsClient.echo (pynetdicom) answers: ("ok", address, ()) or the error's class,
    message and rejection fields."""
    try:
        client = PacsClient.from_settings(config)
        took = client.echo()
        assert took > 0
        return "ok", client.address, ()
    except KitError as exc:
        return _error(exc)


def fast(config: PacsSettings) -> Outcome:
    try:
        address, took = _echo_fast.echo(config)
        assert took > 0
        return "ok", address, ()
    except KitError as exc:
        return _error(exc)


def _error(exc: KitError) -> Outcome:
    fields = tuple(getattr(exc, name, None) for name in ("result", "source_", "reason", "status"))
    return type(exc).__name__, str(exc), fields


class Calls(list[str]):
    """The addresses PacsClient.echo was called for, the outcome of each, and why the fast
    path handed over (its log lines)."""

    outcomes: list[Outcome]
    why: list[str]

    def __repr__(self) -> str:
        return f"{list(self)!r} (outcomes {self.outcomes!r}, handed over because {self.why!r})"


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Counts the echoes the pynetdicom path answered (PacsClient.echo calls), with their outcomes."""
    calls = Calls()
    calls.outcomes, calls.why = [], []
    original = PacsClient.echo

    def counted(self: PacsClient) -> float:
        calls.append(self.address)
        try:
            took = original(self)
        except KitError as exc:
            calls.outcomes.append(_error(exc))
            raise
        calls.outcomes.append(("ok", self.address, ()))
        return took

    class Why(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            calls.why.append(record.getMessage())

    handler = Why(logging.INFO)
    logger = logging.getLogger("kit.dicom._echo_fast")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(PacsClient, "echo", counted)
    try:
        yield calls
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def embedded(pacs: EmbeddedPACS) -> EmbeddedPACS:
    """The empty embedded PACS of tests/integration/conftest.py."""
    return pacs


@contextlib.contextmanager
def storescp(tmp_path: Path, *extra: str) -> Iterator[int]:
    exe = require_tool("storescp")
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir(exist_ok=True)
    with spawned([exe, "-aet", "STORESCP", "-od", str(out), *extra, str(port)], env=peer_env(),
                 log=tmp_path / "storescp.log") as proc:
        wait_for_port(port, proc=proc)
        yield port


def at(port: int, called: str, timeout: float = 10.0, host: str = "127.0.0.1") -> PacsSettings:
    return PacsSettings(host=host, port=port, called_aet=called, timeout=timeout)


# -- real peers ------------------------------------------------------------------------------------

def test_the_embedded_pacs_answers_the_fast_path_as_it_answers_pacsclient(
        embedded: EmbeddedPACS, fallbacks: Calls) -> None:
    config = at(embedded.port, embedded.aet)
    assert fast(config) == ("ok", embedded.address, ())
    assert fallbacks == [], fallbacks
    assert canonical(config) == ("ok", embedded.address, ())


def test_the_pynetdicom_acceptor_answers_the_fast_path(tmp_path: Path, fallbacks: Calls) -> None:
    server = EmbeddedPACS(tmp_path / "slow", port=0, fast=False)
    server.start()
    try:
        config = at(server.port, server.aet)
        assert fast(config) == canonical(config) == ("ok", server.address, ())
        assert fallbacks == [server.address]  # canonical's own call only
    finally:
        server.close()


def test_storescp_answers_the_fast_path_as_it_answers_pacsclient(tmp_path: Path,
                                                                  fallbacks: Calls) -> None:
    with storescp(tmp_path) as port:
        config = at(port, "STORESCP")
        assert fast(config) == ("ok", f"dicom://STORESCP@127.0.0.1:{port}", ())
        assert fallbacks == [], fallbacks
        assert canonical(config) == fast(config)


def test_orthanc_answers_the_fast_path_as_it_answers_pacsclient(orthanc: OrthancServer,
                                                               fallbacks: Calls) -> None:
    config = at(orthanc.dicom_port, orthanc.aet)
    assert fast(config) == ("ok", f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", ())
    assert fallbacks == [], fallbacks
    assert canonical(config) == fast(config)


def test_a_wrong_called_aet_gives_pacsclients_rejection(embedded: EmbeddedPACS,
                                                        orthanc_factory: Callable[..., OrthancServer],
                                                        fallbacks: Calls) -> None:
    checking = orthanc_factory(DicomCheckCalledAet=True)
    for config in (at(embedded.port, "NOTKIT"), at(checking.dicom_port, "NOTORTHANC")):
        got = fast(config)
        assert got[0] == "AssociationRejectedError" and "called AE title not recognised" in got[1], got
        assert got == canonical(config)


def test_a_calling_aet_not_allowed_gives_pacsclients_rejection(tmp_path: Path) -> None:
    server = EmbeddedPACS(tmp_path / "pacs", port=0, allowed_aets=["OTHER"])
    server.start()
    try:
        config = dataclasses.replace(at(server.port, server.aet), aet="STRANGER")
        got = fast(config)
        assert got[0] == "AssociationRejectedError" and "calling AE title" in got[1], got
        assert got == canonical(config)
    finally:
        server.close()


def test_storescp_refusing_gives_pacsclients_rejection(tmp_path: Path) -> None:
    with storescp(tmp_path, "--refuse") as port:
        config = at(port, "STORESCP")
        got = fast(config)
        assert got[0] == "AssociationRejectedError", got
        assert got == canonical(config)


class Recorder:
    """A TCP proxy to ``port`` recording what the client sends, one connection at a time."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent: list[bytes] = []

    def one(self, run: Callable[[], object]) -> bytes:
        """Run ``run`` (which connects once to ``self.port``); the bytes the client sent."""
        got: list[bytes] = []

        def pump(src: socket.socket, dst: socket.socket, keep: list[bytes] | None) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    if keep is not None:
                        keep.append(data)
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        def serve() -> None:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            back = threading.Thread(target=pump, args=(server, client, None))
            back.start()
            pump(client, server, got)
            back.join(10)
            client.close()
            server.close()

        thread = threading.Thread(target=serve)
        thread.start()
        run()
        thread.join(15)
        assert not thread.is_alive()
        return b"".join(got)


@pytest.mark.parametrize("peer", ["embedded", "storescp"])
def test_the_bytes_on_the_wire_are_pacsclients(peer: str, embedded: EmbeddedPACS, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if peer == "embedded":
            port, called = embedded.port, embedded.aet
        else:
            port, called = stack.enter_context(storescp(tmp_path)), "STORESCP"
        recorder = Recorder(port)
        stack.callback(recorder.listener.close)
        config = at(recorder.port, called)
        library = recorder.one(lambda: PacsClient.from_settings(config).echo())
        ours = recorder.one(lambda: _echo_fast.fast_echo(config))
    assert ours == library
    assert ours.endswith(bytes.fromhex("05000000000400000000"))  # released, not aborted


# -- hostile peers ---------------------------------------------------------------------------------

AC = bytes.fromhex(
    "0200000000bc000100004b4954202020202020202020202020204b495453435520202020202020202020"
    + "00" * 32 + "10000015312e322e3834302e31303030382e332e312e312e31210000190100000040000011312e32"
    "2e3834302e31303030382e312e325000003e510000040004000052000020312e322e3832362e302e312e3336"
    "38303034332e392e333831312e332e302e345500000e50594e45544449434f4d5f333034")
RSP = bytes.fromhex(
    "0400000000540000005001030000000004000000420000000000020012000000312e322e3834302e31303030"
    "382e312e310000000001020000003080000020010200000001000000000802000000010100000009020000"
    "000000")
ABORT = bytes.fromhex("07000000000400000000")
RJ = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, 7)


def read_pdu(conn: socket.socket) -> bytes:
    header = conn.recv(6, socket.MSG_WAITALL)
    if len(header) < 6:
        return b""
    return header + conn.recv(struct.unpack(">I", header[2:])[0], socket.MSG_WAITALL)


class RawPeer:
    """A raw-socket peer on loopback playing ``script(conn)`` for each connection (at most 4),
    then holding the connection open until the client closes it or ``hold`` passes."""

    def __init__(self, script: Callable[[socket.socket], None], hold: float = 5.0) -> None:
        self.script, self.hold = script, hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        handlers = []
        for _ in range(4):
            conn = None
            while conn is None and not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    conn, _ = self.listener.accept()
            if conn is None:
                break
            handler = threading.Thread(target=self._one, args=(conn,), daemon=True)
            handler.start()
            handlers.append(handler)
        for handler in handlers:
            handler.join(self.hold + 5)

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(self.hold)
            try:
                self.script(conn)
                end = time.monotonic() + self.hold
                while time.monotonic() < end and not self.stopping.is_set() and conn.recv(4096):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(15)
        self.listener.close()


SCRIPTS: dict[str, Callable[[socket.socket], None]] = {
    "rejects": lambda c: (read_pdu(c), c.sendall(RJ)) and None,
    "aborts the request": lambda c: (read_pdu(c), c.sendall(ABORT)) and None,
    "closes on the request": lambda c: (read_pdu(c), c.shutdown(socket.SHUT_RDWR)) and None,
    "answers HTTP": lambda c: (read_pdu(c), c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")) and None,
    "answers a 4 GB PDU": lambda c: (read_pdu(c), c.sendall(b"\x02\x00\xff\xff\xff\xff")) and None,
    "aborts the echo": lambda c: (read_pdu(c), c.sendall(AC), read_pdu(c), c.sendall(ABORT)) and None,
    "closes on the echo": lambda c: (read_pdu(c), c.sendall(AC), read_pdu(c),
                                     c.shutdown(socket.SHUT_RDWR)) and None,
    "answers a failure status": lambda c: (read_pdu(c), c.sendall(AC), read_pdu(c),
                                           c.sendall(RSP[:-2] + b"\x11\x02"), read_pdu(c),
                                           c.sendall(RELEASE_RP)) and None,
    "releases instead": lambda c: (read_pdu(c), c.sendall(AC), read_pdu(c),
                                   c.sendall(bytes.fromhex("05000000000400000000"))) and None,
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_an_unclean_answer_gives_pacsclients_error(name: str, fallbacks: Calls) -> None:
    peer = RawPeer(SCRIPTS[name])
    try:
        # pynetdicom's path tells an abort from silence by the time it took (kit.dicom._association):
        # a timeout well above a busy machine's association time keeps its answer the same
        config = at(peer.port, "KIT", timeout=1.0 if "4 GB" in name else 5.0)
        want = canonical(config)
        started = time.monotonic()
        got = fast(config)
        took = time.monotonic() - started
    finally:
        peer.close()
    # the fast path handed over, and its answer is the one PacsClient.echo gave in that call,
    # and the one it gives every time
    assert fallbacks == [config_address(config)] * 2, fallbacks
    assert got[0] != "ok" and got == fallbacks.outcomes[1] == want
    assert took < 10


def config_address(config: PacsSettings) -> str:
    return f"dicom://{config.called_aet}@{config.host}:{config.port}"


SILENT: dict[str, Callable[[socket.socket], None]] = {
    "is silent after the request": lambda c: read_pdu(c) and None,
    "trickles the AC": lambda c: (read_pdu(c), *(time.sleep(0.3) or c.sendall(AC[i:i + 1])
                                                 for i in range(8))) and None,
    "is silent after the echo": lambda c: (read_pdu(c), c.sendall(AC), read_pdu(c)) and None,
}


@pytest.mark.parametrize("name", list(SILENT))
def test_silence_gives_pacsclients_error_within_the_timeout(name: str, fallbacks: Calls) -> None:
    peer = RawPeer(SILENT[name])
    try:
        config = at(peer.port, "KIT", timeout=1.0)
        want = canonical(config)
        started = time.monotonic()
        got = fast(config)
        took = time.monotonic() - started
    finally:
        peer.close()
    assert got[0] == "PeerTimeoutError" and got == want  # silent after the echo too: a timeout
    assert fallbacks == [config_address(config)]  # canonical's own: the fast path raised itself
    assert 0.9 < took < 1.8


def test_refused_and_unknown_host_give_pacsclients_error_without_pynetdicom(fallbacks: Calls) -> None:
    with socket.socket() as held:  # bound, never listening: refuses
        held.bind(("127.0.0.1", 0))
        refused = at(held.getsockname()[1], "KIT", timeout=2.0)
        got = fast(refused)
        assert got[0] == "PeerUnreachableError" and got == canonical(refused)
    unknown = dataclasses.replace(refused, host="no-such-host.invalid")
    got = fast(unknown)
    assert got[0] == "PeerUnreachableError" and got == canonical(unknown)
    assert len(fallbacks) == 2  # the two canonical calls only


def test_a_connect_that_never_completes_gives_pacsclients_timeout(fallbacks: Calls) -> None:
    """A listener whose accept queue is full: the SYN is dropped, connect() times out."""
    with syn_dropping_port() as port:
        config = at(port, "KIT", timeout=1.0)
        started = time.monotonic()
        got = fast(config)
        took = time.monotonic() - started
        assert got == canonical(config)
    assert got[0] == "PeerTimeoutError" and "no connection within 1s" in got[1]
    assert took < 1.8 and len(fallbacks) == 1


def _silent_on_release(c: socket.socket) -> None:
    """Accept, answer the C-ECHO, then say nothing to the A-RELEASE-RQ."""
    read_pdu(c)
    c.sendall(AC)
    read_pdu(c)
    c.sendall(RSP)
    read_pdu(c)


def test_a_peer_silent_on_release_costs_the_timeout_and_the_echo_succeeds(fallbacks: Calls) -> None:
    peer = RawPeer(_silent_on_release)
    try:
        config = at(peer.port, "KIT", timeout=1.0)
        started = time.monotonic()
        assert fast(config) == ("ok", config_address(config), ())
        took = time.monotonic() - started
        assert canonical(config) == ("ok", config_address(config), ())
    finally:
        peer.close()
    assert 0.9 < took < 1.8 and len(fallbacks) == 1


def test_a_peer_silent_on_release_leaves_no_dying_network_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom aborts an association whose release goes unanswered, and its A-ABORT could come
    twice: the second, in Sta13, was an InvalidEventError that killed the DUL thread with a
    traceback (about one run in two). The client's associations drop it (drop_sends_after_abort)."""
    died: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    for _ in range(4):
        peer = RawPeer(_silent_on_release)
        try:
            assert PacsClient.from_settings(at(peer.port, "KIT", timeout=0.5)).echo() > 0
            time.sleep(0.2)  # the DUL thread's last events
        finally:
            peer.close()
    assert [str(d.exc_value) for d in died] == []


def test_a_4gb_length_is_declined_unread_without_allocating() -> None:
    peer = RawPeer(lambda c: (read_pdu(c), c.sendall(b"\x02\x00\xff\xff\xff\xff" + b"\x00" * 1000)) and None)
    try:
        tracemalloc.start()
        started = time.monotonic()
        with pytest.raises(EchoDeclined, match="more than"):
            _echo_fast.fast_echo(at(peer.port, "KIT", timeout=2.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        peer.close()
    assert time.monotonic() - started < 1.0
    assert peak < 256 * 1024


@settings(max_examples=int(os.environ.get("ECHO_FUZZ", 25)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(after_ac=st.booleans(), answer=st.binary(max_size=200), then_close=st.booleans())
def test_fuzz_any_answer_is_a_kit_error_or_the_echo_within_the_timeout(after_ac: bool, answer: bytes,
                                                                     then_close: bool) -> None:
    def script(conn: socket.socket) -> None:
        read_pdu(conn)
        if after_ac:
            conn.sendall(AC)
            read_pdu(conn)
        conn.sendall(answer)
        if then_close:
            conn.shutdown(socket.SHUT_RDWR)

    peer = RawPeer(script, hold=1.0)
    try:
        started = time.monotonic()
        try:
            _echo_fast.fast_echo(at(peer.port, "KIT", timeout=0.3))
        except KitError:
            pass
        assert time.monotonic() - started < 1.5  # three deadlines of 0.3 s at most
    finally:
        peer.close()


# -- what the fast path leaves to pynetdicom from the start -----------------------------------------

def test_an_audited_echo_runs_the_pynetdicom_path_and_is_recorded(embedded: EmbeddedPACS,
                                                                  fallbacks: Calls) -> None:
    """With an audit sink (``[audit] path``) the echo is PacsClient.echo's, event and all."""
    from kit import audit

    events: list[audit.AuditEvent] = []
    sink = events.extend  # one bound method: remove_sink compares by identity
    audit.add_sink(sink)
    try:
        config = at(embedded.port, embedded.aet)
        assert fast(config) == ("ok", embedded.address, ())
    finally:
        audit.remove_sink(sink)
    assert not audit.enabled()
    assert fallbacks == [embedded.address]
    client_events = [e for e in events if e.side == "client"]
    assert [(e.action, e.target, e.outcome) for e in client_events] == [("pacs.echo", embedded.address, "ok")]


def test_the_protocol_log_runs_the_pynetdicom_path(embedded: EmbeddedPACS, fallbacks: Calls,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """``kit -vv`` asks for pynetdicom's own log of the association: only its path writes one."""
    import logging

    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        assert fast(at(embedded.port, embedded.aet)) == ("ok", embedded.address, ())
    assert fallbacks == [embedded.address]
    assert any(r.name.startswith("pynetdicom") for r in caplog.records)


def test_tls_runs_the_pynetdicom_path(embedded: EmbeddedPACS, fallbacks: Calls) -> None:
    """TLS to a plain-TCP PACS: the fast path never speaks TLS; PacsClient's TLS error."""
    config = dataclasses.replace(at(embedded.port, embedded.aet, timeout=5.0), tls=True)
    got = fast(config)
    assert got[0] == "TLSError" and got == canonical(config)
    assert len(fallbacks) == 2


@pytest.mark.parametrize("title", [" KIT", "KIT "])
def test_titles_the_fast_path_does_not_send_run_the_pynetdicom_path(embedded: EmbeddedPACS, title: str,
                                                                     fallbacks: Calls) -> None:
    config = dataclasses.replace(at(embedded.port, embedded.aet), aet=title)
    assert fast(config) == canonical(config)
    assert len(fallbacks) == 2


def test_a_host_name_resolves_as_pynetdicom_resolves_it(embedded: EmbeddedPACS, fallbacks: Calls) -> None:
    """``localhost``: pynetdicom takes the first IPv4 address (the PACS listens on 127.0.0.1)."""
    config = at(embedded.port, embedded.aet, host="localhost")
    assert fast(config) == ("ok", f"dicom://{embedded.aet}@localhost:{embedded.port}", ())
    assert fallbacks == [], fallbacks
    assert canonical(config) == fast(config)


@pytest.mark.parametrize("change", [{"host": ""}, {"port": 0}, {"port": 70000}, {"timeout": 0.0},
                                    {"timeout": -1.0}, {"aet": "A" * 17}, {"called_aet": ""},
                                    {"aet": "KIT\\SCU"}])
def test_values_the_client_refuses_give_its_error(embedded: EmbeddedPACS, change: dict[str, Any]) -> None:
    config = dataclasses.replace(at(embedded.port, embedded.aet), **change)
    got = fast(config)
    assert got[0] == "InvalidInputError" and got == canonical(config)
