"""What a FHIR server says it supports, read from its CapabilityStatement (pure).

A hospital's FHIR server supports a subset of R4: some resource types, some
interactions on each, some search parameters. :class:`ServerSupport` reads the
CapabilityStatement (``GET [base]/metadata``, :meth:`kit.fhir.client.FhirClient.capabilities`)
into one small object that answers "can I search ImagingStudy by patient here?" with a
yes, or with a sentence saying why not, so a notebook goes on with what the server can
do instead of failing on a missing key::

    support = ServerSupport.of(client.capabilities())
    support.why_not("ImagingStudy")   # None, or "the FHIR server does not list ImagingStudy ..."
    support.frame(["Patient", "ImagingStudy"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from kit.errors import FhirValidationError

__all__ = ["ResourceSupport", "ServerSupport"]


@dataclasses.dataclass(frozen=True)
class ResourceSupport:
    """One resource type as the server lists it.

    Attributes
    ----------
    interactions : frozenset of str or None
        ``read``, ``search-type``, ``create``...; None when the statement lists the
        type without interactions (then nothing is assumed missing).
    search_params : frozenset of str or None
        Search parameter names; None when the statement does not list them.
    """

    resource_type: str
    interactions: frozenset[str] | None
    search_params: frozenset[str] | None


def _names(items: Any, key: str) -> frozenset[str] | None:
    if not isinstance(items, list):
        return None
    return frozenset(str(i[key]) for i in items if isinstance(i, Mapping) and isinstance(i.get(key), str))


@dataclasses.dataclass(frozen=True)
class ServerSupport:
    """The resource types, interactions, search parameters and operations a server lists.

    Build with :meth:`of`. ``where`` names the server in sentences (``"the FHIR server"``).
    """

    fhir_version: str
    software: str
    resources: Mapping[str, ResourceSupport]
    operations: frozenset[str]
    where: str = "the FHIR server"

    @classmethod
    def of(cls, statement: Mapping[str, Any], *, where: str = "the FHIR server") -> ServerSupport:
        """Read a CapabilityStatement (the JSON of ``GET [base]/metadata``).

        Only ``rest`` entries in ``server`` mode (or without a mode) count.

        Raises
        ------
        FhirValidationError
            ``statement`` is not a CapabilityStatement.
        """
        if not isinstance(statement, Mapping) or statement.get("resourceType") != "CapabilityStatement":
            got = (statement.get("resourceType") if isinstance(statement, Mapping)
                   else type(statement).__name__)
            raise FhirValidationError(f"expected a CapabilityStatement, got {got!r}", source=where)
        resources: dict[str, ResourceSupport] = {}
        operations: set[str] = set()
        rests = statement.get("rest")
        for rest in rests if isinstance(rests, list) else []:
            if not isinstance(rest, Mapping) or rest.get("mode", "server") != "server":
                continue
            operations |= _names(rest.get("operation"), "name") or frozenset()
            entries = rest.get("resource")
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
                    continue
                rtype = entry["type"]
                operations |= _names(entry.get("operation"), "name") or frozenset()
                resources[rtype] = ResourceSupport(rtype, _names(entry.get("interaction"), "code"),
                                                   _names(entry.get("searchParam"), "name"))
        software = statement.get("software")
        name = software.get("name", "") if isinstance(software, Mapping) else ""
        return cls(str(statement.get("fhirVersion", "")), str(name), resources, frozenset(operations), where)

    def why_not(self, resource_type: str, interaction: str = "search-type",
                search_param: str | None = None) -> str | None:
        """None when the server lists ``interaction`` (and ``search_param``) on a type; else why not.

        Parameters
        ----------
        resource_type : str
            E.g. ``"ImagingStudy"``.
        interaction : str
            ``search-type`` (default), ``read``, ``create``...
        search_param : str, optional
            A search parameter the search needs (``"patient"``).

        Returns
        -------
        str or None
            A sentence, e.g. "the FHIR server does not support ImagingStudy (its
            CapabilityStatement does not list it)".
        """
        entry = self.resources.get(resource_type)
        if entry is None:
            return f"{self.where} does not support {resource_type} (its CapabilityStatement does not list it)"
        if entry.interactions is not None and interaction not in entry.interactions:
            return (f"{self.where} does not allow {interaction} on {resource_type} "
                    f"(it lists {', '.join(sorted(entry.interactions)) or 'no interaction'})")
        if search_param is not None and entry.search_params is not None \
                and search_param not in entry.search_params:
            return f"{self.where} does not support searching {resource_type} by {search_param}"
        return None

    def supports(self, resource_type: str, interaction: str = "search-type",
                 search_param: str | None = None) -> bool:
        """Whether the server lists ``interaction`` (and ``search_param``) on ``resource_type``."""
        return self.why_not(resource_type, interaction, search_param) is None

    def supports_operation(self, name: str) -> bool:
        """Whether the server lists the operation ``name`` (``"export"``; a leading ``$`` is ignored)."""
        return name.lstrip("$") in self.operations

    def search_params(self, resource_type: str) -> list[str]:
        """The search parameters listed for ``resource_type``, sorted (empty if none or not listed)."""
        entry = self.resources.get(resource_type)
        return sorted(entry.search_params or ()) if entry is not None else []

    def frame(self, resource_types: Iterable[str] | None = None) -> pl.DataFrame:
        """One row per resource type: ``resource_type``, ``search`` (Boolean), ``search_params``, ``why_not``.

        Parameters
        ----------
        resource_types : iterable of str, optional
            The types to report, listed or not (default: every listed type).
        """
        types = list(resource_types) if resource_types is not None else sorted(self.resources)
        return pl.DataFrame(
            {"resource_type": types,
             "search": [self.supports(t) for t in types],
             "search_params": [self.search_params(t) for t in types],
             "why_not": [self.why_not(t) for t in types]},
            schema={"resource_type": pl.String, "search": pl.Boolean, "search_params": pl.List(pl.String),
                    "why_not": pl.String})
