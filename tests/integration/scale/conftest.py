"""One LocalCluster of 2 worker processes (on 127.0.0.1) for the scale tests of this folder.

The scheduler reschedules a partition whose worker died once
(``allowed-failures`` = 1) and gives up on the second death, so the lost-worker
tests stay short.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("distributed")


@pytest.fixture(scope="package")
def client() -> Iterator[Any]:
    import dask

    from kit.config import DaskSettings
    from kit.scale.cluster import dask_client

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with dask_client("local", DaskSettings(workers=2, timeout=60.0)) as c:
            c.wait_for_workers(2, timeout=60)
            yield c
