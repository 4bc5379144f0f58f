"""kit.hub.sync: planning for each strategy, validation before writing, the report."""

from __future__ import annotations

import polars as pl
import pytest

from kit.errors import InvalidInputError
from kit.hub.sync import Action, PlannedAction, Strategy, SyncReport, plan_sync
from kit.hub.syncmap import FieldMapping, ResourceMapping

SYS = "http://hospital.example/mrn"
MAPPING = ResourceMapping(
    "Patient",
    ("mrn", SYS),
    [
        FieldMapping("name[0].family", "family", required=True),
        FieldMapping("gender", "sex", transform="gender"),
        FieldMapping("birthDate", "dob", transform="date_to_iso"),
        FieldMapping("telecom[system=phone].value", "phone", transform="phone"),
    ],
)


def remote(
    mrn: str,
    family: str | None,
    gender: str | None,
    updated: str = "2024-01-01T00:00:00Z",
    phone: str | None = None,
) -> dict:
    r: dict = {
        "resourceType": "Patient",
        "id": f"id-{mrn}",
        "meta": {"versionId": "3", "lastUpdated": updated},
        "identifier": [{"system": SYS, "value": mrn}],
        "name": [{"family": family}] if family else [],
    }
    if gender:
        r["gender"] = gender
    if phone:
        r["telecom"] = [{"system": "phone", "value": phone}]
    return r


def local(**cols: list) -> pl.DataFrame:
    base = {
        "mrn": ["M1"],
        "family": ["Doe"],
        "sex": ["F"],
        "dob": ["1970-01-02"],
        "phone": [None],
        "updated_at": ["2024-06-01T00:00:00Z"],
    }
    base.update(cols)
    return pl.DataFrame(base)


def plan(df: pl.DataFrame, rem: list[dict], strategy: Strategy, **kw: object) -> PlannedAction:
    actions = plan_sync(MAPPING, df, rem, strategy, **kw)  # type: ignore[arg-type]
    assert len(actions) == df.height
    return actions[0]


def test_create_when_absent() -> None:
    a = plan(local(), [], Strategy.SOURCE_WINS)
    assert a.action is Action.CREATED and a.resource is not None
    assert a.resource["gender"] == "female" and a.resource["identifier"] == [{"system": SYS, "value": "M1"}]


def test_unchanged_is_skipped() -> None:
    r = remote("M1", "Doe", "female")
    r["birthDate"] = "1970-01-02"
    assert plan(local(), [r], Strategy.SOURCE_WINS).action is Action.SKIPPED


def test_source_wins_updates_only_mapped_fields_and_keeps_the_rest() -> None:
    r = remote("M1", "Smith", "female")
    r["active"] = True
    a = plan(local(), [r], Strategy.SOURCE_WINS)
    assert a.action is Action.UPDATED and a.resource is not None
    assert a.resource["name"][0]["family"] == "Doe" and a.resource["birthDate"] == "1970-01-02"
    assert a.resource["active"] is True and a.resource["id"] == "id-M1" and a.version == "3"
    assert "meta" not in a.resource


def test_dest_wins_skips() -> None:
    a = plan(local(), [remote("M1", "Smith", "female")], Strategy.DEST_WINS)
    assert a.action is Action.SKIPPED and "destination" in a.message


@pytest.mark.parametrize(
    ("local_ts", "expected"),
    [
        ("2024-06-01T00:00:00Z", Action.UPDATED),
        ("2023-06-01T00:00:00+02:00", Action.SKIPPED),
        (None, Action.CONFLICT),
    ],
)
def test_newest_wins(local_ts: str | None, expected: Action) -> None:
    a = plan(local(updated_at=[local_ts]), [remote("M1", "Smith", "female")], Strategy.NEWEST_WINS)
    assert a.action is expected


def test_merge_fills_gaps_and_follows_rule_on_clashes() -> None:
    # remote lacks gender/birthDate (filled), has a phone the row lacks (kept), family clashes
    r = remote("M1", "Smith", None, phone="+4144")
    a = plan(local(), [r], Strategy.MERGE, merge_rule=Strategy.DEST_WINS)
    assert a.action is Action.UPDATED and a.resource is not None
    assert a.resource["name"][0]["family"] == "Smith"
    assert a.resource["gender"] == "female" and a.resource["birthDate"] == "1970-01-02"
    assert a.resource["telecom"] == [{"system": "phone", "value": "+4144"}]
    a = plan(local(), [r], Strategy.MERGE, merge_rule=Strategy.SOURCE_WINS)
    assert a.resource is not None and a.resource["name"][0]["family"] == "Doe"
    a = plan(local(), [r], Strategy.MERGE, merge_rule=Strategy.MANUAL)
    assert a.action is Action.CONFLICT and a.conflict is not None
    assert set(a.conflict.fields) == {"name[0].family"}


def test_manual_queues_conflict() -> None:
    a = plan(local(), [remote("M1", "Smith", "female")], Strategy.MANUAL)
    assert a.action is Action.CONFLICT and a.conflict is not None
    assert a.conflict.fields["name[0].family"] == ("Doe", "Smith")
    assert a.conflict.resource_id == "id-M1" and a.conflict.key == "M1"


def test_errors_per_row() -> None:
    df = pl.DataFrame(
        {
            "mrn": ["A", None, "A", "B", "C", "D"],
            "family": ["X", "Y", "Z", None, "Q", "R"],
            "sex": ["F", "F", "F", "F", "banana", "F"],
            "dob": ["1970-01-01"] * 5 + ["1970-13-45"],
            "phone": [None] * 6,
        }
    )
    actions = plan_sync(MAPPING, df, [], Strategy.SOURCE_WINS)
    assert [a.action for a in actions] == [Action.CREATED] + [Action.ERROR] * 5
    assert "missing key" in actions[1].message
    assert "duplicate" in actions[2].message
    assert "required" in actions[3].message
    assert "gender" in actions[4].message
    assert "dob" in actions[5].message


def test_fhir_validation_before_write() -> None:
    m = ResourceMapping("Patient", ("mrn", SYS), [FieldMapping("birthDate", "dob")])  # no transform
    df = pl.DataFrame({"mrn": ["1"], "dob": ["yesterday"]})
    a = plan_sync(m, df, [], Strategy.SOURCE_WINS)[0]
    assert a.action is Action.ERROR and "birthDate" in a.message
    a = plan_sync(m, df, [], Strategy.SOURCE_WINS, validate=False)[0]
    assert a.action is Action.CREATED


def test_report() -> None:
    actions = plan_sync(
        MAPPING,
        pl.DataFrame(
            {
                "mrn": ["A", "B", None],
                "family": ["X", "Y", "Z"],
                "sex": ["F", "M", "F"],
                "dob": ["1970-01-01"] * 3,
                "phone": [None] * 3,
            }
        ),
        [remote("B", "Y", "male") | {"birthDate": "1970-01-01"}],
        Strategy.SOURCE_WINS,
    )
    report = SyncReport.from_actions(actions)
    assert report.frame["action"].to_list() == ["created", "skipped", "error"]
    assert report.counts == {"created": 1, "updated": 0, "skipped": 1, "conflict": 0, "error": 1}
    assert not report.ok
    assert SyncReport.from_actions([]).frame.columns == [
        "key",
        "action",
        "resource_id",
        "message",
        "conflict_id",
    ]


def test_plan_misuse() -> None:
    with pytest.raises(InvalidInputError):
        plan_sync(MAPPING, pl.DataFrame({"x": [1]}), [], Strategy.SOURCE_WINS)
    with pytest.raises(InvalidInputError):
        plan_sync(MAPPING, local(), [], Strategy.MERGE, merge_rule=Strategy.MERGE)
