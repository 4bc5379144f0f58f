"""The API's bodies and their checks (pure): results, integrations, sync mappings, SIU entry."""

from __future__ import annotations

import datetime as dt
import typing
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from kit.config import Secret, Settings
from kit.errors import InvalidInputError, KitError
from kit.hl7.message import parse_message
from kit.hl7.scheduling import appointments, siu_from_json
from kit.hub.registry import REGISTRY, AuthType
from kit.results.deliver import TARGETS
from kit.services.api_checks import (
    AuthName,
    ConnectorName,
    SiuIn,
    SyncJobIn,
    build_mapping,
    check_integration,
    integration_settings,
)
from kit.services.api_models import (
    EndoscopyAnalysisIn,
    ResultIn,
    Target,
    build_endoscopy_result,
    build_result,
    json_differences,
    records,
)

UID = "1.2.826.0.1.3680043.8.498.1"
LENGTH = {"value": "410668003", "scheme": "SCT", "meaning": "Length"}


def test_the_literals_match_the_kit_tables() -> None:
    assert set(typing.get_args(Target)) == set(TARGETS)
    assert set(typing.get_args(ConnectorName)) == set(REGISTRY)
    assert set(typing.get_args(AuthName)) == {a.value for a in AuthType}


def test_a_result_body_becomes_an_analysis_result() -> None:
    body = ResultIn.model_validate(
        {
            "study_instance_uid": UID,
            "result_id": "r-1",
            "conclusion": "ok",
            "measurements": [{"name": LENGTH, "value": 3.5, "unit": "mm"}],
        }
    )
    result = build_result("MRN1", body, accession_number="ACC1")
    assert result.result_id == "r-1" and result.subject.accession_number == "ACC1"
    assert result.measurements[0].unit.value == "mm" and result.measurements[0].value == 3.5
    with pytest.raises(InvalidInputError, match="region"):
        build_result(
            "MRN1",
            ResultIn.model_validate(
                {
                    "study_instance_uid": UID,
                    "measurements": [{"name": LENGTH, "value": 1, "unit": "mm", "region": "x"}],
                }
            ),
        )
    with pytest.raises(InvalidInputError, match="no finding"):
        build_result("MRN1", ResultIn.model_validate({"study_instance_uid": UID}))


@pytest.mark.parametrize(
    "bad",
    [
        {"conclusion": "a\x00b"},
        {"conclusion": "\ud800"},
        {"study_instance_uid": "1.02.3"},
        {"measurements": [{"name": LENGTH, "value": float("nan"), "unit": "mm"}]},
        {"targets": []},
        {"targets": ["pdf"]},
        {"unknown": 1},
        {"result_id": "has space"},
    ],
)
def test_bodies_outside_the_schema_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ResultIn.model_validate({"study_instance_uid": UID, "conclusion": "x", **bad})


def test_an_endoscopy_analysis_makes_labels_and_boxes() -> None:
    polyp = {"value": "68496003", "scheme": "SCT", "meaning": "Polyp"}
    body = EndoscopyAnalysisIn.model_validate(
        {
            "patient_id": "MRN1",
            "study_instance_uid": UID,
            "findings": [
                {
                    "finding": polyp,
                    "score": 0.9,
                    "source_instance": UID + ".5",
                    "box": [1, 2, 30, 40],
                    "frame_number": 3,
                },
                {"finding": polyp, "score": 0.4},
            ],
        }
    )
    result = build_endoscopy_result(body)
    assert [lb.score for lb in result.labels] == [0.9, 0.4]
    assert result.boxes[0].frame_number == 3 and result.labels[0].region == result.boxes[0].label
    assert body.targets == ["observation", "diagnostic_report", "oru"]
    with pytest.raises(InvalidInputError, match="source_instance"):
        build_endoscopy_result(
            EndoscopyAnalysisIn.model_validate(
                {
                    "patient_id": "MRN1",
                    "study_instance_uid": UID,
                    "findings": [{"finding": polyp, "box": [1, 2, 3, 4]}],
                }
            )
        )


def test_records_are_json_ready_and_say_when_cut() -> None:
    frame = pl.DataFrame({"a": [1.0, float("nan"), float("inf")], "d": [dt.date(2026, 1, 2)] * 3})
    rows, cut = records(frame, 2)
    assert rows == [{"a": 1.0, "d": "2026-01-02"}, {"a": None, "d": "2026-01-02"}] and cut
    assert json_differences({"id": "x", "v": 1, "meta": {}}, {"id": "y", "v": 1.0}) == []
    assert json_differences({"v": [1, 2]}, {"v": [1, 3]}) == ["v[1]: sent 2, read 3"]


@pytest.mark.parametrize(
    ("connector", "auth", "config", "creds", "match"),
    [
        ("pacs-dimse", "none", {"host": "h"}, None, "needs 'port'"),
        ("pacs-dimse", "none", {"host": "h", "port": 70000}, None, "port"),
        ("pacs-dimse", "none", {"host": "h", "port": 104, "base": "x"}, None, "unknown setting"),
        ("pacs-dimse", "mutual_tls", {"host": "h", "port": 104}, None, "auth_type"),
        ("pacs-dimse", "bearer", {"host": "h", "port": 104}, None, "auth_type"),
        ("ehr-fhir", "basic", {"base": "http://e/r4", "username": "u"}, None, "are needed"),
        ("ehr-fhir", "basic", {"base": "http://e/r4"}, {"password": "p"}, "needs 'username'"),
        ("ehr-fhir", "none", {"base": "http://e/r4"}, {"password": "p"}, "are not used"),
        ("ehr-fhir", "none", {"base": "ftp://e"}, None, "http"),
        ("ehr-fhir", "none", {"base": "http://e", "vendor": "acme"}, None, "vendor"),
    ],
)
def test_integrations_are_checked_against_the_registry_and_the_settings_rules(
    connector: str, auth: str, config: dict[str, Any], creds: dict[str, str] | None, match: str
) -> None:
    with pytest.raises(InvalidInputError, match=match):
        check_integration(connector, auth, config, creds)


def test_integration_settings_replace_only_their_section_and_hold_secrets() -> None:
    config, creds = check_integration(
        "ehr-fhir", "basic", {"base": "http://e/r4/", "username": "u"}, {"password": "pw"}
    )
    assert config["base"] == "http://e/r4"
    base = Settings()
    built = integration_settings(base, "ehr-fhir", "basic", config, {k: Secret(v) for k, v in creds.items()})
    assert built.fhir.base == "http://e/r4" and built.fhir.auth == "basic"
    assert built.fhir.password is not None and built.fhir.password.reveal() == "pw"
    assert built.pacs == base.pacs and built.hl7 == base.hl7
    pacs = integration_settings(base, "endoscopy", "tls", {"host": "p", "port": 11112}, {})
    assert pacs.pacs.host == "p" and pacs.pacs.tls is True


def test_sync_job_bodies_become_mappings_or_are_refused() -> None:
    job = {
        "name": "j",
        "resource_type": "Patient",
        "key_column": "mrn",
        "key_system": "urn:x",
        "fields": [
            {"remote": "name[0].family", "local": "family", "transform": "trim"},
            {"remote": "birthDate", "local": "dob", "transform": ["default", "2000-01-01"]},
        ],
    }
    mapping, strategy, _ = build_mapping(SyncJobIn.model_validate(job))
    assert mapping.key_column == "mrn" and strategy.value == "source_wins"
    assert mapping.to_resource({"mrn": "1", "family": " A "})["name"][0]["family"] == "A"
    for bad in (
        {"resource_type": "Nonsense"},
        {"fields": [{"remote": "x", "local": "y", "transform": "nope"}]},
        {"fields": [{"remote": "a.where(b)", "local": "y"}]},
    ):
        with pytest.raises(InvalidInputError):
            build_mapping(SyncJobIn.model_validate({**job, **bad}))


def test_an_siu_body_becomes_an_siu_the_scheduling_replay_reads() -> None:
    body = SiuIn.model_validate(
        {
            "placer_appointment_id": "A1",
            "patient_id": "MRN1",
            "start": "2026-03-10T09:00",
            "duration_minutes": 45,
            "modality": "MR",
            "control_id": "C1",
        }
    )
    message = siu_from_json(body.as_json())
    assert parse_message(message).control_id == "C1"
    row = appointments([message]).row(0, named=True)
    assert row["appointment_id"] == "A1" and row["duration_minutes"] == 45 and row["modality"] == "MR"
    for bad in ({"placer_appointment_id": None}, {"end": "2026-03-10T08:00"}, {"start": "1800-01-01T00:00"}):
        with pytest.raises(InvalidInputError):
            SiuIn.model_validate({**body.model_dump(), **bad}).as_json()
    with pytest.raises(ValidationError):  # HL7 delimiters are refused, not escaped into something else
        SiuIn.model_validate({**body.model_dump(), "location": "A|B"})


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "placer_appointment_id",
                "family",
                "start",
                "end",
                "modality",
                "trigger",
                "duration_minutes",
                "birth_date",
                "control_id",
            ]
        ),
        st.one_of(st.text(max_size=30), st.integers(-10, 10_000), st.none()),
        max_size=9,
    )
)
def test_any_siu_json_is_a_validation_error_a_kit_error_or_a_message(data: dict[str, Any]) -> None:
    try:
        body = SiuIn.model_validate(data)
    except ValidationError:
        return
    try:
        message = siu_from_json(body.as_json())
    except KitError:
        return
    assert parse_message(message).message_code == "SIU"
