"""A received data set too large to hold in memory, kept in an unnamed file (private).

:class:`~kit.dicom._fastnet.DataPhase` holds a DIMSE message's data set fragments in
memory up to :data:`SPILL_AT` bytes; past that it moves them into a :class:`Spill`,
a temporary file without a name (``O_TMPFILE`` where the system has it), in the
folder the data set is bound for (the embedded PACS's ``tmp/``, a C-GET's
destination: not a ``/tmp`` that may be memory; the system's temporary folder only
where a caller names none). Whole, the data set is read back as a
read-only memory map: pages of the file, which the kernel can drop, not memory
of the process. The file goes when the last view of the map does.

So an association costs at most ``SPILL_AT`` bytes of data set in memory, however
large the instance (an endoscopy video, a whole-slide image) or however long a
hostile peer keeps sending.
"""

from __future__ import annotations

import mmap
import os
import tempfile

from kit.errors import StoreError

__all__ = ["SPILL_AT", "Spill"]

#: Bytes of one data set held in memory before it moves to disk: every CT, MR and US
#: instance fits; a large radiograph, a mammogram or a video goes to disk.
SPILL_AT = 8 * 1024 * 1024


class Spill:
    """A data set's fragments written to an unnamed file as they arrive.

    Parameters
    ----------
    directory : str or path-like, optional
        Where the file is made (its file system takes the bytes); None: the system's
        temporary folder.
    held : list of bytes
        Fragments already received, written first.

    Raises
    ------
    kit.errors.StoreError
        The file could not be made or written (the disk is full, the folder is gone).
    """

    __slots__ = ("_file", "size")

    def __init__(self, directory: str | os.PathLike[str] | None, held: list[bytes]) -> None:
        try:
            self._file = tempfile.TemporaryFile(dir=directory, buffering=0)
        except OSError as exc:
            raise StoreError(f"cannot make a file for a large data set in {directory}: {exc}") from exc
        self.size = 0
        for part in held:
            self.write(part)

    def write(self, part: bytes) -> None:
        """Append one fragment."""
        view = memoryview(part)
        try:
            while view:
                view = view[self._file.write(view):]
        except OSError as exc:
            self.close()
            raise StoreError(f"cannot keep a large data set on disk: {exc}") from exc
        self.size += len(part)

    def finish(self) -> memoryview:
        """The whole data set, read-only (the file closes; its pages stay while viewed)."""
        try:
            mapped = mmap.mmap(self._file.fileno(), self.size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read back a large data set: {exc}") from exc
        finally:
            self.close()
        return memoryview(mapped)

    def close(self) -> None:
        """Drop the file (idempotent)."""
        self._file.close()
