"""Read a plain acknowledgement without a full parse: the MLLP sender's hot path (pure).

:func:`fast_ack` gives the same :class:`~kit.hl7.typed.Ack` as
``parse_message(data).typed()`` for the acknowledgements nearly every peer
sends -- ``MSH`` with the standard delimiters ``|^~\\&``, then ``MSA``, nothing
else; printable ASCII without the escape character; segments ended by CR --
and ``None`` for anything else, which the caller then parses in full. It never
guesses: every value it reads is one whose full parse is the raw text (no
escapes, standard delimiters), and a test checks it against the full parse on
generated acknowledgements.

Everything that decides *whether* the fast path applies, and the MSA fields the
sender matches on (code, MSA-2, MSA-3), is read at once; the :class:`~kit.hl7.typed.Header`
(MSH-7's timestamp above all) is built from the MSH fields the first time it is
read. A sender that only checks the code and MSA-2 never pays for it.

:func:`ack_frame` reads one whole MLLP frame of a plain ACK by one regular
expression (its MSA-2 must be the message's control id), and :func:`aa_read`
the usual plain AA by comparing the reply's end with :func:`aa_tail`; both equal
``fast_ack`` of the frame's content, or give None.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from kit.hl7.typed import Ack, AckCode, Header, parse_dtm

__all__ = ["aa_read", "aa_tail", "ack_frame", "fast_ack"]

_START = b"MSH|^~\\&|"
_SKIP = len(_START)
#: printable ASCII except the escape and repetition characters, and CR: nothing to unescape, one
#: repetition per field, no other line break (deleting them leaves nothing of a plain ACK)
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b"\\~") + b"\r"
_CODES = {code.value: code for code in AckCode}
_MSH_FIELDS = 10  # MSH-3 .. MSH-12
_ACK_TYPES = frozenset(("ACK", ""))
_CODES_B = {code.value.encode(): code for code in AckCode}
_AA = AckCode.AA

_Q = rb"[ -\[\]-{}]"  # a plain byte of a field: printable ASCII but \\ ~ and the field separator |
_P = rb"[ -\[\]-}]"   # a plain byte of several fields: | too
#: MSH-3... of a plain acknowledgement: any number of fields; from seven on, MSH-9 is ``ACK...`` or
#: empty. Seven or more first (the usual ACK), possessive (no field class holds its delimiter:
#: nothing to give back), so one pass.
_MSH_PLAIN = (rb"(?:(?:" + _Q + rb"*+\|){6}(?:ACK)?(?:\^" + _Q + rb"*+)?(?:\|" + _P + rb"*+)?|(?:" + _Q
              + rb"*+\|){0,5}+" + _Q + rb"*+)")
#: The frame of a plain acknowledgement up to its MSH segment's end (the rest: :func:`aa_tail`).
_HEAD = re.compile(rb"\x0bMSH\|\^~\\&\|" + _MSH_PLAIN)
#: One whole MLLP frame holding a plain MSH + MSA acknowledgement, exactly what :func:`fast_ack`
#: reads (nothing else: no other segment, byte or frame): MSH, then MSA-1 a table 0008 code,
#: MSA-2, MSA-3, more fields. Groups: MSA-1, MSA-2, MSA-3. Linear: no field class holds its
#: own delimiter.
_PLAIN_FRAME = re.compile(rb"\x0bMSH\|\^~\\&\|" + _MSH_PLAIN + rb"\rMSA\|(AA|AE|AR|CA|CE|CR)(?:\|(" + _Q
                          + rb"*)(?:\|(" + _Q + rb"*)(?:\|" + _P + rb"*)?)?)?\r?\x1c\r")
#: A control id that stands as it is in a plain acknowledgement, where the sender reads it raw
_PLAIN_ID = re.compile(r"[ -\[\]-{}]*")
_NEVER = b"\x00"  # no frame ends with it


def _timestamp(value: str) -> dt.datetime | None:
    """:func:`~kit.hl7.typed.parse_dtm` of ``value``; the shape nearly every ACK has
    (``YYYYMMDDHHMMSS[.F..F][+/-HHMM]``, ASCII digits, a valid time of day and zone) by one
    ``datetime.fromisoformat`` call (a tenth of the time), anything else by ``parse_dtm`` itself."""
    body, zone = value, ""
    if len(value) >= 19 and value[-5] in "+-":
        body, zone = value[:-5], value[-5:]
    digits, dot, frac = body.partition(".")
    if (len(digits) != 14 or not value.isascii() or not (digits + frac + zone[1:]).isdigit()
            or (dot and not 0 < len(frac) <= 6) or digits[8:10] > "23" or digits[10:12] > "59"
            or digits[12:14] > "59" or (zone and (zone[1:3] > "23" or zone[3:5] > "59"))):
        return parse_dtm(value)
    try:
        return dt.datetime.fromisoformat(f"{value[:8]}T{value[8:]}")
    except ValueError:  # no such date (month 13, February 30): parse_dtm says None too
        return None


def _header(m: list[str]) -> Header:
    """The header of a plain ACK from its MSH fields (``m[0]`` is MSH-3, ``m[k]`` MSH-(k+3))."""
    if len(m) < _MSH_FIELDS:
        m = m + [""] * (_MSH_FIELDS - len(m))
    return Header(m[7] or "?", _timestamp(m[4]), m[0].partition("^")[0], m[1].partition("^")[0],
                  m[2].partition("^")[0], m[3].partition("^")[0], m[9].partition("^")[0],
                  m[8].partition("^")[0])


class _LazyAck(Ack):
    """An :class:`~kit.hl7.typed.Ack` whose ``header`` is built from the MSH fields when first read.

    It is an ``Ack`` to every reader: ``isinstance``, ``==`` and ``hash`` (by value, with any
    ``Ack``), ``repr``, :func:`dataclasses.replace`, ``copy`` and ``pickle`` (which give a plain
    ``Ack``) all see the class ``Ack``; only ``type()`` tells them apart.
    """

    __slots__ = ()

    def __init__(self, msh: str | bytes, code: AckCode, control_id: str, text: str) -> None:  # noqa: D107
        # the frozen dataclass's fields, set as its own __init__ sets them (but not ``header``);
        # ``msh`` is the MSH segment from MSH-3 on, or the whole plain frame holding the ACK
        state = self.__dict__
        state["_msh"] = msh
        state["code"] = code
        state["control_id"] = control_id
        state["text"] = text

    @property
    def header(self) -> Header:
        state = self.__dict__
        built: Header | None = state.get("_header")
        if built is None:
            msh = state["_msh"]  # MSH-3... as text, or the whole plain frame (aa_read, ack_frame)
            if isinstance(msh, bytes):
                msh = msh[_SKIP + 1:msh.index(b"\r")].decode("ascii")
            built = state["_header"] = _header(msh.split("|"))
        return built

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        return Ack  # the dataclass's __eq__, __repr__ and dataclasses.replace dispatch on it

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ack, (self.header, self.code, self.control_id, self.text))


def fast_ack(data: bytes) -> Ack | None:
    """The acknowledgement in ``data`` (one MLLP frame's content) if it is plain, else None.

    Parameters
    ----------
    data : bytes
        The frame content.

    Returns
    -------
    kit.hl7.typed.Ack or None
        Equal to ``parse_message(data).typed()`` whenever not None; None means
        "not a plain MSH+MSA acknowledgement: parse it in full".
    """
    if not data.startswith(_START) or data[_SKIP:].translate(None, _PLAIN):
        return None
    text = data.decode("ascii")
    end = text.find("\r")
    if end < 0 or text[end + 1:end + 5] != "MSA|":
        return None
    msa = text[end + 5:-1] if text[-1] == "\r" else text[end + 5:]
    if "\r" in msa:  # a third segment (or an empty one): the full parse
        return None
    a = msa.split("|")  # a[0] is MSA-1
    code = _CODES.get(a[0])
    msh = text[_SKIP:end]
    m = msh.split("|", 7)  # m[0] is MSH-3, m[k] MSH-(k+3)
    if code is None or (len(m) > 6 and m[6].partition("^")[0] not in _ACK_TYPES):
        return None  # an invalid MSA-1 or another message type: the full parse says what it is
    n = len(a)
    return _LazyAck(msh, code, a[1] if n > 1 else "", a[2] if n > 2 else "")


def aa_tail(control_id: str) -> bytes:
    """How a plain AA of ``control_id`` ends, framing included: ``\\rMSA|AA|<control id>\\r<FS><CR>``.

    A sender makes it while the peer works on the message; :func:`aa_read` then reads the reply,
    when it comes (the caches cold after the wait), with a comparison of its end, one match of its
    MSH and one object. A control id that a plain ACK cannot hold as it is gives a tail no frame has.
    """
    if _PLAIN_ID.fullmatch(control_id) is None:
        return _NEVER
    return b"\rMSA|AA|" + control_id.encode("ascii") + b"\r\x1c\r"


def aa_read(data: bytes, tail: bytes, control_id: str) -> Ack | None:
    """The acknowledgement of ``control_id`` if ``data`` (one receive) is exactly one MLLP frame
    holding it, plain; else None. ``tail`` is ``aa_tail(control_id)``: a plain AA without MSA-3 is
    read by it, any other plain ACK by :func:`ack_frame`; the result is :func:`ack_frame`'s."""
    if (tail[:1] == b"\r" and data.endswith(tail)  # a real tail, not _NEVER (which one byte can end)
            and _HEAD.fullmatch(data, 0, len(data) - len(tail)) is not None):
        ack = _LazyAck.__new__(_LazyAck)
        state = ack.__dict__  # as _LazyAck.__init__ sets it, without the call
        state["_msh"] = data
        state["code"] = _AA
        state["control_id"] = control_id
        state["text"] = ""
        return ack
    return ack_frame(data, control_id)


def ack_frame(data: bytes, control_id: str) -> Ack | None:
    """The acknowledgement of ``control_id`` if ``data`` is exactly one MLLP frame holding it, plain.

    Parameters
    ----------
    data : bytes
        What one receive gave, framing bytes included.
    control_id : str
        MSH-10 of the message sent.

    Returns
    -------
    kit.hl7.typed.Ack or None
        ``fast_ack(data[1:-2])`` when that is the ACK of ``control_id``, the frame is one plain
        frame and nothing else is in ``data``; else None (read it the general way).
    """
    found = _PLAIN_FRAME.fullmatch(data)
    if found is None:
        return None
    code, msa2, msa3 = found.groups()
    if (msa2.decode("ascii") if msa2 else "") != control_id:
        return None
    return _LazyAck(data, _CODES_B[code], control_id, msa3.decode("ascii") if msa3 else "")
