"""Shared pieces of the ``kit`` commands: settings, value types, output, errors, progress.

The value types (:data:`PORT`, :data:`AE_TITLE`, :data:`SECONDS`, ...) check an
option when it is parsed, so a wrong value is misuse (exit 2 with the usage
line) in every command that takes it; the rules are those of :mod:`kit._checks`,
the same the settings apply.
"""

from __future__ import annotations

import functools
import json
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

import kit._checks as _checks
from kit.config import Settings, load_settings
from kit.errors import ConfigError, KitError, StoreError

if TYPE_CHECKING:  # polars is imported when a frame is printed: `kit ... --help` and misuse stay fast
    import polars as pl

__all__ = [
    "AE_TITLE",
    "DATE_RANGE",
    "DICOM_URL",
    "EPHEMERAL_PORT",
    "HOST",
    "HTTP_URL",
    "MLLP_URL",
    "OUTPUT_FILE",
    "OUT_DIR",
    "PORT",
    "SECONDS",
    "UID",
    "OutputDir",
    "OutputFile",
    "Checked",
    "emit_frame",
    "error_line",
    "handle_errors",
    "json_text",
    "listen_host",
    "output_options",
    "progress",
    "settings_from",
    "write_frame",
]

#: What ``-o FILE`` writes, by extension.
FORMATS = (".parquet", ".csv", ".json", ".ndjson")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def settings_from(ctx: click.Context) -> Settings:
    """The settings the ``kit`` group read (from ``--config``, ``$KIT_CONFIG``, ``./kit.toml``)."""
    obj = ctx.find_root().obj or {}
    settings = obj.get("settings")
    return settings if isinstance(settings, Settings) else load_settings(obj.get("config"))


def error_line(exc: BaseException) -> str:
    """The one stderr line for a failure: ``kit: error: Type: first line of the message``."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"kit: error: {type(exc).__name__}: {first}"


def handle_errors(func: F) -> F:
    """Turn a :class:`KitError` into exit status 1 with a one-line reason on stderr."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KitError as exc:
            click.echo(error_line(exc), err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("kit: interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


# -- value types ---------------------------------------------------------------------------------


class Checked(click.ParamType):
    """A click type that runs one of the :mod:`kit._checks` rules (a ValueError is misuse)."""

    def __init__(self, name: str, check: Callable[[Any], Any]) -> None:
        self.name = name
        self._check = check

    def get_metavar(self, *args: Any, **kwargs: Any) -> str | None:
        return self.name   # as written: click would upper-case dicom://AET@HOST:PORT

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, already the right type
            return value
        try:
            return self._check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _date_range(value: str) -> str:
    from kit.dicom.query import format_date_range

    try:
        return format_date_range(value, name="date")
    except KitError as exc:
        raise ValueError(str(exc).removeprefix("date: ")) from None


#: host name or address
HOST = Checked("HOST", _checks.host_name)
#: TCP port 1-65535
PORT = Checked("PORT", _checks.port)
#: TCP port 0-65535, 0 meaning "pick a free one"
EPHEMERAL_PORT = Checked("PORT", functools.partial(_checks.port, ephemeral=True))
#: DICOM AE title (1-16 printable ASCII characters, no backslash)
AE_TITLE = Checked("AET", _checks.ae_title)
#: seconds, > 0
SECONDS = Checked("SECONDS", _checks.positive_seconds)
#: absolute http(s) URL
HTTP_URL = Checked("URL", _checks.http_url)
#: DICOM UID
UID = Checked("UID", _checks.dicom_uid)
#: a real date or date range: 20260112, 2026-01-12, 20260101-20260131, 20260101-
DATE_RANGE = Checked("DATE", _date_range)
#: dicom://AET@host:port -> (aet or None, host, port)
DICOM_URL = Checked("dicom://AET@HOST:PORT", _checks.dicom_url)
#: mllp://host:port -> (host, port)
MLLP_URL = Checked("mllp://HOST:PORT", _checks.mllp_url)


def _parent_exists(path: Path) -> None:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"folder {parent} does not exist (kit does not create parent folders)")


class OutputFile(click.Path):
    """A file to write, its format named by its extension; its folder must exist."""

    name = "FILE"

    def __init__(self, formats: tuple[str, ...] = FORMATS) -> None:
        super().__init__(dir_okay=False)
        self.name = "FILE"
        self.formats = formats

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(super().convert(value, param, ctx))
        path = Path(text)
        if path.suffix.lower() not in self.formats:
            self.fail(f"unknown output format {path.suffix or path.name!r}: the file name must end in "
                      f"{', '.join(self.formats)}", param, ctx)
        try:
            _parent_exists(path)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


class OutputDir(click.Path):
    """A folder to write into (created if missing); its parent folder must exist."""

    name = "DIR"

    def __init__(self) -> None:
        super().__init__(file_okay=False)
        self.name = "DIR"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(super().convert(value, param, ctx))
        try:
            _parent_exists(Path(text))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


OUTPUT_FILE = OutputFile()
OUT_DIR = OutputDir()


def listen_host(host: str, option: str) -> str:
    """Check that ``host`` (an address to listen on) resolves; a ConfigError naming ``option`` if not."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(option, f"cannot listen on {host!r}: {getattr(exc, 'strerror', None) or exc}") \
            from exc
    return host


def output_options(func: F) -> F:
    """Add ``-o/--output FILE`` and ``--json`` to a command that prints a frame."""
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print the result as JSON on stdout.")(func)
    func = click.option("-o", "--output", type=OUTPUT_FILE, default=None,
                        help="Write the result to FILE (.parquet, .csv, .json or .ndjson; "
                             "its folder must exist).")(func)
    return func


def write_frame(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` to ``path``, the format chosen by its extension (the folder must exist)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise click.UsageError(f"unknown output format {suffix!r}: use .parquet, .csv, .json or .ndjson")
    try:
        if suffix == ".parquet":
            df.write_parquet(path)
        elif suffix == ".csv":
            json_text(df).write_csv(path)
        elif suffix == ".json":
            df.write_json(path)
        else:
            df.write_ndjson(path)
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path


def json_text(df: pl.DataFrame, columns: Iterable[str] | None = None) -> pl.DataFrame:
    """``df`` with ``columns`` (default: every list/struct column) encoded as JSON text.

    CSV cannot hold nested columns, and frames of different FHIR types can give one
    column different dtypes; JSON text keeps every value.
    """
    import polars as pl

    if columns is None:
        columns = [c for c, t in df.schema.items() if isinstance(t, (pl.List, pl.Struct, pl.Array))]
    names = list(columns)
    if not names:
        return df
    return df.with_columns(
        pl.col(c).map_elements(lambda v: json.dumps(v.to_list() if hasattr(v, "to_list") else v,
                                                    default=str),
                               return_dtype=pl.String, skip_nulls=True) for c in names)


def emit_frame(df: pl.DataFrame, output: str | None, as_json: bool, *, label: str = "rows") -> None:
    """Print ``df`` as a table, as JSON (``--json``), or write it (``-o``)."""
    if output:
        path = write_frame(df, output)
        click.echo(f"wrote {df.height} {label} to {path}", err=True)
    elif as_json:
        click.echo(json.dumps(df.to_dicts(), default=str, indent=1))
    else:
        import polars as pl

        # identifiers print whole (a UID is copied from here into the next command): no practical
        # cap on string length or table width (polars' limit is 65535), so no cell is cut or wrapped
        with pl.Config(tbl_rows=50, tbl_cols=-1, fmt_str_lengths=10_000, tbl_width_chars=65_535,
                       fmt_table_cell_list_len=10):
            click.echo(str(df))


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm progress bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    yield from tqdm(items, total=total, desc=desc, unit="it", file=sys.stderr,
                    disable=not sys.stderr.isatty(), leave=False)
