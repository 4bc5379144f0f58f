"""Failures on a Dask cluster come back typed: KitErrors as themselves, a lost worker as a
retry or a ServiceFailedError, an empty cluster as a ServiceFailedError after the timeout."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from kit.errors import (
    ConfigError,
    HL7ParseError,
    KitError,
    PeerUnreachableError,
    ServiceFailedError,
)
from kit.scale.run import Fault, guarded, run_partitions, write_part


def _fail_with(error: KitError) -> None:
    raise error


def _bug() -> None:
    raise ZeroDivisionError("a bug, not a KitError")


def _die_once(marker: str, folder: str) -> str:
    """Kill the worker process the first time (marker absent), then write a part."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(1)
    return write_part(pl.DataFrame({"worker_pid": [os.getpid()]}), folder, 0, 1)


def _die_always() -> None:
    os._exit(1)


@pytest.mark.parametrize("error", [
    ConfigError("dask.scheduler", "bad"),
    ServiceFailedError("stopped", service="dask"),
    HL7ParseError("no MSH", source="a.hl7", segment="MSH", field=9),
    PeerUnreachableError("refused", peer="127.0.0.1:1"),
])
def test_a_kit_error_survives_the_trip_as_plain_data(error: KitError) -> None:
    fault = guarded(_fail_with, error)
    assert isinstance(fault, Fault)
    again = fault.error()
    assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)


def test_a_kit_error_on_a_worker_is_raised_as_itself(client: Any, tmp_path: Path) -> None:
    error = HL7ParseError("no MSH", source="a.hl7", segment="MSH", field=9)
    with pytest.raises(HL7ParseError) as got:
        run_partitions(client, _fail_with, [(error,)], out_dir=tmp_path)
    assert str(got.value) == str(error) and (got.value.segment, got.value.field) == ("MSH", 9)


def test_any_other_exception_on_a_worker_is_a_service_failure(client: Any, tmp_path: Path) -> None:
    with pytest.raises(ServiceFailedError, match="ZeroDivisionError: a bug"):
        run_partitions(client, _bug, [()], out_dir=tmp_path)


def test_a_partition_whose_worker_dies_once_is_run_again(client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    [part] = run_partitions(client, _die_once, [(str(marker), str(tmp_path / "out"))],
                            out_dir=tmp_path / "out", timeout=60)
    assert marker.exists() and pl.read_parquet(part).height == 1


def test_a_partition_that_kills_every_worker_is_a_service_failure(client: Any, tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ServiceFailedError, match="worker died"):
        run_partitions(client, _die_always, [()], out_dir=tmp_path, timeout=60)
    assert time.monotonic() - start < 60
    client.wait_for_workers(2, timeout=60)  # the nannies restart them for the next tests


def test_a_cluster_without_workers_fails_after_the_timeout_not_never(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as empty:
        start = time.monotonic()
        with pytest.raises(ServiceFailedError, match="no worker for 1 s"):
            run_partitions(empty, _bug, [()], out_dir=tmp_path, timeout=1.0)
        assert time.monotonic() - start < 10


def test_the_local_cluster_serves_no_dashboard_on_the_fixed_port(client: Any) -> None:
    scheduler = client.cluster.scheduler
    bound = [sock.getsockname()[:2] for sock in scheduler.http_server._sockets.values()]
    assert bound and all(host == "127.0.0.1" and port != 8787 for host, port in bound)


def test_workers_with_another_kit_version_are_refused(client: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import kit

    monkeypatch.setattr(kit, "__version__", "0.0.0-other")  # this process; the workers keep theirs
    with pytest.raises(ConfigError, match="runs kit .*this process kit 0.0.0-other"):
        run_partitions(client, _bug, [()], out_dir=tmp_path)
