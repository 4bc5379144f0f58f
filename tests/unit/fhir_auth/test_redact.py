"""kit._redact: the secret registry, the credential shapes, KitError and the kit loggers."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import _redact
from kit.config import Secret
from kit.errors import (
    ConfigError,
    FhirValidationError,
    KitError,
    NakError,
    OperationOutcomeError,
    VerificationError,
)


def test_every_secret_is_registered_when_made() -> None:
    Secret("s3cr3t-value-for-redaction")
    assert _redact.redact("x s3cr3t-value-for-redaction y") == "x ******** y"
    assert "s3cr3t" not in _redact.redact("url?pw=s3cr3t-value-for-redaction")


def test_url_encoded_forms_and_longest_first() -> None:
    Secret("a b&c/d=secret-pair")
    Secret("a b&c/d=")
    assert _redact.redact("form: a+b%26c%2Fd%3Dsecret-pair") == "form: ********"
    assert _redact.redact("x a b&c/d=secret-pair") == "x ********"


@pytest.mark.parametrize("text", [
    "Authorization: Bearer abc.def.ghi", "authorization=basic dXNlcjpwYXNz",
    "{'Authorization': 'Token zzzzzz'}", '"authorization": "xyzxyz"', "got BEARER eyJhbGciOi",
])
def test_credential_shapes_are_masked(text: str) -> None:
    out = _redact.redact(text)
    for word in ("abc.def", "dXNlcjpw", "zzzzzz", "xyzxyz", "eyJhbGci"):
        assert word not in out
    assert "********" in out


def test_short_values_are_not_registered() -> None:
    Secret("wrong")  # a test's password: masking the word everywhere would garble messages
    assert _redact.redact("test_wrong_settings") == "test_wrong_settings"
    assert _redact.redact("Authorization: Bearer wrong") == "Authorization: Bearer ********"


def test_transient_values_are_bounded() -> None:
    for i in range(_redact.MAX_SECRETS + 10):
        _redact.register_secret(f"transient-token-{i:05d}", transient=True)
    assert "transient-token-00000" in _redact.redact("transient-token-00000")  # expired, dropped
    last = f"transient-token-{_redact.MAX_SECRETS + 9:05d}"
    assert _redact.redact(last) == "********"


def test_every_error_class_and_attribute_is_masked() -> None:
    Secret("pw-in-errors-1234")
    errors: list[KitError] = [
        KitError("pw-in-errors-1234"),
        ConfigError("fhir.password", "is pw-in-errors-1234"),
        FhirValidationError("bad", source="pw-in-errors-1234",
                            issues=[{"diagnostics": "Bearer pw-in-errors-1234", "expression": ["x"]}]),
        OperationOutcomeError("no", issues=[{"diagnostics": ["nested", {"k": "pw-in-errors-1234"}]}],
                              peer="http://u:pw-in-errors-1234@h"),
        NakError("nak", ack_code="AE", text="pw-in-errors-1234"),
        VerificationError("diff", differences=["pw-in-errors-1234"]),
    ]
    for e in errors:
        for shown in (str(e), repr(e), repr(vars(e)), repr(e.args)):
            assert "pw-in-errors-1234" not in shown
    e = KitError("fine")
    e.args = ("later pw-in-errors-1234",)
    assert "pw-in-errors-1234" not in str(e)


def test_a_secret_registered_after_the_error_is_still_masked_when_shown() -> None:
    e = KitError("late-secret-5678 in a message")
    Secret("late-secret-5678")
    assert "late-secret-5678" not in str(e) and "late-secret-5678" not in repr(e)


def test_log_records_of_the_kit_tree_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    Secret("pw-in-logs-4321")
    caplog.set_level(logging.DEBUG)
    logging.getLogger("kit.fhir.client").warning("answer %s", "echo pw-in-logs-4321")
    logging.getLogger("kit").info("Authorization: Bearer %s", "abcdefgh")
    logging.getLogger("kit.hl7.mllp").error("%(x)s", {"x": "pw-in-logs-4321"})
    assert "pw-in-logs-4321" not in caplog.text and "abcdefgh" not in caplog.text
    assert caplog.text.count("********") == 3


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(max_size=40), suffix=st.text(max_size=40))
def test_a_registered_secret_never_survives(prefix: str, suffix: str) -> None:
    Secret("fuzz-secret-0f0f0f")
    assert "fuzz-secret-0f0f0f" not in _redact.redact(prefix + "fuzz-secret-0f0f0f" + suffix)
