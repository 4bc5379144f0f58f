"""One regeneration of the samples (DICOM + endoscopy) per test session, shared by the tests here."""

from __future__ import annotations

from pathlib import Path

import pytest

from kit import examples


@pytest.fixture(scope="session")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("samples")
    written = examples.regenerate(root, generators=["dicom", "endoscopy"])
    return root, written
