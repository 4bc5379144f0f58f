"""An analysis result as FHIR R4: Observations, one DiagnosticReport, a transaction Bundle (pure).

:func:`encode_fhir` turns an :class:`~kit.results.model.AnalysisResult` into
one ``Observation`` per measurement, one per label and ONE ``DiagnosticReport``
whose ``result`` lists them; :func:`encode_bundle` wraps them in a
``transaction`` Bundle of conditional creates. Every resource is validated with
``fhir.resources.R4B`` (:func:`kit.fhir.resources.validate`) before it is
returned; an invalid one raises :class:`~kit.errors.FhirValidationError` (e.g. a
``Code.value`` with spaces at its ends, which FHIR's ``code`` type forbids).

Choices (the FHIR R4 specification leaves them open):

* **No ids.** The resources carry no ``id``; the server assigns them. Each has
  an ``identifier`` ``{system: "urn:kit:analysis-result", value:
  "<result_id>/<part>"}`` (parts ``measurement-1``, ``label-1``, ...,
  ``report``; see :func:`parts`), and each Bundle entry is
  ``POST`` with ``ifNoneExist: identifier=<system>|<value>``: sending the same
  result twice creates nothing the second time.
* **References inside the result** are ``urn:uuid:`` fullUrls, uuid5 of
  ``result_id`` and the part (:func:`full_url`), so ``DiagnosticReport.result``
  resolves inside the transaction (the server rewrites them to the ids it gives).
* **Patient.** ``Subject.fhir_patient`` gives ``Patient/<id>``; without it the
  subject is a logical reference by MRN, ``{"type": "Patient", "identifier":
  {"system": mrn_system, "value": patient_id}}``. The default ``mrn_system`` is
  the sample cohort's (:data:`kit.examples.fhir.MRN_SYSTEM`), the system the
  embedded stack's Patients carry; pass your EHR's. :mod:`kit.fhir.frames`
  reads ``patient_id`` from such a reference directly.
* **ImagingStudy.** ``Subject.fhir_imaging_study`` gives
  ``ImagingStudy/<id>``; without it a logical reference by StudyInstanceUID
  (identifier ``urn:dicom:uid`` / ``urn:oid:<uid>``, as the sample
  ImagingStudies carry). It is every Observation's ``derivedFrom`` and the
  report's ``imagingStudy``.
* **SR and SEG.** FHIR R4 has no reference type for one DICOM instance; the
  report's DICOM twins are named by identifier: ``DiagnosticReport.identifier``
  gets ``{system: "urn:dicom:uid", value: "urn:oid:<SOP Instance UID>"}`` for
  the SR (``type.text`` "DICOM SR") and the SEG ("DICOM SEG") when their UIDs
  are given, so ``DiagnosticReport?identifier=urn:dicom:uid|urn:oid:<uid>``
  finds the report from either DICOM object.
* **Accession number.** The report's identifier of type ``ACSN`` (system
  ``accession_system``, default the sample cohort's) and ``basedOn`` a logical
  ServiceRequest reference by it, so ``accession_number`` joins in frames.
* **Algorithm.** ``method`` is a coding (system ``urn:kit:algorithm``, code the
  name, ``version`` the version; text only for a name FHIR's ``code`` grammar
  cannot hold) and ``device`` a display-only reference ("manufacturer name version").
* **Measurement.** ``valueQuantity`` with the UCUM system and code (``unit`` is
  the unit's meaning); ``bodySite`` from ``finding_site``; ``finding`` (what
  was measured) as a component coded DCM 121071 "Finding".
* **Label.** ``valueCodeableConcept`` with the label's value; its score as a
  component coded ``urn:kit:codes|score`` with a UCUM ``1`` quantity.

:func:`observation` and :func:`diagnostic_report` build the simple cases
without an :class:`AnalysisResult`; :func:`transaction_bundle` posts them in
one transaction.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

import orjson

from kit.errors import FhirValidationError, InvalidInputError
from kit.examples.fhir import ACSN_SYSTEM, MRN_SYSTEM
from kit.fhir.resources import NAMESPACE, identifier, validate
from kit.results.model import AnalysisResult, Code, _uid

__all__ = [
    "ALGORITHM_SYSTEM",
    "DICOM_UID_SYSTEM",
    "IMAGING_CATEGORY",
    "REPORT_CODE",
    "diagnostic_report",
    "encode_bundle",
    "encode_fhir",
    "full_url",
    "observation",
    "parts",
    "transaction_bundle",
    "urn_of",
]

#: ``Identifier.system`` of DICOM UIDs (values ``urn:oid:<uid>``).
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
#: ``Coding.system`` of the algorithm in ``Observation.method``.
ALGORITHM_SYSTEM: Final = "urn:kit:algorithm"
#: Observation.category of every encoded Observation.
IMAGING_CATEGORY: Final = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging",
    "display": "Imaging"}]}
#: DiagnosticReport.category: HL7 v2 table 0074 "RAD".
_RAD: Final = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                           "display": "Radiology"}]}
#: The default DiagnosticReport.code: LOINC 18748-4 "Diagnostic imaging study".
REPORT_CODE: Final = Code("18748-4", "LN", "Diagnostic imaging study")
_FINDING: Final = Code("121071", "DCM", "Finding")
_SCORE: Final = Code("score", "99KIT", "Confidence score")
_UCUM: Final = "http://unitsofmeasure.org"
_CODE: Final = re.compile(r"[^\s]+(\s[^\s]+)*")  # FHIR's code grammar


def _cc(code: Code) -> dict[str, Any]:
    return {"coding": [{"system": code.system, "code": code.value, "display": code.meaning}],
            "text": code.meaning}


def _when(value: dt.datetime | dt.date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidInputError("effective: a timezone-aware datetime (FHIR dateTime with a time "
                                    "needs an offset)", source="effective")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise InvalidInputError(f"effective: a datetime, date or FHIR dateTime string, not {value!r}",
                            source="effective")


def _study_ref(uid: str, fhir_id: str | None = None) -> dict[str, Any]:
    if fhir_id:
        return {"reference": f"ImagingStudy/{fhir_id}"}
    return {"type": "ImagingStudy", "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}}


def parts(result: AnalysisResult) -> list[str]:
    """The part names of a result's resources, in :func:`encode_fhir`'s order.

    ``measurement-<i>`` and ``label-<i>`` (1-based, in the result's order) and ``report``.
    """
    return ([f"measurement-{i}" for i in range(1, len(result.measurements) + 1)]
            + [f"label-{i}" for i in range(1, len(result.labels) + 1)] + ["report"])


def full_url(result: AnalysisResult, part: str) -> str:
    """The ``urn:uuid:`` fullUrl of one part of ``result`` (uuid5 of ``result_id`` and ``part``)."""
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, f'kit-analysis-result/{result.result_id}/{part}')}"


def encode_fhir(result: AnalysisResult, *, sr_instance_uid: str | None = None,
                seg_instance_uid: str | None = None, mrn_system: str = MRN_SYSTEM,
                accession_system: str = ACSN_SYSTEM, report_code: Code = REPORT_CODE
                ) -> list[dict[str, Any]]:
    """The Observations and the DiagnosticReport of ``result``, validated (see the module docstring).

    Parameters
    ----------
    result : AnalysisResult
        The result.
    sr_instance_uid, seg_instance_uid : str, optional
        SOP Instance UIDs of the result's DICOM SR and SEG, named in the report's identifiers.
    mrn_system : str
        ``Identifier.system`` of the MRN for a logical Patient reference
        (used when ``result.subject.fhir_patient`` is not known).
    accession_system : str
        ``Identifier.system`` of the accession number.
    report_code : Code
        ``DiagnosticReport.code`` (default LOINC 18748-4 "Diagnostic imaging study").

    Returns
    -------
    list of dict
        One Observation per measurement, then one per label (in the result's
        order, see :func:`parts`), then the DiagnosticReport; no ids, each with
        its ``urn:kit:analysis-result`` identifier. The same result gives the
        same JSON.

    Raises
    ------
    kit.errors.FhirValidationError
        A resource is not valid FHIR R4 (e.g. a code with whitespace at its ends).
    kit.errors.InvalidInputError
        A UID given is not a DICOM UID.
    """
    if not isinstance(result, AnalysisResult):
        raise InvalidInputError(f"encode_fhir needs an AnalysisResult, not {type(result).__name__}")
    _uid("sr_instance_uid", sr_instance_uid, optional=True)
    _uid("seg_instance_uid", seg_instance_uid, optional=True)
    s, alg = result.subject, result.algorithm
    when = result.created.isoformat()
    subject: dict[str, Any] = (
        {"reference": f"Patient/{s.fhir_patient}"} if s.fhir_patient
        else {"type": "Patient", "identifier": {"system": mrn_system, "value": s.patient_id}})
    study = _study_ref(s.study_instance_uid, s.fhir_imaging_study)
    method: dict[str, Any] = {"text": f"{alg.name} {alg.version}"}
    if _CODE.fullmatch(alg.name):  # a name FHIR's code type cannot hold stays in the text
        method["coding"] = [{"system": ALGORITHM_SYSTEM, "version": alg.version, "code": alg.name,
                             "display": f"{alg.name} {alg.version}"}]
    device = {"display": f"{alg.manufacturer} {alg.name} {alg.version}"}

    def ident(part: str) -> dict[str, Any]:
        return {"system": result.identifier_system, "value": f"{result.result_id}/{part}"}

    def base(part: str, code: Code) -> dict[str, Any]:
        return {"resourceType": "Observation", "identifier": [ident(part)], "status": "final",
                "category": [IMAGING_CATEGORY], "code": _cc(code), "subject": dict(subject),
                "effectiveDateTime": when, "issued": when}

    out: list[dict[str, Any]] = []
    for i, m in enumerate(result.measurements, 1):
        obs = base(f"measurement-{i}", m.name)
        obs["valueQuantity"] = {"value": m.value, "unit": m.unit.meaning, "system": _UCUM,
                                "code": m.unit.value}
        if m.finding_site is not None:
            obs["bodySite"] = _cc(m.finding_site)
        obs.update(method=method, device=device, derivedFrom=[study])
        if m.finding is not None:
            obs["component"] = [{"code": _cc(_FINDING), "valueCodeableConcept": _cc(m.finding)}]
        out.append(obs)
    for i, lb in enumerate(result.labels, 1):
        obs = base(f"label-{i}", lb.name)
        obs["valueCodeableConcept"] = _cc(lb.value)
        obs.update(method=method, device=device, derivedFrom=[study])
        if lb.score is not None:
            obs["component"] = [{"code": _cc(_SCORE), "valueQuantity": {
                "value": lb.score, "unit": "1", "system": _UCUM, "code": "1"}}]
        out.append(obs)
    names = parts(result)
    report_ids = [ident("report")]
    for uid, kind in ((sr_instance_uid, "DICOM SR"), (seg_instance_uid, "DICOM SEG")):
        if uid:
            report_ids.append({"type": {"text": kind}, "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"})
    report: dict[str, Any] = {"resourceType": "DiagnosticReport", "identifier": report_ids}
    if s.accession_number:
        acsn = identifier(accession_system, s.accession_number, type_code="ACSN")
        report["identifier"].append(acsn)
        report["basedOn"] = [{"type": "ServiceRequest", "identifier": acsn}]
    report.update({
        "status": "final", "category": [_RAD], "code": _cc(report_code), "subject": dict(subject),
        "effectiveDateTime": when, "issued": when})
    if len(names) > 1:
        report["result"] = [{"reference": full_url(result, p)} for p in names[:-1]]
    report["imagingStudy"] = [study]
    if result.conclusion:
        report["conclusion"] = result.conclusion
    out.append(report)
    return [validate(r) for r in out]


def _if_none_exist(resource: Mapping[str, Any]) -> str:
    first = resource["identifier"][0]
    return urlencode({"identifier": f"{first['system']}|{first['value']}"})


def encode_bundle(result: AnalysisResult, *, sr_instance_uid: str | None = None,
                  seg_instance_uid: str | None = None, mrn_system: str = MRN_SYSTEM,
                  accession_system: str = ACSN_SYSTEM, report_code: Code = REPORT_CODE) -> dict[str, Any]:
    """A ``transaction`` Bundle of conditional creates for ``result`` (validated).

    Keywords are those of :func:`encode_fhir`. Each entry has the fullUrl
    :func:`full_url` gives its part and ``request`` ``POST <type>`` with
    ``ifNoneExist: identifier=urn:kit:analysis-result|<result_id>/<part>``, so
    posting the Bundle again creates nothing new and the report's references
    resolve to the resources created (or found) in the same transaction.
    """
    resources = encode_fhir(result, sr_instance_uid=sr_instance_uid, seg_instance_uid=seg_instance_uid,
                            mrn_system=mrn_system, accession_system=accession_system, report_code=report_code)
    entries = [{"fullUrl": full_url(result, part), "resource": r,
                "request": {"method": "POST", "url": r["resourceType"], "ifNoneExist": _if_none_exist(r)}}
               for part, r in zip(parts(result), resources, strict=True)]
    return validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# -- helpers for the simple cases ---------------------------------------------------------------
def _patient_ref(patient: str) -> dict[str, Any]:
    if not isinstance(patient, str) or not patient.strip():
        raise InvalidInputError(f"patient: a Patient id, 'Patient/<id>' or 'system|MRN', not {patient!r}",
                                source="patient")
    if "|" in patient:
        system, _, value = patient.partition("|")
        if not system or not value:
            raise InvalidInputError(f"patient: 'system|MRN' needs both parts, not {patient!r}",
                                    source="patient")
        return {"type": "Patient", "identifier": {"system": system, "value": value}}
    return {"reference": patient if patient.startswith("Patient/") else f"Patient/{patient}"}


def urn_of(resource: Mapping[str, Any]) -> str:
    """A ``urn:uuid:`` for an id-less resource: uuid5 of its canonical JSON (same content, same urn)."""
    try:
        canonical = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise FhirValidationError(f"resource is not JSON: {exc}") from exc
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, canonical.decode())}"


def _ref_of(resource: Mapping[str, Any]) -> str:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{resource.get('resourceType')}/{rid}"
    return urn_of(resource)


def observation(patient: str, code: str | Code, value: float | str | Code, unit: str | None = None, *,
                system: str = "http://loinc.org", display: str | None = None,
                effective: dt.datetime | dt.date | str | None = None,
                study_instance_uid: str | None = None, status: str = "final") -> dict[str, Any]:
    """One Observation, validated, without writing FHIR JSON by hand.

    >>> o = observation("p1", "8867-4", 72, "/min", display="Heart rate")
    >>> o["valueQuantity"]["value"], o["valueQuantity"]["code"], o["subject"]
    (72.0, '/min', {'reference': 'Patient/p1'})

    Parameters
    ----------
    patient : str
        The Patient: its id (``"p1"``), a reference (``"Patient/p1"``) or, for a
        logical reference by MRN, ``"<system>|<MRN>"`` (the search-token syntax).
    code : str or Code
        What was observed: a code in ``system`` (default LOINC), or a :class:`Code`.
    value : float, str or Code
        A number (``valueQuantity``, with ``unit`` as a UCUM code), a text
        (``valueString``) or a Code (``valueCodeableConcept``).
    unit : str, optional
        UCUM code of a numeric value (``"mm"``, ``"/min"``, ``"kg"``).
    system, display : str
        The code's system and display (ignored for a :class:`Code`).
    effective : datetime, date or str, optional
        ``effectiveDateTime`` (a datetime must be timezone-aware).
    study_instance_uid : str, optional
        The DICOM study it was derived from (``derivedFrom`` a logical ImagingStudy reference).
    status : str
        Observation.status.

    Raises
    ------
    kit.errors.FhirValidationError
        The Observation is not valid FHIR R4.
    kit.errors.InvalidInputError
        A value of the wrong kind (a bool or NaN value, a unit on a text, a naive datetime).
    """
    cc = _cc(code) if isinstance(code, Code) else {"coding": [
        {"system": system, "code": code, **({"display": display} if display else {})}],
        **({"text": display} if display else {})}
    obs: dict[str, Any] = {"resourceType": "Observation", "status": status, "code": cc,
                           "subject": _patient_ref(patient)}
    when = _when(effective)
    if when is not None:
        obs["effectiveDateTime"] = when
    if isinstance(value, Code):
        obs["valueCodeableConcept"] = _cc(value)
    elif isinstance(value, str):
        if unit is not None:
            raise InvalidInputError("unit: a text value has no unit", source="unit")
        obs["valueString"] = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
            and value not in (float("inf"), float("-inf")):
        obs["valueQuantity"] = {"value": float(value)}
        if unit is not None:
            obs["valueQuantity"].update(unit=unit, system=_UCUM, code=unit)
    else:
        raise InvalidInputError(f"value: a finite number, a text or a Code, not {value!r}", source="value")
    if study_instance_uid is not None:
        _uid("study_instance_uid", study_instance_uid)
        obs["derivedFrom"] = [_study_ref(study_instance_uid)]
    return validate(obs)


def diagnostic_report(patient: str, observations: Sequence[Mapping[str, Any]], *,
                      conclusion: str | None = None, code: str | Code = REPORT_CODE,
                      system: str = "http://loinc.org", display: str | None = None,
                      study_instance_uid: str | None = None,
                      effective: dt.datetime | dt.date | str | None = None,
                      status: str = "final") -> dict[str, Any]:
    """A DiagnosticReport over ``observations``, validated.

    Each observation is referenced by ``Observation/<id>`` when it has an id
    (it was stored already, e.g. the return of ``FhirClient.create``), else by
    :func:`urn_of` it: post such observations with the report in
    :func:`transaction_bundle`, which gives each that fullUrl.

    Parameters
    ----------
    patient : str
        As for :func:`observation`.
    observations : sequence of dict
        The Observations (``DiagnosticReport.result``).
    conclusion : str, optional
        The conclusion text.
    code : str or Code
        The report's code (default LOINC 18748-4 "Diagnostic imaging study");
        a str is a code in ``system`` with ``display``.
    study_instance_uid : str, optional
        ``imagingStudy`` as a logical reference by StudyInstanceUID.
    effective : datetime, date or str, optional
        ``effectiveDateTime``.
    status : str
        DiagnosticReport.status.

    Raises
    ------
    kit.errors.FhirValidationError
        An item is not an Observation, or the report is not valid FHIR R4.
    """
    results = []
    for n, o in enumerate(observations):
        if not isinstance(o, Mapping) or o.get("resourceType") != "Observation":
            raise FhirValidationError(f"observations[{n}] is not an Observation")
        results.append({"reference": _ref_of(o)})
    cc = _cc(code) if isinstance(code, Code) else {"coding": [
        {"system": system, "code": code, **({"display": display} if display else {})}]}
    report: dict[str, Any] = {"resourceType": "DiagnosticReport", "status": status, "category": [_RAD],
                              "code": cc, "subject": _patient_ref(patient)}
    when = _when(effective)
    if when is not None:
        report["effectiveDateTime"] = when
    if results:
        report["result"] = results
    if study_instance_uid is not None:
        _uid("study_instance_uid", study_instance_uid)
        report["imagingStudy"] = [_study_ref(study_instance_uid)]
    if conclusion is not None:
        report["conclusion"] = conclusion
    return validate(report)


def transaction_bundle(resources: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``transaction`` Bundle creating ``resources``: ``PUT`` those with an id, ``POST`` the others.

    An id-less resource gets the fullUrl :func:`urn_of` gives it, the one
    :func:`diagnostic_report` references it by.
    """
    entries = []
    for r in resources:
        resource = validate(dict(r))
        rtype, rid = resource["resourceType"], resource.get("id")
        if rid:
            entries.append({"fullUrl": f"{rtype}/{rid}", "resource": resource,
                            "request": {"method": "PUT", "url": f"{rtype}/{rid}"}})
        else:
            entries.append({"fullUrl": urn_of(resource), "resource": resource,
                            "request": {"method": "POST", "url": rtype}})
    return validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})
