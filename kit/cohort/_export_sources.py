"""What a dataset export reads: the cohort's studies, FHIR resources and HL7 messages (I/O).

Used by :func:`kit.cohort.export.export_dataset`; each reader returns what the source
holds for the cohort's patients (identified: the caller de-identifies it before
anything is written to the dataset) or raises a :class:`~kit.errors.KitError`.

Written by hand: the glue. The protocols are :class:`kit.cohort.pull.CohortPull`'s
(C-FIND/QIDO-RS + C-GET/C-MOVE/WADO-RS, politely, resumably),
:class:`kit.fhir.client.FhirClient`'s and :class:`kit.hl7.store.MessageStore`'s.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from kit.config import Settings
from kit.errors import CohortError, ConfigError, DicomFileError, InvalidInputError, KitError

__all__ = ["IDS_PER_SEARCH", "Hl7Read", "all_studies", "fhir_resources", "hl7_messages", "pull_studies",
           "read_pulled"]

#: Identifiers per FHIR search (OR-ed with commas), as kit.fhir.cohort does.
IDS_PER_SEARCH = 50
#: FHIR types never searched by patient (the Patient itself is read by identifier).
_NOT_BY_PATIENT = frozenset({"Patient", "Practitioner", "PractitionerRole", "Organization", "Location",
                             "Group", "Device", "Medication", "Substance", "Endpoint", "HealthcareService"})


def all_studies(settings: Settings, method: str | None) -> pl.DataFrame:
    """Every study the PACS holds, as a cohort frame (``study_instance_uid``)."""
    from kit.cohort.retrieve import Source

    source = Source.from_settings(settings, method)  # type: ignore[arg-type]
    client: Any = source.dicomweb_client() if source.web else source.dimse()
    found = client.find("STUDY", return_keys=["study_instance_uid", "patient_id"])
    uids = sorted(set(found["study_instance_uid"].drop_nulls().to_list())) if found.height else []
    return pl.DataFrame({"study_instance_uid": uids}, schema={"study_instance_uid": pl.String})


def pull_studies(cohort: pl.DataFrame, folder: Path, settings: Settings, *, method: str | None,
                 progress: bool | None, dask: Any = None) -> pl.DataFrame:
    """Pull ``cohort``'s studies into ``folder`` (resuming a pull there); the report.

    A study not retrieved raises :class:`~kit.errors.CohortError`.
    """
    from kit.cohort.pull import CohortPull

    report = CohortPull(cohort, folder, settings=settings, method=method,  # type: ignore[arg-type]
                        progress=progress, dask=dask).run()
    failed = report.filter(pl.col("status") != "retrieved")
    if failed.height:
        first = failed.row(0, named=True)
        raise CohortError(f"{failed.height} of {report.height} requested item/study rows were not retrieved; "
                          f"first: {first['item']}: {first['reason'] or first['status']}; nothing exported "
                          f"(report in {folder / 'report.csv'})", failed=failed.height)
    return report


def read_pulled(folder: Path, studies: Iterable[str] | None = None) -> list[Dataset]:
    """The data sets of a ``kit cohort pull`` folder (``<folder>/<study UID>/*.dcm``), sorted by path.

    ``studies``: only these study folders (default every one; hidden folders never).
    """
    if not folder.is_dir():
        raise InvalidInputError("not a cohort pull folder (no such folder)", source=str(folder))
    wanted = None if studies is None else set(studies)
    out: list[Dataset] = []
    for study in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if wanted is not None and study.name not in wanted:
            continue
        for path in sorted(p for p in study.iterdir() if p.is_file() and p.suffix == ".dcm"
                           and not p.name.startswith(".")):
            try:
                out.append(dcmread(path))
            except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
                raise DicomFileError(f"cannot read a pulled file: {exc}", source=str(path)) from exc
    return out


def _groups(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), IDS_PER_SEARCH):
        yield list(values[start:start + IDS_PER_SEARCH])


def _mrn(patient: dict[str, Any]) -> str | None:
    from kit.fhir.frames import to_frame

    frame = to_frame([patient], "Patient")
    return frame["patient_id"][0] if frame.height else None


def fhir_resources(settings: Settings, mrns: Sequence[str] | None, *,
                   echo: Callable[[str], None]) -> tuple[list[dict[str, Any]], set[str]]:
    """The Patients with one of ``mrns`` (every Patient for None) and every resource that names them.

    Types are those the server's CapabilityStatement lets us search by ``patient``;
    resources are de-duplicated and sorted by (type, id). Also returns the MRNs found.
    """
    from kit.fhir.capability import ServerSupport
    from kit.fhir.client import FhirClient

    with FhirClient.from_settings(settings) as client:
        support = ServerSupport.of(client.capabilities(), where=f"the FHIR server at {client.base}")
        patients: list[dict[str, Any]] = []
        if mrns is None:
            patients = list(client.search("Patient"))
        else:
            wanted = sorted(set(mrns))
            for group in _groups(wanted):
                patients += [p for p in client.search("Patient", {"identifier": ",".join(group)})
                             if p.get("resourceType") == "Patient" and _mrn(p) in wanted]
        found: dict[tuple[str, str], dict[str, Any]] = {("Patient", str(p.get("id"))): p for p in patients}
        refs = sorted({f"Patient/{p['id']}" for p in patients if isinstance(p.get("id"), str)})
        mrn_set = {m for m in map(_mrn, patients) if m}
        if refs:
            for rtype in sorted(support.resources):
                if rtype in _NOT_BY_PATIENT:
                    continue
                why = support.why_not(rtype, "search-type", "patient")
                if why is not None:
                    continue  # a type that cannot be searched by patient holds nothing we can attribute
                for group in _groups(refs):
                    for r in client.search(rtype, {"patient": ",".join(group)}):
                        key = (str(r.get("resourceType")), str(r.get("id")))
                        found.setdefault(key, r)
        if mrns is not None and len(mrn_set) < len(set(mrns)):
            missing = sorted(set(mrns) - mrn_set)
            echo(f"the FHIR server has no Patient for {len(missing)} of the {len(set(mrns))} patients")
    return [found[k] for k in sorted(found)], mrn_set


@dataclasses.dataclass(frozen=True)
class Hl7Read:
    """The messages of an HL7 store that belong to the cohort, and what was left out."""

    messages: tuple[str, ...]
    mrns: frozenset[str]
    without_patient: int
    unreadable: int
    other_patients: int
    address: str


def hl7_store_path(settings: Settings, hl7_store: str | os.PathLike[str] | None) -> Path | None:
    """The HL7 store to read: ``hl7_store``, else ``[api] hl7_store``, else None (none configured)."""
    chosen = hl7_store if hl7_store is not None else settings.api.hl7_store
    if chosen is None or str(chosen) == "":
        return None
    path = Path(chosen).expanduser()
    if not path.is_file():
        raise ConfigError("api.hl7_store", f"the HL7 store {path} is not a file (an MLLP listener's "
                                           "message store, e.g. the embedded stack's mllp.db)")
    return path


def hl7_messages(path: Path, mrns: Iterable[str] | None) -> Hl7Read:
    """The stored messages whose PID-3 MRN is one of ``mrns`` (any MRN for None), in store order."""
    from kit.deid.hl7 import patient_facts
    from kit.hl7.message import parse_message
    from kit.hl7.store import MessageStore

    with MessageStore(path) as store:
        raws = [str(r) for r in store.messages()["raw"].to_list()]
    wanted = None if mrns is None else set(mrns)
    kept: list[str] = []
    found: set[str] = set()
    without = unreadable = others = 0
    for raw in raws:
        try:
            facts = patient_facts(parse_message(raw))
        except KitError:
            unreadable += 1
            continue
        if facts is None:
            without += 1
        elif wanted is None or facts.mrn in wanted:
            kept.append(raw)
            found.add(facts.mrn)
        else:
            others += 1
    return Hl7Read(tuple(kept), frozenset(found), without, unreadable, others, str(path))
