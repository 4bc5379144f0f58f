"""The ``--dask ADDRESS`` option of ``kit index``, ``kit deid`` and ``kit hl7 parse``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

__all__ = ["DASK_HELP", "dask_address", "dask_option", "dataset_table", "open_client"]

F = TypeVar("F", bound=Callable[..., Any])

DASK_HELP = ("Run on Dask: 'local' (a LocalCluster of worker processes on this machine) or a "
             "scheduler address (tcp://host:8786, e.g. a SLURM or Kubernetes Dask cluster); '' runs "
             "here. Default: [dask] scheduler in kit.toml, else here. With Dask the result is a "
             "partitioned parquet folder (--out-dir).")


def dask_option(func: F) -> F:
    """Add ``--dask ADDRESS``."""
    return click.option("--dask", "dask", metavar="ADDRESS", default=None, help=DASK_HELP)(func)


def dask_address(ctx: click.Context, value: str | None) -> str:
    """The scheduler to use (``--dask``, else ``[dask] scheduler``); ``""`` = this process.

    Raises
    ------
    click.BadParameter
        Not ``local``, ``""`` or an address with a scheme.
    """
    from kit.cli.common import settings_from
    from kit.errors import ConfigError
    from kit.scale.cluster import resolve_address

    try:
        return resolve_address(value, settings_from(ctx).dask)
    except ConfigError as exc:
        raise click.BadParameter(str(exc).removeprefix("dask.scheduler: "), param_hint="--dask") from exc


@contextlib.contextmanager
def open_client(ctx: click.Context, address: str) -> Iterator[Any]:
    """The ``distributed.Client`` for ``address`` with the ``[dask]`` settings, Dask's own log
    lines kept off stderr (a failure is kit's one ``kit: error:`` line, not a traceback log)."""
    with contextlib.suppress(ImportError):  # dask_client says how to install it
        import distributed  # noqa: F401 - it configures its loggers on import: quiet them after

    from kit.cli.common import settings_from
    from kit.scale.cluster import dask_client

    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in ("distributed", "dask")]
    loggers = [logging.getLogger(n) for n in {"distributed", "dask", *names}]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with dask_client(address, settings_from(ctx).dask) as client:
            yield client
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def dataset_table(tables: list[tuple[str, int, Any]], partitions: int) -> Any:
    """One row per dataset folder written: ``table``, ``rows``, ``partitions``, ``folder``."""
    import polars as pl

    return pl.DataFrame([(t, n, partitions, str(f)) for t, n, f in tables], orient="row",
                        schema={"table": pl.String, "rows": pl.Int64, "partitions": pl.Int64,
                                "folder": pl.String})
