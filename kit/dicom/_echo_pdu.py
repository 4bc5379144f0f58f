"""The PDUs of one C-ECHO association, encoded and decoded by hand (pure: no sockets, no I/O).

A hand-written fast path (issue 9, target 6): ``kit pacs echo`` should not
spend a quarter of a second importing pynetdicom, pydicom and numpy to send
four small PDUs. :mod:`kit.dicom._echo_fast` sends these bytes on a plain
socket; :class:`kit.dicom.dimse.PacsClient` (pynetdicom) stays the canonical
path and everything here is checked against it:

* :func:`associate_rq` is byte for byte the A-ASSOCIATE-RQ (PS3.8 9.3.2) kit's
  pynetdicom path sends for a C-ECHO: application context 1.2.840.10008.3.1.1.1,
  one presentation context (ID 1) for Verification with pynetdicom's four default
  transfer syntaxes, user information with the Maximum Length, pynetdicom's
  Implementation Class UID and Version Name. :func:`echo_rq` is its C-ECHO-RQ
  (PS3.7 9.3.5, command set in Implicit VR Little Endian, message ID 1) in one
  P-DATA-TF, :data:`RELEASE_RQ` and :data:`ABORT` its A-RELEASE-RQ and
  A-ABORT (service user). Tested against pynetdicom's encoders and decoders and
  against what PacsClient puts on the wire (tests/unit/dicom/test_echo_pdu.py,
  tests/integration/dicom/test_echo_fast.py).
* The decoders accept only the clean answer: an A-ASSOCIATE-AC accepting context
  1 with a proposed transfer syntax (:func:`accepted_max_pdu`), P-DATA-TF PDVs
  (:func:`pdvs`) carrying a C-ECHO-RSP to message 1 without a data set
  (:func:`echo_status`). Anything else (A-ASSOCIATE-RJ, A-ABORT, a rejected
  context, a malformed or oversized PDU, an unexpected command) raises
  :class:`EchoDeclined`: the caller then runs the pynetdicom path, which gives
  the canonical answer or error. Every length is checked against the bytes
  present and against :data:`MAX_ANSWER_PDU`.

The C-ECHO-RQ is encoded by :mod:`kit.dicom._command` (pure: no pynetdicom, which is
the import this path exists to avoid); the C-ECHO-RSP is read by :func:`echo_status`,
stricter than :func:`~kit.dicom._command.decode_command` (anything unusual goes to the
pynetdicom path).
"""

from __future__ import annotations

import struct

from kit.dicom._assoc_pdu import associate_rq_pdu, item
from kit.dicom._command import C_ECHO_RQ, C_ECHO_RSP, NO_DATASET, encode_command
from kit.errors import DicomError

__all__ = [
    "ABORT",
    "APPLICATION_CONTEXT",
    "CONTEXT_ID",
    "ECHO_MESSAGE_ID",
    "EchoDeclined",
    "EchoResponse",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "MAX_ANSWER_PDU",
    "MAX_PDUS",
    "RELEASE_RP",
    "RELEASE_RQ",
    "TRANSFER_SYNTAXES",
    "VERIFICATION",
    "accepted_max_pdu",
    "associate_rq",
    "check_ae_title",
    "echo_rq",
    "echo_status",
    "pdu_header",
    "pdvs",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
#: pynetdicom's default transfer syntaxes (``build_context(VERIFICATION)``), in its order
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.2")
#: what kit's pynetdicom path sends (pynetdicom 3.0.4's own values; a test keeps them equal)
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.3811.3.0.4"
IMPLEMENTATION_VERSION_NAME = "PYNETDICOM_304"
CONTEXT_ID = 1
ECHO_MESSAGE_ID = 1
#: the largest answer PDU read (an AC for one context and a C-ECHO-RSP are a few hundred bytes)
MAX_ANSWER_PDU = 64 * 1024
#: the most PDUs read while waiting for one answer (a peer cannot keep us reading forever)
MAX_PDUS = 64

RELEASE_RQ = bytes.fromhex("05000000000400000000")
RELEASE_RP = bytes.fromhex("06000000000400000000")
#: A-ABORT, source 0 (service user), as pynetdicom's ``Association.abort()``
ABORT = bytes.fromhex("07000000000400000000")

_KNOWN_PDUS = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
#: The command elements of a C-ECHO-RSP the fast path reads (group length, Affected SOP Class UID,
#: Command Field, Message ID Being Responded To, Command Data Set Type, Status); any other
#: (an Error Comment, a retired element...) is left to pynetdicom.
_ECHO_RSP_ELEMENTS = frozenset({0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900})


class EchoDeclined(DicomError):
    """Not the clean C-ECHO exchange the fast path handles: run the pynetdicom path instead.

    Never leaves :mod:`kit.dicom._echo_fast` (which falls back on it); a KitError so
    that every failure of the decoders is one.
    """


def check_ae_title(title: str) -> bytes:
    """The 16 bytes of an AE title in an A-ASSOCIATE-RQ (space padded), for the titles the
    fast path covers: 1-16 printable ASCII characters, no backslash, no leading or trailing
    space, not empty. Others raise :class:`EchoDeclined` (the library path decides)."""
    if not isinstance(title, str) or not 0 < len(title) <= 16 or title != title.strip() \
            or any(c == "\\" or not 0x20 <= ord(c) < 0x7F for c in title):
        raise EchoDeclined(f"AE title {title!r} is not one the fast path sends")
    return title.encode("ascii").ljust(16, b" ")


def associate_rq(called_aet: str, calling_aet: str, max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ PDU for a C-ECHO (see the module docstring).

    Parameters
    ----------
    called_aet, calling_aet : str
        The peer's and our AE titles (see :func:`check_ae_title`).
    max_pdu : int
        Our Maximum Length Received (0 = unlimited), 0 to 2**32 - 1.
    """
    if not 0 <= max_pdu <= 0xFFFFFFFF:
        raise EchoDeclined(f"maximum PDU length {max_pdu} is out of range")
    user = item(0x51, struct.pack(">I", max_pdu)) + item(0x52, IMPLEMENTATION_CLASS_UID.encode()) + \
        item(0x55, IMPLEMENTATION_VERSION_NAME.encode())
    return associate_rq_pdu(check_ae_title(called_aet), check_ae_title(calling_aet), APPLICATION_CONTEXT,
                            [(CONTEXT_ID, VERIFICATION, TRANSFER_SYNTAXES)], user)


def echo_rq(message_id: int = ECHO_MESSAGE_ID) -> bytes:
    """The C-ECHO-RQ command set in one P-DATA-TF PDU on context :data:`CONTEXT_ID` (one PDV,
    command, last fragment), as pynetdicom's ``send_c_echo`` sends it."""
    if not 0 <= message_id <= 0xFFFF:
        raise EchoDeclined(f"message ID {message_id} is out of range")
    command = encode_command({0x00000002: VERIFICATION, 0x00000100: C_ECHO_RQ, 0x00000110: message_id,
                              0x00000800: NO_DATASET})
    pdv = struct.pack(">IBB", len(command) + 2, CONTEXT_ID, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def pdu_header(header: bytes) -> tuple[int, int]:
    """PDU type and length of a 6-byte PDU header; :class:`EchoDeclined` for an unknown type or
    a length above :data:`MAX_ANSWER_PDU` (checked before anything is allocated for the body)."""
    if len(header) != 6:
        raise EchoDeclined("a PDU header is 6 bytes")
    kind, _reserved, length = struct.unpack(">BBI", header)
    if kind not in _KNOWN_PDUS:
        raise EchoDeclined(f"unknown PDU type 0x{kind:02X}")
    if length > MAX_ANSWER_PDU:
        raise EchoDeclined(f"a PDU of {length} bytes (more than {MAX_ANSWER_PDU} for a C-ECHO)")
    return kind, length


def _items(body: bytes, pos: int, end: int) -> list[tuple[int, bytes]]:
    """The (type, value) items of ``body[pos:end]`` (1-byte type, 1 reserved, 2-byte length)."""
    out: list[tuple[int, bytes]] = []
    while pos < end:
        if pos + 4 > end:
            raise EchoDeclined("truncated item header")
        kind, _reserved, length = struct.unpack_from(">BBH", body, pos)
        pos += 4
        if pos + length > end:
            raise EchoDeclined(f"item 0x{kind:02X} runs past its PDU")
        out.append((kind, body[pos:pos + length]))
        pos += length
    return out


def _plain(data: bytes) -> bool:
    """Printable ASCII without backslash (what pynetdicom reads back as the same text)."""
    return all(0x20 <= b < 0x7F and b != 0x5C for b in data)


def _uid(data: bytes) -> bool:
    """A conformant UID: 1-64 characters, numeric components without leading zeros."""
    return 0 < len(data) <= 64 and all(
        part == b"0" or (part[:1] in b"123456789" and part[:1] != b"" and part.isdigit())
        for part in data.split(b"."))


def accepted_max_pdu(body: bytes) -> int:
    """The peer's Maximum Length Received (0 = unlimited) from an A-ASSOCIATE-AC body (the
    bytes after the 6-byte PDU header), if it accepts presentation context
    :data:`CONTEXT_ID` with one of :data:`TRANSFER_SYNTAXES`; else :class:`EchoDeclined`.

    Only the plain form is read: our application context, one presentation context result,
    user information of Maximum Length, Implementation Class UID and Version Name (each at
    most once), printable text; anything else is declined, so what is accepted here
    pynetdicom reads the same way (tested on mutated PDUs).
    """
    if len(body) < 68:
        raise EchoDeclined("an A-ASSOCIATE-AC body is at least 68 bytes")
    if not _plain(body[4:36]):
        raise EchoDeclined("AE title fields that are not printable ASCII")
    kinds = [kind for kind, _value in _items(body, 68, len(body))]
    if sorted(kinds) != [0x10, 0x21, 0x50]:
        raise EchoDeclined(f"A-ASSOCIATE-AC items {[f'0x{k:02X}' for k in kinds]}")
    items = dict(_items(body, 68, len(body)))
    if items[0x10] != APPLICATION_CONTEXT.encode():
        raise EchoDeclined("another application context")
    context = items[0x21]
    if len(context) < 4:
        raise EchoDeclined("truncated presentation context item")
    if context[0] != CONTEXT_ID or context[2] != 0:
        raise EchoDeclined(f"presentation context {context[0]}: result {context[2]}")
    syntaxes = _items(context, 4, len(context))
    if len(syntaxes) != 1 or syntaxes[0][0] != 0x40 \
            or syntaxes[0][1] not in [ts.encode() for ts in TRANSFER_SYNTAXES]:
        raise EchoDeclined("the accepted context names no transfer syntax we proposed")
    user = _items(items[0x50], 0, len(items[0x50]))
    subs = dict(user)
    if len(subs) != len(user) or not set(subs) <= {0x51, 0x52, 0x55} or 0x51 not in subs:
        raise EchoDeclined("user information other than maximum length and implementation")
    if len(subs[0x51]) != 4:
        raise EchoDeclined("malformed maximum length item")
    if 0x52 in subs and not _uid(subs[0x52]):
        raise EchoDeclined("an implementation class UID that is not a UID")
    if 0x55 in subs and not (0 < len(subs[0x55]) <= 16 and _plain(subs[0x55])):
        raise EchoDeclined("an implementation version name that is not 1-16 printable characters")
    maximum: int = struct.unpack(">I", subs[0x51])[0]
    return maximum


def pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    """The (presentation context ID, message control header, fragment) of each PDV in a
    P-DATA-TF body; :class:`EchoDeclined` for a malformed one."""
    out: list[tuple[int, int, bytes]] = []
    pos, end = 0, len(body)
    while pos < end:
        if pos + 6 > end:
            raise EchoDeclined("truncated PDV header")
        length, context_id, control = struct.unpack_from(">IBB", body, pos)
        if length < 2 or pos + 4 + length > end:
            raise EchoDeclined("a PDV runs past its PDU")
        out.append((context_id, control, body[pos + 6:pos + 4 + length]))
        pos += 4 + length
    if not out:
        raise EchoDeclined("a P-DATA-TF without a PDV")
    return out


def echo_status(command: bytes, message_id: int = ECHO_MESSAGE_ID) -> int:
    """The Status of a C-ECHO-RSP command set (Implicit VR Little Endian) answering
    ``message_id`` without a data set; :class:`EchoDeclined` for anything else."""
    fields: dict[int, bytes] = {}
    pos, end = 0, len(command)
    while pos < end:
        if pos + 8 > end:
            raise EchoDeclined("truncated command element")
        group, elem, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if group != 0x0000 or length > end - pos or elem in fields:
            raise EchoDeclined("malformed command set")
        fields[elem] = command[pos:pos + length]
        pos += length

    if not fields.keys() <= _ECHO_RSP_ELEMENTS:  # pynetdicom decodes every element: one of a
        raise EchoDeclined("an element a plain C-ECHO-RSP does not carry")  # wrong length fails there

    def us(elem: int) -> int | None:
        raw = fields.get(elem)
        return int.from_bytes(raw, "little") if raw is not None and len(raw) == 2 else None

    group_length = fields.get(0x0000)
    if group_length is None or len(group_length) != 4 \
            or int.from_bytes(group_length, "little") != end - 12:
        raise EchoDeclined("command group length does not match the command set")
    if us(0x0100) != C_ECHO_RSP or us(0x0120) != message_id or us(0x0800) != NO_DATASET:
        raise EchoDeclined("not a C-ECHO-RSP to our request without a data set")
    status = us(0x0900)
    if status is None:
        raise EchoDeclined("a C-ECHO-RSP without a status")
    return status


class EchoResponse:
    """Collects the C-ECHO-RSP command from P-DATA-TF bodies (its fragments may span PDUs).

    :meth:`add` takes each body in turn and returns the Status once the last command
    fragment is in; PDVs on another context, data fragments, anything after the last
    fragment or more than :data:`MAX_ANSWER_PDU` bytes of command raise :class:`EchoDeclined`.
    """

    def __init__(self, message_id: int = ECHO_MESSAGE_ID) -> None:
        self.message_id = message_id
        self._command = bytearray()

    def add(self, body: bytes) -> int | None:
        """Add one P-DATA-TF body; the Status when the command is complete, else None."""
        parts = pdvs(body)
        for index, (context_id, control, fragment) in enumerate(parts):
            if context_id != CONTEXT_ID or not control & 0x01:
                raise EchoDeclined("not a command fragment on our presentation context")
            if len(self._command) + len(fragment) > MAX_ANSWER_PDU:
                raise EchoDeclined(f"a command set of more than {MAX_ANSWER_PDU} bytes")
            self._command += fragment
            if control & 0x02:
                if index != len(parts) - 1:
                    raise EchoDeclined("more PDVs after the last command fragment")
                return echo_status(bytes(self._command), self.message_id)
        return None
