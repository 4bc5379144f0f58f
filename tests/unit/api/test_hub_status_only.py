"""Hub.status(only=...): the API probes one connector; an unconfigured one is refused before any probe."""

from __future__ import annotations

import pytest

from kit.config import Settings
from kit.errors import InvalidInputError
from kit.hub import Hub


@pytest.mark.parametrize("only", [["pacs-dicomweb"], ["nonsense"], ["ehr-fhir", "nope"]])
def test_status_only_refuses_connectors_that_are_not_configured(only: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="not configured"):
        # a kit.toml that sets no [dicomweb]: DICOMweb is not one of its systems
        Hub(Settings(source="/site/kit.toml")).status(only=only)


def test_status_only_with_nothing_probes_nothing() -> None:
    assert Hub(Settings()).status(only=[]).height == 0
