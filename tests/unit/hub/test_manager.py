"""kit.hub.manager.Hub without peers: configuration, argument checks, send_results' hand-over.

Building a Hub opens nothing (adapters are built on first use and connect lazily), so these run
without sockets; the behaviour against real peers is in tests/integration/hub/test_hub*.py.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any

import pytest

from kit.config import DicomWebSettings, HL7Settings, Settings
from kit.errors import InvalidInputError, KitError
from kit.hub import REGISTRY, Hub


def test_connectors_are_registry_names_and_dicomweb_only_when_its_base_is_set() -> None:
    # the embedded stack's defaults: it serves DICOMweb
    assert Hub.from_settings(Settings()).connectors == (
        "pacs-dimse", "pacs-dicomweb", "ehr-fhir", "hl7-mllp", "endoscopy")
    # a kit.toml (or the environment) naming other systems and no DICOMweb: none
    site = Settings(source="/site/kit.toml")
    hub = Hub.from_settings(site)
    assert hub.connectors == ("pacs-dimse", "ehr-fhir", "hl7-mllp", "endoscopy")
    assert set(hub.connectors) <= set(REGISTRY)
    assert hub.dicomweb is None
    assert "pacs-dicomweb" not in Hub.from_settings(Settings(given=frozenset({"pacs"}))).connectors
    web = dataclasses.replace(site, dicomweb=DicomWebSettings(base="http://pacs.example/dicom-web"))
    assert "pacs-dicomweb" in Hub.from_settings(web).connectors
    assert Hub.from_settings(web).dicomweb is not None
    given_web = dataclasses.replace(site, given=frozenset({"dicomweb"}))
    assert "pacs-dicomweb" in Hub.from_settings(given_web).connectors
    assert Hub.from_settings(site, dicomweb=True).connectors[1] == "pacs-dicomweb"
    assert "pacs-dicomweb" not in Hub.from_settings(web, dicomweb=False).connectors


def test_adapters_follow_the_settings() -> None:
    settings = dataclasses.replace(Settings(), hl7=HL7Settings(host="10.1.2.3", port=2600, timeout=7.0))
    hub = Hub.from_settings(settings)
    assert hub.pacs.address == "dicom://KIT@127.0.0.1:11112"
    assert hub.fhir.base == settings.fhir.base
    assert (hub.hl7.host, hub.hl7.port, hub.hl7.timeout) == ("10.1.2.3", 2600, 7.0)
    assert hub.pacs is hub.pacs  # kept
    fhir = hub.fhir
    hub.disconnect_all()
    assert hub.fhir is not fhir  # rebuilt after disconnect


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"probe_timeout": 0}, "probe_timeout"), ({"probe_timeout": -1.0}, "probe_timeout"),
])
def test_bad_options_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        Hub(Settings(), **kwargs)
    with pytest.raises(InvalidInputError, match="Settings"):
        Hub({"pacs": {}})  # type: ignore[arg-type]


@pytest.mark.parametrize("mrn", ["", "   ", None, 1001])
def test_patient_view_refuses_a_blank_mrn_before_asking_anyone(mrn: Any) -> None:
    with pytest.raises(InvalidInputError, match="mrn"):
        Hub(Settings()).patient_view(mrn)


@pytest.mark.parametrize("uids", [[""], ["1.2.3", None]])
def test_report_status_refuses_blank_uids(uids: list[Any]) -> None:
    with pytest.raises(InvalidInputError, match="study_uids"):
        Hub(Settings()).report_status(uids)


def test_send_results_hands_the_hubs_adapters_to_deliver(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    def deliver(result: Any, **kwargs: Any) -> str:
        calls.append((result, kwargs))
        return "report"

    fake = types.ModuleType("kit.results.deliver")
    fake.deliver = deliver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kit.results.deliver", fake)
    hub = Hub(Settings())
    assert hub.send_results("result", targets=["sr", "oru"], sources=("ds",)) == "report"
    [(result, kwargs)] = calls
    assert result == "result"
    assert kwargs == {"sources": ("ds",), "pacs": hub.pacs, "fhir": hub.fhir, "hl7": hub.hl7,
                      "targets": ["sr", "oru"]}


def test_send_results_without_the_delivery_module_is_a_kit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kit.results.deliver", None)  # import raises ModuleNotFoundError
    with pytest.raises(KitError, match="deliver"):
        Hub(Settings()).send_results("result")
