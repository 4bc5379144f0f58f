"""Reading a cohort file: text stays text (accession numbers keep their leading zeros)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from kit.cohort.plan import items_from_frame
from kit.cohort.pull import read_cohort
from kit.errors import InvalidInputError


def test_csv_values_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text("accession_number,patient_id,study_date\n000123,,\n,0042,20240101-20240131\n")
    items = items_from_frame(read_cohort(path))
    assert [i.key for i in items] == ["accession_number=000123",
                                      "patient_id=0042 study_date=20240101-20240131"]


def test_tsv_parquet_and_frames(tmp_path: Path) -> None:
    (tmp_path / "c.tsv").write_text("mrn\tstudy_date\nM1\t2024-01-01\n")
    assert items_from_frame(read_cohort(tmp_path / "c.tsv"))[0].key == "patient_id=M1 study_date=20240101"
    frame = pl.DataFrame({"accession": ["A1"]})
    frame.write_parquet(tmp_path / "c.parquet")
    assert read_cohort(tmp_path / "c.parquet").equals(frame)
    assert read_cohort(frame) is frame


@pytest.mark.parametrize(("name", "data", "message"), [
    ("c.xlsx", b"PK", "is .csv, .tsv or .parquet"),
    ("c.csv", b"\xff\xfe\x00\x80 not utf-8\n\x81,\x82\n", "cannot read the cohort|no accession_number"),
    ("c.parquet", b"not parquet", "cannot read the cohort"),
    ("c.csv", b"accession_number,x\nA1,1,2,3\n", "cannot read the cohort"),
])
def test_unreadable_files_are_invalid_input(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InvalidInputError, match=message):
        items_from_frame(read_cohort(path))
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_cohort(tmp_path / "missing.csv")
