"""Fixtures of the cohort-pull tests: 50 tiny studies, a counting embedded PACS holding them."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit.config import CohortSettings, PacsSettings, Settings, load_settings
from tests.integration.cohort_pull.helpers import CountingPACS, Study, make_studies


@pytest.fixture(scope="module")
def studies_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Study]]:
    folder = tmp_path_factory.mktemp("studies")
    return folder, make_studies(folder, 50)


@pytest.fixture(scope="module")
def pacs_data(tmp_path_factory: pytest.TempPathFactory, studies_dir: tuple[Path, list[Study]]) -> Path:
    """A PACS data folder holding the 50 studies (copied for each test: importing is the slow part)."""
    folder = tmp_path_factory.mktemp("pacs") / "data"
    server = CountingPACS(folder, port=0)
    server.import_files([studies_dir[0]])
    server.store.close()
    return folder


@pytest.fixture
def pacs(tmp_path: Path, pacs_data: Path) -> Iterator[CountingPACS]:
    """A counting embedded PACS on an ephemeral port holding the 50 studies (one per test)."""
    shutil.copytree(pacs_data, tmp_path / "pacs")
    server = CountingPACS(tmp_path / "pacs", port=0)
    server.start()
    try:
        yield server
    finally:
        server.close()


def settings_for(pacs: CountingPACS, **cohort: object) -> Settings:
    """Settings pointing at ``pacs`` with fast retries, overridden by ``cohort``."""
    base = load_settings(env={})
    fast = {"backoff": 0.1, "max_backoff": 0.5, "max_attempts": 20, **cohort}
    return dataclasses.replace(base, pacs=PacsSettings(host="127.0.0.1", port=pacs.port, called_aet=pacs.aet,
                                                       timeout=10.0),
                               cohort=CohortSettings(**fast))  # type: ignore[arg-type]
