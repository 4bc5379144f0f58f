"""``kit pacs echo`` against the embedded PACS imports no DICOM library (issue 9, target 6).

The real command runs in a fresh interpreter (``python -m kit.cli pacs echo --url ...``,
what the ``kit`` script runs) against the kit's own PACS on an ephemeral loopback
port; when the process exits it reports which heavy libraries it had imported.
The clean echo runs on a plain socket (:mod:`kit.dicom._echo_fast`): no pynetdicom,
pydicom, numpy, Pillow, requests, tqdm, polars, httpx ... at all; so does a refused
connection. Only an unclean answer (here a rejection) runs the pynetdicom path,
which then imports what pynetdicom imports and nothing more. Structural, not timed
(the time is bench/startup.py's).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from kit.dicom.scp import EmbeddedPACS
from tests.unit.startup.test_lazy_imports import HEAVY

PROBE = """
import atexit, json, runpy, sys
HEAVY = set(json.loads(sys.argv[1]))
def report():
    print("MODULES " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & HEAVY)), flush=True)
atexit.register(report)
if sys.argv[2] == "--":
    sys.argv = ["kit", *sys.argv[3:]]
    runpy.run_module("kit.cli", run_name="__main__", alter_sys=True)
else:
    exec(sys.argv[2])
"""


def heavy_after(*args: str) -> tuple[int, str, list[str]]:
    """Exit status, stdout and the heavy top-level modules loaded when the process ended."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(HEAVY), *args], capture_output=True,
                          text=True, timeout=120, check=False)
    lines = done.stdout.splitlines()
    marks = [line for line in lines if line.startswith("MODULES ")]
    assert len(marks) == 1, (done.stdout, done.stderr[-2000:])
    found: list[str] = json.loads(marks[0].removeprefix("MODULES "))
    return done.returncode, "\n".join(line for line in lines if line not in marks) + done.stderr, found


def test_kit_pacs_echo_imports_no_heavy_library(pacs: EmbeddedPACS) -> None:
    code, out, found = heavy_after("--", "pacs", "echo", "--url", pacs.address)
    assert code == 0, out
    assert f"{pacs.address} answered C-ECHO in" in out
    assert found == []  # neither pynetdicom nor pydicom nor numpy (nor what they pull in)


def test_an_unclean_answer_runs_the_pynetdicom_path_and_no_more(pacs: EmbeddedPACS) -> None:
    """A rejected association is answered by PacsClient (pynetdicom): its error, its imports only."""
    wrong = pacs.address.replace(f"dicom://{pacs.aet}@", "dicom://NOTKIT@")
    code, out, found = heavy_after("--", "pacs", "echo", "--url", wrong)
    assert code == 1, out
    assert out.strip().splitlines()[-1].startswith(
        "kit: error: AssociationRejectedError: association rejected: called AE title not recognised"), out
    assert "pynetdicom" in found and "polars" not in found
    _, _, floor = heavy_after("import pynetdicom")
    assert "pynetdicom" in floor  # the probe sees what was imported
    assert sorted(set(found) - set(floor)) == []


def test_kit_help_as_the_command_runs_it_imports_no_heavy_library() -> None:
    code, out, found = heavy_after("--", "--help")
    assert code == 0, out
    assert "Commands:" in out and "pacs" in out
    assert found == []


def test_a_failed_echo_also_stays_light() -> None:
    """Nothing listening: exit 1 with one line, without any heavy library (raised by the fast path)."""
    with socket.socket() as held:  # bound, never listening: the port refuses and nobody else gets it
        held.bind(("127.0.0.1", 0))
        address = f"dicom://KIT@127.0.0.1:{held.getsockname()[1]}"
        code, out, found = heavy_after("--", "pacs", "echo", "--url", address, "--timeout", "5")
    assert code == 1, out
    assert out.strip().splitlines()[-1] == \
        f"kit: error: PeerUnreachableError: cannot connect (connection refused) ({address})", out
    assert found == []
