"""kit.hub: the integration Hub, its connector registry, and the FHIR sync engine.

Three parts, kept apart:

* **Manager** (I/O) -- :class:`~kit.hub.manager.Hub`: adapters for PACS (DIMSE,
  DICOMweb), EHR (FHIR), HL7 (MLLP) and endoscopy built from Settings; health
  status, a patient's view across sources, report status, sending results.
* **Registry** (pure) -- :mod:`kit.hub.registry`: each connector's capabilities,
  auth types and entities as data.
* **Sync engine** -- declarative sync of local tables with FHIR: pure
  :mod:`kit.hub.syncmap` (FieldMapping, ResourceMapping, TRANSFORMS) and
  :mod:`kit.hub.sync` (plan_sync, Strategy, SyncReport); I/O
  :mod:`kit.hub.syncjob` (SyncJob, ConflictStore).

The I/O names (``Hub``, ``SyncJob``, ``ConflictStore``) are imported lazily, so
the pure parts load without sockets or sqlite3.
"""

from __future__ import annotations

from typing import Any

from kit.hub.registry import (
    REGISTRY,
    AuthType,
    Capability,
    CapabilityStatus,
    Connector,
    connectors,
    get_connector,
    registry_frame,
    require,
    supports,
    validate_registry,
)
from kit.hub.sync import Action, Conflict, PlannedAction, Strategy, SyncReport, plan_sync
from kit.hub.syncmap import TRANSFORMS, Direction, FieldMapping, ResourceMapping

__all__ = [
    "REGISTRY",
    "TRANSFORMS",
    "Action",
    "AuthType",
    "Capability",
    "CapabilityStatus",
    "Conflict",
    "ConflictStore",
    "Connector",
    "Direction",
    "FieldMapping",
    "Hub",
    "PlannedAction",
    "ResourceMapping",
    "Strategy",
    "SyncJob",
    "SyncReport",
    "connectors",
    "get_connector",
    "plan_sync",
    "registry_frame",
    "require",
    "supports",
    "validate_registry",
]

_LAZY = {"SyncJob": "kit.hub.syncjob", "ConflictStore": "kit.hub.syncjob", "Hub": "kit.hub.manager"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kit.hub' has no attribute {name!r}")
