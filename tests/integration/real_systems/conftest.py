"""Fixtures for kit against separately configured systems: the embedded stack on ephemeral ports,
the `kit` command run as a user runs it (a subprocess configured through KIT_* variables)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.stack import Stack

KIT = [sys.executable, "-m", "kit.cli"]


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    """The embedded stack with the sample cohort, on ephemeral loopback ports."""
    with Stack.ephemeral() as running:
        yield running


def stack_env(stack: Stack) -> dict[str, str]:
    """KIT_* variables pointing the command at ``stack`` (no kit.toml picked up)."""
    s = stack.client_settings()
    return {**os.environ, "KIT_CONFIG": "", "PYTHONUNBUFFERED": "1",
            "KIT_PACS_HOST": s.pacs.host, "KIT_PACS_PORT": str(s.pacs.port),
            "KIT_PACS_CALLED_AET": s.pacs.called_aet, "KIT_FHIR_BASE": s.fhir.base,
            "KIT_HL7_HOST": s.hl7.host, "KIT_HL7_PORT": str(s.hl7.port)}


def run_kit(cwd: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kit ARGS`` in ``cwd`` (an empty folder, so no ./kit.toml is read)."""
    env = env if env is not None else {**os.environ, "KIT_CONFIG": ""}
    return subprocess.run([*KIT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
