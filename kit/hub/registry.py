"""The connector registry: what each kind of hospital connector can do, as data (pure).

One :class:`Connector` per kind of peer the :class:`~kit.hub.manager.Hub`
talks to, with its capabilities (each ``available`` or ``planned``), the
authentication types it accepts, the entities it exchanges and the
``kit.toml`` section that configures it::

    pacs-dimse      echo find get move store worklist     none tls mutual_tls
    pacs-dicomweb   qido wado stow                        none bearer basic
    ehr-fhir        read search create update transaction bulk_export
                                                          none bearer basic client_credentials smart
    hl7-mllp        send listen                           none tls mutual_tls
    endoscopy       worklist (via DIMSE), video, capture   none tls mutual_tls

:data:`REGISTRY` is the table; :func:`get_connector` looks one up by name,
:func:`require` checks that a connector offers a capability now (a planned one
raises), :func:`registry_frame` shows it all as a polars frame, and
:func:`validate_registry` checks a table (unique names, each entry valid).
Every :class:`Connector` is validated on construction.

Written by hand: it is the kit's own description of its connectors.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

import polars as pl

from kit.errors import InvalidInputError

__all__ = [
    "REGISTRY",
    "REGISTRY_COLUMNS",
    "AuthType",
    "Capability",
    "CapabilityStatus",
    "Connector",
    "connectors",
    "get_connector",
    "registry_frame",
    "require",
    "supports",
    "validate_registry",
]

_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


class AuthType(enum.StrEnum):
    """How a connector authenticates to its peer."""

    NONE = "none"
    TLS = "tls"
    MUTUAL_TLS = "mutual_tls"
    BEARER = "bearer"
    BASIC = "basic"
    CLIENT_CREDENTIALS = "client_credentials"
    SMART = "smart"


class CapabilityStatus(enum.StrEnum):
    """Whether a capability works today or is only planned."""

    AVAILABLE = "available"
    PLANNED = "planned"


@dataclasses.dataclass(frozen=True)
class Capability:
    """One thing a connector does (``find``, ``send``, ``bulk_export``...).

    Parameters
    ----------
    name : str
        Lower-case identifier (``[a-z][a-z0-9_-]*``).
    description : str
        One line for people.
    status : CapabilityStatus or str
        ``available`` or ``planned``.
    """

    name: str
    description: str = ""
    status: CapabilityStatus = CapabilityStatus.AVAILABLE

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidInputError(f"capability name {self.name!r} is not a lower-case identifier")
        try:
            object.__setattr__(self, "status", CapabilityStatus(self.status))
        except ValueError as exc:
            raise InvalidInputError(f"capability {self.name}: unknown status {self.status!r}; "
                                    f"known: {[s.value for s in CapabilityStatus]}") from exc

    @property
    def available(self) -> bool:
        """True when the capability works today."""
        return self.status is CapabilityStatus.AVAILABLE


@dataclasses.dataclass(frozen=True)
class Connector:
    """A kind of connector: its protocol, capabilities, auth types and entities.

    Parameters
    ----------
    name : str
        Registry key (``pacs-dimse``).
    protocol : str
        The standard it speaks (``DICOM DIMSE``, ``FHIR R4``...).
    description : str
        One line for people.
    capabilities : tuple of Capability
        At least one; names unique.
    auth_types : tuple of AuthType
        At least one; unique.
    entities : tuple of str
        What it exchanges (``study``, ``Patient``, ``ADT``...); unique, non-empty.
    settings_section : str
        The ``kit.toml`` section that configures it (``pacs``, ``fhir``...).
    """

    name: str
    protocol: str
    description: str
    capabilities: tuple[Capability, ...]
    auth_types: tuple[AuthType, ...]
    entities: tuple[str, ...]
    settings_section: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidInputError(f"connector name {self.name!r} is not a lower-case identifier")
        where = f"connector {self.name}"
        for field in ("protocol", "settings_section"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field).strip():
                raise InvalidInputError(f"{where}: {field} must be a non-empty string")
        caps = tuple(self.capabilities)
        if not caps or not all(isinstance(c, Capability) for c in caps):
            raise InvalidInputError(f"{where}: needs at least one Capability")
        _unique(where, "capability", [c.name for c in caps])
        try:
            auths = tuple(AuthType(a) for a in self.auth_types)
        except ValueError as exc:
            raise InvalidInputError(f"{where}: {exc}; known auth types: "
                                    f"{[a.value for a in AuthType]}") from exc
        if not auths:
            raise InvalidInputError(f"{where}: needs at least one auth type")
        _unique(where, "auth type", [a.value for a in auths])
        entities = tuple(self.entities)
        if not entities or not all(isinstance(e, str) and e.strip() == e and e for e in entities):
            raise InvalidInputError(f"{where}: entities must be non-empty strings without outer spaces")
        _unique(where, "entity", list(entities))
        object.__setattr__(self, "capabilities", caps)
        object.__setattr__(self, "auth_types", auths)
        object.__setattr__(self, "entities", entities)

    def capability(self, name: str) -> Capability:
        """The capability called ``name``; unknown raises InvalidInputError naming the known ones."""
        for cap in self.capabilities:
            if cap.name == name:
                return cap
        raise InvalidInputError(f"connector {self.name} has no capability {name!r}; "
                                f"known: {', '.join(c.name for c in self.capabilities)}")

    @property
    def available(self) -> tuple[str, ...]:
        """Names of the capabilities that work today."""
        return tuple(c.name for c in self.capabilities if c.available)

    @property
    def planned(self) -> tuple[str, ...]:
        """Names of the capabilities only planned."""
        return tuple(c.name for c in self.capabilities if not c.available)


def _unique(where: str, what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise InvalidInputError(f"{where}: {what} {n!r} is listed twice")
        seen.add(n)


def _caps(*items: str | tuple[str, str] | tuple[str, str, CapabilityStatus]) -> tuple[Capability, ...]:
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Capability(item))
        else:
            out.append(Capability(*item))
    return tuple(out)


_A = AuthType
_PLANNED = CapabilityStatus.PLANNED

_CONNECTORS: Final[tuple[Connector, ...]] = (
    Connector(
        "pacs-dimse", "DICOM DIMSE", "PACS over DICOM networking (kit.dicom.dimse.PacsClient)",
        _caps(("echo", "C-ECHO verification"), ("find", "C-FIND patient/study/series/image"),
              ("get", "C-GET retrieve"), ("move", "C-MOVE retrieve"), ("store", "C-STORE send"),
              ("worklist", "Modality Worklist C-FIND")),
        (_A.NONE, _A.TLS, _A.MUTUAL_TLS),
        ("patient", "study", "series", "instance", "worklist item"), "pacs"),
    Connector(
        "pacs-dicomweb", "DICOMweb", "PACS over HTTP (kit.dicom.web.DicomWebClient)",
        _caps(("qido", "QIDO-RS search"), ("wado", "WADO-RS retrieve"), ("stow", "STOW-RS store")),
        (_A.NONE, _A.BEARER, _A.BASIC),
        ("study", "series", "instance"), "dicomweb"),
    Connector(
        "ehr-fhir", "FHIR R4", "EHR over FHIR REST (kit.fhir.client.FhirClient)",
        _caps(("read", "read and vread by id"), ("search", "search with paging"),
              ("create", "create, conditional create"), ("update", "update with If-Match"),
              ("transaction", "transaction and batch Bundles"),
              ("bulk_export", "Bulk Data $export (NDJSON)")),
        (_A.NONE, _A.BEARER, _A.BASIC, _A.CLIENT_CREDENTIALS, _A.SMART),
        ("Patient", "Encounter", "Observation", "DiagnosticReport", "ImagingStudy", "Condition",
         "Procedure", "ServiceRequest", "MedicationRequest", "Appointment", "DocumentReference"),
        "fhir"),
    Connector(
        "hl7-mllp", "HL7 v2 over MLLP", "interface engine feeds (kit.hl7.mllp)",
        _caps(("send", "send with ACK matching and retries (MLLPSender)"),
              ("listen", "durable listener, AA after commit (MLLPListener)")),
        (_A.NONE, _A.TLS, _A.MUTUAL_TLS),
        ("ADT", "ORM", "ORU", "SIU", "MDM"), "hl7"),
    Connector(
        "endoscopy", "DICOM DIMSE + video", "endoscopy suites: the PACS worklist for modality ES, "
        "the tower's live video, captures stored as VL/Video Endoscopic",
        _caps(("worklist", "Modality Worklist C-FIND, Modality=ES, via DIMSE"),
              ("video", "live video frames from a stream, file or capture device (FrameSource)"),
              ("capture", "stills and clips stored to the PACS and found again (capture_procedure)")),
        (_A.NONE, _A.TLS, _A.MUTUAL_TLS),
        ("worklist item", "procedure", "video"), "pacs"),
)


def validate_registry(items: Iterable[Connector]) -> Mapping[str, Connector]:
    """Check a table of connectors and return it keyed by name (read-only).

    Raises
    ------
    kit.errors.InvalidInputError
        An item is not a :class:`Connector`, or two share a name.
    """
    out: dict[str, Connector] = {}
    for c in items:
        if not isinstance(c, Connector):
            raise InvalidInputError(f"registry entries must be Connector, not {type(c).__name__}")
        if c.name in out:
            raise InvalidInputError(f"connector {c.name!r} is registered twice")
        out[c.name] = c
    return MappingProxyType(out)


#: The kit's connectors by name.
REGISTRY: Final[Mapping[str, Connector]] = validate_registry(_CONNECTORS)


def connectors() -> tuple[Connector, ...]:
    """Every registered connector, in registry order."""
    return tuple(REGISTRY.values())


def get_connector(name: str) -> Connector:
    """The connector called ``name``; unknown raises InvalidInputError naming the known ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"no connector {name!r}; known: {', '.join(REGISTRY)}") from None


def supports(name: str, capability: str) -> bool:
    """True when connector ``name`` offers ``capability`` today (planned ones are False)."""
    try:
        return get_connector(name).capability(capability).available
    except InvalidInputError:
        return False


def require(name: str, capability: str) -> Capability:
    """The capability, checked: unknown connector or capability, or only planned, raise.

    Raises
    ------
    kit.errors.InvalidInputError
    """
    cap = get_connector(name).capability(capability)
    if not cap.available:
        raise InvalidInputError(f"connector {name}: {capability} is planned, not available yet")
    return cap


#: Columns of :func:`registry_frame`.
REGISTRY_COLUMNS: Final[Mapping[str, pl.DataType]] = MappingProxyType({
    "connector": pl.String(), "protocol": pl.String(), "description": pl.String(),
    "settings_section": pl.String(), "capabilities": pl.List(pl.String()),
    "planned": pl.List(pl.String()), "auth_types": pl.List(pl.String()),
    "entities": pl.List(pl.String()),
})


def registry_frame(items: Iterable[Connector] | None = None) -> pl.DataFrame:
    """The registry as a frame: one row per connector (columns :data:`REGISTRY_COLUMNS`).

    ``capabilities`` lists what works today, ``planned`` what does not yet.
    """
    rows = [{"connector": c.name, "protocol": c.protocol, "description": c.description,
             "settings_section": c.settings_section, "capabilities": list(c.available),
             "planned": list(c.planned), "auth_types": [a.value for a in c.auth_types],
             "entities": list(c.entities)}
            for c in (connectors() if items is None else validate_registry(items).values())]
    return pl.DataFrame(rows, schema=dict(REGISTRY_COLUMNS))
