"""Typed msgspec structs holding only the fields the frames read, and their row extractors (pure).

Hand-written for speed, behind :mod:`kit.fhir.frames_fast`, and kept equal to the
slow path (:mod:`kit.fhir.frames_extract` over orjson dicts) by tests
(``tests/unit/fhir_fast``). One struct per resource type with a dedicated frame
declares exactly the keys its extractor reads, with the JSON types the frames
take without complaint (``str``, ``bool``, 64-bit ``int``, numbers); anything
else in those keys fails the typed decode and the resource goes the slow way.

How the decoded values are kept equal to orjson's dicts:

* every struct answers ``get(key)`` like a dict (``None`` when absent), so the
  slow extractors run on the structs unchanged; the hottest one (Observation)
  is rewritten with attribute access, line for line;
* an object whose mere presence changes a result even when the keys read are
  absent (a ``Period`` before ``<x>Instant``; ``ImagingStudy.series.modality``)
  is a ``dict`` (``{}`` is falsy, as in the slow path) or kept ``Raw``;
* regions read as arbitrary JSON (``extension``, ``contained``) are kept
  ``Raw`` and parsed by orjson when read, as the slow path does;
* integers are bounded to int64: orjson reads larger ones as floats.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Union

import msgspec
import orjson
from msgspec import Raw, Struct, field

from kit.fhir import frames_columns as fc
from kit.fhir import frames_extract as fx

__all__ = ["DECODERS", "ROW", "TYPE_OF", "UNION", "Head"]

Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Num = Int | float
Period = dict[str, str | None]  # a dict: an empty Period is falsy, as in the slow path
_EMPTY = Raw()


class _S(Struct, gc=False):
    """A struct that reads like the dict it was decoded from (``get``, ``[]``; ``None`` when absent)."""

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        return self.get(key)


class _SRaw(_S):
    """:class:`_S` with ``Raw`` fields, parsed by orjson when read (as the slow path reads them)."""

    def get(self, key: str, default: Any = None) -> Any:
        v = getattr(self, key, default)
        if v.__class__ is Raw:
            return orjson.loads(memoryview(v)) if v else default
        return v


class Head(Struct, gc=False):
    """The two keys every resource is routed by."""

    resourceType: str
    id: str | None = None


class Coding(_S):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CC(_S):
    coding: list[Coding] | None = None
    text: str | None = None


class Identifier(_S):
    system: str | None = None
    value: str | None = None
    type: CC | None = None
    use: str | None = None


class Ref(_S):
    reference: str | None = None
    identifier: Identifier | None = None
    type: str | None = None


class Quantity(_S):
    value: Num | None = None
    unit: str | None = None
    code: str | None = None


class Meta(_S):
    lastUpdated: str | None = None


class Note(_S):
    text: str | None = None


class _R(_SRaw):
    """Keys every resource may be read by: id, meta, extension, contained (``#`` subjects)."""

    id: str | None = None
    meta: Meta | None = None
    extension: Raw = _EMPTY
    contained: Raw = _EMPTY


# --------------------------------------------------------------------------- Observation

# Lean structs where the Observation extractor reads less (it reads nothing else from them):
# fewer strings built and freed for the most numerous resource.

class Code(_S):
    code: str | None = None


class CodeCC(_S):
    coding: list[Code] | None = None
    text: str | None = None


class Value(_S):
    value: Num | None = None


class RefRange(_S):
    low: Value | None = None
    high: Value | None = None
    text: str | None = None


class Component(_S):
    code: CC | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeCC | None = None
    valueString: str | None = None
    interpretation: list[CodeCC] | None = None


class Observation(_R, tag="Observation", tag_field="resourceType"):
    status: str | None = None
    category: list[CodeCC] | None = None
    code: CC | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: str | None = None
    issued: str | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CC | None = None
    valueString: str | None = None
    valueBoolean: bool | None = None
    valueInteger: Int | None = None
    valueDateTime: str | None = None
    dataAbsentReason: CodeCC | None = None
    interpretation: list[CodeCC] | None = None
    referenceRange: list[RefRange] | None = None
    performer: list[Ref] | None = None
    hasMember: list[Ref] | None = None
    derivedFrom: list[Ref] | None = None
    note: list[Note] | None = None
    component: list[Component] | None = None


def _code(cc: CC | CodeCC | None) -> Any:
    if cc is None:
        return None
    cods = cc.coding
    if cods:
        return cods[0].code or cc.text
    return cc.text


def _codings(cods: list[Coding]) -> tuple[Any, ...]:
    if len(cods) == 1:
        c = cods[0]
        return c.system, c.code, c.display
    out: list[Any] = []
    for c in cods:
        out += (c.system, c.code, c.display)
    return tuple(out)


def _components(comps: list[Component]) -> tuple[Any, ...]:
    out: list[Any] = []
    for c in comps:
        cc = c.code
        code = system = display = None
        if cc is not None:
            cods = cc.coding
            text = cc.text
            if cods:
                c0 = cods[0]
                code, system, display = c0.code or text, c0.system, c0.display or text
            else:
                code = display = text
        vq = c.valueQuantity
        vcc = c.valueCodeableConcept
        interp = c.interpretation
        out += (
            code, system, display, vq.value if vq is not None else None,
            (vq.unit or vq.code) if vq is not None else None,
            c.valueString, _code(vcc), _code(interp[0]) if interp else None,
        )
    return tuple(out)


_PREF: dict[str, Any] = {}  # reference -> patient_ref: a few thousand patients, many rows each


def _patient_ref(ref: str) -> Any:
    if len(_PREF) >= 65536:
        _PREF.clear()
    pref = _PREF[ref] = fc._patient_ref(ref)
    return pref


def _observation(o: Observation) -> tuple[Any, ...]:
    """:func:`kit.fhir.frames_extract._observation`, line for line, with attribute access."""
    cc = o.code
    code = system = display = codings = None
    if cc is not None:
        cods = cc.coding
        if cods:
            c = cods[0]
            text = cc.text
            code, system, display = c.code or text, c.system, c.display or text
            codings = _codings(cods)
        else:
            code = display = cc.text
    cats = o.category
    categories: list[Any] | None
    if cats:
        if len(cats) == 1:
            c0 = cats[0]
            codes = c0.coding
            category = (codes[0].code or c0.text) if codes else c0.text
            categories = [category]
        else:
            categories = [_code(c) for c in cats]
            category = categories[0]
    else:
        categories = category = None
    s = o.subject
    subject = pref = pid = None
    if s is not None:
        ref = s.reference
        if ref and ref[0] != "#" and s.identifier is None:
            subject = ref
            pref = _PREF.get(ref, _PREF)
            if pref is _PREF:
                pref = _patient_ref(ref)
        else:
            subject, pref, pid = fc._subject(o, s)  # type: ignore[arg-type]  # reads like a dict
    eff = o.effectiveDateTime
    eff_end = None
    if eff is None:
        period = o.effectivePeriod
        if period:
            eff, eff_end = period.get("start"), period.get("end")
        else:
            eff = o.effectiveInstant
    vq = o.valueQuantity
    if vq is not None:
        vq_value, vq_unit = vq.value, vq.unit or vq.code
    else:
        vq_value = vq_unit = None
    vcc = o.valueCodeableConcept
    vcode = vsys = None
    if vcc is not None:
        cods = vcc.coding
        if cods:
            vcode, vsys = cods[0].code or vcc.text, cods[0].system
        else:
            vcode = vcc.text
    rr = o.referenceRange
    if rr:
        r0 = rr[0]
        low = r0.low
        high = r0.high
        rr_low = low.value if low is not None else None
        rr_high = high.value if high is not None else None
        rr_text = r0.text
    else:
        rr_low = rr_high = rr_text = None
    interp = o.interpretation
    perf = o.performer
    meta = o.meta
    enc = o.encounter
    comps = o.component
    members = o.hasMember
    derived = o.derivedFrom
    ext = o.extension
    dar = o.dataAbsentReason
    notes = o.note
    return (
        o.id, meta.lastUpdated if meta is not None else None, o.status, category, categories,
        code, system, display, codings,
        subject, pref, pid, enc.reference if enc is not None else None, eff, eff_end, o.issued,
        vq_value, vq_unit, o.valueString, vcode, vsys, o.valueBoolean, o.valueInteger,
        o.valueDateTime, _code(dar) if dar is not None else None, _code(interp[0]) if interp else None,
        rr_low, rr_high, rr_text, perf[0].reference if perf else None,
        [x.reference for x in members] if members else None,
        [x.reference for x in derived] if derived else None,
        fc._note(notes) if notes else None, _components(comps) if comps else None,
        fc._ext({"extension": orjson.loads(memoryview(ext))}) if ext else None,
    )


# ------------------------------------------------------------- other types (slow extractors, on get)

class HumanName(_S):
    use: str | None = None
    family: str | None = None
    given: list[str] | None = None
    prefix: list[str] | None = None
    text: str | None = None


class ContactPoint(_S):
    system: str | None = None
    value: str | None = None


class Address(_S):
    line: list[str] | None = None
    city: str | None = None
    state: str | None = None
    postalCode: str | None = None
    country: str | None = None


class Communication(_S):
    language: CC | None = None


class Patient(_R, tag="Patient", tag_field="resourceType"):
    identifier: list[Identifier] | None = None
    active: bool | None = None
    name: list[HumanName] | None = None
    telecom: list[ContactPoint] | None = None
    gender: str | None = None
    birthDate: str | None = None
    deceasedBoolean: bool | None = None
    deceasedDateTime: str | None = None
    address: list[Address] | None = None
    maritalStatus: CC | None = None
    communication: list[Communication] | None = None
    generalPractitioner: list[Ref] | None = None
    managingOrganization: Ref | None = None


class Condition(_R, tag="Condition", tag_field="resourceType"):
    clinicalStatus: CC | None = None
    verificationStatus: CC | None = None
    category: list[CC] | None = None
    code: CC | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    onsetDateTime: str | None = None
    onsetPeriod: Period | None = None
    onsetInstant: str | None = None
    abatementDateTime: str | None = None
    abatementPeriod: Period | None = None
    abatementInstant: str | None = None
    recordedDate: str | None = None
    severity: CC | None = None
    bodySite: list[CC] | None = None
    note: list[Note] | None = None


class Performer(_S):
    actor: Ref | None = None


class Procedure(_R, tag="Procedure", tag_field="resourceType"):
    status: str | None = None
    category: CC | None = None
    code: CC | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    performedDateTime: str | None = None
    performedPeriod: Period | None = None
    performedInstant: str | None = None
    performer: list[Performer] | None = None
    reasonCode: list[CC] | None = None
    bodySite: list[CC] | None = None
    outcome: CC | None = None
    note: list[Note] | None = None


class Participant(_S):
    individual: Ref | None = None


class EncLocation(_S):
    location: Ref | None = None


class Hospitalization(_S):
    dischargeDisposition: CC | None = None


class Encounter(_R, tag="Encounter", tag_field="resourceType"):
    status: str | None = None
    class_: Coding | None = field(default=None, name="class")
    type: list[CC] | None = None
    serviceType: CC | None = None
    subject: Ref | None = None
    period: Period | None = None
    reasonCode: list[CC] | None = None
    participant: list[Participant] | None = None
    location: list[EncLocation] | None = None
    serviceProvider: Ref | None = None
    hospitalization: Hospitalization | None = None
    identifier: list[Identifier] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return super().get("class_" if key == "class" else key, default)


class Attachment(_S):
    contentType: str | None = None
    url: str | None = None
    size: Int | None = None
    title: str | None = None


class DiagnosticReport(_R, tag="DiagnosticReport", tag_field="resourceType"):
    status: str | None = None
    category: list[CC] | None = None
    code: CC | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    identifier: list[Identifier] | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    effectiveInstant: str | None = None
    issued: str | None = None
    performer: list[Ref] | None = None
    result: list[Ref] | None = None
    imagingStudy: list[Ref] | None = None
    basedOn: list[Ref] | None = None
    conclusion: str | None = None
    conclusionCode: list[CC] | None = None
    presentedForm: list[Attachment] | None = None


class Series(_SRaw):
    uid: str | None = None
    modality: Raw = _EMPTY  # only its presence decides whether it counts: read as the slow path reads it


class ImagingStudy(_R, tag="ImagingStudy", tag_field="resourceType"):
    identifier: list[Identifier] | None = None
    status: str | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    started: str | None = None
    modality: list[Coding] | None = None
    series: list[Series] | None = None
    numberOfSeries: Int | None = None
    numberOfInstances: Int | None = None
    description: str | None = None
    procedureCode: list[CC] | None = None
    reasonCode: list[CC] | None = None
    basedOn: list[Ref] | None = None
    endpoint: list[Ref] | None = None


class DoseAndRate(_S):
    doseQuantity: Quantity | None = None


class Repeat(_S):
    frequency: Int | None = None
    period: Num | None = None
    periodUnit: str | None = None


class Timing(_S):
    repeat: Repeat | None = None


class Dosage(_S):
    text: str | None = None
    doseAndRate: list[DoseAndRate] | None = None
    timing: Timing | None = None
    route: CC | None = None


class MedicationRequest(_R, tag="MedicationRequest", tag_field="resourceType"):
    status: str | None = None
    intent: str | None = None
    medicationCodeableConcept: CC | None = None
    medicationReference: Ref | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    authoredOn: str | None = None
    requester: Ref | None = None
    dosageInstruction: list[Dosage] | None = None
    reasonCode: list[CC] | None = None
    note: list[Note] | None = None


class Appointment(_R, tag="Appointment", tag_field="resourceType"):
    status: str | None = None
    serviceType: list[CC] | None = None
    appointmentType: CC | None = None
    description: str | None = None
    start: str | None = None
    end: str | None = None
    minutesDuration: Int | None = None
    participant: list[Performer] | None = None
    identifier: list[Identifier] | None = None
    basedOn: list[Ref] | None = None
    reasonCode: list[CC] | None = None
    comment: str | None = None


class ServiceRequest(_R, tag="ServiceRequest", tag_field="resourceType"):
    status: str | None = None
    intent: str | None = None
    priority: str | None = None
    category: list[CC] | None = None
    code: CC | None = None
    subject: Ref | None = None
    encounter: Ref | None = None
    identifier: list[Identifier] | None = None
    authoredOn: str | None = None
    occurrenceDateTime: str | None = None
    occurrencePeriod: Period | None = None
    occurrenceInstant: str | None = None
    requester: Ref | None = None
    performer: list[Ref] | None = None
    reasonCode: list[CC] | None = None
    bodySite: list[CC] | None = None
    note: list[Note] | None = None


class Qualification(_S):
    code: CC | None = None


class Practitioner(_R, tag="Practitioner", tag_field="resourceType"):
    identifier: list[Identifier] | None = None
    active: bool | None = None
    name: list[HumanName] | None = None
    gender: str | None = None
    telecom: list[ContactPoint] | None = None
    qualification: list[Qualification] | None = None


class Content(_S):
    attachment: Attachment | None = None


class DocContext(_S):
    encounter: list[Ref] | None = None
    period: Period | None = None


class DocumentReference(_R, tag="DocumentReference", tag_field="resourceType"):
    status: str | None = None
    docStatus: str | None = None
    type: CC | None = None
    category: list[CC] | None = None
    subject: Ref | None = None
    date: str | None = None
    author: list[Ref] | None = None
    description: str | None = None
    content: list[Content] | None = None
    context: DocContext | None = None


_TYPES: Final[dict[str, type[_R]]] = {
    "Patient": Patient, "Observation": Observation, "Condition": Condition, "Procedure": Procedure,
    "Encounter": Encounter, "DiagnosticReport": DiagnosticReport, "ImagingStudy": ImagingStudy,
    "MedicationRequest": MedicationRequest, "Appointment": Appointment, "ServiceRequest": ServiceRequest,
    "Practitioner": Practitioner, "DocumentReference": DocumentReference,
}

#: resource type -> typed decoder of its struct (``resourceType``, when there, must match)
DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    rt: msgspec.json.Decoder(cls) for rt, cls in _TYPES.items()}
#: one decoder for every dedicated type, routed by ``resourceType`` (required; a later duplicate
#: with another value is refused, so it routes as orjson reads it)
UNION: Final[msgspec.json.Decoder[Any]] = msgspec.json.Decoder(Union[tuple(_TYPES.values())])  # noqa: UP007
#: struct class -> resource type
TYPE_OF: Final[dict[type, str]] = {cls: rt for rt, cls in _TYPES.items()}


def _observation_c() -> Callable[[Any], tuple[Any, ...]] | None:
    """:func:`_observation` in C (``kit/fhir/_rowc.c``, built at install where a compiler is), or None.

    Written by hand for speed: the same row (tests/unit/fhir_fast/test_rowc.py), read from the
    structs' slots; the shapes it leaves to Python (a ``#contained`` or identifier subject,
    notes, extensions) it hands to :func:`_observation` itself.
    """
    try:
        from kit.fhir import _rowc
    except ImportError:
        return None
    try:
        _rowc.configure((Observation, CC, Coding, CodeCC, Code, Ref, Quantity, Value, RefRange, Meta,
                         Component), _observation, _patient_ref, _PREF)
    except (AttributeError, TypeError, ValueError):  # msgspec laid its structs out otherwise
        return None
    return _rowc.observation


#: resource type -> extractor of one row from its struct (schema order, as :data:`frames_extract.EXTRACTORS`)
ROW: Final[dict[str, Callable[[Any], tuple[Any, ...]]]] = {
    **{rt: fx.EXTRACTORS[rt] for rt in _TYPES}, "Observation": _observation_c() or _observation}
