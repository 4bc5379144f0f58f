"""``--limit N`` on query commands: a cut result is said on stderr in one line, never silent."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import click

from kit.errors import TruncatedResultWarning

__all__ = ["noting_truncation"]


@contextlib.contextmanager
def noting_truncation() -> Iterator[None]:
    """Print each :class:`~kit.errors.TruncatedResultWarning` raised inside as ``kit: warning: ...``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TruncatedResultWarning)
        yield
    for w in caught:
        if issubclass(w.category, TruncatedResultWarning):
            click.echo(f"kit: warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
