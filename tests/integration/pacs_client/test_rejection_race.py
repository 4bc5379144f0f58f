"""A rejection that pynetdicom's requestor thread reads too late is still a rejection.

On a busy machine pynetdicom 3.0.4's network thread can send the A-ASSOCIATE-RQ,
receive the A-ASSOCIATE-RJ and close the socket (dcmtk and Orthanc close right
after rejecting) before the requestor thread checks that the socket is connected;
pynetdicom then aborts as if the connection had failed. Here the requestor thread
is made to wait after queueing its request, which makes that order certain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pynetdicom.acse import ACSE

from kit.dicom.dimse import PacsClient
from kit.errors import AssociationRejectedError
from tests.integration.pacs_echo.test_echo_fast import storescp


def test_a_rejection_read_after_the_socket_closed_is_still_a_rejection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = ACSE.send_request

    def late(self: ACSE, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        time.sleep(0.5)  # the network thread connects, is rejected and closes meanwhile

    monkeypatch.setattr(ACSE, "send_request", late)
    with storescp(tmp_path, "--refuse") as port:
        client = PacsClient("127.0.0.1", port, called_aet="STORESCP", timeout=10)
        with pytest.raises(AssociationRejectedError, match=r"association rejected.*result 1"):
            client.echo()
        monkeypatch.setattr(ACSE, "send_request", original)
        with pytest.raises(AssociationRejectedError, match=r"association rejected.*result 1"):
            client.echo()  # and without the wait, the same
