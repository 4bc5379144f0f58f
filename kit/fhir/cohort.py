"""A cohort's records from a FHIR server: bounded searches by patient list, within what it supports.

Against a hospital's EHR a search without filters asks for the whole population.
These functions search for a list of patients only (their MRNs, then their
records by ``patient=``), in groups of :data:`IDS_PER_SEARCH` identifiers per
request, with a page size and a ``limit`` on each search, and only for the
resource types the server's CapabilityStatement lists
(:class:`~kit.fhir.capability.ServerSupport`): a type the server does not
support is said in a sentence and stands in as an empty frame with its columns,
so the analysis goes on with what the server has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import polars as pl

from kit._truncate import check_limit, warn_truncated
from kit.errors import InvalidInputError
from kit.fhir.capability import ServerSupport
from kit.fhir.client import FhirClient
from kit.fhir.frames import to_frame

__all__ = ["IDS_PER_SEARCH", "cohort_frames", "patients_by_mrn"]

#: Identifiers per search request (OR-ed with commas): keeps URLs short for long cohorts.
IDS_PER_SEARCH = 50


def _groups(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), IDS_PER_SEARCH):
        yield list(values[start:start + IDS_PER_SEARCH])


def _search(client: FhirClient, resource_type: str, name: str, values: Sequence[str], *,
            limit: int, count: int | None) -> pl.DataFrame:
    """``resource_type`` matching any of ``values`` on ``name``, at most ``limit`` rows in all."""
    frames: list[pl.DataFrame] = []
    left = limit
    for done, group in enumerate(_groups(values)):
        if left <= 0:  # the limit is spent and values remain unsearched: said, never a silent cut
            rest = len(values) - done * IDS_PER_SEARCH
            warn_truncated(f"FHIR search {resource_type} by {name}", limit, f"{rest} more {name} values, "
                           "not searched")
            break
        extra = {"_count": count} if count is not None else {}
        frame = client.search_frame(resource_type, {name: ",".join(group)}, limit=left, **extra)
        frames.append(frame)
        left -= frame.height
    if not frames:
        return to_frame([], resource_type)
    return pl.concat(frames, how="diagonal_relaxed").unique("id", keep="first", maintain_order=True) \
        if "id" in frames[0].columns else pl.concat(frames, how="diagonal_relaxed")


def patients_by_mrn(client: FhirClient, mrns: Iterable[str], *, limit: int = 1000,
                    count: int | None = None, echo: Callable[[str], None] = print) -> pl.DataFrame:
    """The Patient resources whose identifier is one of ``mrns``, as a frame.

    Parameters
    ----------
    client : FhirClient
        The FHIR server.
    mrns : iterable of str
        Medical record numbers (matched as identifier values, any system).
    limit : int
        Most patients to read in all.
    count : int, optional
        Page size (``_count``).
    echo : callable
        Receives a sentence naming MRNs the server has no Patient for.

    Returns
    -------
    polars.DataFrame
        :func:`kit.fhir.frames.to_frame` columns for Patient (``id``, ``patient_id``...).

    Raises
    ------
    InvalidInputError
        ``mrns`` is empty, or the server has none of them.
    """
    wanted = list(dict.fromkeys(str(m) for m in mrns))
    if not wanted:
        raise InvalidInputError("no patient asked for: give at least one MRN", source="patient_ids")
    limit = check_limit(limit) or 0
    patients = _search(client, "Patient", "identifier", wanted, limit=limit, count=count)
    found = set(patients["patient_id"].drop_nulls().to_list()) if patients.height else set()
    missing = [m for m in wanted if m not in found]
    if len(missing) == len(wanted):
        raise InvalidInputError(f"the FHIR server at {client.base} has no Patient with identifier "
                                f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}",
                                source="patient_ids")
    if missing:
        echo(f"the FHIR server has no Patient for {len(missing)} of the {len(wanted)} MRNs asked for: "
             f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}; going on without them")
    return patients


def cohort_frames(client: FhirClient, support: ServerSupport, patients: pl.DataFrame,
                  resource_types: Iterable[str], *, limit: int = 1000, count: int | None = None,
                  echo: Callable[[str], None] = print) -> dict[str, pl.DataFrame]:
    """Each of ``resource_types`` for ``patients`` (searched by ``patient=``), one frame per type.

    Parameters
    ----------
    client : FhirClient
        The FHIR server.
    support : ServerSupport
        What it supports (from its CapabilityStatement).
    patients : polars.DataFrame
        A Patient frame (its ``id`` column gives the references).
    resource_types : iterable of str
        E.g. ``["Encounter", "Observation", "ImagingStudy"]``.
    limit : int
        Most resources per type (a :class:`~kit.errors.TruncatedResultWarning` when cut).
    count : int, optional
        Page size (``_count``).
    echo : callable
        Receives one sentence per type the server cannot be searched for.

    Returns
    -------
    dict of str to polars.DataFrame
        One frame per type, in the order given; a type the server does not support
        (or not by ``patient``) is an empty frame with the type's columns, and said.
    """
    limit = check_limit(limit) or 0
    refs = [f"Patient/{i}" for i in patients["id"].drop_nulls().to_list()] if patients.height else []
    out: dict[str, pl.DataFrame] = {}
    for resource_type in resource_types:
        why = support.why_not(resource_type, "search-type", "patient")
        if why is not None:
            echo(f"{why}: skipped, an empty {resource_type} frame stands in")
            out[resource_type] = to_frame([], resource_type)
            continue
        out[resource_type] = _search(client, resource_type, "patient", refs, limit=limit, count=count)
    return out
