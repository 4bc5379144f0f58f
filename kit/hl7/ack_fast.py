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
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from kit.hl7.typed import Ack, AckCode, Header, parse_dtm

__all__ = ["fast_ack"]

_START = b"MSH|^~\\&|"
_SKIP = len(_START)
#: printable ASCII except the escape and repetition characters, and CR: nothing to unescape, one
#: repetition per field, no other line break (deleting them leaves nothing of a plain ACK)
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b"\\~") + b"\r"
_CODES = {code.value: code for code in AckCode}
_MSH_FIELDS = 10  # MSH-3 .. MSH-12
_ACK_TYPES = frozenset(("ACK", ""))


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

    def __init__(self, msh: list[str], code: AckCode, control_id: str, text: str) -> None:  # noqa: D107
        # the frozen dataclass's fields, set as its own __init__ sets them (but not ``header``)
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
            built = state["_header"] = _header(state["_msh"])
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
    m = text[_SKIP:end].split("|")  # m[0] is MSH-3, m[k] MSH-(k+3)
    if code is None or (len(m) > 6 and m[6].partition("^")[0] not in _ACK_TYPES):
        return None  # an invalid MSA-1 or another message type: the full parse says what it is
    n = len(a)
    return _LazyAck(m, code, a[1] if n > 1 else "", a[2] if n > 2 else "")
