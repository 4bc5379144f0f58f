"""The compiled readers of ``kit/dicom/_getc.c`` where pip built it (a C compiler at install), else None.

Each caller keeps what it takes as a module attribute (``_clientphase._c_message``,
``_getphase._c_identity``): None there means the Python path alone, which is how the tests
compare the two (tests/unit/dicom_store/test_getc.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["getc"]


def getc(name: str) -> Callable[..., Any] | None:
    """``kit.dicom._getc.<name>``, or None where the module is not built."""
    try:
        from kit.dicom import _getc
    except ImportError:  # pragma: no cover - CI builds it (test_the_c_readers_are_built_and_used)
        return None
    return getattr(_getc, name)
