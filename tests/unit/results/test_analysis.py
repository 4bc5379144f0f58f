"""The shipped analysis finds the sample cohort's synthetic lesions where cohort.py put them."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kit.errors import InvalidInputError
from kit.examples.cohort import studies
from kit.examples.dicom import CT_PIXEL_MM, CT_SLICE_MM, ct_datasets
from kit.results.analysis import DIAMETER, LESION, VOLUME, analyse_ct, components

WITH_LESION = [s for s in studies(modality="CT") if s.lesion is not None]
WITHOUT = [s for s in studies(modality="CT") if s.lesion is None]


@pytest.mark.parametrize("study", WITH_LESION, ids=lambda s: s.key)
def test_the_lesion_is_found_where_and_as_large_as_the_cohort_made_it(study) -> None:  # type: ignore[no-untyped-def]
    lesion = study.lesion
    sources = ct_datasets(study)
    result = analyse_ct(sources[::-1])  # any order: sorted by position
    diameter = next(m for m in result.measurements if m.name == DIAMETER)
    volume = next(m for m in result.measurements if m.name == VOLUME)
    assert diameter.unit.value == "mm" and volume.unit.value == "mm3"
    assert abs(diameter.value - 2 * lesion.radius_mm) <= CT_PIXEL_MM  # within one voxel
    truth = 4 / 3 * np.pi * lesion.radius_mm ** 3
    assert abs(volume.value - truth) / truth < 0.2
    (region,) = result.regions
    assert region.kind == LESION
    # the mask lies on exactly the slices the sphere crosses, and its centre is the sphere's
    lz, lr, lc = lesion.center
    crossed = [k for k in range(len(sources)) if abs(k - lz) * CT_SLICE_MM <= lesion.radius_mm]
    assert region.source_instances == tuple(study.instance_uid(1, k + 1) for k in crossed)
    where = np.nonzero(region.mask)
    assert abs(np.mean(where[1]) - lr) <= 1 and abs(np.mean(where[2]) - lc) <= 1
    assert abs(crossed[int(round(np.mean(where[0])))] - lz) <= 1
    (label,) = result.labels
    assert label.value == LESION and label.score is not None and 0.8 <= label.score <= 1.0
    assert result.conclusion and f"{diameter.value:.1f} mm" in result.conclusion
    s = result.subject
    assert (s.patient_id, s.study_instance_uid, s.accession_number) == (study.mrn, study.study_uid,
                                                                          study.accession)
    # one run is one result (re-sent, it duplicates nothing); a new run is a new result
    assert analyse_ct(sources, created=result.created).result_id == result.result_id
    assert analyse_ct(sources).result_id != result.result_id


@pytest.mark.parametrize("study", WITHOUT, ids=lambda s: s.key)
def test_a_ct_without_lesion_says_so_with_no_findings(study) -> None:  # type: ignore[no-untyped-def]
    result = analyse_ct(ct_datasets(study))
    assert result.conclusion == "No lesion found."
    assert not result.regions and not result.measurements and not result.labels


def test_a_lesion_smaller_than_min_voxels_is_not_reported() -> None:
    study = next(s for s in WITH_LESION if s.lesion.radius_mm == 6.0)
    assert analyse_ct(ct_datasets(study), min_voxels=10_000).conclusion == "No lesion found."


def test_what_is_not_a_ct_series_is_an_invalid_input_error() -> None:
    sources = ct_datasets(WITH_LESION[0])
    with pytest.raises(InvalidInputError):
        analyse_ct([])
    broken = sources[1].copy()
    del broken.ImagePositionPatient
    with pytest.raises(InvalidInputError, match="not a CT series"):
        analyse_ct([sources[0], broken])
    with pytest.raises(InvalidInputError, match="distinct positions"):
        analyse_ct([sources[0], sources[0]])


def _bfs_components(mask: np.ndarray) -> np.ndarray:
    """The slow path: breadth-first flood fill, labels = smallest flat index of each component."""
    out = np.full(mask.shape, -1, dtype=np.int64)
    for start in zip(*np.nonzero(mask), strict=True):
        if out[start] >= 0:
            continue
        seen, queue = [start], deque([start])
        out[start] = 0
        while queue:
            z, r, c = queue.popleft()
            for dz, dr, dc in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                n = (z + dz, r + dr, c + dc)
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and out[n] < 0:
                    out[n] = 0
                    seen.append(n)
                    queue.append(n)
        label = min(np.ravel_multi_index(p, mask.shape) for p in seen)
        for p in seen:
            out[p] = label
    return out


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7))))
def test_components_fast_path_equals_flood_fill(mask: np.ndarray) -> None:
    assert np.array_equal(components(mask), _bfs_components(mask))


def test_components_of_a_long_spiral_converge() -> None:
    mask = np.zeros((1, 31, 31), dtype=bool)
    mask[0, ::2, :] = True
    mask[0, 1::4, -1] = True
    mask[0, 3::4, 0] = True  # one snake through every row: one component
    labels = components(mask)
    assert set(np.unique(labels[mask]).tolist()) == {0}
    with pytest.raises(InvalidInputError):
        components(np.zeros((3, 3), dtype=bool))
