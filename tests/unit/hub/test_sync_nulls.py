"""Nulls in a sync (issue 8 #8): a null cell is no opinion; a write never leaves a partial element.

Every strategy, with nulls on either side, with and without ``delete_on_null``.
"""

from __future__ import annotations

from typing import Any

import pytest

from kit.hub.sync import Action, Strategy, plan_sync
from kit.hub.syncmap import FieldMapping, ResourceMapping, get_path, set_path

SYS = "http://hospital.example/mrn"
STRATEGIES = [Strategy.SOURCE_WINS, Strategy.DEST_WINS, Strategy.NEWEST_WINS, Strategy.MERGE, Strategy.MANUAL]


def mapping(delete: bool = False) -> ResourceMapping:
    return ResourceMapping(
        "Patient",
        ("mrn", SYS),
        [
            FieldMapping("name[0].family", "family"),
            FieldMapping("telecom[system=email].value", "email", delete_on_null=delete),
            FieldMapping("telecom[system=phone].value", "phone", delete_on_null=delete),
            FieldMapping("birthDate", "dob", delete_on_null=delete),
        ],
    )


def remote(email: str | None, phone: str | None = "+1555", dob: str | None = "1970-01-02") -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
        "identifier": [{"system": SYS, "value": "M1"}],
        "name": [{"family": "Doe"}],
    }
    telecom = [{"system": s, "value": v} for s, v in (("email", email), ("phone", phone)) if v]
    if telecom:
        r["telecom"] = telecom
    if dob:
        r["birthDate"] = dob
    return r


def row(email: str | None, phone: str | None = "+1555", dob: str | None = "1970-01-02") -> dict[str, Any]:
    return {
        "mrn": "M1",
        "family": "Doe",
        "email": email,
        "phone": phone,
        "dob": dob,
        "updated_at": "2025-01-01T00:00:00Z",
    }


def _partial(resource: dict[str, Any]) -> list[Any]:
    """Elements left without their value: telecom entries without ``value``, empty lists/objects."""
    bad = [t for t in resource.get("telecom", []) if "value" not in t]
    bad += [k for k, v in resource.items() if isinstance(v, list | dict) and not v]
    return bad


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_null_local_cell_changes_nothing(strategy: Strategy) -> None:
    plan = plan_sync(
        mapping(),
        [row(None, None, None)],
        [remote("a@x.org")],
        strategy,
        merge_rule=Strategy.SOURCE_WINS,
        validate=False,
    )
    assert plan[0].action is Action.SKIPPED, plan[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_null_local_cell_next_to_a_change_keeps_the_remote_value(strategy: Strategy) -> None:
    plan = plan_sync(
        mapping(),
        [row(None, phone="+1999")],
        [remote("a@x.org")],
        strategy,
        merge_rule=Strategy.SOURCE_WINS,
        validate=True,
    )
    action = plan[0]
    if action.action is Action.UPDATED:
        assert action.resource is not None
        assert get_path(action.resource, "telecom[system=email].value") == "a@x.org"
        assert get_path(action.resource, "telecom[system=phone].value") == "+1999"
        assert not _partial(action.resource)
    elif action.action is Action.CONFLICT:
        assert action.conflict is not None and set(action.conflict.fields) == {"telecom[system=phone].value"}
    else:
        assert strategy is Strategy.DEST_WINS and action.action is Action.SKIPPED


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_null_remote_value_is_filled_where_the_strategy_lets_the_source_in(strategy: Strategy) -> None:
    plan = plan_sync(mapping(), [row("b@x.org")], [remote(None)], strategy, validate=True)
    action = plan[0]
    if strategy in (Strategy.SOURCE_WINS, Strategy.NEWEST_WINS, Strategy.MERGE):
        assert action.action is Action.UPDATED and action.resource is not None
        assert get_path(action.resource, "telecom[system=email].value") == "b@x.org"
        assert not _partial(action.resource)
    elif strategy is Strategy.MANUAL:
        assert action.action is Action.CONFLICT
    else:
        assert action.action is Action.SKIPPED


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_null_is_no_difference(strategy: Strategy) -> None:
    for delete in (False, True):
        plan = plan_sync(mapping(delete), [row(None)], [remote(None)], strategy, validate=False)
        assert plan[0].action is Action.SKIPPED


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_delete_on_null_removes_the_whole_element(strategy: Strategy) -> None:
    plan = plan_sync(
        mapping(delete=True),
        [row(None, dob=None)],
        [remote("a@x.org")],
        strategy,
        merge_rule=Strategy.SOURCE_WINS,
        validate=True,
    )
    action = plan[0]
    if strategy in (Strategy.SOURCE_WINS, Strategy.NEWEST_WINS, Strategy.MERGE):
        assert action.action is Action.UPDATED and action.resource is not None
        assert action.resource["telecom"] == [{"system": "phone", "value": "+1555"}]
        assert "birthDate" not in action.resource and not _partial(action.resource)
    elif strategy is Strategy.MANUAL:
        assert action.conflict is not None
        assert action.conflict.fields["telecom[system=email].value"] == (None, "a@x.org")
    else:
        assert action.action is Action.SKIPPED


def test_deleting_the_last_element_removes_the_list() -> None:
    plan = plan_sync(mapping(delete=True), [row(None, None)], [remote("a@x.org")], Strategy.SOURCE_WINS)
    assert plan[0].resource is not None and "telecom" not in plan[0].resource


def test_merge_with_a_dest_rule_keeps_the_value_a_deletion_would_remove() -> None:
    plan = plan_sync(
        mapping(delete=True), [row(None)], [remote("a@x.org")], Strategy.MERGE, merge_rule=Strategy.DEST_WINS
    )
    assert plan[0].action is Action.SKIPPED


def test_a_create_writes_no_nulls_and_no_partial_elements() -> None:
    for delete in (False, True):
        plan = plan_sync(mapping(delete), [row(None, dob=None)], [], Strategy.SOURCE_WINS)
        resource = plan[0].resource
        assert plan[0].action is Action.CREATED and resource is not None
        assert resource["telecom"] == [{"system": "phone", "value": "+1555"}] and not _partial(resource)


@pytest.mark.parametrize(
    "path",
    ["telecom[system=email].value", "name[0].family", "address[0].line", "contact[0].name.family", "x.y.z"],
)
def test_set_path_removal_prunes_what_it_empties(path: str) -> None:
    r: dict[str, Any] = {"resourceType": "Patient", "id": "p"}
    set_path(r, path, "v")
    set_path(r, path, None)
    assert r == {"resourceType": "Patient", "id": "p"}
