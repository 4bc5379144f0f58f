"""The way in: the README's set-up commands, its open-notebooks line, Binder and .ci/run agree.

What each installs is read from pyproject.toml (extras expanded, ``kit[...]`` included), so a
command that stops installing JupyterLab, or a test tool that slips into Binder, fails here;
that the main command's JupyterLab then really opens and runs the README's notebook is
test_notebooks_in_browser's job.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from urllib.parse import unquote

from tests.conftest import ROOT
from tests.integration.browser.conftest import readme_open_line

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def installed_by(extras: list[str]) -> set[str]:
    """Distribution names ``pip install -e .[extras]`` brings in directly (base + extras, expanded)."""
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in project["optional-dependencies"], f"no extra {extra!r} in pyproject.toml"
        for req in project["optional-dependencies"][extra]:
            if _name(req) == _name(project["name"]):  # kit[notebooks] inside another extra
                todo += re.findall(r"[A-Za-z0-9_-]+", req.split("[", 1)[1].split("]", 1)[0])
            else:
                names.add(_name(req))
    return names


def pip_extras(command: str) -> list[str]:
    """The extras of the ``pip install -e .[...]`` in a shell command (``[]`` for ``-e .``)."""
    for part in command.split("&&"):
        argv = shlex.split(part)
        if argv[:2] == ["pip", "install"]:
            target = argv[argv.index("-e") + 1]
            assert target.startswith("."), f"pip installs {target!r}, not this repository"
            return re.findall(r"[A-Za-z0-9_-]+", target[2:-1]) if "[" in target else []
    raise AssertionError(f"no `pip install -e .` in {command!r}")


def setup_commands() -> list[str]:
    section = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_setup_commands_main_job_and_tests() -> None:
    commands = setup_commands()
    assert len(commands) == 2, commands
    main, tests = commands
    assert "\n" not in main and main.endswith("kit demo"), main
    assert "\n" not in tests and tests.endswith("pytest"), tests


def test_main_command_installs_jupyterlab_and_the_kernel() -> None:
    names = installed_by(pip_extras(setup_commands()[0]))
    assert {"jupyterlab", "ipykernel", "ipywidgets"} <= names, sorted(names)


def test_readme_says_in_one_line_how_to_open_the_notebooks() -> None:
    line = readme_open_line()  # exactly one `jupyter lab <notebook>` in the README
    assert line.argv[:2] == ("jupyter", "lab")
    assert line.notebook == "notebooks/00_quickstart.ipynb"
    section = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    assert "`" + shlex.join(line.argv) + "`" in section, "the open line belongs to the set-up section"


def test_test_command_installs_what_the_tests_need_and_ci_runs_it() -> None:
    extras = pip_extras(setup_commands()[1])
    names = installed_by(extras)
    assert {"pytest", "nbval", "playwright", "jupyterlab", "ipykernel"} <= names, sorted(names)
    ci = [line.strip() for line in CI_RUN.splitlines() if re.match(r"\s*pip install .*&& pytest", line)]
    assert len(ci) == 1, f".ci/run must run the README's test command once: {ci}"
    assert pip_extras(ci[0]) == extras


def test_ci_installs_the_debian_packages_the_tests_use() -> None:
    apt = [line for line in CI_RUN.splitlines() if "apt-get install" in line]
    assert len(apt) == 1, apt
    assert {"orthanc", "orthanc-dicomweb", "dcmtk", "chromium", "ffmpeg"} <= set(apt[0].split())
    assert "playwright install" not in CI_RUN, "the browser is Debian's chromium; none is downloaded"


def test_binder_installs_the_notebook_extras_not_the_test_tools() -> None:
    lines = [ln.split("#")[0].strip() for ln in
             (ROOT / "binder" / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    kit_lines = [ln for ln in lines if ln.startswith("-e .")]
    assert len(kit_lines) == 1, lines
    names = installed_by(pip_extras("pip install " + kit_lines[0]))
    assert {"jupyterlab", "ipykernel", "ipywidgets"} <= names, sorted(names)
    others = {_name(ln) for ln in lines if ln and not ln.startswith("-")}
    test_only = installed_by(["test"]) - installed_by(["notebooks"])
    assert not (names | others) & test_only, sorted((names | others) & test_only)


def test_binder_link_is_a_form_to_fill_in() -> None:
    links = re.findall(r"https://mybinder\.org/v2/gh/\S+", README)
    assert links, "the README says how to launch on Binder"
    for link in links:
        owner_repo_branch, _, query = link.removeprefix("https://mybinder.org/v2/gh/").partition("?")
        assert owner_repo_branch == "<owner>/<repo>/<branch>", f"an invented address: {link}"
        assert unquote(query) == f"labpath={readme_open_line().notebook}", link
