"""Atomic file writes: a temporary file beside the target, renamed over it only when complete.

A reader (or a crash) never sees a partial file: it sees the old file, the new
file, or nothing. With ``fsync=True`` the data is on disk before the rename.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, suffix: str = ".part",
                no_clobber: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` if the block succeeds.

    Write the file (by any library) to the yielded path. On an exception the
    temporary file is removed and ``target`` is left as it was.

    With ``no_clobber``, a ``target`` that exists when the block ends is never replaced: if it
    holds the same bytes it is left as it is, else :class:`FileExistsError` is raised. The check
    and the write are one step (a hard link), so two processes writing the same path at once
    cannot both succeed with different bytes (where the file system has no hard links: a check,
    then the rename).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if no_clobber:
            _link_unless_other(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _link_unless_other(tmp: str, target: Path) -> None:
    """``tmp`` becomes ``target`` unless ``target`` exists; an existing one with other bytes is a
    :class:`FileExistsError` (the same bytes: left as it is)."""
    try:
        os.link(tmp, target)  # fails if target exists: no window between the check and the write
        return
    except FileExistsError:
        pass
    except OSError:  # no hard links here (some network and FAT file systems): check, then rename
        if not target.exists():
            os.replace(tmp, target)
            return
    if not filecmp.cmp(tmp, target, shallow=False):
        raise FileExistsError(errno.EEXIST, "exists with other content", str(target))


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``target`` atomically (and durably with ``fsync=True``); return the path."""
    target = Path(target)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    return target
