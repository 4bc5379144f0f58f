"""Run the notebooks with papermill, the way a scheduler or CI would: helpers shared by the tests.

:func:`run_notebook` executes a notebook in a fresh kernel with changed parameters, in a
folder of the test's (no ./kit.toml), with the kernel's system temporary folder pointed at
an empty folder of the test's (``TMPDIR``), so a test can check that nothing is left there.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nbformat
import papermill

from tests.conftest import ROOT

NOTEBOOKS = ROOT / "notebooks"
NAMES = ("00_quickstart", "01_pacs_ingest", "02_ehr_fhir", "03_hl7_feeds", "04_endoscopy",
         "05_analyze_and_report_back", "06_services_and_monitoring", "07_research_dataset")
#: the folder whose sitecustomize refuses every embedded server when KIT_TEST_NO_EMBEDDED=1
GUARD = Path(__file__).resolve().parent / "guard"


@contextlib.contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """``os.environ`` with ``changes`` (None removes a variable) for the block: the kernel inherits it."""
    saved = dict(os.environ)
    try:
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_notebook(name: str, out_dir: Path, *, parameters: Mapping[str, Any], cwd: Path, tmpdir: Path,
                 env: Mapping[str, str | None] | None = None) -> nbformat.NotebookNode:
    """Execute ``notebooks/<name>.ipynb`` with papermill; the executed notebook.

    The kernel runs in ``cwd`` with ``TMPDIR=tmpdir`` and no ``KIT_CONFIG`` (unless ``env``
    sets one). A failing cell raises ``papermill.PapermillExecutionError``.
    """
    cwd.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    changes: dict[str, str | None] = {"TMPDIR": str(tmpdir), "KIT_CONFIG": None}
    changes.update(env or {})
    with environment(changes):
        return papermill.execute_notebook(
            str(NOTEBOOKS / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), parameters=dict(parameters),
            cwd=str(cwd), kernel_name="python3", progress_bar=False, log_output=False,
            request_save_on_cell_execute=False, execution_timeout=300)


def _text(output: Mapping[str, Any]) -> str:
    if "text" in output:
        text = output["text"]
    elif output.get("output_type") == "error":
        text = f"{output['ename']}: {output['evalue']}"
    else:
        text = output.get("data", {}).get("text/plain", "")
    return text if isinstance(text, str) else "".join(text)


def output_of(nb: nbformat.NotebookNode, needle: str) -> str:
    """All text output of the first code cell whose source contains ``needle``."""
    for cell in nb.cells:
        if cell.cell_type == "code" and needle in cell.source and "injected-parameters" not in \
                cell.metadata.get("tags", []):
            return "\n".join(_text(o) for o in cell.get("outputs", []))
    raise AssertionError(f"no code cell contains {needle!r}")


def committed(name: str) -> nbformat.NotebookNode:
    """The notebook as committed (outputs of a run with the default parameters)."""
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def first_output(nb: nbformat.NotebookNode) -> str:
    """The output of the first cell that prints anything (after the parameters): which systems."""
    return output_of(nb, "connect(")


def leftovers(folder: Path) -> list[str]:
    """Every file and folder under ``folder`` (relative), sorted: what a run left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


#: "  pacs      dicom://KIT@127.0.0.1:4242" lines of a notebook's first output
ADDRESS = re.compile(r"^\s+(pacs|dicomweb|fhir|mllp)\s+(\S+)$", re.M)


def addresses(first: str) -> dict[str, str]:
    """The ``{service: address}`` lines of a notebook's first output."""
    return dict(ADDRESS.findall(first))
