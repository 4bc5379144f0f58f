"""API keys for the kit's HTTP services: roles, key generation, hashing and verification (pure).

A key is a random secret (``kit_`` + 43 url-safe characters, 256 bits) shown
once when it is made. The services store only:

* its **key id**, the first 16 hex digits of its SHA-256, to find the stored
  record without trying every hash (it says nothing useful about a random key);
* its **hash**, ``scrypt`` (:func:`hashlib.scrypt`, RFC 7914) over the key with
  a random 16-byte salt, as ``scrypt$n$r$p$<salt>$<digest>`` (base64).

:func:`verify_key` recomputes the hash and compares with
:func:`hmac.compare_digest` (constant time). A :class:`Role` is ``read``
(read-only), ``write`` or ``admin``; each allows what the roles below it do.

Written by hand: a few lines over :mod:`hashlib`, :mod:`hmac` and :mod:`secrets`.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from typing import Final

from kit.errors import InvalidInputError

__all__ = [
    "KEY_PREFIX",
    "MAX_KEY_LENGTH",
    "MIN_KEY_LENGTH",
    "Role",
    "check_key_text",
    "hash_key",
    "key_id",
    "new_key",
    "verify_key",
]

#: Prefix of the keys :func:`new_key` makes (so a leaked one is recognisable in a scan).
KEY_PREFIX: Final = "kit_"
#: Shortest key accepted (a bootstrap key from the environment too).
MIN_KEY_LENGTH: Final = 32
#: Longest key accepted (a longer header is refused before any hashing).
MAX_KEY_LENGTH: Final = 256

_N: Final = 2**14  # scrypt cost: ~16 MiB and a few tens of ms per check
_R: Final = 8
_P: Final = 1
_MAXMEM: Final = 64 * 1024 * 1024


class Role(enum.StrEnum):
    """What a key may do: ``read`` (GET only), ``write`` (change data), ``admin`` (keys, integrations)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role may do what ``needed`` may."""
        return _RANK[self] >= _RANK[Role(needed)]


_RANK: Final = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}


def check_key_text(key: object) -> str:
    """``key`` if it can be a key: printable ASCII without spaces, ``MIN_KEY_LENGTH``..``MAX_KEY_LENGTH``.

    Raises
    ------
    kit.errors.InvalidInputError
        It cannot (the message never repeats the key).
    """
    if not isinstance(key, str) or not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidInputError(f"an API key is {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters")
    if not all(33 <= ord(c) < 127 for c in key):
        raise InvalidInputError("an API key is printable ASCII without spaces")
    return key


def new_key() -> str:
    """A new random key: ``kit_`` and 43 url-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id(key: str) -> str:
    """The key's id: the first 16 hex digits of its SHA-256 (what a stored record is found by)."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()[:16]


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)


def hash_key(key: str) -> str:
    """The stored form of ``key``: ``scrypt$n$r$p$<salt b64>$<digest b64>`` with a new random salt."""
    check_key_text(key)
    salt = secrets.token_bytes(16)
    digest = _scrypt(key, salt, _N, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_key(key: str, stored: str) -> bool:
    """True when ``key`` hashes to ``stored`` (constant-time compare); False for anything malformed."""
    try:
        check_key_text(key)
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if not (2 <= n_ <= 2**20 and n_ & (n_ - 1) == 0 and 1 <= r_ <= 32 and 1 <= p_ <= 16):
            return False
        want = base64.b64decode(digest, validate=True)
        got = _scrypt(key, base64.b64decode(salt, validate=True), n_, r_, p_)
    except (InvalidInputError, ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)
