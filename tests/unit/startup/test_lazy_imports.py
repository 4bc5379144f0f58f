"""``import kit`` and every ``--help`` of the CLI stay light (issue 9, target 6).

Latency is benchmarked in ``bench/startup.py``; this test holds the cause: a fresh
interpreter imports ``kit`` (or runs ``kit --help``, each group's and each
subcommand's ``--help``) and must not have loaded any of the heavy libraries,
which the commands import only when they run.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: top-level packages that cost tens to hundreds of milliseconds to import
HEAVY = sorted({
    "numpy", "polars", "pandas", "pydicom", "pynetdicom", "highdicom", "dicomweb_client", "httpx",
    "plotly", "itables", "anywidget", "ipywidgets", "msgspec", "orjson", "fastapi", "starlette",
    "uvicorn", "pydantic", "av", "PIL", "fhir", "fhirpathpy", "hl7apy", "hl7", "cryptography",
    "joserfc", "tqdm",
})

PROBE = """
import contextlib, io, json, sys
HEAVY = set(json.loads(sys.argv[1]))
def heavy():
    return sorted({m.split(".")[0] for m in sys.modules} & HEAVY)
found = {}
import kit
found["import kit"] = heavy()
if sys.argv[2] == "cli":
    import click
    from kit.cli import COMMANDS, cli, main
    def run(args):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(args)
            except SystemExit as exc:
                assert exc.code in (0, None), (args, exc.code)
        found[" ".join(["kit", *args])] = heavy()
    run(["--help"])
    for name in sorted(COMMANDS):
        run([name, "--help"])
        cmd = cli.get_command(click.Context(cli), name)
        if isinstance(cmd, click.Group):
            for sub in sorted(cmd.commands):
                run([name, sub, "--help"])
print(json.dumps(found))
"""


def probe(what: str) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), what],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_import_kit_loads_no_heavy_library() -> None:
    assert probe("import") == {"import kit": []}


def test_every_help_of_the_cli_loads_no_heavy_library() -> None:
    found = probe("cli")
    assert len(found) > 20  # the top level, every group and their subcommands were asked
    assert {cmd: mods for cmd, mods in found.items() if mods} == {}


@pytest.mark.parametrize("module", ["polars", "pydicom"])
def test_the_probe_sees_a_heavy_import(module: str) -> None:
    """The check itself works: importing a heavy library shows in the report."""
    done = subprocess.run([sys.executable, "-c", f"import {module}; " + PROBE.replace(
        'print(json.dumps(found))', 'found["x"] = heavy(); print(json.dumps(found))'), json.dumps(HEAVY),
        "import"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert module in json.loads(done.stdout.strip().splitlines()[-1])["x"]
