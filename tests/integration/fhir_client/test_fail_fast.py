"""A dead port fails fast; only what retrying can fix is retried (issue 8 #13, FHIR part)."""

from __future__ import annotations

import socket
import time

import pytest

from kit.errors import InvalidInputError, PeerUnreachableError
from kit.fhir.client import FhirClient, RetryPolicy
from tests.conftest import free_port


def test_refused_connection_with_the_default_policy_fails_within_2_s() -> None:
    with FhirClient(f"http://127.0.0.1:{free_port()}/fhir") as client:  # default RetryPolicy
        t0 = time.monotonic()
        with pytest.raises(PeerUnreachableError, match="Connection refused"):
            client.capabilities()
        assert time.monotonic() - t0 < 2.0


def test_an_unresolvable_name_is_not_retried() -> None:
    host = "no-such-host.invalid"
    try:
        socket.getaddrinfo(host, 80)
    except socket.gaierror:
        pass
    else:  # pragma: no cover - a resolver that answers for .invalid
        pytest.skip("this resolver answers for .invalid")
    policy = RetryPolicy(max_attempts=5, max_connect_attempts=5, backoff=1.0)
    with FhirClient(f"http://{host}/fhir", retries=policy) as client:
        t0 = time.monotonic()
        with pytest.raises(PeerUnreachableError) as err:
            client.capabilities()
        assert time.monotonic() - t0 < 1.0
    assert "gave up" not in str(err.value)


def test_retries_for_the_command_line() -> None:
    policy = RetryPolicy.with_retries(3, backoff=0.01)
    assert (policy.max_attempts, policy.max_connect_attempts, policy.backoff) == (4, 4, 0.01)
    with FhirClient(f"http://127.0.0.1:{free_port()}/fhir", retries=policy) as client:
        with pytest.raises(PeerUnreachableError, match="gave up after 4 attempts"):
            client.capabilities()
    assert RetryPolicy.with_retries(0).max_attempts == 1
    for bad in (-1, True, 1.5):
        with pytest.raises(InvalidInputError):
            RetryPolicy.with_retries(bad)  # type: ignore[arg-type]
