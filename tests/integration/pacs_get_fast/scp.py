"""A pynetdicom C-GET SCP on 127.0.0.1 for the C-GET tests (an ephemeral port, stopped on exit)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests.conftest import free_port


@contextlib.contextmanager
def serving_get(on_get: Callable[[Any], Any], *, on_recv: Callable[[Any], None] | None = None,
            classes: Sequence[str] = (CTImageStorage,)) -> Iterator[int]:
    """Serve C-GET (``on_get`` as EVT_C_GET) storing ``classes`` back; ``on_recv`` sees every DIMSE
    message received (our C-STORE-RSPs among them). Yields the port."""
    ae = AE(ae_title="GETSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    for cls in classes:
        ae.add_supported_context(cls, scu_role=True, scp_role=True)
    handlers: list[Any] = [(evt.EVT_C_GET, on_get)]
    if on_recv is not None:
        handlers.append((evt.EVT_DIMSE_RECV, on_recv))
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield port
    finally:
        server.shutdown()
