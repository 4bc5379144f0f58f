"""Refuse every embedded server in this interpreter (a test's guard; on PYTHONPATH only in tests).

With ``KIT_TEST_NO_EMBEDDED=1`` in the environment, starting the embedded stack or any of its
servers (PACS, FHIR, MLLP listener) raises: a notebook kernel or a ``kit`` command run with it
can only have used the systems it was configured for. Debian's own sitecustomize, which this one
shadows, is run first.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

for _folder in sys.path:  # run the sitecustomize this one shadows (Debian's apport hook), if any
    _other = Path(_folder) / "sitecustomize.py"
    if _folder and _other.is_file() and _other.resolve() != Path(__file__).resolve():
        runpy.run_path(str(_other))
        break

if os.environ.get("KIT_TEST_NO_EMBEDDED") == "1":
    import kit.dicom.scp
    import kit.fhir.server
    import kit.hl7.mllp
    import kit.stack

    def _refuse(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError(f"{type(self).__name__}.start() called in a run that must use only the "
                           "configured systems (KIT_TEST_NO_EMBEDDED=1)")

    for _cls in (kit.stack.Stack, kit.dicom.scp.EmbeddedPACS, kit.fhir.server.EmbeddedFhirServer,
                 kit.hl7.mllp.MLLPListener):
        _cls.start = _refuse  # type: ignore[method-assign]
