"""Bearer-token auth for the Medix service (:mod:`kit.services.medix`); API keys: :mod:`kit.services._auth`.

The token comes from the settings (``KIT_<SECTION>_TOKEN``, ``..._TOKEN_FILE`` or
``token_file``: a :class:`kit.config.Secret`) or a ``--token-file``; it is never
logged or shown. :class:`BearerAuth` compares the presented token with the
expected one in constant time (both hashed first, so not even the length leaks)
and answers 401 with ``WWW-Authenticate: Bearer`` otherwise. Use
:meth:`BearerAuth.allows` in an ASGI middleware (every path, unknown ones too)
or the instance itself as a FastAPI dependency.

Written by hand: a header check over :mod:`hmac`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from kit.config import Secret
from kit.errors import ConfigError

__all__ = ["MIN_TOKEN_LENGTH", "BearerAuth", "load_token"]

#: Shortest token accepted (a guessable token is no protection).
MIN_TOKEN_LENGTH: Final = 16


def load_token(configured: Secret | None, token_file: str | os.PathLike[str] | None, *, key: str) -> Secret:
    """The service's token: from ``token_file`` when given, else the configured one.

    Parameters
    ----------
    configured : Secret, optional
        The token from the settings.
    token_file : path, optional
        A file holding the token (surrounding whitespace ignored).
    key : str
        The setting's name for messages, e.g. ``medix.token``.

    Raises
    ------
    ConfigError
        No token, an unreadable file, or a token under :data:`MIN_TOKEN_LENGTH` characters.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key}_file", f"cannot read {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{key}_file", f"{path} is not UTF-8 text") from exc
        token = Secret(text)
    elif configured is not None:
        token = configured
    else:
        env = "KIT_" + key.upper().replace(".", "_")
        raise ConfigError(key, f"no token: set {env}, {env}_FILE or pass --token-file "
                               f"(the service never runs without one)")
    value = token.reveal()
    if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise ConfigError(key, f"the token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                               f"without spaces")
    return token


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class BearerAuth:
    """Checks ``Authorization: Bearer <token>`` against one token, in constant time.

    Parameters
    ----------
    token : Secret
        The expected token.
    """

    def __init__(self, token: Secret) -> None:
        self._expected = _digest(token.reveal().encode("ascii"))

    def __repr__(self) -> str:
        return "BearerAuth(token='********')"

    def allows(self, authorization: bytes | str | None) -> bool:
        """Whether an ``Authorization`` header value carries the token."""
        if authorization is None:
            return False
        raw = authorization.encode("latin-1", "replace") if isinstance(authorization, str) else authorization
        scheme, _, presented = raw.strip().partition(b" ")
        if scheme.lower() != b"bearer" or len(presented) > 4096:
            return False
        return hmac.compare_digest(_digest(presented.strip()), self._expected)

    async def __call__(self, request: object) -> None:
        """FastAPI dependency: raise 401 unless the request carries the token."""
        from fastapi import HTTPException

        headers = getattr(request, "headers", {})
        if not self.allows(headers.get("authorization")):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})
