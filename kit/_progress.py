"""A progress counter for long work: a tqdm bar on stderr when it is a terminal (no I/O otherwise)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["counter"]


def counter(total: int, show: bool, *, desc: str, unit: str) -> Callable[[int], None]:
    """``update(n)`` adds ``n`` done; ``update(-1)`` closes the bar. A no-op when ``show`` is false.

    The bar is drawn only when stderr is a terminal (never into a log or a pipe).
    """
    if not show:
        return lambda n: None
    import sys

    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty())

    def update(n: int) -> None:
        if n < 0:
            bar.close()
        else:
            bar.update(n)

    return update
