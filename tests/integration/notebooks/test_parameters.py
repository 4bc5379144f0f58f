"""Every notebook is papermill-ready and leaves nothing behind (issue #15 items 4-5, #14 item 4).

Each notebook runs with papermill, on the embedded stack, with changed parameters: the output
follows the parameters (another patient, modality, slice, cohort, day length), nothing is left
in the kernel's system temporary folder, and the workspace folder is gone after the last cell.
A patient or modality that is not there is said in a sentence (a KitError), never a bare
IndexError/KeyError. The static rules (first code cell tagged ``parameters``, no def/class, no
temporary folders) are checked on the committed notebooks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest

from tests.integration.notebooks.conftest import (
    NAMES,
    NOTEBOOKS,
    committed,
    first_output,
    leftovers,
    output_of,
    run_notebook,
)

# notebook -> (changed parameters, [(cell needle, text expected with them, text of the default run)])
CHANGED: dict[str, tuple[dict[str, Any], list[tuple[str, str, str]]]] = {
    "00_quickstart": ({"PATIENT_ID": "MRN1004"}, [
        ("pick_study(", "MRN1004 CT CHEST W/O CONTRAST -> 16 files",
         "MRN1001 CT CHEST W/O CONTRAST -> 16 files"),
    ]),
    "01_pacs_ingest": ({"PATIENT_ID": "MRN1002", "MODALITY": "MR", "SLICE_INDEX": 3}, [
        ('pacs.find("SERIES"', "MRN1002", "MRN1001"),
        ("ImageViewer(", "ImageViewer(MR 12x", "ImageViewer(CT 16x"),
        ("ImageViewer(", "slice=3,", "slice=8,"),
    ]),
    "02_ehr_fhir": ({"PATIENT_IDS": ["MRN1002", "MRN1005", "MRN9999"]}, [
        ("patients_by_mrn(", "has no Patient for 1 of the 3 MRNs asked for: MRN9999; going on",
         "Patient         6 rows"),
        ("patients_by_mrn(", "Patient         2 rows", "Patient         6 rows"),
        ("pacs_studies =", "PACS studies: 4 | FHIR ImagingStudy: 4",
         "PACS studies: 11 | FHIR ImagingStudy: 11"),
    ]),
    "03_hl7_feeds": ({"DAY_MINUTES": 120}, [
        ("scheduling.analytics(", "<td>0.5</td>", "<td>0.1</td>"),
    ]),
    "04_endoscopy": ({"ACCESSION": "ACC100302"}, [
        ("picker.accession", "picked ACC100302: MRN1003 GASTROSCOPY",
         "picked ACC100102: MRN1001 COLONOSCOPY"),
        ("capture_procedure(", "into accession ACC100302", "into accession ACC100102"),
        ("procedures.performed(", "MRN1003", "MRN1001"),
    ]),
    "05_analyze_and_report_back": ({"PATIENT_ID": "MRN1004"}, [
        ('hub.pacs.find("STUDY"', "MRN1004", "MRN1001"),
        ("results.analyse_ct(", "22.5 mm in diameter", "17.5 mm in diameter"),
    ]),
    "06_services_and_monitoring": ({"TAKE_DOWN": "fhir"}, [
        ("service.stop()", "ehr-fhir: the connector is dow", "hl7-mllp: the connector is dow")]),
    "07_research_dataset": ({"MODALITY": "ES"}, [
        ('fhir.search_frames("ImagingStudy"', "3 ES studies of 3 patients", "2 MR studies of 2 patients"),
        ("datalist.json", "datalist.json: 3 series", "datalist.json: 2 series"),
    ]),
}


def _html_and_text(nb: nbformat.NotebookNode, needle: str) -> str:
    """Text output of the cell plus its HTML (polars shows every column there)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and needle in cell.source and \
                "injected-parameters" not in cell.metadata.get("tags", []):
            html = "".join("".join(o.get("data", {}).get("text/html", "")) for o in cell.get("outputs", []))
            return output_of(nb, needle) + html
    raise AssertionError(f"no code cell contains {needle!r}")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_runs_with_changed_parameters_and_leaves_nothing_behind(name: str, tmp_path: Path) -> None:
    parameters, expectations = CHANGED[name]
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    nb = run_notebook(name, tmp_path / "out", parameters=parameters, cwd=cwd, tmpdir=tmpdir)

    first = first_output(nb)
    assert first.startswith("embedded stack (started in this kernel)\n"), first
    workspace = cwd / f"kit-workspace-{name[:2]}"
    assert f"workspace: {workspace} " in first, first      # said where it is: under the current folder
    default = committed(name)
    for needle, expected, before in expectations:
        assert expected in _html_and_text(nb, needle), (needle, _html_and_text(nb, needle))
        assert before in _html_and_text(default, needle), (needle, "the committed run differs")
        assert expected not in _html_and_text(default, needle), (needle, "the parameter changed nothing")
    assert f"removed the workspace {workspace}" in output_of(nb, "session.close(")
    assert not workspace.exists()
    assert leftovers(cwd) == []
    assert leftovers(tmpdir) == [], "files left in the system temporary folder"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "parameters", "sentence"), [
    ("00_quickstart", {"PATIENT_ID": "MRN9999"},
     "patient_id: the PACS lists no study of patient MRN9999; it lists studies of MRN1001"),
    ("01_pacs_ingest", {"MODALITY": "US"},
     "no series with modality 'US' in the retrieved studies (modality there: CT, ES)"),
    ("04_endoscopy", {"ACCESSION": "ACC999"},
     "no worklist item with accession number 'ACC999'; the worklist has ACC100102, ACC100302, ACC100602"),
])
def test_a_missing_patient_or_modality_is_said_in_a_sentence(name: str, parameters: dict[str, Any],
                                                             sentence: str, tmp_path: Path) -> None:
    with pytest.raises(papermill.PapermillExecutionError) as failed:
        run_notebook(name, tmp_path / "out", parameters=parameters, cwd=tmp_path / "cwd",
                     tmpdir=tmp_path / "tmp")
    assert failed.value.ename == "InvalidInputError", failed.value.ename
    assert sentence in failed.value.evalue, failed.value.evalue


def _code_cells(name: str) -> list[nbformat.NotebookNode]:
    return [c for c in committed(name).cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_is_the_tagged_parameters_cell(name: str) -> None:
    first = _code_cells(name)[0]
    assert "parameters" in first.metadata.get("tags", []), first.metadata
    tree = ast.parse(first.source)
    assert all(isinstance(node, ast.Assign) for node in tree.body), "only assignments in the parameters cell"
    names = {t.id for node in tree.body for t in node.targets if isinstance(t, ast.Name)}  # type: ignore[attr-defined]
    assert {"SETTINGS_FILE", "WORKSPACE"} <= names


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_thin_and_keeps_to_its_workspace(name: str) -> None:
    cells = _code_cells(name)
    source = "\n".join(c.source for c in cells)
    tree = ast.parse(source)
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                             ast.ClassDef, ast.Lambda))]
    assert not re.search(r"\btempfile\b|mkdtemp|gettempdir|/tmp\b", source), "no temporary folders"
    assert "connect(SETTINGS_FILE, workspace=WORKSPACE" in cells[1].source
    assert "session.close(" in cells[-1].source


def test_the_workspaces_are_not_committed() -> None:
    assert "kit-workspace*/" in (NOTEBOOKS / ".gitignore").read_text().splitlines()
