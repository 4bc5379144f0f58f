"""The package stays typed (mypy clean on kit/) and lint-clean (ruff), module sizes stay legible."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_mypy_clean_on_kit() -> None:
    if shutil.which("mypy") is None and _run("mypy", "--version").returncode != 0:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    result = _run("mypy", "kit")
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_clean() -> None:
    if _run("ruff", "--version").returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = _run("ruff", "check", "kit", "tests", "bench")
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize("path", sorted((ROOT / "kit").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_public_modules_are_small_and_declare_all(path: Path) -> None:
    lines = path.read_text().count("\n")
    assert lines <= 850, f"{path.name} has {lines} lines; split it by concern (DESIGN: ~800)"
    if path.name.startswith("_") and path.name != "__init__.py" or path.parent.name == "cli":
        return
    tree = ast.parse(path.read_text())
    names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
             if isinstance(t, ast.Name)}
    has_public = any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
                     for n in tree.body)
    if has_public:
        assert "__all__" in names, f"{path.relative_to(ROOT)} has public names but no __all__"
