"""kit.scale.cluster: a LocalCluster of worker processes on loopback, and typed errors."""

from __future__ import annotations

import os

import pytest

from kit.config import DaskSettings, load_settings
from kit.errors import ConfigError, PeerUnreachableError
from kit.scale.cluster import dask_client, resolve_address
from tests.conftest import free_port

pytest.importorskip("distributed")


def _pid() -> int:
    return os.getpid()


def test_local_cluster_runs_tasks_in_worker_processes_on_loopback_and_stops() -> None:
    with dask_client("local", DaskSettings(workers=2)) as client:
        info = client.scheduler_info()
        assert info["address"].startswith("tcp://127.0.0.1:")
        assert len(info["workers"]) == 2
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        pids = set(client.run(_pid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        cluster = client.cluster
    assert cluster is not None and cluster.status.name == "closed"


def test_an_address_nobody_answers_is_unreachable_within_the_timeout() -> None:
    with pytest.raises(PeerUnreachableError, match="did not answer"):
        with dask_client(f"tcp://127.0.0.1:{free_port()}", DaskSettings(timeout=1.0)):
            pass


def test_no_cluster_configured_or_a_bad_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no Dask cluster"):
        with dask_client(None, DaskSettings()):
            pass
    with pytest.raises(ConfigError, match="scheduler address"):
        resolve_address("my-cluster")


def test_the_dask_section_is_read_and_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    toml = tmp_path / "kit.toml"
    toml.write_text('[dask]\nscheduler = "tcp://10.0.0.5:8786"\nworkers = 4\n')
    s = load_settings(toml, env={})
    assert (s.dask.scheduler, s.dask.workers) == ("tcp://10.0.0.5:8786", 4)
    assert s.uses_dicomweb is False  # a configured file naming no DICOMweb
    with pytest.raises(ConfigError, match="KIT_DASK_SCHEDULER"):
        load_settings(toml, env={"KIT_DASK_SCHEDULER": "cluster-a"})
    with pytest.raises(ConfigError, match="KIT_DASK_WORKERS"):
        load_settings(toml, env={"KIT_DASK_WORKERS": "0"})
