"""The MLLP listener's per-message hot path: the MSH values in one pass, the positive ACK (pure).

The listener reads the same header values of every message several times: to check it
(MSH-9.1, MSH-10, MSH-3.1, MSH-4.1), to store it (sender, control id, type) and to
acknowledge it (MSH-3.1 .. MSH-6.1, MSH-9.2, MSH-10, MSH-11.1, MSH-12.1). Through
:meth:`kit.hl7.message.Message.get` that is a terser path parsed and a field split a dozen
times; :func:`msh_values` reads them all at once. :func:`positive_ack` writes the AA that
:func:`kit.hl7.build.build_ack` writes, without escaping values that need none.

Both are exact, never a guess: :func:`msh_values` splits the raw fields only when the
message has the standard delimiters and no escape character in MSH (where
``Message.get`` returns the raw text), and :func:`positive_ack` returns None when a value
would need escaping (the caller then calls ``build_ack``). Tests check both against the
slow path on the sample feed and on generated headers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from kit.hl7.build import MAX_ACK_TEXT, MAX_ECHO, build_ack
from kit.hl7.message import STANDARD_ENCODING, Message
from kit.hl7.typed import AckCode, format_dtm

__all__ = ["MshValues", "msh_values", "positive_ack"]

#: characters :func:`kit.hl7.message.escape` changes with the standard delimiters
_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f|^~\\&]")
_STANDARD_MSH2 = STANDARD_ENCODING.msh2
#: MSH-12 values seen nearly always, and whether their ACK names the trigger and the structure
#: (``ACK^A01^ACK``, version 2.4 and later) as :func:`kit.hl7.build.build_ack` decides it
_TRIGGER_AND_STRUCTURE = {"2.1": False, "2.2": False, "2.3": False, "2.3.1": False, "2.4": True, "2.5": True,
                          "2.5.1": True, "2.6": True, "2.7": True, "2.7.1": True, "2.8": True, "2.8.1": True,
                          "2.8.2": True}


def _names_structure(version: str) -> bool:
    """Whether the ACK of a message of ``version`` is ``ACK^trigger^ACK`` (else ``ACK^trigger``)."""
    known = _TRIGGER_AND_STRUCTURE.get(version)
    if known is not None:
        return known
    parts = version.split(".")[:3]  # build_ack's rule: up to three numbers, else taken as 2.5
    if all(0 < len(p) <= 4 and p.isascii() and p.isdigit() for p in parts):
        return tuple(int(p) for p in parts) >= (2, 4)
    return True


@dataclasses.dataclass(frozen=True, slots=True)
class MshValues:
    """The header values the listener reads, each equal to :meth:`Message.get <kit.hl7.message.Message.get>`
    of its path (``MSH-3.1`` ... ; ``control_id`` is ``MSH-10``, ``version`` ``MSH-12.1``)."""

    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_code: str
    trigger: str
    control_id: str
    processing_id: str
    version: str

    @property
    def message_type(self) -> str:
        """``code^trigger`` as :attr:`Message.message_type <kit.hl7.message.Message.message_type>`."""
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code


def msh_values(message: Message) -> MshValues:
    """The header values of ``message`` (see :class:`MshValues`), read in one pass where exact.

    Parameters
    ----------
    message : Message
        A parsed message.

    Returns
    -------
    MshValues
        Each value equal to ``message.get(path)``.
    """
    fields = message.segments_[0].fields  # fields[k] is MSH-(k+1)
    if message.encoding == STANDARD_ENCODING and "\\" not in "".join(fields[2:12]):
        f = fields[2:12] if len(fields) >= 12 else (*fields[2:12], *([""] * (12 - max(len(fields), 2))))
        # f[k] is MSH-(k+3); no escape character and the standard delimiters: get() is the raw text
        code, _, rest = f[6].partition("~")[0].partition("^")
        return MshValues(f[0].partition("~")[0].partition("^")[0], f[1].partition("~")[0].partition("^")[0],
                         f[2].partition("~")[0].partition("^")[0], f[3].partition("~")[0].partition("^")[0],
                         code, rest.partition("^")[0], f[7].partition("~")[0],
                         f[8].partition("~")[0].partition("^")[0], f[9].partition("~")[0].partition("^")[0])
    m = message
    return MshValues(m.sending_application, m.sending_facility, m.receiving_application,
                     m.receiving_facility, m.message_code, m.trigger, m.control_id, m.processing_id,
                     m.version)


def positive_ack(message: Message, values: MshValues, text: str | None, *, control_id: str,
                 timestamp: dt.datetime, stamp: str | None = None) -> str:
    """``build_ack(message, AckCode.AA, text, control_id=control_id, timestamp=timestamp)``.

    Parameters
    ----------
    message : Message
        The message acknowledged.
    values : MshValues
        ``msh_values(message)``.
    text : str or None
        MSA-3.
    control_id : str
        MSH-10 of the ACK.
    timestamp : datetime
        MSH-7 of the ACK.
    stamp : str, optional
        ``format_dtm(timestamp)``, if the caller has it already (one per batch of ACKs).

    Returns
    -------
    str
        The ACK text, segments ended by CR; written here when no value needs escaping, else by
        :func:`~kit.hl7.build.build_ack`.
    """
    v = values
    version = v.version or "2.5.1"
    parts = (v.receiving_application[:MAX_ECHO], v.receiving_facility[:MAX_ECHO],
             v.sending_application[:MAX_ECHO], v.sending_facility[:MAX_ECHO], v.trigger[:MAX_ECHO],
             control_id[:MAX_ECHO], (v.processing_id or "P")[:MAX_ECHO], version[:MAX_ECHO],
             v.control_id[:MAX_ECHO], (text or "")[:MAX_ACK_TEXT])
    if message.encoding != STANDARD_ENCODING or _NEEDS_ESCAPE.search("".join(parts)):
        return build_ack(message, AckCode.AA, text, control_id=control_id, timestamp=timestamp)
    trigger = parts[4]
    kind = (f"ACK^{trigger}^ACK" if _names_structure(version) else f"ACK^{trigger}") if trigger else "ACK"
    msa = f"MSA|AA|{parts[8]}|{parts[9]}\r" if text else f"MSA|AA|{parts[8]}\r"
    msh7 = stamp or format_dtm(timestamp)
    return (f"MSH|{_STANDARD_MSH2}|{parts[0]}|{parts[1]}|{parts[2]}|{parts[3]}|{msh7}||"
            f"{kind}|{parts[5]}|{parts[6]}|{parts[7]}\r{msa}")
