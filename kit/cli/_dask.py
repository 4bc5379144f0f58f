"""The ``--dask ADDRESS`` option of ``kit index``, ``kit deid`` and ``kit hl7 parse``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["DASK_HELP", "dask_address", "dask_option", "dataset_table"]

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


def dataset_table(tables: list[tuple[str, int, Any]], partitions: int) -> Any:
    """One row per dataset folder written: ``table``, ``rows``, ``partitions``, ``folder``."""
    import polars as pl

    return pl.DataFrame([(t, n, partitions, str(f)) for t, n, f in tables], orient="row",
                        schema={"table": pl.String, "rows": pl.Int64, "partitions": pl.Int64,
                                "folder": pl.String})
