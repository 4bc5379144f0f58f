"""C-ECHO on a plain socket, falling back to pynetdicom for anything but the clean exchange.

A hand-written fast path (issue 9, target 6: ``kit pacs echo`` to the embedded
PACS under 0.5 s as a whole process): :func:`echo` connects, associates, sends
one C-ECHO-RQ and releases with the bytes of :mod:`kit.dicom._echo_pdu`,
importing neither pynetdicom nor pydicom nor numpy. It returns what
``PacsClient.from_settings(settings).echo()`` returns (with the client's
address), and for everything else it runs exactly that, so answers and errors
stay the canonical path's:

* TLS, an audit sink registered, pynetdicom's protocol log asked for (``-vv``),
  or a value outside what the fast path sends: the pynetdicom path from the start.
* A-ASSOCIATE-RJ, A-ABORT, a closed connection, a context not accepted, a
  malformed, oversized or unexpected PDU, a non-success status: the fast
  association is aborted and the pynetdicom path runs (its answer or error).
* The failures that cost time are raised here, with the class and message the
  pynetdicom path gives (tested against it): nothing listening or host unknown
  (:class:`~kit.errors.PeerUnreachableError`), no connection or no A-ASSOCIATE
  answer within ``timeout``, no C-ECHO response within ``timeout``
  (:class:`~kit.errors.PeerTimeoutError`; the association is aborted then).
* After a successful C-ECHO the release never fails the call: no A-RELEASE-RP
  within ``timeout``, or anything else, aborts and returns, as pynetdicom does.

Every read is bounded: at most :data:`~kit.dicom._echo_pdu.MAX_ANSWER_PDU`
bytes per PDU (checked before allocating), :data:`~kit.dicom._echo_pdu.MAX_PDUS`
PDUs per answer, and a deadline of ``timeout`` per answer that a trickling
peer cannot extend.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
from typing import TYPE_CHECKING

from kit.dicom._echo_pdu import (
    ABORT,
    MAX_PDUS,
    RELEASE_RQ,
    EchoDeclined,
    EchoResponse,
    accepted_max_pdu,
    associate_rq,
    echo_rq,
    pdu_header,
)
from kit.errors import PeerTimeoutError, PeerUnreachableError

if TYPE_CHECKING:
    from kit.config import PacsSettings

__all__ = ["MAX_PDU", "echo", "fast_echo"]

LOGGER = logging.getLogger(__name__)

#: our Maximum Length Received, as :class:`kit.dicom.dimse.PacsClient` asks (its ``max_pdu`` default)
MAX_PDU = 4 * 1024 * 1024


def echo(settings: PacsSettings) -> tuple[str, float]:
    """C-ECHO the PACS of ``settings``: ``PacsClient.from_settings(settings).echo()``, fast.

    Parameters
    ----------
    settings : kit.config.PacsSettings
        Host, port, AE titles, timeout and TLS, as for ``PacsClient.from_settings``.

    Returns
    -------
    tuple of (str, float)
        The PACS's address (``dicom://CALLED@host:port``) and the round-trip
        seconds of the C-ECHO itself (association excluded).

    Raises
    ------
    PeerError
        As :meth:`kit.dicom.dimse.PacsClient.echo` (see the module docstring).
    """
    if _covered(settings):
        try:
            return _address(settings), fast_echo(settings)
        except EchoDeclined as exc:  # shown with `kit -v`
            LOGGER.info("C-ECHO handed to pynetdicom: %s", exc)
    from kit.dicom.dimse import PacsClient  # the canonical path: pynetdicom

    client = PacsClient.from_settings(settings)
    return client.address, client.echo()


def _address(settings: PacsSettings) -> str:
    return f"dicom://{settings.called_aet}@{settings.host}:{settings.port}"


def _covered(settings: PacsSettings) -> bool:
    """Whether the fast path may try: no TLS, no audit sink, no protocol log, plain values."""
    from kit import audit

    timeout = settings.timeout
    return (not settings.tls and not audit.enabled()
            and not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
            and isinstance(settings.host, str) and bool(settings.host)
            and isinstance(settings.port, int) and 0 < settings.port < 65536
            and isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0)


_SockAddr = tuple[str, int] | tuple[str, int, int, int]


def _resolve(host: str, port: int, address: str) -> tuple[socket.AddressFamily, _SockAddr]:
    """pynetdicom's choice of address: the first IPv4 address of ``host``, else the first IPv6."""
    try:
        entries = socket.getaddrinfo(host, 0)
    except socket.gaierror as exc:
        raise PeerUnreachableError(f"cannot resolve host {host!r}: {exc.strerror or exc}",
                                   peer=address) from exc
    except (OSError, UnicodeError) as exc:  # e.g. an empty label: the library path says what
        raise EchoDeclined(f"cannot resolve {host!r} here: {exc}") from exc
    for family in (socket.AF_INET, socket.AF_INET6):
        for entry in entries:
            if entry[0] == family:
                ip = str(entry[4][0])
                return family, ((ip, port) if family == socket.AF_INET else (ip, port, 0, 0))
    raise EchoDeclined(f"no IPv4 or IPv6 address for {host!r}")


class _Peer:
    """One association's socket: bounded, deadline-limited reads of whole PDUs."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except OSError as exc:  # reset, closed, or no room within the timeout: the library path
            raise EchoDeclined(f"cannot send: {exc}") from exc

    def _read(self, size: int, deadline: float) -> bytes:
        """Exactly ``size`` bytes before ``deadline`` (TimeoutError after it)."""
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                n = self.sock.recv_into(view[got:], size - got)
            except TimeoutError:
                raise
            except OSError as exc:
                raise EchoDeclined(f"connection lost: {exc}") from exc
            if n == 0:
                raise EchoDeclined("the peer closed the connection")
            got += n
        return bytes(buf)

    def recv_pdu(self, deadline: float) -> tuple[int, bytes]:
        """The next PDU's type and body; TimeoutError when it is not whole by ``deadline``."""
        kind, length = pdu_header(self._read(6, deadline))
        return kind, self._read(length, deadline) if length else b""

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.settimeout(1.0)
            self.sock.sendall(ABORT)


def _connect(settings: PacsSettings, address: str, start: float) -> socket.socket:
    family, sockaddr = _resolve(settings.host, settings.port, address)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # e.g. no IPv6 here: the library path says what
        raise EchoDeclined(f"cannot open a socket: {exc}") from exc
    sock.settimeout(settings.timeout)
    try:
        sock.connect(sockaddr)
    except OSError as exc:
        sock.close()
        # pynetdicom's path maps every failed connect by the time it took (kit.dicom._association)
        if time.monotonic() - start >= settings.timeout * 0.95:
            raise PeerTimeoutError(f"no connection within {settings.timeout:g}s", peer=address) from exc
        raise PeerUnreachableError("cannot connect (connection refused)", peer=address) from exc
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def fast_echo(settings: PacsSettings) -> float:
    """The C-ECHO exchange itself; :class:`~kit.dicom._echo_pdu.EchoDeclined` when the
    pynetdicom path must answer instead (see the module docstring). Round-trip seconds."""
    address = _address(settings)
    timeout = float(settings.timeout)
    request = associate_rq(settings.called_aet, settings.aet, MAX_PDU)  # declines odd AE titles first
    start = time.monotonic()
    with contextlib.closing(_connect(settings, address, start)) as sock:
        peer = _Peer(sock, timeout)
        peer.send(request)
        try:
            kind, body = peer.recv_pdu(time.monotonic() + timeout)
        except TimeoutError as exc:
            peer.abort()
            raise PeerTimeoutError(f"no answer to the association request within {timeout:g}s",
                                   peer=address) from exc
        if kind != 0x02:  # A-ASSOCIATE-RJ, A-ABORT, ...: the library path names it
            raise EchoDeclined(f"PDU type 0x{kind:02X} in answer to the association request")
        try:
            maximum = accepted_max_pdu(body)
            message = echo_rq()
            if 0 < maximum < len(message) - 6:
                raise EchoDeclined(f"the peer accepts PDUs of {maximum} bytes only")
            took = _exchange(peer, message, timeout, address)
        except EchoDeclined:
            peer.abort()
            raise
        _release(peer, timeout)
        return took


def _exchange(peer: _Peer, message: bytes, timeout: float, address: str) -> float:
    """Send the C-ECHO-RQ; the seconds until its success response."""
    started = time.perf_counter()
    peer.send(message)
    deadline = time.monotonic() + timeout
    response = EchoResponse()
    try:
        for _ in range(MAX_PDUS):
            kind, body = peer.recv_pdu(deadline)
            if kind != 0x04:
                raise EchoDeclined(f"PDU type 0x{kind:02X} instead of the C-ECHO response")
            status = response.add(body)
            if status is not None:
                took = time.perf_counter() - started
                if status != 0:
                    raise EchoDeclined(f"C-ECHO status 0x{status:04X}")
                return took
        raise EchoDeclined(f"no whole C-ECHO response in {MAX_PDUS} PDUs")
    except TimeoutError as exc:  # as PacsClient.echo: a timeout (pynetdicom aborts the association then)
        peer.abort()
        raise PeerTimeoutError(f"C-ECHO: no response within {timeout:g}s", peer=address) from exc


def _release(peer: _Peer, timeout: float) -> None:
    """A-RELEASE-RQ and wait for the RP; anything else (or nothing) aborts. Never raises."""
    try:
        peer.send(RELEASE_RQ)
        kind, _body = peer.recv_pdu(time.monotonic() + timeout)
        if kind == 0x06:
            return
    except (EchoDeclined, TimeoutError):
        pass
    peer.abort()
