"""kit.hub: declarative sync of local tables with FHIR (mappings, transforms, conflict strategies).

Pure: :mod:`kit.hub.connectors` (FieldMapping, ResourceMapping, TRANSFORMS) and
:mod:`kit.hub.sync` (plan_sync, Strategy, SyncReport). I/O: :mod:`kit.hub.syncjob`
(SyncJob, ConflictStore), imported lazily so the pure parts load without sqlite3.
"""

from __future__ import annotations

from typing import Any

from kit.hub.connectors import TRANSFORMS, Direction, FieldMapping, ResourceMapping
from kit.hub.sync import Action, Conflict, PlannedAction, Strategy, SyncReport, plan_sync

__all__ = [
    "TRANSFORMS",
    "Action",
    "Conflict",
    "ConflictStore",
    "Direction",
    "FieldMapping",
    "PlannedAction",
    "ResourceMapping",
    "Strategy",
    "SyncJob",
    "SyncReport",
    "plan_sync",
]


def __getattr__(name: str) -> Any:
    if name in ("SyncJob", "ConflictStore"):
        from kit.hub import syncjob

        return getattr(syncjob, name)
    raise AttributeError(f"module 'kit.hub' has no attribute {name!r}")
