"""Fixtures of the retrieve-cancel tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cohort_pull.helpers import Study, make_studies
from tests.integration.retrieve_cancel.helpers import BIG


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Study]]:
    """Their folder, and the studies in it: one of BIG instances, then two of 3."""
    folder = tmp_path_factory.mktemp("studies")
    big = make_studies(folder, 1, per_study=BIG, prefix="BIG")
    return folder, big + make_studies(folder, 2, prefix="SML")
