"""C-MOVE's sub-association keeps its C-STORE responses for pynetdicom's sender.

pynetdicom's ``send_c_store`` pauses the association's reactor by clearing its checkpoint and
waiting for ``_is_paused``, which the reactor sets just before it checks the checkpoint. When the
reactor is past its check while the sender reads the flag, the reactor takes the C-STORE-RSP
itself ("Received unexpected C-STORE service message") and the sender waits out the DIMSE timeout:
a C-MOVE failed after 10 s, 4 runs in 14 with three CPU burners beside it. Here the reactor is
made to linger after its check (a fault a real peer cannot be made to produce on demand), so
every sub-operation meets the race; the C-MOVE still completes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kit.dicom import scp
from tests.integration.pacs_scp.conftest import sample_stack_to_move_from

pytestmark = pytest.mark.timeout(120)


class _LingeringCheckpoint(threading.Event):
    """The reactor's checkpoint: when it was open, the reactor lingers 20 ms after its check."""

    def wait(self, timeout: float | None = None) -> bool:
        was_open = self.is_set()
        passed = super().wait(timeout)
        if was_open:
            time.sleep(0.02)
        return passed


def test_move_completes_when_the_reactor_takes_a_response(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    opened = scp._sub_association

    def lingering(event: Any, poll_interval: float | None = None) -> None:
        opened(event, poll_interval)
        checkpoint = _LingeringCheckpoint()
        checkpoint.set()
        event.assoc._reactor_checkpoint = checkpoint

    monkeypatch.setattr(scp, "_sub_association", lingering)
    with sample_stack_to_move_from(tmp_path) as (client, store_port):
        studies = client.find("STUDY", modalities_in_study="CT")["study_instance_uid"]
        got = client.move(study_uid=str(studies[0]), dest=tmp_path / "moved", store_port=store_port)
    assert got.height > 5 and got["path"].null_count() == 0
    assert "unexpected C-STORE" not in caplog.text
