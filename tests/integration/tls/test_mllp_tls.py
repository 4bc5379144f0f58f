"""MLLP over TLS: kit's MLLPListener with a server context, MLLPSender with a client context.

Real sockets on 127.0.0.1 (ephemeral ports), certificates from the session PKI in conftest.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.errors import ConfigError, PeerDisconnectedError, PeerError, TLSError
from kit.examples.hl7 import feed
from kit.hl7.framing import MLLPDecoder, frame
from kit.hl7.mllp import MLLPListener, MLLPSender, RetryPolicy, server_tls_context
from kit.hl7.typed import AckCode
from tests.conftest import free_port, peer_env, stop_pid, wait_for_port

from .conftest import Pki, client_context, server_context

pytestmark = pytest.mark.timeout(60)

FIRST = next(iter(feed()))
ONCE = RetryPolicy(max_attempts=1)


def message(control_id: str) -> str:
    """The sample feed's first message with MSH-10 set to ``control_id``."""
    head, _, rest = FIRST.partition("\r")
    fields = head.split("|")
    fields[9] = control_id
    return "|".join(fields) + "\r" + rest


def stored_ids(listener: MLLPListener) -> list[str]:
    assert listener.store is not None
    return listener.store.messages()["control_id"].to_list()


@pytest.fixture
def tls_listener(tmp_path: Path, pki: Pki) -> Iterator[MLLPListener]:
    """TLS without client certificates: no CA configured on the listener."""
    ctx = server_tls_context(pki.server_cert, pki.server_key)
    assert ctx.verify_mode == ssl.CERT_NONE
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=30.0, ssl_context=ctx) as running:
        yield running


@pytest.fixture
def mtls_listener(tmp_path: Path, pki: Pki) -> Iterator[MLLPListener]:
    ctx = server_context(pki, require_client_cert=True)
    with MLLPListener(tmp_path / "mllp-mtls.db", idle_timeout=30.0, ssl_context=ctx) as running:
        yield running


def _refused_without_cert(port: int, pki: Pki, control_id: str) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(pki)
        ctx.maximum_version = version
        sender = MLLPSender("127.0.0.1", port, timeout=5.0, retry=ONCE, ssl_context=ctx)
        with pytest.raises(PeerError) as info, sender:
            sender.send(message(control_id))
        assert isinstance(info.value, (TLSError, PeerDisconnectedError)), type(info.value)


@pytest.mark.parametrize("build", ["cli_shaped", "server_tls_context"])
def test_configured_ca_requires_and_verifies_client_certificates(tmp_path: Path, pki: Pki,
                                                                 build: str) -> None:
    """Issue 7.4: with tls_ca set, the listener's context loaded the CA but verify_mode stayed CERT_NONE.

    ``cli_shaped`` is the context `kit hl7 listen` builds from [hl7] tls_cert/tls_key/tls_ca
    (``create_default_context(CLIENT_AUTH, cafile=...)``, CERT_NONE by default).
    """
    if build == "cli_shaped":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        assert ctx.verify_mode == ssl.CERT_NONE
    else:
        ctx = server_tls_context(pki.server_cert, pki.server_key, pki.ca)
    with MLLPListener(tmp_path / "ca.db", idle_timeout=30.0, ssl_context=ctx) as listener:
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        _refused_without_cert(listener.port, pki, "NOCERT900")
        rogue_client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        rogue_client.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))  # signed by another CA
        sender = MLLPSender("127.0.0.1", listener.port, timeout=5.0, retry=ONCE, ssl_context=rogue_client)
        with pytest.raises(PeerError), sender:
            sender.send(message("ROGUECL01"))
        with MLLPSender("127.0.0.1", listener.port, timeout=5.0, retry=ONCE,
                        ssl_context=client_context(pki, with_cert=True)) as good:
            assert good.send(message("WITHCERT1")).code is AckCode.AA
        assert stored_ids(listener) == ["WITHCERT1"]
        assert listener.healthy


def test_server_tls_context_reports_bad_files_as_config_error(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="hl7.tls_cert"):
        server_tls_context(tmp_path / "missing.pem", pki.server_key)
    with pytest.raises(ConfigError, match="hl7.tls_ca"):
        server_tls_context(pki.server_cert, pki.server_key, tmp_path / "missing-ca.pem")


def test_kit_hl7_listen_with_tls_ca_requires_client_certificates(tmp_path: Path, pki: Pki) -> None:
    """The real command, as a hospital would run it, with [hl7] tls settings in kit.toml."""
    import subprocess
    import sys

    port, store = free_port(), tmp_path / "cli.db"
    toml = tmp_path / "kit.toml"
    toml.write_text(f'[hl7]\ntls = true\ntls_cert = "{pki.server_cert}"\ntls_key = "{pki.server_key}"\n'
                    f'tls_ca = "{pki.ca}"\n')
    proc = subprocess.Popen([sys.executable, "-c", "from kit.cli import main; main()", "--config", str(toml),
                             "hl7", "listen", "--port", str(port), "--store", str(store)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=peer_env(),
                            start_new_session=True)
    try:
        wait_for_port(port, timeout=30.0, proc=proc)
        _refused_without_cert(port, pki, "CLINOCERT")
        with MLLPSender("127.0.0.1", port, timeout=5.0, retry=ONCE,
                        ssl_context=client_context(pki, with_cert=True)) as good:
            assert good.send(message("CLICERT01")).code is AckCode.AA
    finally:
        stop_pid(proc)


def test_tls_message_is_acknowledged_and_stored(tls_listener: MLLPListener, pki: Pki) -> None:
    assert tls_listener.address == f"mllps://127.0.0.1:{tls_listener.port}"
    with MLLPSender("127.0.0.1", tls_listener.port, timeout=10.0, retry=ONCE,
                    ssl_context=client_context(pki)) as sender:
        ack = sender.send(message("TLS000001"))
        assert isinstance(sender._sock, ssl.SSLSocket)  # really TLS on the wire
        assert sender._sock.version() in ("TLSv1.2", "TLSv1.3")
        second = sender.send(message("TLS000002"))  # same TLS connection, second message
    assert ack.code is AckCode.AA and ack.control_id == "TLS000001"
    assert second.code is AckCode.AA and second.control_id == "TLS000002"
    assert {"TLS000001", "TLS000002"} <= set(stored_ids(tls_listener))


def test_sender_trusting_another_ca_gets_tls_error(tls_listener: MLLPListener, pki: Pki) -> None:
    sender = MLLPSender("127.0.0.1", tls_listener.port, timeout=5.0, retry=ONCE,
                        ssl_context=client_context(pki, trust=pki.rogue_ca))
    start = time.monotonic()
    with pytest.raises(TLSError, match="certificate verify failed") as info, sender:
        sender.send(message("ROGUE0001"))
    assert time.monotonic() - start < 5.0
    assert info.value.peer == f"mllp://127.0.0.1:{tls_listener.port}"
    assert "ROGUE0001" not in stored_ids(tls_listener)


def test_listener_with_untrusted_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    rogue = server_context(pki)
    rogue.load_cert_chain(str(pki.rogue_cert), str(pki.rogue_key))
    with MLLPListener(tmp_path / "rogue.db", ssl_context=rogue) as listener:
        sender = MLLPSender("127.0.0.1", listener.port, timeout=5.0, retry=RetryPolicy(max_attempts=3),
                            ssl_context=client_context(pki))
        start = time.monotonic()
        with pytest.raises(TLSError), sender:
            sender.send(message("IMPOSTOR1"))
        # a certificate problem is final: not retried with backoff
        assert sender.last_attempts == 1
        assert time.monotonic() - start < 5.0
        assert stored_ids(listener) == []


def test_plain_sender_to_tls_listener_fails_typed_and_listener_keeps_serving(
        tls_listener: MLLPListener, pki: Pki) -> None:
    plain = MLLPSender("127.0.0.1", tls_listener.port, timeout=5.0, retry=ONCE)
    start = time.monotonic()
    with pytest.raises(PeerError) as info, plain:
        plain.send(message("PLAIN0001"))
    assert time.monotonic() - start < 5.5
    assert isinstance(info.value, (PeerDisconnectedError, TLSError)), type(info.value)
    assert "PLAIN0001" not in stored_ids(tls_listener)

    # a raw client that connects and says nothing does not block other TLS clients either
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5.0):
        with MLLPSender("127.0.0.1", tls_listener.port, timeout=5.0, retry=ONCE,
                        ssl_context=client_context(pki)) as sender:
            ack = sender.send(message("AFTER0001"))
    assert ack.code is AckCode.AA
    assert "AFTER0001" in stored_ids(tls_listener)


def test_raw_tls_socket_gets_an_ack(tls_listener: MLLPListener, pki: Pki) -> None:
    """The listener speaks plain MLLP inside TLS (checked with ssl directly, not the kit's sender)."""
    ctx = client_context(pki)
    with socket.create_connection(("127.0.0.1", tls_listener.port), timeout=5.0) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(frame(message("RAW000001")))
        decoder = MLLPDecoder()
        frames: list[bytes] = []
        while not frames:
            chunk = tls.recv(65536)
            assert chunk, "listener closed the TLS connection without an ACK"
            frames = [f for f in decoder.feed(chunk) if isinstance(f, bytes)]
    assert b"MSA|AA|RAW000001" in frames[0]
    assert "RAW000001" in stored_ids(tls_listener)


def test_mutual_tls_with_client_certificate(mtls_listener: MLLPListener, pki: Pki) -> None:
    with MLLPSender("127.0.0.1", mtls_listener.port, timeout=5.0, retry=ONCE,
                    ssl_context=client_context(pki, with_cert=True)) as sender:
        ack = sender.send(message("MTLS00001"))
    assert ack.code is AckCode.AA
    assert "MTLS00001" in stored_ids(mtls_listener)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])
def test_mutual_tls_without_client_certificate_is_refused(mtls_listener: MLLPListener, pki: Pki,
                                                          version: ssl.TLSVersion) -> None:
    ctx = client_context(pki)
    ctx.maximum_version = version
    sender = MLLPSender("127.0.0.1", mtls_listener.port, timeout=5.0, retry=ONCE, ssl_context=ctx)
    start = time.monotonic()
    with pytest.raises(PeerError) as info, sender:
        sender.send(message("NOCERT001"))
    assert time.monotonic() - start < 5.5
    assert isinstance(info.value, (TLSError, PeerDisconnectedError)), type(info.value)
    assert "NOCERT001" not in stored_ids(mtls_listener)
    assert mtls_listener.running


def test_mutual_tls_missing_client_certificate_is_a_final_tls_error(mtls_listener: MLLPListener,
                                                                    pki: Pki) -> None:
    ctx = client_context(pki)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sender = MLLPSender("127.0.0.1", mtls_listener.port, timeout=5.0,
                        retry=RetryPolicy(max_attempts=3, backoff=0.05), ssl_context=ctx)
    with pytest.raises(PeerError) as info, sender:
        sender.send(message("NOCERT002"))
    assert isinstance(info.value, TLSError), f"{type(info.value).__name__}: {info.value}"
    assert sender.last_attempts == 1


# -- `kit hl7 send` with [hl7] tls settings ------------------------------------------------------

def _kit_toml(path: Path, ca: Path) -> Path:
    path.write_text(f'[hl7]\nhost = "127.0.0.1"\ntimeout = 5.0\ntls = true\ntls_ca = "{ca}"\n')
    return path


def test_cli_send_uses_hl7_tls_settings(tmp_path: Path, tls_listener: MLLPListener, pki: Pki) -> None:
    from click.testing import CliRunner

    from kit.cli import cli

    feed_file = tmp_path / "one.hl7"
    feed_file.write_text(message("CLI000001"))
    good = CliRunner().invoke(cli, ["--config", str(_kit_toml(tmp_path / "kit.toml", pki.ca)), "hl7", "send",
                                    str(feed_file), "--port", str(tls_listener.port), "--json"])
    assert good.exit_code == 0, good.output
    assert "CLI000001" in stored_ids(tls_listener)

    feed_file.write_text(message("CLI000002"))
    rogue_toml = _kit_toml(tmp_path / "rogue.toml", pki.rogue_ca)
    bad = CliRunner().invoke(cli, ["--config", str(rogue_toml), "hl7", "send", str(feed_file),
                                   "--port", str(tls_listener.port), "--attempts", "1"])
    assert bad.exit_code == 1
    assert "TLSError" in bad.output and "certificate verify failed" in bad.output
    assert "CLI000002" not in stored_ids(tls_listener)


def test_a_peer_that_never_finishes_its_handshake_is_cut_off(tmp_path: Path, pki: Pki) -> None:
    """A TCP peer that opens a TLS listener's port and sends nothing is closed within the idle
    timeout (asyncio would hold it for 60 s, outside max_connections); the listener serves on."""
    ctx = server_tls_context(pki.server_cert, pki.server_key)
    with MLLPListener(tmp_path / "mllp.db", idle_timeout=1.0, ssl_context=ctx) as listener:
        silent = [socket.create_connection(("127.0.0.1", listener.port), timeout=10) for _ in range(5)]
        start = time.monotonic()
        try:
            for sock in silent:
                try:
                    assert sock.recv(100) == b""  # closed by the listener
                except ConnectionResetError:
                    pass
            assert time.monotonic() - start < 8
        finally:
            for sock in silent:
                sock.close()
        with MLLPSender("127.0.0.1", listener.port, ssl_context=client_context(pki), timeout=10,
                        retry=ONCE) as sender:
            assert sender.send(message("AFTER-HS")).code is AckCode.AA
        assert listener.healthy
