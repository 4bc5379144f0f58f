"""Properties of the pieces of kit.scale.run that need no cluster (bounded Hypothesis)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import (
    ConfigError,
    FhirValidationError,
    HL7ParseError,
    InvalidInputError,
    KitError,
    PeerTimeoutError,
    ServiceFailedError,
)
from kit.scale.run import Fault, guarded, part_name, prepare_dataset, write_part

TEXT = st.text(min_size=0, max_size=40)


def _raise(error: BaseException) -> None:
    raise error


@settings(max_examples=60, deadline=None)
@given(total=st.integers(min_value=2, max_value=2_000_000), data=st.data())
def test_part_names_sort_as_their_partitions(total: int, data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.integers(min_value=0, max_value=total - 1), min_size=2, max_size=20,
                               unique=True))
    names = [part_name(i, total) for i in picks]
    assert sorted(names) == [part_name(i, total) for i in sorted(picks)]
    assert len({len(n) for n in names}) == 1


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["config", "input", "fhir", "hl7", "peer", "service", "bug"]),
       a=TEXT, b=TEXT, n=st.integers(min_value=0, max_value=99))
def test_any_failure_in_a_partition_comes_back_as_a_kit_error_of_the_same_class(
        kind: str, a: str, b: str, n: int) -> None:
    error: BaseException = {
        "config": lambda: ConfigError(a or "k", b),
        "input": lambda: InvalidInputError(a, source=b or None),
        "fhir": lambda: FhirValidationError(a, source=b, issues=[{"diagnostics": b}]),
        "hl7": lambda: HL7ParseError(a, segment=b[:3] or None, field=n),
        "peer": lambda: PeerTimeoutError(a, peer=b or None),
        "service": lambda: ServiceFailedError(a, service=b or "dask"),
        "bug": lambda: KeyError(a),
    }[kind]()
    fault = guarded(_raise, error)
    assert isinstance(fault, Fault)
    again = fault.error()
    assert isinstance(again, KitError)
    if isinstance(error, KitError):
        assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
    else:
        assert isinstance(again, ServiceFailedError) and "KeyError" in str(again)


def test_parts_are_renamed_into_place_and_earlier_parts_removed(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    for i in range(3):
        write_part(pl.DataFrame({"i": [i]}), str(out), i, 3)
    (out / "notes.txt").write_text("mine")
    prepare_dataset(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    write_part(pl.DataFrame({"i": [7]}), str(out / "t"), 0, 1)
    assert not list(tmp_path.rglob("*.tmp"))  # written beside, renamed in: nothing half-written left
    assert [p.name for p in (out / "t").iterdir()] == ["part-00000.parquet"]
    assert pl.scan_parquet(out / "t").collect()["i"].to_list() == [7]
