"""MLLP framing: ``<VT> message <FS><CR>`` (pure, no sockets).

Written by hand: python-hl7's ``hl7.mllp`` reader is tied to asyncio streams,
has no size limit and silently drops bytes outside frames, and hl7apy's MLLP
server is a blocking ``socketserver``; neither gives an incremental decoder a
listener and a blocking sender can both use. :class:`MLLPDecoder` is fed
whatever bytes arrive and returns complete frames:

- a frame may arrive in any number of pieces, the end bytes split across
  reads;
- whitespace between frames (CR, LF, space, tab) is ignored; any other byte
  outside a frame is reported once per run as :class:`~kit.errors.MLLPFramingError`,
  then skipped up to the next ``<VT>``;
- a ``<VT>`` inside a frame means the previous frame was never ended: it is
  reported and a new frame starts;
- a frame longer than ``max_message_bytes`` is reported as soon as the limit
  is passed and the rest of it is discarded up to its end bytes;
- ``<FS>`` ends the frame at once, with or without the ``<CR>`` after it (some
  senders omit the CR, and wait for their ACK); a CR right after it, in the same
  read or the next, is skipped; any other byte after it is read as outside the frame.
"""

from __future__ import annotations

import dataclasses

from kit.errors import MLLPFramingError

__all__ = ["CR", "DEFAULT_MAX_MESSAGE_BYTES", "FS", "VT", "FrameError", "MLLPDecoder", "frame"]

VT = b"\x0b"  #: start block
FS = b"\x1c"  #: end block
CR = b"\x0d"  #: carriage return after the end block

#: Default frame size limit (16 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_WHITESPACE = frozenset(b"\r\n \t")
_VT, _FS, _CR = VT[0], FS[0], CR[0]
_END = FS + CR


def frame(message: bytes | str, encoding: str = "utf-8") -> bytes:
    """Wrap one message in MLLP framing.

    Parameters
    ----------
    message : bytes or str
        The ER7 message (segments ended by CR). A str is encoded with ``encoding``.
    encoding : str
        Character encoding for a str message.

    Returns
    -------
    bytes
        ``b"\\x0b" + message + b"\\x1c\\r"``.

    Raises
    ------
    kit.errors.MLLPFramingError
        The message contains a ``<VT>`` or ``<FS>`` byte, which MLLP cannot carry.
    """
    data = message.encode(encoding) if isinstance(message, str) else bytes(message)
    if VT in data or FS in data:
        raise MLLPFramingError("message contains an MLLP block character (0x0B or 0x1C)")
    return VT + data + FS + CR


@dataclasses.dataclass(frozen=True)
class FrameError:
    """A framing problem found by :class:`MLLPDecoder` (returned in place of a frame).

    Attributes
    ----------
    kind : str
        ``"garbage"`` (bytes outside a frame), ``"unterminated"`` (a new
        ``<VT>`` before the end bytes) or ``"oversize"`` (over the limit).
    detail : str
        Human-readable description.
    """

    kind: str
    detail: str

    def __post_init__(self) -> None:
        if self.kind not in ("garbage", "unterminated", "oversize"):
            raise ValueError(f"unknown framing error kind {self.kind!r}")

    def to_exception(self) -> MLLPFramingError:
        """The typed exception for this problem."""
        return MLLPFramingError(f"{self.kind}: {self.detail}")


class MLLPDecoder:
    """Incremental MLLP decoder.

    Parameters
    ----------
    max_message_bytes : int
        Largest frame content accepted; longer frames give one ``oversize``
        :class:`FrameError` and are discarded.

    Examples
    --------
    >>> d = MLLPDecoder()
    >>> d.feed(b"\\x0bMSH|^~\\\\&|A\\r\\x1c")
    [b'MSH|^~\\\\&|A\\r']
    >>> d.feed(b"\\r")
    []
    """

    __slots__ = ("_buf", "_garbage", "_pending_cr", "_skipping", "_state", "max_message_bytes")

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max_message_bytes = max_message_bytes
        self._buf = bytearray()
        self._state = "outside"  # "outside" | "inside"
        self._skipping = False  # inside an oversize frame: discard to its end
        self._pending_cr = False  # a frame ended with FS as the last byte read: skip a CR next
        self._garbage = 0  # garbage bytes in the current run outside frames

    @property
    def in_frame(self) -> bool:
        """True while a frame has started and not ended (a partial frame is buffered)."""
        return self._state == "inside"

    @property
    def between_frames(self) -> bool:
        """True when nothing is pending: no partial frame, no end byte awaiting its CR, no garbage
        run not yet reported (the next bytes are read as if by a new decoder)."""
        return self._state == "outside" and not self._pending_cr and not self._garbage

    @property
    def buffered(self) -> int:
        """Bytes of the current partial frame held in memory."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Add received bytes; return the frames (content only) and errors completed by them, in order."""
        # fast path: exactly one whole frame, read at a frame boundary (an ACK, a message of a
        # sender that waits for its ACK); same result as the general path below
        if (self._state == "outside" and not self._pending_cr and not self._garbage
                and data[:1] == VT and data[-2:] == _END and len(data) - 3 <= self.max_message_bytes
                and data.count(VT) == 1 and data.count(FS) == 1):
            return [data[1:-2]]
        return self._feed(data)

    def _feed(self, data: bytes) -> list[bytes | FrameError]:
        """The general path of :meth:`feed`: any bytes, in any state."""
        out: list[bytes | FrameError] = []
        i, n = 0, len(data)
        while i < n:
            if self._pending_cr:
                self._pending_cr = False
                if data[i] == _CR:
                    i += 1
                continue
            if self._state == "outside":
                j = data.find(VT, i)
                stop = n if j < 0 else j
                self._count_garbage(data, i, stop)
                if j < 0:
                    break
                self._flush_garbage(out)
                self._state, self._skipping = "inside", False
                self._buf.clear()
                i = j + 1
                continue
            # inside a frame: look for the end byte or a stray start byte
            f = data.find(FS, i)
            v = data.find(VT, i, f if f >= 0 else n)
            if v >= 0:
                self._append(data, i, v, out)
                out.append(FrameError("unterminated", f"a new frame started after {len(self._buf)} bytes "
                                      "without the end bytes of the previous one"))
                self._buf.clear()
                self._skipping = False
                i = v + 1
                continue
            if f < 0:
                self._append(data, i, n, out)
                break
            self._append(data, i, f, out)
            self._end_frame(out)
            i = f + 1
            if i >= n:
                self._pending_cr = True  # its CR, if any, comes in the next read
                break
            if data[i] == _CR:
                i += 1
        if self._state == "outside":
            self._flush_garbage(out)  # report a run of garbage once per read, not at the next frame
        return out

    def _append(self, data: bytes, start: int, stop: int, out: list[bytes | FrameError]) -> None:
        if self._skipping or start >= stop:
            return
        if len(self._buf) + (stop - start) > self.max_message_bytes:
            out.append(FrameError("oversize", f"frame exceeds {self.max_message_bytes} bytes"))
            self._skipping = True
            self._buf = bytearray()
            return
        self._buf += data[start:stop]

    def _end_frame(self, out: list[bytes | FrameError]) -> None:
        if not self._skipping:
            out.append(bytes(self._buf))
        self._buf = bytearray()
        self._state, self._skipping = "outside", False

    def _count_garbage(self, data: bytes, start: int, stop: int) -> None:
        if start >= stop:
            return
        chunk = data[start:stop]
        if chunk.strip(b"\r\n \t"):
            self._garbage += sum(1 for b in chunk if b not in _WHITESPACE)

    def _flush_garbage(self, out: list[bytes | FrameError]) -> None:
        if self._garbage:
            out.append(FrameError("garbage", f"{self._garbage} bytes outside an MLLP frame"))
            self._garbage = 0

    def flush(self) -> list[bytes | FrameError]:
        """At end of stream: pending garbage, a partial frame (dropped)."""
        out: list[bytes | FrameError] = []
        self._pending_cr = False
        self._flush_garbage(out)
        if self._state == "inside":
            out.append(FrameError("unterminated", f"stream ended inside a frame ({len(self._buf)} bytes)"))
            self._buf = bytearray()
            self._state, self._skipping = "outside", False
        return out
