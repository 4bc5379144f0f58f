"""The :class:`Secret` holder for credentials (re-exported by :mod:`kit.config`)."""

from __future__ import annotations

from typing import Any

from kit._redact import register_secret

__all__ = ["Secret"]


class Secret:
    """A credential whose value is never printed, logged or pickled into outputs.

    Parameters
    ----------
    value : str
        The secret value. Read it back with :meth:`reveal`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)  # masked in every error and log line (kit._redact)

    def reveal(self) -> str:
        """Return the secret value (for building a request, never for display)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")
