"""kit.fhir.capability: what a server supports, from its CapabilityStatement, with a sentence for what not."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import FhirValidationError, KitError
from kit.fhir.capability import ServerSupport


def statement(*resources: dict[str, Any], operations: tuple[str, ...] = ("export",)) -> dict[str, Any]:
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "software": {"name": "srv"},
            "rest": [{"mode": "client", "resource": [{"type": "Basic"}]},
                     {"mode": "server", "operation": [{"name": o} for o in operations],
                      "resource": list(resources)}]}


PATIENT = {"type": "Patient", "interaction": [{"code": "read"}, {"code": "search-type"}],
           "searchParam": [{"name": "identifier", "type": "token"}, {"name": "name", "type": "string"}]}
OBSERVATION = {"type": "Observation", "interaction": [{"code": "read"}]}
ENCOUNTER = {"type": "Encounter"}  # listed without interactions: nothing is assumed missing


def test_reads_types_interactions_params_and_operations() -> None:
    support = ServerSupport.of(statement(PATIENT, OBSERVATION, ENCOUNTER))
    assert (support.fhir_version, support.software) == ("4.0.1", "srv")
    assert sorted(support.resources) == ["Encounter", "Observation", "Patient"]  # not the client-mode Basic
    assert support.supports("Patient") and support.supports("Patient", search_param="identifier")
    assert support.supports("Encounter", search_param="patient")
    assert support.supports_operation("$export") and not support.supports_operation("everything")
    assert support.search_params("Patient") == ["identifier", "name"] and support.search_params("Nope") == []


def test_what_is_not_supported_is_a_sentence() -> None:
    support = ServerSupport.of(statement(PATIENT, OBSERVATION))
    assert support.why_not("ImagingStudy") == \
        "the FHIR server does not support ImagingStudy (its CapabilityStatement does not list it)"
    assert support.why_not("Observation") == \
        "the FHIR server does not allow search-type on Observation (it lists read)"
    assert support.why_not("Patient", search_param="patient") == \
        "the FHIR server does not support searching Patient by patient"
    assert not support.supports("ImagingStudy")


def test_frame_has_one_row_per_type_asked() -> None:
    frame = ServerSupport.of(statement(PATIENT)).frame(["Patient", "ImagingStudy"])
    assert frame.schema == {"resource_type": pl.String, "search": pl.Boolean,
                            "search_params": pl.List(pl.String), "why_not": pl.String}
    assert frame["search"].to_list() == [True, False]
    assert frame["why_not"][0] is None and "does not support ImagingStudy" in frame["why_not"][1]


def test_not_a_capability_statement() -> None:
    with pytest.raises(FhirValidationError, match="expected a CapabilityStatement, got 'Bundle'"):
        ServerSupport.of({"resourceType": "Bundle"})
    with pytest.raises(FhirValidationError, match="got 'list'"):
        ServerSupport.of([])  # type: ignore[arg-type]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=12)


@settings(max_examples=80, deadline=None)
@given(rest=JSON, resource=JSON)
def test_any_json_gives_an_answer_or_a_kit_error(rest: Any, resource: Any) -> None:
    for doc in ({"resourceType": "CapabilityStatement", "rest": rest},
                {"resourceType": "CapabilityStatement",
                 "rest": [{"resource": resource, "operation": resource}]}):
        try:
            support = ServerSupport.of(doc)
        except KitError:
            continue
        support.frame(["Patient"])
        support.why_not("Patient", search_param="x")
