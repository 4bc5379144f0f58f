"""De-identify FHIR R4 resources, Bundles and NDJSON with the cohort's pseudonyms (pure).

Every element is judged by its FHIR type, read from the ``fhir.resources`` R4B models
(so ``effectiveDateTime``, ``Period.start``, ``Attachment.creation`` or an
extension's ``valueDateTime`` are dates wherever they are); an element the model
does not have cannot be judged and is removed. What happens (the pseudonyms are those
of :class:`kit.deid.pseudonyms.Pseudonymiser`, the same as DICOM and HL7):

* **Patient**: the MRN identifier (type ``MR``, else a system containing ``mrn``,
  else the first: the rule of :mod:`kit.fhir.frames`) and any other ``MR`` identifier
  become the patient pseudonym; the patient's other identifiers (national ids,
  passports, ...) are removed. ``name``, ``telecom``, ``address``, ``photo`` are
  removed -- and so is every HumanName, ContactPoint, Address and Signature anywhere
  (practitioners, contacts, organisations). ``birthDate`` is removed (as DICOM always
  does) or reduced to the year of the shifted date (:class:`~kit.deid.policy.DeidPolicy`);
  the birth-time, birth-place and mother's-maiden-name extensions go with it.
* **Ids and references**: every resource id becomes a keyed UUID, and every
  reference to it is mapped with the same function (``Patient/x``, absolute URLs
  (made relative), ``_history`` dropped, ``urn:uuid:`` fullUrls, contained ``#x``),
  so references still resolve and :func:`kit.fhir.frames.with_patient_id` still
  joins; Bundle ``fullUrl``, ``request.url`` and ``response.location`` likewise.
  Conditional references and request headers (``Patient?identifier=...``,
  ``ifNoneExist``) carry search values and are removed, as are Bundle links,
  ``Reference.display`` and ``Meta.source``.
* **Identifiers elsewhere**: accession numbers (type ``ACSN``, else a system
  containing ``accession``) -> the accession pseudonym; ``urn:dicom:uid`` values ->
  the UID pseudonym (so the ImagingStudy's study UID equals the de-identified
  DICOM StudyInstanceUID), as are ``ImagingStudy.series.uid`` and
  ``series.instance.uid``; MRN-typed identifiers (and a logical ``identifier`` on a
  reference to a Patient) -> the patient pseudonym; any other -> an ``I...`` pseudonym.
* **Dates**: every ``date``, ``dateTime`` and ``instant`` moves by the date shift of
  the resource's patient (found from its Patient references, through the Patient
  resources seen by :meth:`FhirDeidentifier.index`), keeping precision, time of day and
  offset; a resource with no known patient uses the shift of the empty MRN, as DICOM
  does. A value that is not a valid date is removed.
* **Free text**: ``markdown``, narrative ``div``, Attachment ``data`` and the strings
  named ``text``, ``description``, ``conclusion``, ``comment``, ``valueString``,
  ``patientInstruction`` and ``title`` go through the text scrubber when one is given
  (:data:`kit.deid.policy.TextScrubber`; the PHI scrubber of ``kit.deid.text`` by
  default when it exists). Without one a narrative (a rendering of the record, names
  included) is removed and other free text is kept and counted (``text_unscrubbed``).

Inputs are never modified. Malformed input raises
:class:`~kit.errors.FhirValidationError` (the path, never a value). Hand-written: no
library pseudonymises FHIR consistently with DICOM and HL7.
"""

from __future__ import annotations

import re
import typing
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import orjson

from kit.deid.policy import BirthDate, DeidPolicy, PatientFacts, TextField, TextScrubber, shift_date_text
from kit.deid.pseudonyms import Pseudonymiser
from kit.errors import FhirValidationError, KitError
from kit.fhir.resources import is_resource_type

__all__ = ["FhirDeidentifier", "patient_facts"]

_MAX_DEPTH = 64
_DATE_KINDS = frozenset({"Date", "DateTime", "Instant"})
_REMOVED_TYPES = frozenset({"HumanName", "ContactPoint", "Address", "Signature"})
_FREE_TEXT_KEYS = frozenset({"text", "description", "conclusion", "comment", "valueString",
                             "patientInstruction", "title"})
_PATIENT_KEYS = ("subject", "patient", "beneficiary", "individual", "for")
_PHI_EXTENSIONS = ("patient-birthTime", "patient-birthPlace", "patient-mothersMaidenName",
                   "mothersMaidenName")
#: (type, element) removed wherever met: search values, links, server names, pictures
_DROP = frozenset({("BundleEntryRequest", "ifNoneExist"), ("BundleEntryRequest", "ifMatch"),
                   ("BundleEntryRequest", "ifNoneMatch"), ("BundleEntryRequest", "ifModifiedSince"),
                   ("Bundle", "link"), ("BundleEntry", "link"), ("Meta", "source"),
                   ("Reference", "display"), ("Patient", "photo"), ("Practitioner", "photo"),
                   ("RelatedPerson", "photo"), ("Person", "photo")})
_REF_KEYS = frozenset({("BundleEntry", "fullUrl"), ("BundleEntryRequest", "url"),
                       ("BundleEntryResponse", "location")})
_UID_KEYS = frozenset({("ImagingStudySeries", "uid"), ("ImagingStudySeriesInstance", "uid")})
_TEXT_KINDS = {"Markdown": "markdown", "Xhtml": "xhtml", "Base64Binary": "base64"}
_PATIENT_OWN = frozenset({"identifier", "birthDate", "_birthDate"})
_REFERENCE_OWN = frozenset({"reference", "identifier"})
_RELATIVE = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/?#]*)?/?\Z")
_TYPE_ONLY = re.compile(r"[A-Z][A-Za-z]{1,63}\Z")

# element -> (kind, child type or None, is a list): kind is a primitive's class name
# ("DateTime", "String", ...), "complex", "resource" or "comments"
_Spec = tuple[str, str | None, bool]


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation, is_list
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


@lru_cache(maxsize=1024)  # names come from the models, not from the data
def _fields(type_name: str) -> dict[str, _Spec]:
    from fhir.resources.R4B import get_fhir_model_class

    cls = get_fhir_model_class(type_name)
    out: dict[str, _Spec] = {}
    for name, info in cls.model_fields.items():
        key = info.alias or name
        if name == "fhir_comments":
            out[key] = ("comments", None, False)
            continue
        inner, is_list = _unwrap(info.annotation)
        meta = getattr(inner, "__metadata__", None)
        if meta:
            out[key] = (type(meta[-1]).__name__, None, is_list)
            continue
        cname = getattr(inner, "__name__", "")
        if cname == "ResourceType":
            out[key] = ("resource", None, is_list)
        elif cname.endswith("Type") and cname != "Type":
            out[key] = ("complex", cname[:-4], is_list)
        else:
            out[key] = ("primitive", None, is_list)
    return out


class _Ctx:
    __slots__ = ("contained", "facts", "mrn", "shift")

    def __init__(self, mrn: str | None, shift: Any, facts: PatientFacts | None,
                 contained: Mapping[str, str]) -> None:
        self.mrn, self.shift, self.facts, self.contained = mrn, shift, facts, contained


def _mrn_index(identifiers: Any) -> int | None:
    """Index of the MRN among a Patient's identifiers (the :mod:`kit.fhir.frames` rule)."""
    if not isinstance(identifiers, list) or not identifiers:
        return None
    items = [i if isinstance(i, Mapping) else {} for i in identifiers]
    for n, i in enumerate(items):
        if _has_type(i, "MR"):
            return n
    for n, i in enumerate(items):
        s = i.get("system")
        if isinstance(s, str) and "mrn" in s.lower():
            return n
    return 0


def _has_type(ident: Mapping[str, Any], code: str) -> bool:
    t = ident.get("type")
    codings = t.get("coding") if isinstance(t, Mapping) else None
    return isinstance(codings, list) and any(isinstance(c, Mapping) and c.get("code") == code
                                             for c in codings)


def _patient_mrn(patient: Mapping[str, Any]) -> str | None:
    n = _mrn_index(patient.get("identifier"))
    if n is None:
        return None
    value = patient["identifier"][n]
    v = value.get("value") if isinstance(value, Mapping) else None
    return v.strip() if isinstance(v, str) and v.strip() else None


def patient_facts(patient: Mapping[str, Any]) -> PatientFacts | None:
    """What a FHIR Patient says about its patient (names, birth date, phones, addresses, ids)."""
    mrn = _patient_mrn(patient)
    if mrn is None:
        return None

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        if isinstance(value, Mapping):
            return [s for k, v in value.items() if k not in ("use", "system", "type", "period")
                    for s in strings(v)]
        return []

    names = []
    for n in patient.get("name") or () if isinstance(patient.get("name"), list) else ():
        if isinstance(n, Mapping):
            raw_family = n.get("family")
            family = raw_family if isinstance(raw_family, str) else ""
            given = [g for g in n.get("given") or () if isinstance(g, str)] \
                if isinstance(n.get("given"), list) else []
            names += [f"{family}^{' '.join(given)}".strip("^"), " ".join([*given, family]).strip()]
            names += strings(n.get("text"))
    phones = [s for t in (patient.get("telecom") or ()) if isinstance(t, Mapping)
              for s in strings(t.get("value"))] if isinstance(patient.get("telecom"), list) else []
    ids = [s for i in (patient.get("identifier") or ()) if isinstance(i, Mapping)
           for s in strings(i.get("value"))] if isinstance(patient.get("identifier"), list) else []
    birth = patient.get("birthDate")
    return PatientFacts(mrn, tuple(names), (birth,) if isinstance(birth, str) else (), tuple(phones),
                        tuple(strings(patient.get("address"))), tuple(ids))


class FhirDeidentifier:
    """De-identify FHIR resources with the cohort's pseudonyms (see the module docstring).

    Parameters
    ----------
    pseudonymiser : kit.deid.pseudonyms.Pseudonymiser
        The key (the same one the DICOM and HL7 de-identification use).
    policy : kit.deid.policy.DeidPolicy, optional
        The birth-date choice (default: removed).
    scrub : TextScrubber, optional
        Called for every free-text value; ``None``: narrative removed, other text kept.
    facts : mapping of str to PatientFacts, optional
        What is known of each patient (by MRN), handed to ``scrub``; the Patient
        resources seen by :meth:`index` are added.

    Notes
    -----
    Call :meth:`index` with every resource first (or use :meth:`resources`), so
    that resources referring to a Patient get that patient's date shift.
    """

    def __init__(self, pseudonymiser: Pseudonymiser, *, policy: DeidPolicy | None = None,
                 scrub: TextScrubber | None = None, facts: Mapping[str, PatientFacts] | None = None) -> None:
        if not isinstance(pseudonymiser, Pseudonymiser):
            raise FhirValidationError("a FhirDeidentifier needs a kit.deid.pseudonyms.Pseudonymiser")
        self.pseudonymiser = pseudonymiser
        self.policy = policy if policy is not None else DeidPolicy()
        self.scrub = scrub
        self.facts: dict[str, PatientFacts] = dict(facts or {})
        #: what was removed or not handled, by reason (never values)
        self.counts: Counter[str] = Counter()
        self._by_id: dict[str, str] = {}
        self._by_url: dict[str, str] = {}

    # -- the patients ----------------------------------------------------------------
    def index(self, resources: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Learn every Patient (id, fullUrl -> MRN, and its facts) in ``resources`` (Bundles entered)."""
        items = [resources] if isinstance(resources, Mapping) else resources
        for item in items:
            self._index(item, None, 0)

    def _index(self, r: Any, full_url: str | None, depth: int) -> None:
        if not isinstance(r, Mapping) or depth > _MAX_DEPTH:
            raise FhirValidationError("not a FHIR resource (or nested too deep)")
        rtype = r.get("resourceType")
        if rtype == "Bundle":
            entries = r.get("entry") or []
            if not isinstance(entries, list):
                raise FhirValidationError("Bundle.entry is not an array")
            for e in entries:
                if not isinstance(e, Mapping):
                    raise FhirValidationError("a Bundle entry is not an object")
                if e.get("resource") is not None:
                    url = e.get("fullUrl")
                    self._index(e["resource"], url if isinstance(url, str) else None, depth + 1)
            return
        if rtype != "Patient":
            return
        mrn = _patient_mrn(r)
        if mrn is None:
            return
        rid = r.get("id")
        if isinstance(rid, str):
            self._by_id.setdefault(rid, mrn)
        if full_url:
            self._by_url.setdefault(full_url, mrn)
        facts = patient_facts(r)
        if facts is not None:
            known = self.facts.get(mrn)
            self.facts[mrn] = facts if known is None else known.merge(facts)

    def _ref_mrn(self, ref: Mapping[str, Any], r: Mapping[str, Any], key: str) -> str | None:
        target = ref.get("reference")
        if isinstance(target, str) and target:
            if target.startswith("#"):
                for c in r.get("contained") or () if isinstance(r.get("contained"), list) else ():
                    if isinstance(c, Mapping) and c.get("id") == target[1:] \
                            and c.get("resourceType") == "Patient":
                        return _patient_mrn(c)
                return None
            if target in self._by_url:
                return self._by_url[target]
            m = _RELATIVE.search(target)
            if m and m.group(1) == "Patient":
                return self._by_id.get(m.group(2))
            return None
        ident = ref.get("identifier")
        if isinstance(ident, Mapping) and (key in ("subject", "patient") or ref.get("type") == "Patient"
                                           or _has_type(ident, "MR")):
            v = ident.get("value")
            return v.strip() if isinstance(v, str) and v.strip() else None
        return None

    def _resource_mrn(self, r: Mapping[str, Any]) -> str | None:
        if r.get("resourceType") == "Patient":
            return _patient_mrn(r)
        for key in _PATIENT_KEYS:
            ref = r.get(key)
            if isinstance(ref, Mapping):
                mrn = self._ref_mrn(ref, r, key)
                if mrn:
                    return mrn
        for key, ref in _references(r, 0):
            mrn = self._ref_mrn(ref, r, key)
            if mrn:
                return mrn
        return None

    # -- entry points ------------------------------------------------------------------
    def resources(self, resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Index then de-identify every resource (Bundles included) of ``resources``."""
        items = list(resources)
        self.index(items)
        return [self.resource(r) for r in items]

    def resource(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """A de-identified copy of one resource or Bundle (``resource`` is not modified).

        Raises
        ------
        kit.errors.FhirValidationError
            Not a FHIR resource, or an element of the wrong JSON type.
        """
        try:
            return self._resource(resource, None, 0)
        except KitError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
            raise FhirValidationError(f"cannot de-identify: {type(exc).__name__}") from exc

    def ndjson(self, data: bytes | str) -> bytes:
        """De-identify NDJSON (one resource per line) after indexing all of it; NDJSON back."""
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        items = []
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    items.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise FhirValidationError(f"line {n} is not JSON: {exc}") from exc
        return b"".join(orjson.dumps(r) + b"\n" for r in self.resources(items))

    # -- the walk -------------------------------------------------------------------------
    def _resource(self, r: Any, parent: _Ctx | None, depth: int) -> dict[str, Any]:
        if not isinstance(r, Mapping):
            raise FhirValidationError(f"not a FHIR resource (a {type(r).__name__})")
        rtype = r.get("resourceType")
        if not isinstance(rtype, str) or not is_resource_type(rtype):
            raise FhirValidationError("not a FHIR resource (resourceType missing or unknown)")
        if depth > _MAX_DEPTH:
            raise FhirValidationError(f"{rtype}: nested too deep")
        if parent is not None and rtype != "Patient":
            ctx = parent
        else:
            mrn = self._resource_mrn(r) if rtype != "Bundle" else None
            if mrn is None and parent is not None:
                ctx = parent
            else:
                if mrn is None and rtype != "Bundle":
                    self.counts["resource_without_patient"] += 1
                ctx = _Ctx(mrn, self.pseudonymiser.date_shift(mrn or ""),
                           self.facts.get(mrn) if mrn else None, {})
        out = self._object(r, rtype, ctx, rtype, depth,
                           _PATIENT_OWN if rtype == "Patient" else frozenset())
        out = {"resourceType": rtype, **out}
        return out

    def _object(self, value: Any, tname: str, ctx: _Ctx, path: str, depth: int,
                skip: frozenset[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise FhirValidationError(f"{path}: expected an object")
        if depth > _MAX_DEPTH:
            raise FhirValidationError(f"{path}: nested too deep")
        spec = _fields(tname)
        out: dict[str, Any] = {}
        if tname == "Extension" and isinstance(value.get("url"), str) \
                and value["url"].endswith(_PHI_EXTENSIONS):
            self.counts["extension_removed"] += 1
            return out
        for key, v in value.items():
            if key == "resourceType" and is_resource_type(tname):
                continue
            s = spec.get(key)
            if s is None:
                self.counts["element_removed"] += 1
                continue
            if v is None or key in skip or s[0] == "comments" or (tname, key) in _DROP:
                continue
            new = self._element(tname, key, v, s, ctx, f"{path}.{key}", depth)
            if new is not None:
                out[key] = new
        if tname == "Patient":
            self._patient(value, out, ctx)
        return out

    def _element(self, tname: str, key: str, v: Any, s: _Spec, ctx: _Ctx, path: str,
                 depth: int) -> Any:
        kind, child, is_list = s
        if is_list:
            if not isinstance(v, list):
                raise FhirValidationError(f"{path}: expected an array")
            items = [self._one(tname, key, x, kind, child, ctx, path, depth) for x in v if x is not None]
            kept = [x for x in items if x is not None]
            return kept or None
        if isinstance(v, list):
            raise FhirValidationError(f"{path}: expected a single value, not an array")
        return self._one(tname, key, v, kind, child, ctx, path, depth)

    def _one(self, tname: str, key: str, v: Any, kind: str, child: str | None, ctx: _Ctx,
             path: str, depth: int) -> Any:
        if kind == "resource":  # contained resources share their container's patient
            return self._resource(v, ctx if key == "contained" else None, depth + 1)
        if kind == "complex":
            assert child is not None
            if child in _REMOVED_TYPES:
                return None
            if child == "Identifier":
                return self._identifier(v, ctx, path, depth, None)
            if child == "Reference":
                return self._reference(v, ctx, key, path, depth)
            if child == "Narrative" and self.scrub is None:
                self.counts["narrative_removed"] += 1
                return None
            return self._object(v, child, ctx, path, depth + 1) or None
        if kind in _DATE_KINDS:
            if not isinstance(v, str):
                raise FhirValidationError(f"{path}: a date is a string")
            moved = shift_date_text(v, ctx.shift, syntax="fhir")
            if moved is None:
                self.counts["date_removed"] += 1
            return moved
        if (tname, key) in _REF_KEYS:
            return self._map_ref(v, path) if isinstance(v, str) else None
        if (tname, key) in _UID_KEYS:
            return self.pseudonymiser.uid(v.strip()) if isinstance(v, str) and v.strip() else None
        if key == "id" and is_resource_type(tname):
            if not isinstance(v, str):
                raise FhirValidationError(f"{path}: a resource id is a string")
            return self.pseudonymiser.resource_id(v)
        if kind in ("Markdown", "Xhtml", "Base64Binary") or (kind == "String" and key in _FREE_TEXT_KEYS):
            if not isinstance(v, str):
                raise FhirValidationError(f"{path}: expected a string")
            text_kind = _TEXT_KINDS.get(kind, "string")
            if kind == "Base64Binary" and tname != "Attachment":
                return v  # signatures, binaries: not text
            return self._text(v, path, text_kind, ctx)
        return v

    def _text(self, v: str, path: str, kind: str, ctx: _Ctx) -> str:
        if self.scrub is None:
            self.counts["text_unscrubbed"] += 1
            return v
        out = self.scrub(v, TextField("fhir", path, kind, ctx.facts))
        if not isinstance(out, str):
            raise FhirValidationError(f"{path}: the text scrubber returned no text")
        return out

    def _patient(self, value: Mapping[str, Any], out: dict[str, Any], ctx: _Ctx) -> None:
        birth = value.get("birthDate")
        if isinstance(birth, str) and self.policy.birth_date is BirthDate.YEAR:
            moved = shift_date_text(birth, ctx.shift, syntax="fhir")
            if moved is not None:
                out["birthDate"] = moved[:4]
        idents = value.get("identifier")
        if idents is not None and not (isinstance(idents, list)
                                       and all(isinstance(i, Mapping) for i in idents)):
            raise FhirValidationError("Patient.identifier: expected an array of objects")
        n = _mrn_index(idents)
        if n is None or not isinstance(idents, list):
            return
        kept = []
        for i, ident in enumerate(idents):
            if isinstance(ident, Mapping) and (i == n or _has_type(ident, "MR")):
                kept.append(self._identifier(ident, ctx, f"Patient.identifier[{i}]", 1, "patient"))
            else:
                self.counts["patient_identifier_removed"] += 1
        if kept:
            out["identifier"] = kept
        else:
            out.pop("identifier", None)

    def _identifier(self, v: Any, ctx: _Ctx, path: str, depth: int, role: str | None) -> dict[str, Any]:
        out = self._object(v, "Identifier", ctx, path, depth + 1)
        value = v.get("value")
        if isinstance(value, str) and value.strip():
            out["value"] = self._identifier_value(v, value.strip(), role)
        return out

    def _identifier_value(self, ident: Mapping[str, Any], value: str, role: str | None) -> str:
        p = self.pseudonymiser
        raw_system = ident.get("system")
        system = raw_system if isinstance(raw_system, str) else ""
        if role == "patient" or _has_type(ident, "MR") or "mrn" in system.lower():
            return p.patient_id(value)
        if system == "urn:dicom:uid":
            uid = value[8:] if value.startswith("urn:oid:") else value
            return ("urn:oid:" if value.startswith("urn:oid:") else "") + p.uid(uid)
        if _has_type(ident, "ACSN") or "accession" in system.lower():
            return p.accession_number(value)
        return p.identifier(value)

    def _reference(self, v: Any, ctx: _Ctx, key: str, path: str, depth: int) -> dict[str, Any] | None:
        if not isinstance(v, Mapping):
            raise FhirValidationError(f"{path}: expected an object")
        out = self._object(v, "Reference", ctx, path, depth + 1, _REFERENCE_OWN)
        ref = v.get("reference")
        if isinstance(ref, str):
            mapped = self._map_ref(ref, path)
            if mapped is None:
                out.pop("reference", None)
            else:
                out["reference"] = mapped
        ident = v.get("identifier")
        if isinstance(ident, Mapping):
            role = "patient" if key in ("subject", "patient") or v.get("type") == "Patient" else None
            out["identifier"] = self._identifier(ident, ctx, f"{path}.identifier", depth + 1, role)
        return out or None

    def _map_ref(self, ref: str, path: str) -> str | None:
        p = self.pseudonymiser
        if not ref:
            return None
        if ref.startswith("#"):
            return "#" + p.resource_id(ref[1:]) if len(ref) > 1 else ref
        if ref.startswith("urn:uuid:"):
            return "urn:uuid:" + p.resource_id(ref[9:])
        if ref.startswith("urn:oid:"):
            return "urn:oid:" + p.uid(ref[8:])
        if "?" not in ref:
            m = _RELATIVE.search(ref)
            if m:
                return f"{m.group(1)}/{p.resource_id(m.group(2))}"
            if _TYPE_ONLY.match(ref):
                return ref
        self.counts["reference_removed"] += 1  # conditional or unknown: carries search values
        return None


def _references(value: Any, depth: int, key: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(element name, Reference-like object) anywhere in ``value`` (contained resources skipped)."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        if "reference" in value or ("identifier" in value and "type" in value):
            yield key, value
        for k, v in value.items():
            if k != "contained" and isinstance(v, Mapping | list):
                yield from _references(v, depth + 1, k)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v, depth + 1, key)
