"""JupyterLab on loopback, started the way the README says, and Debian's chromium driven by Playwright.

``lab`` runs the README's open-notebooks line (``jupyter lab notebooks/00_quickstart.ipynb``)
in a throwaway copy of ``notebooks/`` with the venv's ``jupyter``, adding only what a test
needs: 127.0.0.1, an ephemeral port, a token, no browser, and every JUPYTER_* folder (config,
data, runtime, lab settings, workspaces, IPython, TMPDIR) under the test's temporary folder,
so nothing is written into the repository or the home folder. It is stopped by PID.

``browser`` is Debian's chromium (``shutil.which("chromium")``), headless, through the
``playwright`` package: no browser is ever downloaded. Without chromium (or playwright) the
tests skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, missing, stop_pid

#: How long JupyterLab may take to start (it builds nothing: the extensions are prebuilt).
LAB_START_TIMEOUT = 90.0

#: JupyterLab user settings for the test: no virtual scrolling (every cell stays in the DOM,
#: so a cell's output can be found however long the notebook), no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}


def chromium_executable() -> str:
    """Debian's chromium; skip if absent locally, fail under CI=true."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("chromium is not installed (Debian package chromium)", "install it")
    assert path is not None
    return path


@dataclass(frozen=True)
class OpenLine:
    """The README's one line that opens the notebooks, e.g. ``jupyter lab notebooks/00_quickstart.ipynb``."""

    argv: tuple[str, ...]
    notebook: str  # the notebook it opens, relative to the repository root


def readme_open_line() -> OpenLine:
    """Find the README's open-notebooks line: exactly one ```jupyter lab <notebook>``` in backticks."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = sorted(set(re.findall(r"`(jupyter lab [^`\n]+)`", text)))
    assert len(found) == 1, f"the README must say in one line how to open the notebooks; found {found}"
    argv = tuple(shlex.split(found[0]))
    notebooks = [a for a in argv[2:] if a.endswith(".ipynb")]
    assert len(notebooks) == 1, f"the README's open line names no single notebook: {found[0]!r}"
    assert (ROOT / notebooks[0]).is_file(), f"the README opens {notebooks[0]}, which does not exist"
    return OpenLine(argv, notebooks[0])


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: its address, token, the URL its browser would open, and its folders."""

    proc: subprocess.Popen[bytes]
    url: str  # e.g. http://127.0.0.1:41234/
    token: str
    open_url: str  # file:// redirect page JupyterLab writes for a browser (the README's notebook)
    root: Path  # what the file browser shows (the notebook's folder in the throwaway copy)
    log: Path
    tmp: Path  # TMPDIR of the server and its kernels

    def api(self, method: str, path: str) -> Any:
        """Call the Jupyter server's REST API with the token; JSON answers are decoded."""
        req = urllib.request.Request(self.url.rstrip("/") + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            body = resp.read()
        return json.loads(body) if body else None

    def notebook_url(self, name: str, workspace: str) -> str:
        """The notebook ``name`` (in :attr:`root`) in a fresh workspace (nothing restored into it)."""
        return f"{self.url.rstrip('/')}/lab/workspaces/{workspace}/tree/{name}?token={self.token}"

    def shutdown_sessions(self) -> None:
        """Shut down every kernel session (each notebook starts an embedded stack in its kernel)."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab started by the README's open line, in a throwaway copy of notebooks/."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        missing("JupyterLab is not installed (pip install -e '.[notebooks]')", "install it")
    line = readme_open_line()
    base = tmp_path_factory.mktemp("lab")
    clone = base / "clone"  # what a fresh clone holds that the notebooks read: notebooks/
    shutil.copytree(ROOT / "notebooks", clone / "notebooks")
    dirs = {name: base / name for name in ("config", "data", "runtime", "settings", "workspaces",
                                           "ipython", "tmp")}
    for d in dirs.values():
        d.mkdir()
    for rel, values in LAB_SETTINGS.items():
        target = dirs["settings"] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values), encoding="utf-8")
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
           "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(dirs["ipython"]),
           "TMPDIR": str(dirs["tmp"]), "TCP_NODELAY": "1"}
    env.pop("JUPYTER_TOKEN", None)
    token = secrets.token_hex(24)
    # `jupyter` is the one the README's main command installed into this environment.
    jupyter = Path(sys.executable).with_name("jupyter")
    assert jupyter.is_file(), f"{jupyter} missing: the README's main command installs JupyterLab"
    argv = [str(jupyter), *line.argv[1:],
            "--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
            f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:  # CI runs as root; a researcher's laptop does not need this
        argv.append("--allow-root")
    log = base / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab = None
    try:
        info = _wait_for_server(proc, dirs["runtime"], log)
        open_file = dirs["runtime"] / f"jpserver-file-to-run-{proc.pid}-open.html"
        assert open_file.is_file(), f"JupyterLab wrote no page to open {line.notebook}"
        lab = Lab(proc=proc, url=info["url"], token=token, open_url=open_file.as_uri(),
                  root=Path(info["root_dir"]), log=log, tmp=dirs["tmp"])
        assert lab.api("GET", "/api/status") is not None
        yield lab
    finally:
        if lab is not None and proc.poll() is None:
            try:
                lab.shutdown_sessions()
            except OSError:
                pass
        stop_pid(proc, timeout=20)


def _wait_for_server(proc: subprocess.Popen[bytes], runtime: Path, log: Path) -> dict[str, Any]:
    info_file = runtime / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if info_file.is_file():
            try:
                info: dict[str, Any] = json.loads(info_file.read_text(encoding="utf-8"))
                return info
            except ValueError:
                pass  # being written
        time.sleep(0.1)
    raise TimeoutError(f"JupyterLab not up after {LAB_START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright's sync API."""
    executable = chromium_executable()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')", "install it")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
