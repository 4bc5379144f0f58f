"""A FHIR server that caps transactions at 50 entries: `kit fhir create` of the sample bundle
(68 entries) fails with what to try, and succeeds with --chunk 50 / --batch, every reference
resolving when read back, urn:uuid references across chunks included (issue #14 item 7)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kit.errors import InvalidInputError
from kit.fhir.client import FhirClient
from kit.fhir.transactions import order_entries
from kit.stack import Stack
from tests.integration.real_systems.conftest import run_kit
from tests.integration.real_systems.faulty_fhir import faulty_app, serving

BUNDLE = Path(__file__).resolve().parents[3] / "data/samples/fhir/bundle.json"


@pytest.fixture
def capped() -> Iterator[str]:
    """A fresh, empty FHIR server behind a proxy refusing Bundles of more than 50 entries."""
    with Stack.ephemeral(services=["fhir"], preload=False) as stack, \
            serving(faulty_app(stack.client_settings().fhir.base, max_transaction=50)) as base:
        yield base


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def _read_back(base: str, response: dict[str, Any], sent: int) -> None:
    """Every entry answered 2xx with a location; each resource and each reference in it reads."""
    entries = response["entry"] if "entry" in response else response
    assert len(entries) == sent
    with FhirClient(base) as fhir:
        for e in entries:
            assert str(e["response"]["status"]).startswith("20"), e
            rtype, rid = e["response"]["location"].split("/_history")[0].split("/")[-2:]
            resource = fhir.read(rtype, rid)
            for ref in _references(resource):
                assert not ref.startswith("urn:"), ref
                fhir.read(*ref.split("/")[-2:])


def _urn_bundle() -> dict[str, Any]:
    """The sample bundle as creates (POST) with urn:uuid references, referencing entries first."""
    bundle = json.loads(BUNDLE.read_text())
    urns = {f"{e['resource']['resourceType']}/{e['resource']['id']}": f"urn:uuid:{uuid.uuid4()}"
            for e in bundle["entry"]}
    text = json.dumps(bundle)
    for ref, urn in urns.items():
        text = text.replace(f'"{ref}"', f'"{urn}"')
    entries = []
    for e in reversed(json.loads(text)["entry"]):   # the referenced resources now come last
        resource = {k: v for k, v in e["resource"].items() if k != "id"}
        key = f"{resource['resourceType']}/{e['resource']['id']}"
        entries.append({"fullUrl": urns[key], "resource": resource,
                        "request": {"method": "POST", "url": resource["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_cli_create_over_the_cap_fails_with_the_hint(capped: str, tmp_path: Path) -> None:
    result = run_kit(tmp_path, "fhir", "create", str(BUNDLE), "--base", capped)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: "), lines
    assert "--chunk 50" in lines[0] and "--batch" in lines[0]


def test_cli_create_in_chunks_resolves_every_reference(capped: str, tmp_path: Path) -> None:
    result = run_kit(tmp_path, "fhir", "create", str(BUNDLE), "--chunk", "50", "--base", capped, "--json")
    assert result.returncode == 0, result.stderr
    _read_back(capped, json.loads(result.stdout), 68)


def test_cli_create_urn_references_across_chunks(capped: str, tmp_path: Path) -> None:
    path = tmp_path / "urn-bundle.json"
    path.write_text(json.dumps(_urn_bundle()))
    result = run_kit(tmp_path, "fhir", "create", str(path), "--chunk", "50", "--base", capped, "--json")
    assert result.returncode == 0, result.stderr
    _read_back(capped, json.loads(result.stdout), 68)


def test_cli_create_as_batches(capped: str, tmp_path: Path) -> None:
    result = run_kit(tmp_path, "fhir", "create", str(BUNDLE), "--batch", "--chunk", "50", "--base", capped,
                     "--json")
    assert result.returncode == 0, result.stderr
    _read_back(capped, json.loads(result.stdout), 68)


def test_client_transaction_chunks_small(capped: str) -> None:
    bundle = _urn_bundle()
    with FhirClient(capped) as fhir:
        response = fhir.transaction(bundle, chunk=7)
    _read_back(capped, response, 68)


def test_order_entries_puts_referenced_first_and_refuses_cycles() -> None:
    entries = _urn_bundle()["entry"]
    position = {entries[n]["fullUrl"]: i for i, n in enumerate(order_entries(entries))}
    for e in entries:
        for ref in _references(e["resource"]):
            if ref in position:
                assert position[ref] < position[e["fullUrl"]]
    a, b = "urn:uuid:a", "urn:uuid:b"
    cycle = [{"fullUrl": a, "resource": {"link": {"reference": b}}},
             {"fullUrl": b, "resource": {"link": {"reference": a}}}]
    with pytest.raises(InvalidInputError, match="cycle"):
        order_entries(cycle)
