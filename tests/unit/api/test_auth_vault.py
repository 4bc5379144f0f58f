"""API keys (roles, scrypt hashes, constant-time checks) and the Fernet credential vault (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.config import ApiSettings, Secret
from kit.errors import ConfigError, InvalidInputError, StoreError
from kit.services._auth import Role, check_key_text, hash_key, key_id, new_key, verify_key
from kit.services.api_vault import CredentialVault, new_fernet_key


@pytest.mark.parametrize(
    ("have", "need", "ok"),
    [
        ("read", "read", True),
        ("read", "write", False),
        ("read", "admin", False),
        ("write", "read", True),
        ("write", "write", True),
        ("write", "admin", False),
        ("admin", "read", True),
        ("admin", "admin", True),
    ],
)
def test_roles_allow_what_the_roles_below_them_do(have: str, need: str, ok: bool) -> None:
    assert Role(have).allows(Role(need)) is ok


def test_a_key_verifies_against_its_hash_and_no_other() -> None:
    key, other = new_key(), new_key()
    stored = hash_key(key)
    assert key not in stored and stored.startswith("scrypt$")
    assert verify_key(key, stored) and not verify_key(other, stored)
    assert hash_key(key) != stored  # a new salt every time
    assert key_id(key) == key_id(key) != key_id(other) and len(key_id(key)) == 16


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "scrypt$",
        "bcrypt$1$2$3$4$5",
        "scrypt$3$8$1$AAAA$AAAA",
        "scrypt$16384$8$1$!!$AAAA",
        "scrypt$16384$8$1$AAAA",
    ],
)
def test_a_malformed_stored_hash_is_false_not_an_error(stored: str) -> None:
    assert verify_key(new_key(), stored) is False


@settings(max_examples=30, deadline=None)
@given(st.text(max_size=300))
def test_any_text_as_a_key_is_refused_or_checked_never_an_exception(text: str) -> None:
    try:
        check_key_text(text)
    except InvalidInputError as exc:
        assert len(text) < 8 or text not in str(exc)  # a short text can occur in any sentence
    assert verify_key(text, "scrypt$2$1$1$AAAA$AAAA") is False


def test_the_vault_seals_without_clear_text_and_opens_as_secrets() -> None:
    vault = CredentialVault(new_fernet_key())
    token = vault.seal({"password": "hunter2-very-secret"})
    assert b"hunter2" not in token
    opened = vault.open(token)
    assert isinstance(opened["password"], Secret) and opened["password"].reveal() == "hunter2-very-secret"
    with pytest.raises(StoreError, match="cannot be decrypted"):
        CredentialVault(new_fernet_key()).open(token)
    with pytest.raises(StoreError):
        vault.open(token[:-3] + b"AAA")


def test_a_missing_or_bad_fernet_key_is_a_config_error_that_says_how_to_make_one() -> None:
    with pytest.raises(ConfigError, match="KIT_API_FERNET_KEY.*Fernet.generate_key"):
        CredentialVault.from_settings(ApiSettings())
    with pytest.raises(ConfigError, match="not a Fernet key") as info:
        CredentialVault("not-a-key-but-a-password")
    assert "not-a-key-but-a-password" not in str(info.value)
    assert repr(CredentialVault(new_fernet_key())) == "CredentialVault('********')"
