"""The Hub's probes import their clients on the caller's thread, before the probe threads start.

The clients import pynetdicom lazily (so `kit pacs echo` and `kit --help` stay fast). When the
probe threads imported it at once, pynetdicom's circular imports failed half-way ("partially
initialized module") and `kit monitor status` reported a running PACS as not answering.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from kit.hub.manager import Hub
hub = Hub()
assert "pynetdicom" not in sys.modules
hub._probes()  # builds the probe calls only: nothing is sent
missing = [m for m in ("kit.dicom.dimse", "kit.dicom.web", "kit.fhir.client", "kit.hl7.mllp", "pynetdicom")
           if m not in sys.modules]
print(",".join(sorted(hub.connectors)))
assert not missing, missing
"""


def test_building_the_probes_imports_every_client_on_the_calling_thread() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert {"pacs-dimse", "ehr-fhir", "hl7-mllp"} <= set(proc.stdout.strip().split(","))
