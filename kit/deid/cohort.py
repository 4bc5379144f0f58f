"""De-identify a cohort from all three systems at once, with one key (pure: no I/O).

:func:`deidentify_cohort` takes what was read from the PACS (pydicom data sets),
the EHR (FHIR resources, Bundles) and the HL7 feed (messages), and gives each back
de-identified with one :class:`~kit.deid.pseudonyms.Pseudonymiser`: the same patient
pseudonym, accession and study UID pseudonyms and the same per-patient date shift
in all three, so the modalities still join on ``patient_id``, ``accession_number``
and ``study_instance_uid``. Before anything is changed, what every source says about
each patient (names, birth dates, phones, addresses, identifiers) is gathered into
one :class:`~kit.deid.policy.PatientFacts` per MRN and handed to the free-text
scrubber with each text (the seam of :mod:`kit.deid.policy`).

DICOM is de-identified by :class:`kit.dicom.deid.Deidentifier` with the Retain
Longitudinal Temporal Information with Modified Dates option (dates shifted, not
removed: without it the DICOM dates could not line up with FHIR and HL7), and with
its own leak scan of every data set. Reading and writing files is the caller's (the
cohort export, the tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from pydicom.dataset import Dataset

from kit.deid.fhir import FhirDeidentifier
from kit.deid.hl7 import HL7Deidentifier
from kit.deid.hl7 import patient_facts as hl7_facts
from kit.deid.policy import DeidPolicy, PatientFacts, TextScrubber, default_scrubber, merge_facts
from kit.deid.pseudonyms import Pseudonymiser
from kit.dicom.deid import Deidentifier, DeidOptions
from kit.errors import InvalidInputError
from kit.hl7.message import Message, parse_message

__all__ = ["DEFAULT_SCRUBBER", "CohortDeid", "deidentify_cohort", "dicom_facts"]

#: pass as ``scrub`` to use :func:`kit.deid.policy.default_scrubber` (the default)
DEFAULT_SCRUBBER: Any = object()


@dataclasses.dataclass(frozen=True)
class CohortDeid:
    """The cohort, de-identified.

    Attributes
    ----------
    dicom : tuple of pydicom.dataset.Dataset
        The data sets, in input order.
    fhir : tuple of dict
        The resources / Bundles, in input order.
    hl7 : tuple of kit.hl7.message.Message
        The messages, in input order.
    key_fingerprint : str
        Which key made the pseudonyms (never the key).
    counts : mapping of str to int
        What was removed or left, by reason (``fhir:narrative_removed``,
        ``hl7:segment_removed:NK1``, ``fhir:text_unscrubbed``, ...); never values.
    text_scrubbed : bool
        Whether a free-text scrubber was used.
    """

    dicom: tuple[Dataset, ...]
    fhir: tuple[dict[str, Any], ...]
    hl7: tuple[Message, ...]
    key_fingerprint: str
    counts: Mapping[str, int]
    text_scrubbed: bool

    def __post_init__(self) -> None:
        if not all(isinstance(d, Dataset) for d in self.dicom) \
                or not all(isinstance(r, dict) for r in self.fhir) \
                or not all(isinstance(m, Message) for m in self.hl7):
            raise InvalidInputError("a CohortDeid holds data sets, FHIR dicts and HL7 messages")
        object.__setattr__(self, "counts", MappingProxyType(dict(self.counts)))


def dicom_facts(ds: Dataset) -> PatientFacts | None:
    """What a DICOM header says about its patient (name, birth date, address, phones, ids)."""
    mrn = str(ds.get("PatientID", "") or "").strip()
    if not mrn:
        return None
    name = str(ds.get("PatientName", "") or "")
    given_family = " ".join(reversed([p for p in name.split("^")[:2] if p]))
    birth = str(ds.get("PatientBirthDate", "") or "")
    iso = f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}" if len(birth) >= 8 and birth[:8].isdigit() else ""
    return PatientFacts(mrn, (name, given_family), (iso,),
                        (str(ds.get("PatientTelephoneNumbers", "") or ""),),
                        (str(ds.get("PatientAddress", "") or ""),), (mrn,))


def deidentify_cohort(pseudonymiser: Pseudonymiser, *, dicom: Iterable[Dataset] = (),
                      fhir: Iterable[Mapping[str, Any]] = (), hl7: Iterable[Message | str | bytes] = (),
                      policy: DeidPolicy | None = None, scrub: TextScrubber | None | Any = DEFAULT_SCRUBBER,
                      dicom_options: DeidOptions | None = None) -> CohortDeid:
    """De-identify DICOM data sets, FHIR resources and HL7 messages of one cohort with one key.

    Parameters
    ----------
    pseudonymiser : kit.deid.pseudonyms.Pseudonymiser
        The key; its :attr:`~kit.deid.pseudonyms.Pseudonymiser.reid_map` receives every
        pseudonym given (save it yourself, outside the output).
    dicom : iterable of pydicom.dataset.Dataset
        Data sets as read (not modified).
    fhir : iterable of dict
        Resources and/or Bundles (not modified).
    hl7 : iterable of Message, str or bytes
        Messages (one each).
    policy : kit.deid.policy.DeidPolicy, optional
        Birth date removed (default) or reduced to the year, in FHIR and HL7 (DICOM
        always removes it).
    scrub : TextScrubber or None, optional
        The free-text scrubber; default: ``kit.deid.text``'s when present; ``None``: none.
    dicom_options : kit.dicom.deid.DeidOptions, optional
        DICOM profile options; dates are always shifted
        (``retain_longitudinal_modified_dates`` is set).

    Returns
    -------
    CohortDeid

    Raises
    ------
    kit.errors.KitError
        Malformed input (:class:`~kit.errors.FhirValidationError`,
        :class:`~kit.errors.HL7ParseError`, :class:`~kit.errors.DicomFileError`) or a
        DICOM output that still holds an identifying value
        (:class:`~kit.dicom.deid_check.DeidLeakError`). Nothing is returned then.
    """
    if not isinstance(pseudonymiser, Pseudonymiser):
        raise InvalidInputError("deidentify_cohort needs a kit.deid.pseudonyms.Pseudonymiser")
    scrubber: TextScrubber | None = default_scrubber() if scrub is DEFAULT_SCRUBBER else scrub
    datasets = list(dicom)
    resources = list(fhir)
    messages = [m if isinstance(m, Message) else parse_message(m) for m in hl7]

    fhir_deid = FhirDeidentifier(pseudonymiser, policy=policy, scrub=scrubber)
    fhir_deid.index(resources)
    facts = merge_facts(fhir_deid.facts.values(),
                        (f for f in map(hl7_facts, messages) if f is not None),
                        (f for f in map(dicom_facts, datasets) if f is not None))
    fhir_deid.facts = dict(facts)
    hl7_deid = HL7Deidentifier(pseudonymiser, policy=policy, scrub=scrubber, facts=facts)

    options = dataclasses.replace(dicom_options or DeidOptions(), retain_longitudinal_modified_dates=True)
    dicom_deid = Deidentifier(pseudonymiser, options=options)
    out_dicom = tuple(dicom_deid.dataset(ds) for ds in datasets)
    out_fhir = tuple(fhir_deid.resource(r) for r in resources)
    out_hl7 = tuple(hl7_deid.message(m) for m in messages)
    counts = {f"fhir:{k}": v for k, v in fhir_deid.counts.items()}
    counts.update({f"hl7:{k}": v for k, v in hl7_deid.counts.items()})
    return CohortDeid(out_dicom, out_fhir, out_hl7, pseudonymiser.fingerprint, counts, scrubber is not None)
