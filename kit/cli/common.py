"""Shared pieces of the ``kit`` commands: settings, output, errors, progress."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
import polars as pl

from kit.config import Settings, load_settings
from kit.errors import KitError

__all__ = [
    "emit_frame",
    "handle_errors",
    "output_options",
    "progress",
    "settings_from",
    "write_frame",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def settings_from(ctx: click.Context) -> Settings:
    """Load settings named by the global ``--config`` option."""
    root = ctx.find_root()
    config = (root.obj or {}).get("config")
    return load_settings(config)


def handle_errors(func: F) -> F:
    """Turn a :class:`KitError` into exit status 1 with a one-line reason on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KitError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"kit: error: {type(exc).__name__}: {first}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("kit: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def output_options(func: F) -> F:
    """Add ``-o/--output FILE`` and ``--json`` to a command that prints a frame."""
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON on stdout.")(func)
    func = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                        help="Write the result to FILE (.parquet, .csv, .json or .ndjson).")(func)
    return func


def write_frame(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``path``, the format chosen by its extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        df.write_parquet(path)
    elif suffix == ".csv":
        _flat(df).write_csv(path)
    elif suffix == ".json":
        df.write_json(path)
    elif suffix == ".ndjson":
        df.write_ndjson(path)
    else:
        raise click.UsageError(f"unknown output format {suffix!r}: use .parquet, .csv, .json or .ndjson")
    return path


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    """CSV cannot hold nested columns: encode lists and structs as JSON text."""
    nested = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Struct, pl.Array))]
    if not nested:
        return df
    return df.with_columns(
        pl.col(c).map_elements(lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v,
                                                    default=str),
                               return_dtype=pl.String) for c in nested)


def emit_frame(df: pl.DataFrame, output: str | None, as_json: bool, *, label: str = "rows") -> None:
    """Print ``df`` as a table, as JSON (``--json``), or write it (``-o``)."""
    if output:
        path = write_frame(df, output)
        click.echo(f"wrote {df.height} {label} to {path}", err=True)
    elif as_json:
        click.echo(json.dumps(df.to_dicts(), default=str, indent=1))
    else:
        with pl.Config(tbl_rows=50, tbl_cols=12, fmt_str_lengths=40, tbl_width_chars=160):
            click.echo(str(df))


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm progress bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="it", file=sys.stderr,
                    disable=not sys.stderr.isatty(), leave=False)
