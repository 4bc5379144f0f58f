"""kit.hub.registry: the connector table as data, lookup, validation, the frame; and it stays pure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from kit.errors import InvalidInputError
from kit.hub.registry import (
    REGISTRY,
    REGISTRY_COLUMNS,
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
from tests.unit.core.test_purity import FORBIDDEN, _closure

KIT = Path(__file__).resolve().parents[3] / "kit"


@pytest.mark.parametrize("module", ["registry", "sync", "syncmap", "__init__"])
def test_pure_hub_modules_reach_no_io(module: str) -> None:
    """The registry and the sync engine's pure half (and kit.hub itself, whose I/O names are lazy)."""
    bad = {n: w for n, w in _closure(KIT / "hub" / f"{module}.py").items()
           if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad


@pytest.mark.parametrize(("name", "caps", "auths", "entities"), [
    ("pacs-dimse", {"echo", "find", "get", "move", "store", "worklist"}, {"none", "tls", "mutual_tls"},
     {"patient", "study", "series", "instance", "worklist item"}),
    ("pacs-dicomweb", {"qido", "wado", "stow"}, {"none", "bearer", "basic"}, {"study", "series", "instance"}),
    ("ehr-fhir", {"read", "search", "create", "update", "transaction", "bulk_export"},
     {"none", "bearer", "basic", "client_credentials", "smart"},
     {"Patient", "Encounter", "Observation", "DiagnosticReport", "ImagingStudy"}),
    ("hl7-mllp", {"send", "listen"}, {"none", "tls", "mutual_tls"}, {"ADT", "ORM", "ORU", "SIU", "MDM"}),
    ("endoscopy", {"worklist", "video", "capture"}, {"none", "tls", "mutual_tls"}, {"worklist item"}),
])
def test_each_connector_describes_its_capabilities_auth_and_entities(
        name: str, caps: set[str], auths: set[str], entities: set[str]) -> None:
    c = get_connector(name)
    assert {x.name for x in c.capabilities} == caps
    assert {a.value for a in c.auth_types} == auths
    assert entities <= set(c.entities)


def test_the_endoscopy_video_and_capture_are_available_and_a_planned_one_raises(
        monkeypatch: pytest.MonkeyPatch) -> None:
    endo = get_connector("endoscopy")
    assert endo.capability("video").status is CapabilityStatus.AVAILABLE
    assert endo.planned == () and endo.available == ("worklist", "video", "capture")
    assert supports("endoscopy", "worklist") and supports("endoscopy", "video")
    assert require("pacs-dimse", "echo").name == "echo"
    # a capability only planned is refused by require (the registry is data: one is added here)
    recording = Capability("recording", "hours of video to disk", status=CapabilityStatus.PLANNED)
    with_plan = dataclasses.replace(endo, capabilities=(*endo.capabilities, recording))
    monkeypatch.setattr("kit.hub.registry.REGISTRY", {**REGISTRY, "endoscopy": with_plan})
    assert not supports("endoscopy", "recording")
    with pytest.raises(InvalidInputError, match="planned"):
        require("endoscopy", "recording")


def test_unknown_names_raise_with_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="known: pacs-dimse"):
        get_connector("orthanc")
    with pytest.raises(InvalidInputError, match="known: qido, wado, stow"):
        require("pacs-dicomweb", "move")
    assert not supports("nope", "echo") and not supports("pacs-dicomweb", "move")


def test_registry_is_read_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        REGISTRY["x"] = REGISTRY["endoscopy"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["endoscopy"].name = "x"  # type: ignore[misc]
    assert connectors() == tuple(REGISTRY.values())


def test_frame_has_one_typed_row_per_connector() -> None:
    df = registry_frame()
    assert df.schema == pl.Schema(dict(REGISTRY_COLUMNS))
    assert df["connector"].to_list() == list(REGISTRY)
    endo = df.filter(pl.col("connector") == "endoscopy").row(0, named=True)
    assert endo["capabilities"] == ["worklist", "video", "capture"] and endo["planned"] == []
    fhir = df.filter(pl.col("connector") == "ehr-fhir").row(0, named=True)
    assert fhir["auth_types"] == ["none", "bearer", "basic", "client_credentials", "smart"]
    assert fhir["settings_section"] == "fhir"


def _ok(**changes: object) -> Connector:
    base = dict(name="x-ray", protocol="p", description="", capabilities=(Capability("find"),),
                auth_types=(AuthType.NONE,), entities=("study",), settings_section="pacs")
    base.update(changes)
    return Connector(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changes", "match"), [
    ({"name": "Bad Name"}, "lower-case identifier"),
    ({"name": ""}, "lower-case identifier"),
    ({"protocol": " "}, "protocol"),
    ({"capabilities": ()}, "at least one Capability"),
    ({"capabilities": (Capability("find"), Capability("find"))}, "listed twice"),
    ({"capabilities": ("find",)}, "at least one Capability"),
    ({"auth_types": ()}, "at least one auth type"),
    ({"auth_types": ("kerberos",)}, "known auth types"),
    ({"auth_types": ("none", AuthType.NONE)}, "listed twice"),
    ({"entities": ()}, "entities"),
    ({"entities": (" study",)}, "entities"),
    ({"entities": ("study", "study")}, "listed twice"),
])
def test_invalid_connectors_are_refused_on_construction(changes: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        _ok(**changes)


def test_auth_strings_are_coerced_and_capability_status_checked() -> None:
    assert _ok(auth_types=("tls", "bearer")).auth_types == (AuthType.TLS, AuthType.BEARER)
    assert Capability("v", status="planned").status is CapabilityStatus.PLANNED  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="unknown status"):
        Capability("v", status="someday")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="lower-case"):
        Capability("Find")


def test_validate_registry_refuses_duplicates_and_non_connectors() -> None:
    with pytest.raises(InvalidInputError, match="registered twice"):
        validate_registry([_ok(), _ok()])
    with pytest.raises(InvalidInputError, match="must be Connector"):
        validate_registry([_ok(), "pacs"])  # type: ignore[list-item]
    assert registry_frame([_ok()])["connector"].to_list() == ["x-ray"]
