"""Connect to a Dask cluster: ``"local"`` or a scheduler address, from an argument or kit.toml.

:func:`dask_client` is the one way kit opens a ``distributed.Client``:

- ``"local"``: a ``distributed.LocalCluster`` of worker *processes* on 127.0.0.1
  (``[dask] workers``, ``threads_per_worker``), no dashboard, stopped with the client;
- ``"tcp://host:8786"`` (any address the scheduler listens on): the running
  cluster, e.g. the one ``dask_jobqueue.SLURMCluster`` or
  ``dask_kubernetes.operator.KubeCluster`` serves. kit does not start or scale it.

Errors are typed: a LocalCluster that does not start is a
:class:`~kit.errors.ServiceFailedError`; a scheduler that cannot be reached within ``timeout`` is a
:class:`~kit.errors.PeerUnreachableError`; a bad address a :class:`~kit.errors.ConfigError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kit.errors import ConfigError, PeerUnreachableError, ServiceFailedError

if TYPE_CHECKING:
    from distributed import Client

    from kit.config import DaskSettings

__all__ = ["dask_client", "resolve_address"]


def resolve_address(address: str | None, settings: DaskSettings | None = None) -> str:
    """The scheduler to use: ``address`` if given, else ``[dask] scheduler`` ("" = none).

    Examples
    --------
    >>> resolve_address(None)
    ''
    >>> resolve_address("local")
    'local'
    """
    from kit.config import DaskSettings

    chosen = (address if address is not None else (settings or DaskSettings()).scheduler).strip()
    if chosen in ("", "local") or "://" in chosen:
        return chosen
    raise ConfigError("dask.scheduler", f"{chosen!r} is not 'local' or a scheduler address such as tcp://host:8786")


@contextlib.contextmanager
def dask_client(address: str | None = None, settings: DaskSettings | None = None) -> Iterator[Client]:
    """Yield a ``distributed.Client`` for ``address`` (or ``[dask] scheduler``), closed after.

    Parameters
    ----------
    address : str, optional
        ``"local"`` or a scheduler address (``tcp://host:8786``). Default:
        ``settings.scheduler``.
    settings : kit.config.DaskSettings, optional
        Worker count and threads for ``"local"``, the connect timeout.

    Raises
    ------
    ConfigError
        No cluster is configured (empty address) or the address is malformed.
    PeerUnreachableError
        The scheduler did not answer within ``settings.timeout``.
    """
    from kit.config import DaskSettings

    s = settings or DaskSettings()
    chosen = resolve_address(address, s)
    if not chosen:
        raise ConfigError("dask.scheduler", "no Dask cluster configured: give --dask ADDRESS or 'local'")
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the extra is part of kit[scale]
        raise ConfigError("dask.scheduler", "Dask is not installed: pip install 'kit[scale]'") from exc
    if chosen == "local":
        try:
            # no dashboard; the scheduler's HTTP routes (health, metrics) on an ephemeral loopback
            # port, not on the fixed 8787 (dashboard_address=None alone still listens there)
            cluster = LocalCluster(n_workers=s.workers, threads_per_worker=s.threads_per_worker,
                                   processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                   scheduler_port=0, scheduler_kwargs={"dashboard": False})
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise ServiceFailedError(f"the local Dask cluster did not start: {exc}", service="dask") from exc
        try:
            with Client(cluster, timeout=s.timeout) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(chosen, timeout=s.timeout)
    except (OSError, TimeoutError) as exc:
        raise PeerUnreachableError(
            f"Dask scheduler {chosen} did not answer within {s.timeout:g} s: {exc}") from exc
    with client:
        yield client
