"""Fixtures of the Medix tests: the embedded PACS/FHIR stack and services started on it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from kit.config import MedixSettings, Secret, Settings
from kit.services.medix import MedixService
from kit.stack import Stack
from tests.integration.medix.helpers import TOKEN

#: fast webhook retries for tests
FAST = {"webhook_backoff": 0.05, "webhook_backoff_max": 0.2, "webhook_timeout": 5.0, "min_free_bytes": 0}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The embedded PACS and FHIR server with the sample cohort (one per module)."""
    with Stack.ephemeral(services=("pacs", "fhir")) as running:
        yield running


def medix_settings(base: Settings, workspace: Path, **medix: Any) -> Settings:
    """``base`` with a ``[medix]`` section for tests (fast webhook retries, the workspace)."""
    return dataclasses.replace(base, medix=MedixSettings(workspace=str(workspace), **{**FAST, **medix}))


@pytest.fixture
def medix_service(tmp_path: Path) -> Iterator[Callable[..., AbstractContextManager[MedixService]]]:
    """``medix_service(settings, **medix)``: a started service on an ephemeral port, stopped after."""

    @contextmanager
    def make(base: Settings, **medix: Any) -> Iterator[MedixService]:
        settings = medix_settings(base, tmp_path / "medix", **medix)
        with MedixService(settings, token=Secret(TOKEN), port=0) as service:
            yield service

    yield make
