"""Per-resource-type column extractors behind :mod:`kit.fhir.frames` (pure).

Each supported resource type has a *schema* (an ordered tuple of :class:`Col`)
and an *extractor*: a plain function that takes one resource dict and returns a
tuple with one value per column, in schema order. No model objects are built:
the extractors read the JSON dicts directly, which is what makes the frames fast.

The column model and the shared value readers live in
:mod:`kit.fhir.frames_columns`.

Written by hand (no library maps FHIR JSON to typed columnar frames at this
speed): the extractors, the identifier picking (MRN, accession number,
StudyInstanceUID) and the resolution of references to contained resources.

Column kinds (``Col.kind``): ``str``, ``float``, ``int``, ``bool`` (scalars),
``date`` / ``datetime`` (collected as FHIR strings, converted to ``pl.Date`` /
``pl.Datetime("us", "UTC")`` in one vectorised pass), ``list`` (list of
scalars) and ``structs``: the items' fields flattened into one tuple per row,
``(f1, f2, ..., f1, f2, ...)`` in the struct's field order (built while the
resource is hot in the CPU cache; a list of dicts keyed by field name works too).

Column roles (``Col.role``): ``ref`` marks a column holding References as written
(``Encounter/e1``, ``urn:uuid:...``), resolved inside Bundles by
:mod:`kit.fhir.frames`; ``concept`` marks a column taken from a CodeableConcept.

One rule for every CodeableConcept (``concept`` columns, component fields,
identifier types): the code is the first coding's ``code``, and when that is
missing (a text-only concept, or a first coding without a code) the concept's
``text``; a display column holds the first coding's ``display``, else the
``text``; a system column holds the first coding's ``system`` (null for text).
So a text-only concept is never lost, in any column.

Wrong JSON types (an object where FHIR has a string, a string where it has a
list...) make the extractor raise (AttributeError, TypeError, ...), which
:mod:`kit.fhir.frames` turns into :class:`~kit.errors.FhirValidationError`;
the extractors never coerce a value of the wrong type (a string is not split
into characters, a numeric string is not a number).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from kit.fhir.frames_columns import (
    CODING,
    COMPONENT,
    EXTENSION,
    IDENTIFIER,
    KINDS,
    ROLES,
    Col,
    Extractor,
    _c,
    _cc,
    _code,
    _codes,
    _coding_items,
    _codings,
    _contained,
    _ext,
    _first_code,
    _identifiers,
    _last_updated,
    _name,
    _note,
    _quantity,
    _ref,
    _refs,
    _subject,
    _telecom,
    _typed_identifier,
    _when,
    _words,
    mrn,
)

__all__ = [
    "CODING",
    "COMPONENT",
    "EXTENSION",
    "EXTRACTORS",
    "IDENTIFIER",
    "KINDS",
    "ROLES",
    "SCHEMAS",
    "Col",
    "Extractor",
    "generic_extract",
    "GENERIC_SCHEMA",
]

# --------------------------------------------------------------------------- Patient

PATIENT = _c("""id last_updated:datetime patient_id mrn_system identifiers:identifiers active:bool
family given prefix name_text gender birth_date:date deceased:bool deceased_datetime:datetime phone
email address_line city state postal_code country marital_status:cc language:cc general_practitioner:ref
managing_organization:ref extensions:extensions""")


def _patient(r: Mapping[str, Any]) -> tuple[Any, ...]:
    idents = r.get("identifier")
    pid, psys = mrn(idents)
    family, given, prefix, text = _name(r.get("name"))
    telecom = r.get("telecom")
    deceased = r.get("deceasedBoolean")
    deceased_dt = r.get("deceasedDateTime")
    if deceased_dt is not None:
        deceased = True
    addr = r.get("address")
    a = addr[0] if addr else {}
    lines = a.get("line")
    comm = r.get("communication")
    return (
        r.get("id"), _last_updated(r), pid, psys, _identifiers(idents), r.get("active"),
        family, given, prefix, text, r.get("gender"), r.get("birthDate"), deceased, deceased_dt,
        _telecom(telecom, "phone"), _telecom(telecom, "email"),
        _words(lines, ", "), a.get("city"), a.get("state"), a.get("postalCode"),
        a.get("country"), _code(r.get("maritalStatus")),
        _code(comm[0].get("language")) if comm else None,
        _ref((r.get("generalPractitioner") or [None])[0]), _ref(r.get("managingOrganization")), _ext(r),
    )


# --------------------------------------------------------------------------- Observation

OBSERVATION = _c("""id last_updated:datetime status category:cc categories:ccs code:cc code_system
code_display codings:codings subject:ref patient_ref patient_id encounter:ref effective:datetime
effective_end:datetime issued:datetime value_quantity:float value_unit value_string value_code:cc
value_code_system value_boolean:bool value_integer:int value_datetime:datetime data_absent_reason:cc
interpretation:cc reference_range_low:float reference_range_high:float reference_range_text
performer:ref has_member:refs derived_from:refs note components:components extensions:extensions""")


def _components(comps: list[Any] | None) -> tuple[Any, ...] | None:
    """COMPONENT struct items, flattened."""
    if not comps:
        return None
    out: list[Any] = []
    for c in comps:
        code, system, display = _cc(c.get("code"))
        vq = c.get("valueQuantity")
        vcc = c.get("valueCodeableConcept")
        interp = c.get("interpretation")
        out += (
            code, system, display, vq.get("value") if vq else None,
            (vq.get("unit") or vq.get("code")) if vq else None,
            c.get("valueString"), _code(vcc) if vcc else None, _code(interp[0]) if interp else None,
        )
    return tuple(out)


def _observation(r: Mapping[str, Any]) -> tuple[Any, ...]:
    # the hottest extractor (labs and vitals dwarf everything else): helpers inlined,
    # each dict read once
    get = r.get
    cc = get("code")
    code = system = display = codings = None
    if cc:
        cods = cc.get("coding")
        if cods:
            c = cods[0]
            text = cc.get("text")
            code, system, display = c.get("code") or text, c.get("system"), c.get("display") or text
            codings = _coding_items(cods)
        else:
            code = display = cc.get("text")
    cats = get("category")
    categories: list[Any] | None
    if cats:
        categories = [_code(c) for c in cats]
        category = categories[0]
    else:
        categories = category = None
    subject, pref, pid = _subject(r, get("subject"))
    eff = get("effectiveDateTime")
    eff_end = None
    if eff is None:
        period = get("effectivePeriod")
        if period:
            eff, eff_end = period.get("start"), period.get("end")
        else:
            eff = get("effectiveInstant")
    vq = get("valueQuantity")
    if vq:
        vq_value, vq_unit = vq.get("value"), vq.get("unit") or vq.get("code")
    else:
        vq_value = vq_unit = None
    vcc = get("valueCodeableConcept")
    if vcc:
        vcode, vsys, _ = _cc(vcc)
    else:
        vcode = vsys = None
    rr = get("referenceRange")
    if rr:
        r0 = rr[0]
        low = r0.get("low")
        high = r0.get("high")
        rr_low = low.get("value") if low else None
        rr_high = high.get("value") if high else None
        rr_text = r0.get("text")
    else:
        rr_low = rr_high = rr_text = None
    interp = get("interpretation")
    perf = get("performer")
    meta = get("meta")
    enc = get("encounter")
    comps = get("component")
    return (
        get("id"), meta.get("lastUpdated") if meta else None, get("status"), category, categories,
        code, system, display, codings,
        subject, pref, pid, enc.get("reference") if enc else None, eff, eff_end, get("issued"),
        vq_value, vq_unit, get("valueString"), vcode, vsys, get("valueBoolean"), get("valueInteger"),
        get("valueDateTime"), _code(get("dataAbsentReason")), _code(interp[0]) if interp else None,
        rr_low, rr_high, rr_text, _ref(perf[0]) if perf else None,
        _refs(get("hasMember")), _refs(get("derivedFrom")), _note(get("note")),
        _components(comps) if comps else None, _ext(r) if "extension" in r else None,
    )


# --------------------------------------------------------------------------- Condition

CONDITION = _c("""id last_updated:datetime clinical_status:cc verification_status:cc category:cc code:cc
code_system code_display codings:codings subject:ref patient_ref patient_id encounter:ref onset:datetime
abatement:datetime recorded_date:datetime severity:cc body_site:cc note extensions:extensions""")


def _condition(r: Mapping[str, Any]) -> tuple[Any, ...]:
    cc = r.get("code")
    code, system, display = _cc(cc)
    subject, pref, pid = _subject(r, r.get("subject"))
    onset, _ = _when(r, "onset")
    abatement, _ = _when(r, "abatement")
    return (
        r.get("id"), _last_updated(r), _code(r.get("clinicalStatus")), _code(r.get("verificationStatus")),
        _first_code(r.get("category")), code, system, display, _codings(cc),
        subject, pref, pid, _ref(r.get("encounter")), onset, abatement, r.get("recordedDate"),
        _code(r.get("severity")), _first_code(r.get("bodySite")), _note(r.get("note")), _ext(r),
    )


# --------------------------------------------------------------------------- Procedure

PROCEDURE = _c("""id last_updated:datetime status category:cc code:cc code_system code_display
codings:codings subject:ref patient_ref patient_id encounter:ref performed:datetime
performed_end:datetime performer:ref reason_code:cc body_site:cc outcome:cc note extensions:extensions""")


def _procedure(r: Mapping[str, Any]) -> tuple[Any, ...]:
    cc = r.get("code")
    code, system, display = _cc(cc)
    subject, pref, pid = _subject(r, r.get("subject"))
    start, end = _when(r, "performed")
    perf = r.get("performer")
    return (
        r.get("id"), _last_updated(r), r.get("status"), _code(r.get("category")), code, system, display,
        _codings(cc), subject, pref, pid, _ref(r.get("encounter")), start, end,
        _ref(perf[0].get("actor")) if perf else None, _first_code(r.get("reasonCode")),
        _first_code(r.get("bodySite")), _code(r.get("outcome")), _note(r.get("note")), _ext(r),
    )


# --------------------------------------------------------------------------- Encounter

ENCOUNTER = _c("""id last_updated:datetime status class_code type_code:cc type_display service_type:cc
subject:ref patient_ref patient_id period_start:datetime period_end:datetime reason_code:cc
reason_display participant:ref location:ref service_provider:ref discharge_disposition:cc
identifiers:identifiers extensions:extensions""")


def _encounter(r: Mapping[str, Any]) -> tuple[Any, ...]:
    subject, pref, pid = _subject(r, r.get("subject"))
    types = r.get("type")
    tcode, _, tdisplay = _cc(types[0] if types else None)
    period = r.get("period") or {}
    reasons = r.get("reasonCode")
    rcode, _, rdisplay = _cc(reasons[0] if reasons else None)
    parts = r.get("participant")
    locs = r.get("location")
    hosp = r.get("hospitalization")
    klass = r.get("class")
    return (
        r.get("id"), _last_updated(r), r.get("status"), klass.get("code") if klass else None,
        tcode, tdisplay, _code(r.get("serviceType")), subject, pref, pid,
        period.get("start"), period.get("end"), rcode, rdisplay,
        _ref(parts[0].get("individual")) if parts else None,
        _ref(locs[0].get("location")) if locs else None, _ref(r.get("serviceProvider")),
        _code(hosp.get("dischargeDisposition")) if hosp else None,
        _identifiers(r.get("identifier")), _ext(r),
    )


# --------------------------------------------------------------------------- DiagnosticReport

DIAGNOSTIC_REPORT = _c("""id last_updated:datetime status category:cc code:cc code_system code_display
codings:codings subject:ref patient_ref patient_id encounter:ref accession_number effective:datetime
issued:datetime performer:ref results:refs imaging_study:refs based_on:refs conclusion
conclusion_codes:ccs presented_form_type extensions:extensions""")


def _diagnostic_report(r: Mapping[str, Any]) -> tuple[Any, ...]:
    cc = r.get("code")
    code, system, display = _cc(cc)
    subject, pref, pid = _subject(r, r.get("subject"))
    eff, _ = _when(r, "effective")
    perf = r.get("performer")
    forms = r.get("presentedForm")
    return (
        r.get("id"), _last_updated(r), r.get("status"), _first_code(r.get("category")), code, system,
        display, _codings(cc), subject, pref, pid, _ref(r.get("encounter")),
        _typed_identifier(r.get("identifier"), "ACSN", "accession"), eff, r.get("issued"),
        _ref(perf[0]) if perf else None, _refs(r.get("result")), _refs(r.get("imagingStudy")),
        _refs(r.get("basedOn")), r.get("conclusion"), _codes(r.get("conclusionCode")),
        forms[0].get("contentType") if forms else None, _ext(r),
    )


# --------------------------------------------------------------------------- ImagingStudy

IMAGING_STUDY = _c("""id last_updated:datetime status study_instance_uid accession_number subject:ref
patient_ref patient_id encounter:ref started:datetime modalities:strs number_of_series:int
number_of_instances:int description procedure_code:cc reason_code:cc series_instance_uids:strs
based_on:refs endpoint:ref extensions:extensions""")


def _study_uid(identifiers: list[Any] | None) -> Any:
    if not identifiers:
        return None
    for i in identifiers:
        if i.get("system") == "urn:dicom:uid":
            v = i.get("value")
            return v[8:] if v and v.startswith("urn:oid:") else v
    for i in identifiers:
        v = i.get("value")
        if v and v.startswith("urn:oid:"):
            return v[8:]
    return None


def _imaging_study(r: Mapping[str, Any]) -> tuple[Any, ...]:
    idents = r.get("identifier")
    subject, pref, pid = _subject(r, r.get("subject"))
    series = r.get("series")
    modalities = r.get("modality")
    if modalities:
        mods = [m.get("code") for m in modalities]
    elif series:
        mods = list(dict.fromkeys(s["modality"].get("code") for s in series if s.get("modality")))
    else:
        mods = None
    endpoints = r.get("endpoint")
    return (
        r.get("id"), _last_updated(r), r.get("status"), _study_uid(idents),
        _typed_identifier(idents, "ACSN", "accession"), subject, pref, pid, _ref(r.get("encounter")),
        r.get("started"), mods, r.get("numberOfSeries"), r.get("numberOfInstances"),
        r.get("description"), _first_code(r.get("procedureCode")), _first_code(r.get("reasonCode")),
        [s.get("uid") for s in series] if series else None, _refs(r.get("basedOn")),
        _ref(endpoints[0]) if endpoints else None, _ext(r),
    )


# --------------------------------------------------------------------------- MedicationRequest

MEDICATION_REQUEST = _c("""id last_updated:datetime status intent medication_code:cc medication_system
medication_display medication_reference:ref subject:ref patient_ref patient_id encounter:ref
authored_on:datetime requester:ref dosage_text dose_value:float dose_unit route:cc frequency:int
period:float period_unit reason_code:cc note extensions:extensions""")


def _medication_request(r: Mapping[str, Any]) -> tuple[Any, ...]:
    med_ref = _ref(r.get("medicationReference"))
    med_cc = r.get("medicationCodeableConcept")
    if med_cc is None and med_ref and med_ref[0] == "#":
        c = _contained(r, med_ref[1:])
        med_cc = c.get("code") if c is not None else None
    mcode, msys, mdisplay = _cc(med_cc)
    subject, pref, pid = _subject(r, r.get("subject"))
    dosages = r.get("dosageInstruction")
    d = dosages[0] if dosages else {}
    dose_value = dose_unit = None
    dar = d.get("doseAndRate")
    if dar:
        dose_value, dose_unit = _quantity(dar[0].get("doseQuantity"))
    rep = (d.get("timing") or {}).get("repeat") or {}
    return (
        r.get("id"), _last_updated(r), r.get("status"), r.get("intent"), mcode, msys, mdisplay, med_ref,
        subject, pref, pid, _ref(r.get("encounter")), r.get("authoredOn"), _ref(r.get("requester")),
        d.get("text"), dose_value, dose_unit, _code(d.get("route")), rep.get("frequency"),
        rep.get("period"), rep.get("periodUnit"), _first_code(r.get("reasonCode")),
        _note(r.get("note")), _ext(r),
    )


# --------------------------------------------------------------------------- Appointment

APPOINTMENT = _c("""id last_updated:datetime status service_type:cc appointment_type:cc description
start:datetime end:datetime minutes_duration:int subject:ref patient_ref patient_id practitioner:ref
location:ref accession_number based_on:refs reason_code:cc comment extensions:extensions""")


def _appointment(r: Mapping[str, Any]) -> tuple[Any, ...]:
    subject = pref = pid = practitioner = location = None
    for p in r.get("participant") or ():
        actor = p.get("actor")
        ref = actor.get("reference") if actor else None
        if not ref:
            continue
        kind = actor.get("type")  # Reference.type: the one way to know what a urn: points at
        if subject is None and (kind == "Patient" or "Patient/" in ref or ref[0] == "#"):
            subject, pref, pid = _subject(r, actor)
        elif practitioner is None and (kind in ("Practitioner", "PractitionerRole") or "Practitioner" in ref):
            practitioner = ref
        elif location is None and (kind == "Location" or "Location/" in ref):
            location = ref
    return (
        r.get("id"), _last_updated(r), r.get("status"), _first_code(r.get("serviceType")),
        _code(r.get("appointmentType")), r.get("description"), r.get("start"), r.get("end"),
        r.get("minutesDuration"), subject, pref, pid, practitioner, location,
        _typed_identifier(r.get("identifier"), "ACSN", "accession"), _refs(r.get("basedOn")),
        _first_code(r.get("reasonCode")), r.get("comment"), _ext(r),
    )


# --------------------------------------------------------------------------- ServiceRequest

SERVICE_REQUEST = _c("""id last_updated:datetime status intent priority category:cc code:cc code_system
code_display codings:codings subject:ref patient_ref patient_id encounter:ref accession_number
authored_on:datetime occurrence:datetime requester:ref performer:ref reason_code:cc body_site:cc note
extensions:extensions""")


def _service_request(r: Mapping[str, Any]) -> tuple[Any, ...]:
    cc = r.get("code")
    code, system, display = _cc(cc)
    subject, pref, pid = _subject(r, r.get("subject"))
    occ, _ = _when(r, "occurrence")
    perf = r.get("performer")
    return (
        r.get("id"), _last_updated(r), r.get("status"), r.get("intent"), r.get("priority"),
        _first_code(r.get("category")), code, system, display, _codings(cc),
        subject, pref, pid, _ref(r.get("encounter")),
        _typed_identifier(r.get("identifier"), "ACSN", "accession"), r.get("authoredOn"), occ,
        _ref(r.get("requester")), _ref(perf[0]) if perf else None, _first_code(r.get("reasonCode")),
        _first_code(r.get("bodySite")), _note(r.get("note")), _ext(r),
    )


# --------------------------------------------------------------------------- Practitioner

PRACTITIONER = _c("""id last_updated:datetime identifier identifier_system identifiers:identifiers
active:bool family given prefix gender phone email qualification:cc extensions:extensions""")


def _practitioner(r: Mapping[str, Any]) -> tuple[Any, ...]:
    idents = r.get("identifier")
    first = idents[0] if idents else {}
    family, given, prefix, _ = _name(r.get("name"))
    telecom = r.get("telecom")
    quals = r.get("qualification")
    return (
        r.get("id"), _last_updated(r), first.get("value"), first.get("system"), _identifiers(idents),
        r.get("active"), family, given, prefix, r.get("gender"), _telecom(telecom, "phone"),
        _telecom(telecom, "email"), _code(quals[0].get("code")) if quals else None, _ext(r),
    )


# --------------------------------------------------------------------------- DocumentReference

DOCUMENT_REFERENCE = _c("""id last_updated:datetime status doc_status type_code:cc type_system
type_display category:cc subject:ref patient_ref patient_id date:datetime author:ref description
content_type url data_size:int title encounter:ref period_start:datetime period_end:datetime
extensions:extensions""")


def _document_reference(r: Mapping[str, Any]) -> tuple[Any, ...]:
    tcode, tsys, tdisplay = _cc(r.get("type"))
    subject, pref, pid = _subject(r, r.get("subject"))
    authors = r.get("author")
    contents = r.get("content")
    att = (contents[0].get("attachment") or {}) if contents else {}
    ctx = r.get("context") or {}
    encs = ctx.get("encounter")
    period = ctx.get("period") or {}
    return (
        r.get("id"), _last_updated(r), r.get("status"), r.get("docStatus"), tcode, tsys, tdisplay,
        _first_code(r.get("category")), subject, pref, pid, r.get("date"),
        _ref(authors[0]) if authors else None, r.get("description"), att.get("contentType"),
        att.get("url"), att.get("size"), att.get("title"), _ref(encs[0]) if encs else None,
        period.get("start"), period.get("end"), _ext(r),
    )


# --------------------------------------------------------------------------- any other type

GENERIC_SCHEMA = _c("""id last_updated:datetime resource_type subject:ref patient_ref patient_id
resource extensions:extensions""")


def generic_extract(r: Mapping[str, Any]) -> tuple[Any, ...]:
    """Columns for a resource type with no dedicated schema: the whole resource kept as JSON."""
    s = r.get("subject") or r.get("patient")
    subject, pref, pid = _subject(r, s if isinstance(s, dict) else None)
    return (r.get("id"), _last_updated(r), r.get("resourceType"), subject, pref, pid,
            orjson.dumps(r).decode(), _ext(r))


#: resource type -> columns of its frame
SCHEMAS: Final[dict[str, tuple[Col, ...]]] = {
    "Patient": PATIENT,
    "Observation": OBSERVATION,
    "Condition": CONDITION,
    "Procedure": PROCEDURE,
    "Encounter": ENCOUNTER,
    "DiagnosticReport": DIAGNOSTIC_REPORT,
    "ImagingStudy": IMAGING_STUDY,
    "MedicationRequest": MEDICATION_REQUEST,
    "Appointment": APPOINTMENT,
    "ServiceRequest": SERVICE_REQUEST,
    "Practitioner": PRACTITIONER,
    "DocumentReference": DOCUMENT_REFERENCE,
}

#: resource type -> extractor returning one tuple in schema order
EXTRACTORS: Final[dict[str, Extractor]] = {
    "Patient": _patient,
    "Observation": _observation,
    "Condition": _condition,
    "Procedure": _procedure,
    "Encounter": _encounter,
    "DiagnosticReport": _diagnostic_report,
    "ImagingStudy": _imaging_study,
    "MedicationRequest": _medication_request,
    "Appointment": _appointment,
    "ServiceRequest": _service_request,
    "Practitioner": _practitioner,
    "DocumentReference": _document_reference,
}
