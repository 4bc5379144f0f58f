"""Read a plain acknowledgement without a full parse: the MLLP sender's hot path (pure).

:func:`fast_ack` gives the same :class:`~kit.hl7.typed.Ack` as
``parse_message(data).typed()`` for the acknowledgements nearly every peer
sends -- ``MSH`` with the standard delimiters ``|^~\\&``, then ``MSA``, nothing
else; printable ASCII without the escape character; segments ended by CR --
and ``None`` for anything else, which the caller then parses in full. It never
guesses: every value it reads is one whose full parse is the raw text (no
escapes, standard delimiters), and a test checks it against the full parse on
generated acknowledgements.
"""

from __future__ import annotations

import datetime as dt

from kit.hl7.typed import Ack, AckCode, Header, parse_dtm

__all__ = ["fast_ack"]

_START = b"MSH|^~\\&|"
#: printable ASCII except the escape and repetition characters, and CR: nothing to unescape, one
#: repetition per field, no other line break (deleting them leaves nothing of a plain ACK)
_PLAIN = bytes(b for b in range(0x20, 0x7F) if b not in b"\\~") + b"\r"
_CODES = {code.value: code for code in AckCode}
_MSH_FIELDS = 10  # MSH-3 .. MSH-12
_MSA_FIELDS = 3


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
    if not data.startswith(_START) or data[len(_START):].translate(None, _PLAIN):
        return None
    lines = data.decode("ascii").split("\r")
    if lines[-1] == "":
        lines.pop()
    if len(lines) != 2 or not lines[1].startswith("MSA|"):
        return None
    m = lines[0][len(_START):].split("|")  # m[0] is MSH-3, m[k] MSH-(k+3)
    if len(m) < _MSH_FIELDS:
        m += [""] * (_MSH_FIELDS - len(m))
    a = lines[1][4:].split("|")  # a[0] is MSA-1
    if len(a) < _MSA_FIELDS:
        a += [""] * (_MSA_FIELDS - len(a))
    code = _CODES.get(a[0])
    if code is None or m[6].partition("^")[0] not in ("ACK", ""):
        return None  # an invalid MSA-1 or another message type: the full parse says what it is
    header = Header(m[7] or "?", _timestamp(m[4]), m[0].partition("^")[0], m[1].partition("^")[0],
                    m[2].partition("^")[0], m[3].partition("^")[0], m[9].partition("^")[0],
                    m[8].partition("^")[0])
    return Ack(header, code, a[1], a[2])
