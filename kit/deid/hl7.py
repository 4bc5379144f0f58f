"""De-identify HL7 v2 messages with the cohort's pseudonyms (pure).

Works on kit's :class:`~kit.hl7.message.Message` (values stay escaped; what is kept
is kept byte for byte, escapes included) and gives a Message back that
:func:`kit.hl7.message.parse_message` reads again. The pseudonyms are those of
:class:`kit.deid.pseudonyms.Pseudonymiser`, the same as DICOM and FHIR, computed on
the unescaped, stripped value (as :mod:`kit.hl7.frames` reads it):

* **Patient**: PID-3's first identifier (the MRN, ``patient_id`` in the frames) and
  any other of type ``MR`` -> the patient pseudonym, keeping the assigning authority
  and type (CX.4, CX.5); other PID-3 identifiers are removed. PID-2 likewise; MRG-1
  and MRG-4 (a merged-away MRN gets its own pseudonym). Names, mother's maiden name,
  aliases, address, county, phones, SSN, driver's licence, mother's identifier and
  birth place (PID-4/5/6/9/11/12/13/14/19/20/21/23) are removed; PID-7 (birth date)
  is removed or reduced to the year (:class:`~kit.deid.policy.DeidPolicy`).
* **Orders and documents**: accession numbers (OBR-18, TXA-15, SCH-27) and filler
  order numbers (ORC-3, OBR-3: :mod:`kit.hl7.frames` falls back to them for
  ``accession_number``) -> the accession pseudonym; placer order and group numbers,
  visit/account/pre-admit numbers, document and appointment ids -> ``I...``
  pseudonyms; ZDS-1 (the StudyInstanceUID) -> the UID pseudonym (= the
  de-identified DICOM's). Person fields (XCN: attending, ordering, entering,
  responsible ... doctors) keep only a pseudonymised id; call-back phones and
  addresses are removed.
* **Dates** (MSH-7, EVN, PID-29/33, PV1-44/45, ORC/OBR/OBX/TXA/SCH/AIx/NTE/TQ1/
  SPM/DG1/AL1 date-times, timing quantities' start and end, OBX-5 of type DT/DTM/TS)
  move by the date shift of the message's patient (PID-3's MRN; none: the shift of
  the empty MRN, as DICOM does), keeping their precision, time of day and offset.
  A value that is not a date is removed.
* **Free text** (OBX-5 of type TX/FT/ST/ED, NTE-3, OBR-13, MSA-3, ERR-8) goes through
  the text scrubber when one is given (unescaped, scrubbed, escaped again); else it is
  kept and counted. OBX-5 of type PN/XPN/XAD/XTN/TN/AD is removed, of type CX pseudonymised.
* Segments kit does not know the content of (NK1, GT1, IN1, PD1, ROL, other Z
  segments, ...) are removed whole and counted: they cannot be judged.

Hand-written: python-hl7 and hl7apy parse and build, neither de-identifies.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from kit.deid.policy import BirthDate, DeidPolicy, PatientFacts, TextField, TextScrubber, shift_date_text
from kit.deid.pseudonyms import Pseudonymiser
from kit.errors import HL7ParseError, KitError
from kit.hl7.message import (
    Encoding,
    Message,
    Segment,
    escape,
    flatten,
    parse_message,
    split_messages,
    unescape,
)
from kit.hl7.typed import parse_dt

__all__ = ["RULES", "HL7Deidentifier", "patient_facts"]

#: segment -> field number -> what is done (fields not listed are kept; segments not listed removed)
RULES: dict[str, dict[int, str]] = {
    "MSH": {7: "dtm"},
    "EVN": {2: "dtm", 3: "dtm", 5: "xcn", 6: "dtm"},
    "PID": {2: "patient", 3: "patient_list", 4: "remove", 5: "remove", 6: "remove", 7: "birth",
            9: "remove", 11: "remove", 12: "remove", 13: "remove", 14: "remove", 18: "ident",
            19: "remove", 20: "remove", 21: "remove", 23: "remove", 29: "dtm", 33: "dtm"},
    "PV1": {5: "ident", 7: "xcn", 8: "xcn", 9: "xcn", 17: "xcn", 19: "ident", 44: "dtm", 45: "dtm",
            50: "ident", 52: "xcn"},
    "MRG": {1: "patient_list", 2: "remove", 3: "ident", 4: "patient", 5: "ident", 6: "ident",
            7: "remove"},
    "ORC": {2: "ident", 3: "accession", 4: "ident", 7: "tq", 9: "dtm", 10: "xcn", 11: "xcn", 12: "xcn",
            14: "remove", 15: "dtm", 19: "xcn", 22: "remove", 23: "remove", 24: "remove"},
    "OBR": {2: "ident", 3: "accession", 6: "dtm", 7: "dtm", 8: "dtm", 10: "xcn", 13: "text", 14: "dtm",
            16: "xcn", 17: "remove", 18: "accession", 19: "ident", 20: "ident", 21: "ident", 22: "dtm",
            27: "tq", 28: "xcn", 32: "remove", 33: "remove", 34: "remove", 35: "remove", 36: "dtm"},
    "OBX": {5: "obx_value", 12: "dtm", 14: "dtm", 16: "xcn", 18: "ident", 19: "dtm", 24: "remove",
            25: "xcn"},
    "NTE": {3: "text", 5: "xcn", 6: "dtm"},
    "TXA": {4: "dtm", 5: "xcn", 6: "dtm", 7: "dtm", 8: "dtm", 9: "xcn", 10: "xcn", 11: "xcn",
            12: "ident", 13: "ident", 14: "ident", 15: "accession", 16: "ident", 22: "xcn", 23: "remove"},
    "SCH": {1: "ident", 2: "ident", 4: "ident", 11: "tq", 12: "xcn", 13: "remove", 14: "remove",
            16: "xcn", 17: "remove", 18: "remove", 20: "xcn", 21: "remove", 23: "ident", 24: "ident",
            26: "ident", 27: "accession"},
    "RGS": {},
    "AIS": {4: "dtm"},
    "AIG": {8: "dtm"},
    "AIL": {6: "dtm"},
    "AIP": {3: "xcn", 6: "dtm"},
    "ZDS": {1: "uid"},
    "TQ1": {7: "dtm", 8: "dtm"},
    "SPM": {2: "ident", 17: "dr", 18: "dtm"},
    "DG1": {5: "dtm", 16: "xcn", 19: "dtm"},
    "AL1": {6: "dtm"},
    "MSA": {3: "text"},
    "ERR": {8: "text"},
}
_OBX_DATES = frozenset({"DT", "DTM", "TS"})
_OBX_TEXT = frozenset({"TX", "FT", "ST", "ED"})
_OBX_REMOVED = frozenset({"PN", "XPN", "XAD", "XTN", "TN", "AD"})
_KEPT_COMPONENTS = (4, 5)  # of an identifier (CX/EI): assigning authority and type


def _mrn(m: Message) -> str | None:
    for path in ("PID-3(1).1", "PID-2.1"):
        v = m.get(path).strip()
        if v:
            return v
    return None


def patient_facts(m: Message) -> PatientFacts | None:
    """What the message's PID says about its patient (names, birth date, phones, address, ids)."""
    mrn = _mrn(m)
    if mrn is None:
        return None

    def reps(path: str) -> list[str]:
        return [m.get(f"{path}({r})") for r in range(1, len(m.repetitions(path)) + 1)]

    names = []
    for r in range(1, len(m.repetitions("PID-5")) + 1):
        family, given = m.get(f"PID-5({r}).1"), m.get(f"PID-5({r}).2")
        names += [f"{family}^{given}".strip("^"), f"{given} {family}".strip()]
    birth = parse_dt(m.get("PID-7"))
    addresses = [" ".join(p for p in a.replace("&", " ").split("^") if p) for a in reps("PID-11")]
    ids = [m.get(f"PID-3({r}).1") for r in range(1, len(m.repetitions("PID-3")) + 1)]
    return PatientFacts(mrn, tuple(names), (birth.isoformat(),) if birth else (),
                        tuple(m.get(f"{f}({r}).1") or m.get(f"{f}({r})")
                              for f in ("PID-13", "PID-14") for r in range(1, len(m.repetitions(f)) + 1)),
                        tuple(addresses), tuple(ids + [m.get("PID-2.1"), m.get("PID-19")]))


class HL7Deidentifier:
    """De-identify HL7 v2 messages with the cohort's pseudonyms (see the module docstring).

    Parameters
    ----------
    pseudonymiser : kit.deid.pseudonyms.Pseudonymiser
        The key (the same one the DICOM and FHIR de-identification use).
    policy : kit.deid.policy.DeidPolicy, optional
        The birth-date choice (default: removed).
    scrub : TextScrubber, optional
        Called for every free-text value; ``None``: kept and counted.
    facts : mapping of str to PatientFacts, optional
        What is known of each patient (by MRN), handed to ``scrub`` (the message's
        own PID is added).
    """

    def __init__(self, pseudonymiser: Pseudonymiser, *, policy: DeidPolicy | None = None,
                 scrub: TextScrubber | None = None, facts: Mapping[str, PatientFacts] | None = None) -> None:
        if not isinstance(pseudonymiser, Pseudonymiser):
            raise HL7ParseError("an HL7Deidentifier needs a kit.deid.pseudonyms.Pseudonymiser")
        self.pseudonymiser = pseudonymiser
        self.policy = policy if policy is not None else DeidPolicy()
        self.scrub = scrub
        self.facts: dict[str, PatientFacts] = dict(facts or {})
        #: what was removed or not handled, by reason (never values)
        self.counts: Counter[str] = Counter()

    def messages(self, messages: Iterable[Message | str | bytes]) -> list[Message]:
        """De-identify each message (see :meth:`message`)."""
        return [self.message(m) for m in messages]

    def feed(self, data: bytes | str) -> str:
        """A file of messages (any segment ends, MLLP dumps, batches) de-identified: one message
        per line group (segments ended by CR, each message by a newline)."""
        return "".join(self.message(text).to_er7() + "\n" for text in split_messages(data))

    def message(self, message: Message | str | bytes) -> Message:
        """A de-identified copy of one message.

        Raises
        ------
        kit.errors.HL7ParseError
            ``message`` is not an HL7 v2 message.
        """
        m = message if isinstance(message, Message) else parse_message(message)
        try:
            return self._message(m)
        except KitError:
            raise
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            raise HL7ParseError(f"cannot de-identify: {type(exc).__name__}") from exc

    def _message(self, m: Message) -> Message:
        mrn = _mrn(m)
        shift = self.pseudonymiser.date_shift(mrn or "")
        facts = None
        if mrn is not None:
            own = patient_facts(m)
            known = self.facts.get(mrn)
            facts = own if known is None or own is None else known.merge(own)
        run = _Run(self, m.encoding, shift, facts)
        out: list[Segment] = []
        for seg in m.segments():
            rules = RULES.get(seg.name)
            if rules is None:
                self.counts[f"segment_removed:{seg.name}"] += 1
                continue
            out.append(run.segment(seg, rules))
        return Message(tuple(out), m.encoding)


class _Run:
    """One message's de-identification (its delimiters, patient shift and facts)."""

    def __init__(self, owner: HL7Deidentifier, enc: Encoding, shift: dt.timedelta,
                 facts: PatientFacts | None) -> None:
        self.owner, self.enc, self.shift, self.facts = owner, enc, shift, facts
        p = owner.pseudonymiser
        self._ops: dict[str, Callable[[str, str], str]] = {
            "text": self._text,
            "dtm": lambda r, _: self._at_components(r, (1,)),
            "tq": lambda r, _: self._at_components(r, (4, 5)),
            "dr": lambda r, _: self._at_components(r, (1, 2)),
            "patient": lambda r, _: self._identifier(r, p.patient_id),
            "accession": lambda r, _: self._identifier(r, p.accession_number),
            "ident": lambda r, _: self._identifier(r, p.identifier),
            "uid": lambda r, _: self._identifier(r, p.uid, keep=(2, 3, 4)),
            "xcn": lambda r, _: self._identifier(r, p.identifier, keep=()),
        }
        self._patient_id = p.patient_id

    def segment(self, seg: Segment, rules: Mapping[int, str]) -> Segment:
        fields = list(seg.fields)
        value_type = unescape(seg.field(2), self.enc).strip().upper() if seg.name == "OBX" else ""
        for number, op in rules.items():
            if number > len(fields) or (seg.name == "MSH" and number <= 2):
                continue
            raw = fields[number - 1]
            if raw:
                fields[number - 1] = self.apply(op, raw, f"{seg.name}-{number}", value_type)
        return Segment(seg.name, tuple(fields))

    # -- operations on a raw field --------------------------------------------------
    def apply(self, op: str, raw: str, where: str, value_type: str) -> str:
        enc = self.enc
        if op == "remove":
            return ""
        if op == "obx_value":
            if value_type in _OBX_DATES:
                op = "dtm"
            elif value_type in _OBX_TEXT:
                op = "text"
            elif value_type in _OBX_REMOVED:
                return ""
            elif value_type == "CX":
                op = "ident"
            else:
                return raw
        reps = raw.split(enc.repetition)
        if op == "patient_list":
            kept = [self._identifier(r, self._patient_id) for i, r in enumerate(reps)
                    if i == 0 or self._component(r, 5) == "MR"]
            return enc.repetition.join(kept)
        if op == "birth":
            if self.owner.policy.birth_date is BirthDate.REMOVE:
                return ""
            moved = self._dtm(reps[0].split(enc.component)[0])
            return moved[:4] if moved else ""
        fn = self._ops.get(op)
        if fn is None:  # pragma: no cover - RULES holds only the operations above
            raise HL7ParseError(f"unknown de-identification operation {op!r}")
        return enc.repetition.join(fn(r, where) for r in reps)

    def _component(self, rep: str, n: int) -> str:
        comps = rep.split(self.enc.component)
        return unescape(comps[n - 1], self.enc).strip() if n <= len(comps) else ""

    def _identifier(self, rep: str, fn: Callable[[str], str],
                    keep: tuple[int, ...] = _KEPT_COMPONENTS) -> str:
        comps = rep.split(self.enc.component)
        first = flatten(comps[0], self.enc, components=False).strip()  # as the frames read it
        out = [escape(fn(first), self.enc) if first else ""]
        for n in range(2, len(comps) + 1):
            out.append(comps[n - 1] if n in keep else "")
        return self.enc.component.join(out).rstrip(self.enc.component)

    def _dtm(self, text: str) -> str | None:
        return shift_date_text(text.strip(), self.shift, syntax="hl7")

    def _at_components(self, rep: str, which: tuple[int, ...]) -> str:
        comps = rep.split(self.enc.component)
        for n in which:
            if n <= len(comps) and comps[n - 1]:
                subs = comps[n - 1].split(self.enc.subcomponent)
                moved = self._dtm(subs[0]) if subs[0] else ""
                if moved is None:
                    self.owner.counts["date_removed"] += 1
                    moved = ""
                subs[0] = moved
                comps[n - 1] = self.enc.subcomponent.join(subs) if moved else ""
        return self.enc.component.join(comps)

    def _text(self, rep: str, where: str) -> str:
        scrub = self.owner.scrub
        if scrub is None:
            self.owner.counts["text_unscrubbed"] += 1
            return rep
        enc = self.enc
        out_comps = []
        for comp in rep.split(enc.component):
            subs = []
            for sub in comp.split(enc.subcomponent):
                plain = unescape(sub, enc)
                clean = scrub(plain, TextField("hl7", where, "text", self.facts)) if plain else plain
                if not isinstance(clean, str):
                    raise HL7ParseError(f"{where}: the text scrubber returned no text")
                subs.append(sub if clean == plain else escape(clean, enc))
            out_comps.append(enc.subcomponent.join(subs))
        return enc.component.join(out_comps)
