"""Same code, real systems (issue #14, "Must show"): every notebook and `kit demo` against
separately started servers, configured by the README's kit.toml alone.

The systems, one set for the module, each a process of its own on ephemeral loopback ports:
Debian's Orthanc (PACS and DICOMweb) configured with the README's Orthanc setting, the kit's
FHIR server started with `kit serve --only fhir --no-preload`, and python-hl7's MLLP server
(the stand-in for an interface engine). The sample cohort is loaded with the README's `kit`
commands. The kit.toml is the README's block as written; the ports are set through KIT_*
variables. Every notebook runs with papermill and ``SETTINGS_FILE`` (no KIT_CONFIG, no
./kit.toml), `kit demo` with KIT_CONFIG, both with a guard that makes starting any embedded
server raise; the tests also check the addresses each run names and that the systems got what
was sent.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
import pytest

from kit import examples
from kit.fhir.client import FhirClient
from tests.conftest import ROOT, stop_pid
from tests.integration.conftest import OrthancServer, _start
from tests.integration.notebooks.conftest import (
    GUARD,
    NAMES,
    addresses,
    first_output,
    leftovers,
    output_of,
    run_notebook,
)
from tests.integration.real_systems.faulty_fhir import faulty_app, serving

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

KIT = [sys.executable, "-m", "kit.cli"]
SECTION = "## Run against your hospital"


def readme_section() -> str:
    """The README's "Run against your hospital" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end >= 0 else None]


def fenced(section: str, language: str) -> list[str]:
    """The fenced blocks of ``language`` in ``section``, dedented as the list items indent them."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", section, flags=re.S | re.M)
    return ["\n".join(line[len(indent):] for line in body.splitlines()) + "\n" for indent, body in blocks]


def readme_commands(section: str) -> list[list[str]]:
    """The `kit` commands of the section's bash block, in order."""
    (block,) = fenced(section, "bash")
    return [shlex.split(line) for line in block.splitlines() if line.startswith("kit ")]


def guard_env() -> dict[str, str]:
    """Starting any embedded server raises (the guard's sitecustomize; see guard/)."""
    return {"KIT_TEST_NO_EMBEDDED": "1", "PYTHONPATH": os.pathsep.join([str(GUARD), str(ROOT)])}


@dataclass
class Systems:
    """The separately started systems and the configuration that names them."""

    orthanc: OrthancServer
    fhir_base: str
    mllp_port: int
    received: Path          # what the MLLP peer received
    kit_toml: Path
    ports: dict[str, str]   # KIT_* variables: the README's kit.toml on this run's ports

    def env(self, **extra: str | None) -> dict[str, str | None]:
        return {**self.ports, **extra}

    def messages_received(self) -> int:
        text = self.received.read_text(encoding="utf-8") if self.received.exists() else ""
        return text.count("MSH|")


def _run(args: list[str], env: dict[str, str | None], cwd: Path, timeout: float = 180
         ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


def _first_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 60) -> str:
    """The first stdout line of ``proc`` matching ``pattern`` (its first group)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.match(pattern, line.strip())
        if match:
            return match.group(1)
    stop_pid(proc)  # type: ignore[arg-type]
    raise AssertionError(f"{proc.args} printed no line like {pattern!r}")


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Systems]:
    section = readme_section()
    (orthanc_setting,) = (json.loads(b) for b in fenced(section, "json"))
    (kit_toml_text,) = fenced(section, "toml")
    tmp = tmp_path_factory.mktemp("real-systems")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    with ExitStack() as stack:
        # Orthanc as Debian ships it (only known AE titles may query and retrieve) plus the README's setting
        orthanc = _start(tmp / "orthanc", stack, {
            "DicomAlwaysAllowFind": False, "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
            "DicomAlwaysAllowFindWorklist": False, **orthanc_setting})
        fhir = subprocess.Popen([*KIT, "serve", "--only", "fhir", "--fhir-port", "0", "--no-preload",
                                 "--data-dir", str(tmp / "fhir-server")], cwd=tmp, env=base_env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        stack.callback(stop_pid, fhir)
        fhir_base = _first_line(fhir, r"fhir\s+(http://\S+)")
        received = tmp / "mllp-received.txt"
        mllp = subprocess.Popen([sys.executable, "-m", "tests.integration.notebooks.hl7_listener",
                                 str(received)], cwd=ROOT, env=base_env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        stack.callback(stop_pid, mllp)
        mllp_port = int(_first_line(mllp, r"mllp\s+mllp://127\.0\.0\.1:(\d+)"))

        kit_toml = tmp / "config" / "kit.toml"
        kit_toml.parent.mkdir()
        kit_toml.write_text(kit_toml_text, encoding="utf-8")
        dicomweb = re.search(r'base = "(http://\S+/dicom-web)"', kit_toml_text)
        assert dicomweb is not None
        ports = {"KIT_PACS_PORT": str(orthanc.dicom_port),
                 "KIT_DICOMWEB_BASE": dicomweb.group(1).replace(":8042/", f":{orthanc.http_port}/"),
                 "KIT_FHIR_BASE": fhir_base, "KIT_HL7_PORT": str(mllp_port)}
        running = Systems(orthanc, fhir_base, mllp_port, received, kit_toml, ports)

        # the sample cohort, loaded as the README says (paths relative to the repository)
        for command in readme_commands(section):
            if command[:2] in (["kit", "pacs"], ["kit", "fhir"], ["kit", "status"]):
                done = _run([*KIT, *command[1:]], running.env(KIT_CONFIG=str(kit_toml)), ROOT)
                assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
        assert len(orthanc.instances()) == len(list(examples.dicom_dir().rglob("*.dcm")))
        yield running


def test_readme_walks_through_what_this_test_does() -> None:
    section = readme_section()
    commands = [" ".join(c) for c in readme_commands(section)]
    assert commands == ["kit pacs store data/samples/dicom",
                        "kit fhir create data/samples/fhir/bundle.json --chunk 50", "kit status", "kit demo"]
    assert "tests/integration/notebooks/test_real_systems.py" in section
    assert "--only fhir" in section and "--no-preload" in section and "python-hl7" in section


def _check_configured(first: str, systems: Systems, services: tuple[str, ...]) -> None:
    assert first.startswith(f"configured systems ({systems.kit_toml})\n"), first
    named = addresses(first)
    want = {"pacs": f"dicom://ORTHANC@127.0.0.1:{systems.orthanc.dicom_port}",
            "dicomweb": systems.ports["KIT_DICOMWEB_BASE"], "fhir": systems.fhir_base,
            "mllp": f"mllp://127.0.0.1:{systems.mllp_port}"}
    expected = {k: v for k, v in want.items() if k in services or (k == "dicomweb" and "pacs" in services)}
    assert named == expected, first


SERVICES = {"00_quickstart": ("pacs", "fhir"), "01_pacs_ingest": ("pacs",), "02_ehr_fhir": ("pacs", "fhir"),
            "03_hl7_feeds": ("mllp",), "04_endoscopy": ("pacs", "fhir", "mllp"),
            "05_analyze_and_report_back": ("pacs", "fhir", "mllp"),
            "06_services_and_monitoring": ("pacs", "fhir", "mllp"),
            "07_research_dataset": ("pacs", "fhir", "mllp")}
#: the README's stand-ins have no Modality Worklist (Orthanc's worklist plugin is not set up) and no
#: video gateway, which 04 needs: it runs on the embedded stack only (tests/integration/notebooks)
NEEDS_ENDOSCOPY_SUITE = ("04_endoscopy",)
ON_REAL_SYSTEMS = [pytest.param(n, marks=pytest.mark.skip(reason="the stand-in systems have no worklist and "
                                                          "no video stream")) if n in NEEDS_ENDOSCOPY_SUITE
                   else n for n in NAMES]


def _reports(systems: Systems) -> int:
    with FhirClient(systems.fhir_base) as fhir:
        return len(list(fhir.search("DiagnosticReport", limit=1000)))


@pytest.mark.parametrize("name", ON_REAL_SYSTEMS)
def test_notebook_runs_on_the_configured_systems_only(name: str, systems: Systems, tmp_path: Path) -> None:
    before = {"mllp": systems.messages_received(), "pacs": len(systems.orthanc.instances()),
              "reports": _reports(systems)}
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    nb = run_notebook(name, tmp_path / "out", parameters={"SETTINGS_FILE": str(systems.kit_toml)},
                      cwd=cwd, tmpdir=tmpdir, env=systems.env(**guard_env()))
    _check_configured(first_output(nb), systems, SERVICES[name])
    assert "removed the workspace" in output_of(nb, "session.close(")
    assert leftovers(cwd) == [] and leftovers(tmpdir) == []

    if name == "03_hl7_feeds":   # the feed and the SIU went to the peer; the duplicate step was skipped
        feed = examples.hl7_feed().read_text().count("MSH|")
        assert systems.messages_received() - before["mllp"] == feed + 1
        skipped = output_of(nb, "embedded_only(")
        assert skipped.startswith(f"skipped against configured systems ({systems.kit_toml})"), skipped
        assert "keeps what it received" in output_of(nb, "session.hl7_messages(messages)")
    if name == "05_analyze_and_report_back":  # SR and SEG in Orthanc, reports in the FHIR server, ORU sent
        assert len(systems.orthanc.instances()) == before["pacs"] + 2
        assert systems.messages_received() > before["mllp"]
        assert _reports(systems) == before["reports"] + 2  # the analysis' and the one built by hand


def test_kit_demo_runs_on_the_configured_systems_only(systems: Systems, tmp_path: Path) -> None:
    (command,) = [c for c in readme_commands(readme_section()) if c[:2] == ["kit", "demo"]]
    before = systems.messages_received()
    done = _run([*KIT, *command[1:], "--json"], systems.env(KIT_CONFIG=str(systems.kit_toml), **guard_env()),
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    first = rows[0]
    assert first["step"] == f"configured systems ({systems.kit_toml})", first
    assert f"pacs dicom://ORTHANC@127.0.0.1:{systems.orthanc.dicom_port}" in first["result"]
    assert f"fhir {systems.fhir_base}" in first["result"]
    assert f"mllp mllp://127.0.0.1:{systems.mllp_port}" in first["result"]
    assert systems.messages_received() > before
    statuses = {r["target"]: r["status"] for r in rows if r["target"]}
    assert set(statuses) == {"sr", "seg", "observation", "diagnostic_report", "oru"}
    assert "failed" not in statuses.values(), statuses


def test_the_guard_catches_an_embedded_stack(systems: Systems, tmp_path: Path) -> None:
    """The check above can fail: a notebook without a configuration starts a server, and the guard says so."""
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run_notebook("03_hl7_feeds", tmp_path / "out", parameters={}, cwd=tmp_path / "cwd",
                     tmpdir=tmp_path / "tmp", env=guard_env())
    assert failed.value.ename == "RuntimeError" and "KIT_TEST_NO_EMBEDDED" in failed.value.evalue


def test_notebook_02_goes_on_when_the_server_lacks_imaging_study_and_export(systems: Systems,
                                                                           tmp_path: Path) -> None:
    lacking = faulty_app(systems.fhir_base, drop_types={"ImagingStudy"}, drop_operations={"export"})
    with serving(lacking) as base:
        nb = run_notebook("02_ehr_fhir", tmp_path / "out",
                          parameters={"SETTINGS_FILE": str(systems.kit_toml)}, cwd=tmp_path / "cwd",
                          tmpdir=tmp_path / "tmp", env=systems.env(KIT_FHIR_BASE=base, **guard_env()))
    support = output_of(nb, "ServerSupport.of(")
    assert "needed and supported: ['Patient', 'Encounter', 'Observation', 'Condition', 'Procedure']" \
        in support
    assert "does not support ImagingStudy (its CapabilityStatement does not list it)" in support
    cohort = output_of(nb, "cohort_frames(")
    assert "the FHIR server does not support ImagingStudy (its CapabilityStatement does not list it): " \
           "skipped, an empty ImagingStudy frame stands in" in cohort
    assert "ImagingStudy    0 rows" in cohort and re.search(r"Observation +[1-9]\d* rows", cohort)
    assert "does not list $export" in output_of(nb, "BulkExport(fhir)")
    assert "removed the workspace" in output_of(nb, "session.close(")
