"""Sync planning: compare local rows with FHIR resources, resolve conflicts, plan writes (pure).

The local table is the *source*, the FHIR server the *destination*. For each
local row :func:`plan_sync` finds the remote resource with the same key (see
:class:`~kit.hub.syncmap.ResourceMapping`) and decides one :class:`Action`:

* no remote resource -> ``created`` (the resource built from the row);
* remote equal on every mapped field -> ``skipped``;
* remote differs -> the :class:`Strategy` decides:

  ``source_wins``  update the remote fields from the row;
  ``dest_wins``    keep the remote (``skipped``);
  ``newest_wins``  the row's ``updated_at`` against ``meta.lastUpdated`` (a
                   missing timestamp is a ``conflict``);
  ``merge``        field by field: a non-null value fills a null one; fields
                   that differ follow ``merge_rule`` (source_wins, dest_wins or
                   newest_wins);
  ``manual``       ``conflict``: queued for a person (:class:`Conflict`), nothing written.

A null local cell is "no opinion" under every strategy: it is never written and
never a difference (so never a conflict), unless its field mapping says
``delete_on_null=True``; then it is a difference like any other, and writing it
removes the remote value together with any element it leaves partial (see
:mod:`kit.hub.syncmap`). A null remote value is filled by ``source_wins``,
``merge`` and (when the row is newer) ``newest_wins``.

Before a write is planned it is validated: required fields present, and FHIR R4
validity via :func:`kit.fhir.resources.validate`; a failure is action ``error``
for that row only. Written by hand: no library plans FHIR record synchronisation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from kit.errors import InvalidInputError, KitError
from kit.hub.syncmap import ResourceMapping, _jsonable, get_path, set_path

__all__ = [
    "REPORT_SCHEMA",
    "Action",
    "Conflict",
    "PlannedAction",
    "Strategy",
    "SyncReport",
    "apply_values",
    "plan_sync",
]


class Strategy(enum.Enum):
    """How a difference between a local row and its FHIR resource is settled."""

    SOURCE_WINS = "source_wins"
    DEST_WINS = "dest_wins"
    NEWEST_WINS = "newest_wins"
    MERGE = "merge"
    MANUAL = "manual"


class Action(enum.Enum):
    """What happened (or is planned) for one record."""

    CREATED = "created"
    UPDATED = "updated"
    SKIPPED = "skipped"
    CONFLICT = "conflict"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class Conflict:
    """A difference left to a person: ``fields`` maps remote path -> (local value, remote value)."""

    conflict_id: str
    resource_type: str
    key: str
    resource_id: str | None
    fields: Mapping[str, tuple[Any, Any]]
    row: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class PlannedAction:
    """The plan for one record; ``resource`` is what to write (created/updated)."""

    key: str | None
    action: Action
    message: str = ""
    resource: dict[str, Any] | None = None
    resource_id: str | None = None
    version: str | None = None
    conflict: Conflict | None = None

    def __post_init__(self) -> None:
        if self.action in (Action.CREATED, Action.UPDATED) and self.resource is None:
            raise InvalidInputError(f"a planned {self.action.value} needs a resource")
        if self.action is Action.CONFLICT and self.conflict is None:
            raise InvalidInputError("a planned conflict needs its Conflict")


#: columns of :attr:`SyncReport.frame`
REPORT_SCHEMA = pl.Schema({"key": pl.Utf8, "action": pl.Utf8, "resource_id": pl.Utf8,
                           "message": pl.Utf8, "conflict_id": pl.Utf8})


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """Outcome of a sync: one row per record in :attr:`frame`, and the counts per action."""

    frame: pl.DataFrame
    conflicts: tuple[Conflict, ...] = ()

    @classmethod
    def from_actions(cls, actions: Iterable[PlannedAction]) -> SyncReport:
        """A report from (executed) actions."""
        acts = list(actions)
        frame = pl.DataFrame({
            "key": [a.key for a in acts], "action": [a.action.value for a in acts],
            "resource_id": [a.resource_id for a in acts], "message": [a.message for a in acts],
            "conflict_id": [a.conflict.conflict_id if a.conflict else None for a in acts],
        }, schema=REPORT_SCHEMA)
        return cls(frame, tuple(a.conflict for a in acts if a.conflict is not None))

    @property
    def counts(self) -> dict[str, int]:
        """Records per action (every action present, zeros included)."""
        got = dict(self.frame.group_by("action").len().iter_rows())
        return {a.value: int(got.get(a.value, 0)) for a in Action}

    @property
    def ok(self) -> bool:
        """True when no record ended in error."""
        return self.counts[Action.ERROR.value] == 0


# --------------------------------------------------------------------------- planning

def _timestamp(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        d = value
    elif isinstance(value, dt.date):
        d = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            d = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidInputError(f"not a timestamp: {value!r}") from exc
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def _newer(mapping: ResourceMapping, row: Mapping[str, Any], remote: Mapping[str, Any]) -> bool | None:
    """True if the row is newer than the resource, False if not, None if unknown."""
    local_ts = _timestamp(row.get(mapping.updated_at)) if mapping.updated_at else None
    remote_ts = _timestamp((remote.get("meta") or {}).get("lastUpdated"))
    if local_ts is None or remote_ts is None:
        return None
    return local_ts > remote_ts


def _validate(mapping: ResourceMapping, row: Mapping[str, Any], resource: dict[str, Any]) -> None:
    missing = [f.local for f in mapping.fields
               if f.required and f.writes_remote and get_path(resource, f.remote) is None]
    if missing:
        raise InvalidInputError(f"required field(s) missing: {', '.join(missing)}")
    from kit.fhir.resources import validate

    validate(resource, resource_type=mapping.resource_type)


def _differences(mapping: ResourceMapping, wanted: Mapping[str, Any],
                 remote: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for path, value in wanted.items():
        current = get_path(remote, path)
        if _jsonable(value) != current:
            out[path] = (value, current)
    return out


def _plan_one(mapping: ResourceMapping, strategy: Strategy, merge_rule: Strategy, row: Mapping[str, Any],
              remote: Mapping[str, Any] | None, validate: bool) -> PlannedAction:
    key = str(row[mapping.key_column])
    if remote is None:
        resource = mapping.to_resource(row)
        if validate:
            _validate(mapping, row, resource)
        return PlannedAction(key, Action.CREATED, "new record", resource)
    rid = remote.get("id")
    version = (remote.get("meta") or {}).get("versionId")
    wanted = mapping.remote_values(row)
    diffs = _differences(mapping, wanted, remote)
    if not diffs:
        return PlannedAction(key, Action.SKIPPED, "unchanged", resource_id=rid, version=version)
    rule = strategy
    if strategy is Strategy.MERGE:
        # fill gaps both ways; only truly different fields follow merge_rule
        fills = {p: lv for p, (lv, rv) in diffs.items() if rv is None}
        # both set, or a deletion asked for (delete_on_null) of a value that is set
        clashes = {p: d for p, d in diffs.items() if d[1] is not None}
        take: dict[str, Any] = dict(fills)
        if clashes:
            rule = merge_rule
            if rule is Strategy.NEWEST_WINS:
                newer = _newer(mapping, row, remote)
                if newer is None:
                    return _conflict(mapping, key, rid, version, clashes, row,
                                     "cannot compare timestamps (updated_at / meta.lastUpdated)")
                rule = Strategy.SOURCE_WINS if newer else Strategy.DEST_WINS
            if rule is Strategy.SOURCE_WINS:
                take.update({p: lv for p, (lv, _) in clashes.items()})
            elif rule is Strategy.MANUAL:
                return _conflict(mapping, key, rid, version, clashes, row, "fields differ")
        if not take:
            return PlannedAction(key, Action.SKIPPED, "destination kept (merge)", resource_id=rid,
                                 version=version)
        return _update(mapping, key, rid, version, row, remote, take, validate,
                       f"merged {', '.join(sorted(take))}")
    if rule is Strategy.NEWEST_WINS:
        newer = _newer(mapping, row, remote)
        if newer is None:
            return _conflict(mapping, key, rid, version, diffs, row,
                             "cannot compare timestamps (updated_at / meta.lastUpdated)")
        if not newer:
            return PlannedAction(key, Action.SKIPPED, "destination is newer", resource_id=rid,
                                 version=version)
        rule = Strategy.SOURCE_WINS
    if rule is Strategy.DEST_WINS:
        return PlannedAction(key, Action.SKIPPED, "destination wins", resource_id=rid, version=version)
    if rule is Strategy.MANUAL:
        return _conflict(mapping, key, rid, version, diffs, row, "fields differ")
    return _update(mapping, key, rid, version, row, remote, {p: lv for p, (lv, _) in diffs.items()},
                   validate, f"updated {', '.join(sorted(diffs))}")


def _update(mapping: ResourceMapping, key: str, rid: str | None, version: str | None,
            row: Mapping[str, Any], remote: Mapping[str, Any], values: Mapping[str, Any],
            validate: bool, message: str) -> PlannedAction:
    resource = apply_values(remote, values)
    if validate:
        _validate(mapping, row, resource)
    return PlannedAction(key, Action.UPDATED, message, resource, rid, version)


def apply_values(remote: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``remote`` with the given remote paths set."""
    import copy

    resource = copy.deepcopy(dict(remote))
    resource.pop("meta", None)  # the server writes meta
    for path, value in values.items():
        set_path(resource, path, _jsonable(value))
    return resource


def _conflict(mapping: ResourceMapping, key: str, rid: str | None, version: str | None,
              fields: Mapping[str, tuple[Any, Any]], row: Mapping[str, Any], message: str) -> PlannedAction:
    conflict = Conflict(uuid.uuid4().hex, mapping.resource_type, key, rid,
                        {p: (_jsonable(lv), rv) for p, (lv, rv) in fields.items()},
                        {k: _jsonable(v) for k, v in row.items()})
    return PlannedAction(key, Action.CONFLICT, message, resource_id=rid, version=version, conflict=conflict)


def plan_sync(mapping: ResourceMapping, local: pl.DataFrame | Sequence[Mapping[str, Any]],
              remote: Iterable[Mapping[str, Any]], strategy: Strategy = Strategy.SOURCE_WINS, *,
              merge_rule: Strategy = Strategy.SOURCE_WINS, validate: bool = True) -> list[PlannedAction]:
    """Plan one action per local row.

    Parameters
    ----------
    mapping : ResourceMapping
    local : polars.DataFrame or sequence of dicts
        The source rows; must have the key column.
    remote : iterable of resource dicts
        The destination's resources of ``mapping.resource_type`` (any extra are ignored).
    strategy : Strategy
        How differences are settled.
    merge_rule : Strategy
        For ``MERGE``: what decides fields that differ (SOURCE_WINS, DEST_WINS,
        NEWEST_WINS or MANUAL).
    validate : bool
        Validate each planned write (required fields, FHIR R4).

    Returns
    -------
    list of PlannedAction
        In the order of the local rows. Rows with a missing or duplicate key, a
        failing transform or an invalid resource are ``error`` actions.
    """
    strategy = Strategy(strategy)
    merge_rule = Strategy(merge_rule)
    if merge_rule is Strategy.MERGE:
        raise InvalidInputError("merge_rule cannot itself be MERGE")
    rows = local.to_dicts() if isinstance(local, pl.DataFrame) else [dict(r) for r in local]
    if rows and mapping.key_column not in rows[0]:
        raise InvalidInputError(f"local table has no key column {mapping.key_column!r}")
    by_key: dict[str, Mapping[str, Any]] = {}
    for res in remote:
        if res.get("resourceType") != mapping.resource_type:
            continue
        k = mapping.key_of(res)
        if k is not None:
            by_key.setdefault(k, res)
    seen: set[str] = set()
    plan: list[PlannedAction] = []
    for row in rows:
        raw_key = row.get(mapping.key_column)
        if raw_key is None or str(raw_key) == "":
            plan.append(PlannedAction(None, Action.ERROR, f"missing key {mapping.key_column}"))
            continue
        key = str(raw_key)
        if key in seen:
            plan.append(PlannedAction(key, Action.ERROR, "duplicate key in the local table"))
            continue
        seen.add(key)
        try:
            plan.append(_plan_one(mapping, strategy, merge_rule, row, by_key.get(key), validate))
        except KitError as exc:
            plan.append(PlannedAction(key, Action.ERROR, str(exc).splitlines()[0]))
    return plan
