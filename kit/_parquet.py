"""One parquet file written chunk by chunk, in bounded memory (pure: local files only).

polars has no appending parquet writer, so each chunk becomes a part file in a
hidden folder beside the target; :meth:`ParquetSink.close` streams the parts, in
order, into the target (``scan_parquet(...).sink_parquet``: polars' streaming
engine, a few row groups in memory at a time) through a temporary file renamed
over it (:func:`kit._files.atomic_path`), then removes the parts. Until then the
target is untouched; on an error (or :meth:`abort`) the parts are removed and
the target is left as it was. Reading the file gives the concatenation of the
chunks, rows in the order written, with the schema given.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import polars as pl

from kit._files import atomic_path
from kit.errors import InvalidInputError, StoreError

__all__ = ["ParquetSink"]


class ParquetSink:
    """Append frames of one schema to a parquet file, then :meth:`close` to publish it.

    Parameters
    ----------
    path : str or Path
        The parquet file to write (its folder must exist).
    schema : dict of str to polars dtype
        Columns and dtypes every chunk must have, in order.

    Raises
    ------
    kit.errors.StoreError
        A part or the target cannot be written.
    """

    def __init__(self, path: str | Path, schema: dict[str, Any]) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.schema = dict(schema)
        self.rows = 0
        self._parts: list[Path] = []
        self._dir: Path | None = None
        self._closed = False

    def write(self, df: pl.DataFrame) -> None:
        """Append ``df`` (empty frames are not stored)."""
        if self._closed:
            raise InvalidInputError("the parquet sink is closed", source=str(self.path))
        if dict(df.schema) != self.schema:
            raise InvalidInputError(f"chunk schema {dict(df.schema)} is not the sink's {self.schema}",
                                    source=str(self.path))
        if df.height == 0:
            return
        try:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.parts-"))
            part = self._dir / f"{len(self._parts):08d}.parquet"
            df.write_parquet(part)
        except (OSError, pl.exceptions.PolarsError) as exc:
            self.abort()
            raise StoreError(f"cannot write {self.path}: {exc}") from exc
        self._parts.append(part)
        self.rows += df.height

    def close(self) -> Path:
        """Write the target from the parts (an empty file with the schema if there were none)."""
        if self._closed:
            return self.path
        try:
            with atomic_path(self.path) as tmp:
                if self._parts:
                    pl.scan_parquet(self._parts).sink_parquet(tmp)
                else:
                    pl.DataFrame(schema=self.schema).write_parquet(tmp)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from exc
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Remove the parts; the target is left as it was."""
        self._closed = True
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._parts = []

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
