"""``observation_row``: a test using it runs once per Observation row extractor of the fast path,
the C one (``kit.fhir._rowc``, where built) and the Python one it stands in for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kit.fhir import frames_fast_types as ft
from tests.conftest import require_built


@pytest.fixture(params=["c", "python"])
def observation_row(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "c" and ft.ROW["Observation"] is ft._observation:
        require_built(None, "kit.fhir._rowc")
    if request.param == "python":
        monkeypatch.setitem(ft.ROW, "Observation", ft._observation)
    yield request.param
