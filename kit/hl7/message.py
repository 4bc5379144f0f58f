"""HL7 v2 messages: tokenize, unescape, terser-style access (pure).

Why a tokenizer of our own: hl7apy (the field's library, used by
:mod:`kit.hl7.build` to validate built messages against the v2 structures)
parses at roughly 35 messages per second into a frame and python-hl7 at roughly
1,000; a feed of millions of messages needs far more. HL7 v2 ER7 is a simple
delimited format, so reading is done here by hand: split segments on CR, LF or
CRLF, fields on the field separator from MSH-1, and components, repetitions and
subcomponents on the encoding characters from MSH-2 -- whatever they are.
Values stay escaped in the :class:`Segment` and are unescaped when read
(:func:`unescape`), so nothing is lost and re-encoding is exact.

Escapes honoured (HL7 v2.x chapter 2): ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``
(delimiters), ``\\P\\`` (truncation character, v2.7+), ``\\Xhh..\\`` (hex bytes,
decoded as UTF-8, else Latin-1), ``\\.br\\`` and ``\\.sp\\`` / ``\\.sp N\\`` (line
breaks, become ``"\\n"``; N is 0 to :data:`MAX_SP_LINES` ASCII digits' worth). Anything else
(``\\H\\``, ``\\N\\``, ``\\Cxxyy\\``, ``\\Zxx\\``, other formatting commands, and a
``\\.sp N\\`` with N over the limit or not plain ASCII digits) is kept verbatim, so no escape
expands to more than :data:`MAX_SP_LINES` characters and nothing raises.

Text rules (one implementation, :func:`segment_lines`, shared with the vectorised
path of :mod:`kit.hl7.frames`): bytes are UTF-8, else Latin-1; a UTF-8 byte-order
mark at the start of the data or of a line is dropped; CR, LF, CRLF and the MLLP
block characters VT (0x0B) and FS (0x1C) all end a segment (MLLP cannot carry them
as content, so inside a segment they split it; the rest then has to be a segment
of its own); blank lines are ignored.

Terser paths address values as ``SEG[(occurrence)]-field[(repetition)][.component[.subcomponent]]``,
all 1-based: ``"PID-3.1"``, ``"PID-3(2).1"``, ``"OBX(2)-5"``, ``"MSH-9.2"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kit.errors import HL7ParseError

if TYPE_CHECKING:
    from kit.hl7.typed import TypedMessage

__all__ = [
    "MAX_SP_LINES",
    "STANDARD_ENCODING",
    "Encoding",
    "Message",
    "Segment",
    "component",
    "content_hash",
    "decode",
    "escape",
    "flatten",
    "group_messages",
    "is_batch_line",
    "parse_message",
    "segment_lines",
    "split_messages",
    "unescape",
]

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_PATH = re.compile(
    r"\s*([A-Z][A-Z0-9]{2})(?:\((\d+)\))?-(\d+)(?:\((\d+)\))?(?:\.(\d+))?(?:\.(\d+))?\s*\Z")
_BATCH_SEGMENTS = frozenset({"FHS", "FTS", "BHS", "BTS"})
_MLLP_CHARS = str.maketrans({"\x0b": "\r", "\x1c": "\r"})
_BOM = "\ufeff"
# str.splitlines() also breaks at these, which are content in HL7
_OTHER_BREAKS = "\x0c\x1d\x1e\x85\u2028\u2029"

#: The largest line count a ``\\.sp N\\`` escape is resolved for; bigger counts stay verbatim.
MAX_SP_LINES = 99


@dataclasses.dataclass(frozen=True)
class Encoding:
    """The delimiters of one message (MSH-1 and MSH-2).

    Parameters
    ----------
    field, component, repetition, escape, subcomponent : str
        One character each, all different and none alphanumeric or whitespace.
    truncation : str or None
        The v2.7+ truncation character (fifth character of MSH-2), if present.
    """

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None

    def __post_init__(self) -> None:
        chars = [self.field, self.component, self.repetition, self.escape, self.subcomponent]
        if self.truncation is not None:
            chars.append(self.truncation)
        for c in chars:
            if len(c) != 1 or c.isalnum() or c.isspace() or c in "\x0b\x1c":
                raise HL7ParseError(f"invalid delimiter {c!r}", segment="MSH", field=2)
        if len(set(chars)) != len(chars):
            raise HL7ParseError(f"delimiters are not distinct: {''.join(chars)!r}", segment="MSH", field=2)

    @property
    def msh2(self) -> str:
        """The encoding characters as written in MSH-2."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")

    @property
    def is_standard(self) -> bool:
        """True for the usual ``|^~\\&`` delimiters (no truncation character)."""
        return self == STANDARD_ENCODING


#: The delimiters nearly everyone uses: ``|^~\\&``.
STANDARD_ENCODING = Encoding()


def escape(text: str, encoding: Encoding = STANDARD_ENCODING) -> str:
    """Escape ``text`` for use as one atomic value (a component or subcomponent).

    Delimiters become ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (``\\P\\``), a line feed becomes
    ``\\.br\\``, and a carriage return or other control character ``\\Xhh\\`` so that
    :func:`unescape` gives ``text`` back exactly.
    """
    e = encoding.escape
    mapping = {e: f"{e}E{e}", encoding.field: f"{e}F{e}", encoding.component: f"{e}S{e}",
               encoding.subcomponent: f"{e}T{e}", encoding.repetition: f"{e}R{e}", "\n": f"{e}.br{e}"}
    if encoding.truncation is not None:
        mapping[encoding.truncation] = f"{e}P{e}"
    out: list[str] = []
    for ch in text:
        rep = mapping.get(ch)
        if rep is not None:
            out.append(rep)
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"{e}X{ord(ch):02X}{e}")
        else:
            out.append(ch)
    return "".join(out)


def _hex(payload: str) -> str | None:
    if len(payload) % 2 or not payload:
        return None
    try:
        raw = bytes.fromhex(payload)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _sp(arg: str) -> str | None:
    """``\\.sp N\\``: N line breaks (1 without N); None (kept verbatim) for N over the limit or not ASCII."""
    count = arg.strip(" ")
    if not count:
        return "\n"
    if len(count) > 2 or not (count.isascii() and count.isdigit()) or int(count) > MAX_SP_LINES:
        return None
    return "\n" * int(count)


def unescape(value: str, encoding: Encoding = STANDARD_ENCODING) -> str:
    """Resolve HL7 escape sequences in one atomic value (see the module docstring)."""
    e = encoding.escape
    if e not in value:
        return value
    simple = {"F": encoding.field, "S": encoding.component, "T": encoding.subcomponent,
              "R": encoding.repetition, "E": e}
    if encoding.truncation is not None:
        simple["P"] = encoding.truncation
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != e:
            j = value.find(e, i)
            j = n if j < 0 else j
            out.append(value[i:j])
            i = j
            continue
        end = value.find(e, i + 1)
        if end < 0:  # a lone escape character: keep it
            out.append(value[i:])
            break
        body = value[i + 1:end]
        resolved: str | None
        if body in simple:
            resolved = simple[body]
        elif body[:1] == "X":
            resolved = _hex(body[1:])
        elif body == ".br":
            resolved = "\n"
        elif body.startswith(".sp"):
            resolved = _sp(body[3:])
        else:
            resolved = None
        if resolved is None:  # unknown or formatting sequence: keep verbatim
            out.append(value[i:end + 1])
        else:
            out.append(resolved)
        i = end + 1
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment: its name and its fields, still escaped.

    ``fields[0]`` is field 1. For MSH, field 1 is the field separator and field
    2 the encoding characters, as the standard numbers them.
    """

    name: str
    fields: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _SEGMENT_NAME.match(self.name):
            raise HL7ParseError(f"invalid segment name {self.name!r}", segment=self.name)

    def field(self, number: int) -> str:
        """Raw (escaped) field ``number`` (1-based); ``""`` if absent."""
        return self.fields[number - 1] if 0 < number <= len(self.fields) else ""

    def to_er7(self, encoding: Encoding = STANDARD_ENCODING) -> str:
        """This segment as ER7 text (no segment terminator)."""
        if self.name == "MSH":
            return "MSH" + encoding.field + encoding.field.join(self.fields[1:])
        return encoding.field.join((self.name, *self.fields))


def _split_segment(line: str, enc: Encoding) -> Segment:
    name = line[:3]
    if name == "MSH":
        return Segment("MSH", (enc.field, *line[4:].split(enc.field)))
    if len(line) > 3 and line[3] != enc.field:
        raise HL7ParseError(f"segment {line[:8]!r} is not followed by the field separator", segment=name)
    return Segment(name, tuple(line[4:].split(enc.field)) if len(line) > 3 else ())


def _encoding_from_msh(line: str) -> Encoding:
    if len(line) < 8 or not line.startswith("MSH"):
        raise HL7ParseError("message does not start with an MSH segment", segment="MSH")
    sep = line[3]
    end = line.find(sep, 4)
    chars = line[4:] if end < 0 else line[4:end]
    if len(chars) not in (4, 5):
        raise HL7ParseError(f"MSH-2 must hold 4 or 5 encoding characters, got {chars!r}",
                            segment="MSH", field=2)
    return Encoding(sep, chars[0], chars[1], chars[2], chars[3], chars[4] if len(chars) == 5 else None)


def decode(data: bytes) -> str:
    """Bytes of HL7 as text: a leading UTF-8 byte-order mark dropped, UTF-8, else Latin-1."""
    if data[:3] == b"\xef\xbb\xbf":
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text(data: bytes | bytearray | str) -> str:
    if isinstance(data, bytes | bytearray):
        return decode(bytes(data))
    if not isinstance(data, str):
        raise HL7ParseError(f"expected bytes or str, got {type(data).__name__}")
    if not data.isascii():
        try:
            data.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: no file or wire holds them
            raise HL7ParseError(f"text is not valid Unicode: {exc.reason}") from exc
    return data


def segment_lines(data: bytes | str) -> list[str]:
    """The non-blank segment lines of ``data`` (the text rules of the module docstring).

    Raises
    ------
    kit.errors.HL7ParseError
        ``data`` is neither bytes nor str, or a str holding lone surrogates.
    """
    text = _text(data)
    if any(c in text for c in _OTHER_BREAKS):
        if "\x0b" in text or "\x1c" in text:
            text = text.translate(_MLLP_CHARS)
        lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    else:  # one pass at C speed: without those, str.splitlines() breaks at exactly CR, LF, CRLF, VT, FS
        lines = text.splitlines()
    if _BOM in text:
        lines = [line.lstrip(_BOM) for line in lines]
    return [line for line in lines if line and not line.isspace()]



@dataclasses.dataclass(frozen=True)
class Message:
    """A parsed HL7 v2 message: segments (escaped) plus the message's delimiters.

    Build one with :func:`parse_message`. Read values with :meth:`get`
    (unescaped) and segments with :meth:`segments`; :meth:`typed` gives a small
    dataclass for the common message types.
    """

    segments_: tuple[Segment, ...]
    encoding: Encoding = STANDARD_ENCODING

    def __post_init__(self) -> None:
        if not self.segments_ or self.segments_[0].name != "MSH":
            raise HL7ParseError("message does not start with an MSH segment", segment="MSH")

    # -- header -----------------------------------------------------------------
    @property
    def msh(self) -> Segment:
        """The MSH segment."""
        return self.segments_[0]

    @property
    def message_code(self) -> str:
        """MSH-9.1, e.g. ``"ADT"``."""
        return self.get("MSH-9.1")

    @property
    def trigger(self) -> str:
        """MSH-9.2, the trigger event, e.g. ``"A01"``."""
        return self.get("MSH-9.2")

    @property
    def message_type(self) -> str:
        """``"ADT^A01"`` (MSH-9.1 and MSH-9.2 with a ``^``, whatever the message's delimiters)."""
        code, trigger = self.message_code, self.trigger
        return f"{code}^{trigger}" if trigger else code

    @property
    def structure(self) -> str:
        """MSH-9.3, the message structure (e.g. ``"ADT_A01"``), or ``""``."""
        return self.get("MSH-9.3")

    @property
    def control_id(self) -> str:
        """MSH-10, the message control id."""
        return self.get("MSH-10")

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``"2.5.1"``."""
        return self.get("MSH-12.1")

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return self.get("MSH-3.1")

    @property
    def sending_facility(self) -> str:
        """MSH-4.1."""
        return self.get("MSH-4.1")

    @property
    def receiving_application(self) -> str:
        """MSH-5.1."""
        return self.get("MSH-5.1")

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1."""
        return self.get("MSH-6.1")

    @property
    def processing_id(self) -> str:
        """MSH-11.1 (``P`` production, ``T`` training, ``D`` debugging)."""
        return self.get("MSH-11.1")

    # -- access -----------------------------------------------------------------
    def segments(self, name: str | None = None) -> tuple[Segment, ...]:
        """All segments, or those named ``name`` (e.g. ``"OBX"``), in order."""
        if name is None:
            return self.segments_
        return tuple(s for s in self.segments_ if s.name == name)

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th (1-based) segment named ``name``, or None."""
        seen = 0
        for s in self.segments_:
            if s.name == name:
                seen += 1
                if seen == occurrence:
                    return s
        return None

    def get(self, path: str, default: str = "") -> str:
        """The unescaped value at a terser ``path`` (``"PID-3(2).1"``); ``default`` if absent.

        Without a component the whole repetition is returned with its component
        and subcomponent separators (each part unescaped). Raises
        :class:`~kit.errors.HL7ParseError` for a malformed path.
        """
        m = _PATH.match(path)
        if m is None:
            raise HL7ParseError(f"invalid terser path {path!r}")
        name, occ, fld, rep, comp, sub = m.groups()
        seg = self.segment(name, int(occ) if occ else 1)
        if seg is None:
            return default
        number = int(fld)
        raw = seg.field(number)
        if seg.name == "MSH" and number in (1, 2):
            return raw or default
        value = component(raw, self.encoding, int(rep) if rep else 1,
                          int(comp) if comp else None, int(sub) if sub else None)
        return value if value else default

    def repetitions(self, path: str) -> list[str]:
        """Every repetition of the field at ``SEG-n`` (raw, escaped); empty list if absent."""
        m = _PATH.match(path)
        if m is None or m.group(4) or m.group(5):
            raise HL7ParseError(f"invalid field path {path!r} (expected e.g. 'PID-3')")
        seg = self.segment(m.group(1), int(m.group(2)) if m.group(2) else 1)
        raw = seg.field(int(m.group(3))) if seg else ""
        return raw.split(self.encoding.repetition) if raw else []

    def typed(self) -> TypedMessage:
        """A typed view of this message (:mod:`kit.hl7.typed`); unknown types give ``Generic``."""
        from kit.hl7.typed import typed

        return typed(self)

    def to_er7(self, *, terminator: str = "\r") -> str:
        """The message as ER7 text, segments ended by ``terminator``."""
        return "".join(s.to_er7(self.encoding) + terminator for s in self.segments_)

    def __str__(self) -> str:
        return self.to_er7(terminator="\n")


def content_hash(message: Message) -> str:
    """SHA-256 (hex) of the message as ER7 with CR segment ends.

    The same message received again with other line endings, framing or a
    byte-order mark has the same hash; any other difference gives another.
    """
    return hashlib.sha256(message.to_er7().encode("utf-8", "surrogatepass")).hexdigest()


def component(raw_field: str, encoding: Encoding, repetition: int = 1, comp: int | None = None,
              sub: int | None = None) -> str:
    """Unescaped value of one repetition/component/subcomponent of a raw field (1-based)."""
    if not raw_field:
        return ""
    reps = raw_field.split(encoding.repetition)
    if repetition < 1 or repetition > len(reps):
        return ""
    value = reps[repetition - 1]
    if comp is None:
        return flatten(value, encoding)
    comps = value.split(encoding.component)
    if comp < 1 or comp > len(comps):
        return ""
    value = comps[comp - 1]
    if sub is None:
        return flatten(value, encoding, components=False)
    subs = value.split(encoding.subcomponent)
    return unescape(subs[sub - 1], encoding) if 0 < sub <= len(subs) else ""


def flatten(raw: str, encoding: Encoding, *, components: bool = True, rep_join: str | None = None) -> str:
    """Unescape each atomic part of ``raw``, re-joining with ``^``/``&`` (and ``rep_join``).

    The standard separators are used whatever the message's own delimiters are,
    so values read from differently encoded messages compare equal.
    Repetitions are joined with ``~`` unless ``rep_join`` is given.
    """
    enc = encoding
    if enc.escape not in raw and enc.is_standard:
        return raw if rep_join is None else raw.replace("~", rep_join)
    joiner = "~" if rep_join is None else rep_join
    out = []
    for rep in raw.split(enc.repetition):
        parts = rep.split(enc.component) if components else [rep]
        out.append("^".join("&".join(unescape(s, enc) for s in p.split(enc.subcomponent)) for p in parts))
    return joiner.join(out)


def parse_message(data: bytes | str, *, source: str | None = None,
                  max_segments: int | None = None) -> Message:
    """Parse one HL7 v2 message (ER7), honouring its own delimiters.

    Parameters
    ----------
    data : bytes or str
        The message; segments ended by CR, LF or CRLF. MLLP framing bytes are
        ignored. Bytes are decoded as UTF-8, falling back to Latin-1.
    source : str, optional
        Where the message came from, for error messages.
    max_segments : int, optional
        Refuse a message of more segments, or of more than twenty times as many
        fields, before it is split: a parse holds about 300 bytes and takes 5 to
        10 us a segment, so 16 MiB of tiny segments would hold about 900 MB.

    Returns
    -------
    Message

    Raises
    ------
    kit.errors.HL7ParseError
        Empty input, no MSH first, bad encoding characters, or a malformed
        segment (``.segment`` and ``.field`` say where).
    """
    if max_segments is not None:
        _check_size(data, max_segments, source)
    lines = segment_lines(data)
    if not lines:
        raise HL7ParseError("empty message", source=source)
    try:
        enc = _encoding_from_msh(lines[0])
        segments = tuple(_split_segment(line, enc) for line in lines)
        return Message(segments, enc)
    except HL7ParseError as exc:
        if source is not None and exc.source is None:
            raise HL7ParseError(str(exc), source=source, segment=exc.segment, field=exc.field) from exc
        raise


def _check_size(data: bytes | str, max_segments: int, source: str | None) -> None:
    """HL7ParseError if ``data`` has more than ``max_segments`` segment ends (CR, LF; a CRLF
    counts twice: the bound errs low) or 20 times as many field separators (MSH-1), counted
    without splitting anything."""
    if isinstance(data, str):
        segments = data.count("\r") + data.count("\n")
        fields = data.count(data[3:4] if data.startswith("MSH") and data[3:4] else "|")
    else:  # on the bytes, not a decoded copy (a byte of a UTF-8 separator counted: errs low too)
        segments = data.count(b"\r") + data.count(b"\n")
        fields = data.count(data[3:4] if data.startswith(b"MSH") and data[3:4] else b"|")
    if segments > max_segments:
        raise HL7ParseError(f"the message has more than {max_segments:,} segments", source=source)
    if fields > 20 * max_segments:
        raise HL7ParseError(f"the message has more than {20 * max_segments:,} fields", source=source)


def split_messages(data: bytes | str) -> Iterator[str]:
    """Split a file's text into message texts (segments joined by CR).

    Messages start at each MSH segment; MLLP framing bytes (``0x0B``/``0x1C``)
    and batch envelopes (FHS/BHS/BTS/FTS) are dropped; segment ends may be CR,
    LF or CRLF, so one message per line-group files and MLLP dumps both work.

    Raises
    ------
    kit.errors.HL7ParseError
        Non-empty data before the first MSH (other than batch headers).
    """
    for head, lines in group_messages(segment_lines(data)):
        if head:
            raise HL7ParseError(f"data before the first MSH segment: {lines[0][:20]!r}",
                                segment=lines[0][:3])
        yield "\r".join(lines) + "\r"


def is_batch_line(line: str) -> bool:
    """True for an FHS/BHS/BTS/FTS batch envelope line (dropped when messages are split)."""
    return line[:3] in _BATCH_SEGMENTS and (len(line) == 3 or not (line[3].isascii() and line[3].isalnum()))


def group_messages(lines: list[str]) -> Iterator[tuple[bool, list[str]]]:
    """Group segment lines into messages, each starting at an MSH line; batch lines dropped.

    Yields ``(False, lines)`` per message, and first ``(True, lines)`` for lines
    found before the first MSH (not a message), if any.
    """
    current: list[str] = []
    leading = True
    for line in lines:
        if line[:3] == "MSH":
            if current:
                yield leading, current
            current, leading = [line], False
        elif is_batch_line(line):
            continue
        else:
            current.append(line)
    if current:
        yield leading, current
