"""Types of kit.dicom._getc (kit/dicom/_getc.c): the C-GET answer path's message and identity readers."""

from typing import Any

def message(buf: bytearray, lo: int, hi: int, limit: int, max_command: int, max_data: int,
            spill_at: int, /) -> tuple[Any, ...] | None: ...
def identity(data: bytes | bytearray | memoryview, implicit: bool, little: bool,
             max_depth: int, /) -> tuple[str | None, str | None, str | None] | None: ...
