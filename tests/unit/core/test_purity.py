"""Pure modules (parse/build/frames) must not reach the network, directly or through kit imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[3] / "kit"

PURE = [
    "errors", "config", "audit", "_files", "_redact", "_checks", "_truncate", "examples/cohort",
    "dicom/query", "dicom/index", "dicom/deid", "dicom/deid_check", "dicom/_profile_options",
    "dicom/received", "dicom/matching", "dicom/pixels", "dicom/_contexts", "dicom/web_multipart",
    "dicom/web_query", "dicom/_echo_pdu", "dicom/_assoc_pdu", "dicom/_assoc_rq", "dicom/_assoc_ac",
    "dicom/_native", "dicom/_rq_shape",
    "fhir/resources", "fhir/frames", "fhir/frames_extract", "fhir/vendors", "fhir/server_search",
    "fhir/server_limits", "fhir/server_openapi", "fhir/policy", "fhir/_paging",
    "hl7/message", "hl7/typed", "hl7/build", "hl7/frames", "hl7/frames_fast", "hl7/scheduling", "hl7/framing",
    "hl7/listen_fast",
    "hub/syncmap", "hub/sync", "hub/registry", "hub/__init__", "hub/alerts",
    "fhir/timeline",
    "results/model", "results/sr", "results/seg", "results/readback", "results/fhir", "results/oru",
    "results/analysis",
    "endoscopy/frame", "endoscopy/vendors", "endoscopy/capture", "endoscopy/detections",
    "choose", "fhir/capability",
    "services/medix_protocol",
    "services/_auth", "services/api_vault", "services/api_models", "services/api_checks",
    "deid/pseudonyms", "deid/policy", "deid/fhir", "deid/hl7", "deid/cohort",
    "deid/text", "deid/_text_known", "deid/_text_library", "deid/_text_variants", "deid/_text_targets",
    "deid/_text_seam",
    "cohort/plan", "cohort/limiter", "cohort/manifest",
    "endoscopy/buffer", "endoscopy/demo_detector",
    "fhir/frames_fast",
    "fhir/frames_fast_build", "fhir/frames_fast_types", "fhir/frames_columns", "fhir/frames_build",
    "hl7/ack_fast", "_config_services", "_secret", "hl7/archive", "_parquet",
]

# Network, servers and databases: what "pure" excludes.
FORBIDDEN = ("socket", "ssl", "asyncio", "httpx", "requests", "urllib.request", "http.client",
             "uvicorn", "fastapi", "starlette", "sqlite3", "dicomweb_client",
             "pynetdicom.ae", "pynetdicom.association", "pynetdicom.transport", "pynetdicom.dul",
             "kit.stack", "kit.cli")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for cand in (KIT / rel.with_suffix(".py"), KIT / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _closure(start: Path) -> dict[str, Path]:
    """Every import reachable from ``start`` through kit's own modules -> the file importing it."""
    seen: dict[str, Path] = {}
    todo = [start]
    visited: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in visited:
            continue
        visited.add(path)
        for name in _imports(path):
            seen.setdefault(name, path)
            if name == "kit" or name.startswith("kit."):
                target = _module_file(name)
                if target is not None:
                    todo.append(target)
    return seen


def _existing() -> list[str]:
    return [m for m in PURE if (KIT / f"{m}.py").is_file()]


@pytest.mark.parametrize("module", _existing())
def test_pure_module_has_no_network_imports(module: str) -> None:
    bad = {name: where for name, where in _closure(KIT / f"{module}.py").items()
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"kit/{module}.py reaches I/O modules: " + ", ".join(
        f"{n} (imported by {w.relative_to(KIT.parent)})" for n, w in sorted(bad.items()))


def test_purity_check_detects_a_network_import(tmp_path: Path) -> None:
    # The check itself must be able to fail.
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nfrom httpx import Client\n")
    assert "httpx" in _closure(probe)
