"""Connector credentials encrypted at rest with Fernet (pure).

The integration REST API stores the credentials given for a connector
(passwords, tokens, client secrets) only as a Fernet token
(:class:`cryptography.fernet.Fernet`: AES-128-CBC with HMAC-SHA256, a
timestamp, authenticated). The key comes from ``KIT_API_FERNET_KEY``,
``KIT_API_FERNET_KEY_FILE`` or ``[api] fernet_key_file``; without it the API
does not start (a clear :class:`~kit.errors.ConfigError`). Decrypted values are
wrapped as :class:`kit.config.Secret`, so they are masked in every error and
log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson
from cryptography.fernet import Fernet, InvalidToken

from kit.config import ApiSettings, Secret
from kit.errors import ConfigError, StoreError

__all__ = ["GENERATE_HINT", "CredentialVault", "new_fernet_key"]

#: How to make a key, for the error that says one is missing.
GENERATE_HINT: Final = (
    'generate one with: python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"'
)


def new_fernet_key() -> str:
    """A new Fernet key (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode("ascii")


class CredentialVault:
    """Seal and open connector credentials with one Fernet key.

    Parameters
    ----------
    key : Secret or str
        The Fernet key (32 url-safe base64-encoded bytes).

    Raises
    ------
    kit.errors.ConfigError
        The key is not a Fernet key (the message never shows it).
    """

    def __init__(self, key: Secret | str) -> None:
        text = key.reveal() if isinstance(key, Secret) else key
        try:
            self._fernet = Fernet(text.strip().encode("ascii"))
        except (ValueError, TypeError, UnicodeEncodeError, AttributeError) as exc:
            raise ConfigError(
                "api.fernet_key", "not a Fernet key (32 url-safe base64-encoded bytes); " + GENERATE_HINT
            ) from exc

    def __repr__(self) -> str:
        return "CredentialVault('********')"

    @classmethod
    def from_settings(cls, api: ApiSettings) -> CredentialVault:
        """The vault of ``[api] fernet_key``; a ConfigError saying how to set one when it is missing."""
        if api.fernet_key is None:
            raise ConfigError(
                "api.fernet_key",
                "the API encrypts connector credentials at rest and needs a "
                "key: set KIT_API_FERNET_KEY, KIT_API_FERNET_KEY_FILE or [api] fernet_key_file; "
                + GENERATE_HINT,
            )
        return cls(api.fernet_key)

    def seal(self, credentials: Mapping[str, str]) -> bytes:
        """The credentials as one Fernet token (the bytes that are stored)."""
        return self._fernet.encrypt(orjson.dumps(dict(credentials), option=orjson.OPT_SORT_KEYS))

    def open(self, token: bytes) -> dict[str, Secret]:
        """The credentials of a token, each a :class:`Secret`.

        Raises
        ------
        kit.errors.StoreError
            The token was not made with this key, or was altered.
        """
        try:
            data = orjson.loads(self._fernet.decrypt(bytes(token)))
        except (InvalidToken, orjson.JSONDecodeError, TypeError) as exc:
            raise StoreError(
                "stored credentials cannot be decrypted with this key (was [api] fernet_key changed?)"
            ) from exc
        if not isinstance(data, dict):
            raise StoreError("stored credentials are not a mapping")
        return {str(k): Secret(str(v)) for k, v in data.items()}
