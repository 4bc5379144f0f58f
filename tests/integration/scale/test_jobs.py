"""kit.scale jobs on a LocalCluster of 2 worker processes give the rows of the local path.

Each job runs on the package's cluster (conftest) and is compared, as sorted
frames, with the single-process function it scales out (index_dicom,
Deidentifier.files, read_file per file, to_frames per file), on the sample
cohort and on generated larger inputs with bad files among them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kit.deid.pseudonyms import ReidentificationMap
from kit.dicom.deid import Deidentifier, DeidOptions
from kit.dicom.index import index_dicom
from kit.errors import FhirValidationError, InvalidInputError
from kit.examples import dicom_dir, hl7_feed
from kit.examples.dicom import random_ct_files
from kit.examples.fhir import build_bundle
from kit.examples.hl7 import feed
from kit.fhir.frames import to_frames
from kit.hl7.archive import read_file_chunks
from kit.hl7.frames import TABLES, read_file
from kit.scale.dicom import deid_dataset, index_dataset
from kit.scale.frames import fhir_dataset, hl7_dataset

KEY = b"scale-test-project-key"
_UUID = re.compile(r"([0-9a-f]{8})(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def _sorted(df: pl.DataFrame, *by: str) -> pl.DataFrame:
    return df.sort(list(by) or [c for c, t in df.schema.items() if not isinstance(t, pl.List)])


def _parts(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """361 generated CT files in 3 studies and at the top, two text files, a truncated DICOM, an
    empty file, a second name of a file, a broken link and a link to a folder."""
    root = tmp_path_factory.mktemp("ct")
    for k in range(3):
        random_ct_files(root / f"s{k}", 120, patient_id=f"MRN90{k}1", seed=k, size=8)
    (root / "s1" / "notes.txt").write_text("not DICOM at all\n")
    whole = (root / "s2" / "00000.dcm").read_bytes()
    (root / "s2" / "truncated.dcm").write_bytes(whole[:300])
    (root / "s0" / "empty.dcm").write_bytes(b"")
    # files beside sub-folders: the walk (files first) and path order differ
    (root / "zz-top.dcm").write_bytes((root / "s1" / "00001.dcm").read_bytes())
    (root / "zz-readme.txt").write_text("not DICOM either")
    # entries the walk passes over: a second name of a file, a broken link, a link to a folder
    (root / "s0" / "again.dcm").symlink_to(root / "s1" / "00001.dcm")
    (root / "s2" / "gone.dcm").symlink_to(root / "nowhere.dcm")
    (root / "s1" / "loop").symlink_to(root, target_is_directory=True)
    return root


# --------------------------------------------------------------------------------------- index


def test_index_of_the_sample_cohort_on_two_workers_equals_the_local_index(client: Any,
                                                                          tmp_path: Path) -> None:
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        got = index_dataset(dicom_dir(), tmp_path / "idx", client=client, chunk=16)
    local = index_dicom(dicom_dir(), workers=1)
    frame = pl.scan_parquet(tmp_path / "idx").collect()
    assert frame.height == got.rows == local.frame.height > 100
    assert_frame_equal(frame, local.frame)  # row for row: the parts in name order are sorted by path
    assert got.partitions == -(-local.frame.height // 16)
    assert _parts(tmp_path / "idx") == [f"part-{i:05d}.parquet" for i in range(got.partitions)]
    assert len({t["worker"] for t in stream.data}) == 2  # both workers took partitions
    assert_frame_equal(got.skipped, local.skipped)


def test_index_of_generated_files_with_bad_ones_reports_them_as_the_local_index(
        client: Any, ct_folder: Path, tmp_path: Path) -> None:
    got = index_dataset(ct_folder, tmp_path / "idx", client=client, chunk=100)
    local = index_dicom(ct_folder, workers=1)
    assert local.frame.height == 361 and local.skipped.height == 7
    assert_frame_equal(got.scan().collect(), local.frame)
    assert_frame_equal(got.skipped, local.skipped)  # the same reasons, in the same order


def test_a_rerun_with_fewer_partitions_leaves_no_stale_part(client: Any, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    (tmp_path / "keep.txt").write_text("not ours")
    index_dataset(dicom_dir(), out, client=client, chunk=16)
    again = index_dataset(dicom_dir(), out, client=client, chunk=64)
    assert _parts(out) == [f"part-{i:05d}.parquet" for i in range(again.partitions)] and again.partitions == 3
    assert pl.scan_parquet(out).collect().height == again.rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "keep.txt"]  # no scratch folder left


def test_the_index_in_this_process_writes_the_same_dataset(tmp_path: Path) -> None:
    got = index_dataset(dicom_dir(), tmp_path / "idx", client=None, chunk=40)
    local = index_dicom(dicom_dir(), workers=1)
    assert_frame_equal(_sorted(got.scan().collect(), "path"), _sorted(local.frame, "path"))


# ---------------------------------------------------------------------------------------- deid


def _relative(frame: pl.DataFrame, root: Path) -> pl.DataFrame:
    return frame.with_columns(pl.col("path_out").str.strip_prefix(str(root)))


def test_deid_on_two_workers_writes_the_files_rows_and_map_of_one_process(
        client: Any, tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(dicom_dir() / "MRN1002", src / "MRN1002")
    shutil.copytree(dicom_dir() / "MRN1004", src / "MRN1004")
    (src / "MRN1004" / "readme.txt").write_text("not DICOM")
    (src / "MRN1004" / "again.dcm").symlink_to(next((src / "MRN1002").rglob("*.dcm")))  # passed over
    options = DeidOptions(retain_longitudinal_modified_dates=True)
    local = Deidentifier(KEY, options=options)
    expected = local.files(src, tmp_path / "local").frame
    got = deid_dataset(src, tmp_path / "dask", tmp_path / "rows", key=KEY, options=options, client=client,
                       chunk=8)
    assert got.partitions > 2 and got.result.count("skipped") == 2
    assert "the same file as" in expected.filter(pl.col("path_in").str.ends_with("again.dcm"))["reason"][0]
    assert_frame_equal(_relative(got.result.frame, tmp_path / "dask"),
                       _relative(expected, tmp_path / "local"))
    rows = pl.scan_parquet(tmp_path / "rows").collect()
    assert_frame_equal(rows, got.result.frame)
    mine = sorted(p.relative_to(tmp_path / "dask") for p in (tmp_path / "dask").rglob("*.dcm"))
    theirs = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.dcm"))
    assert mine == theirs and len(mine) == got.result.n_deidentified
    assert all((tmp_path / "dask" / p).read_bytes() == (tmp_path / "local" / p).read_bytes() for p in mine)
    # the map every worker contributed to is the map one process builds, and only the client has it
    assert_frame_equal(got.reid_map.frame, local.reid_map.frame)
    assert not any(p.suffix == ".parquet" for p in (tmp_path / "dask").rglob("*"))


def test_deid_with_a_map_of_another_key_fails_before_writing(client: Any, tmp_path: Path) -> None:
    other = Deidentifier(b"another-project-key")
    other.files(dicom_dir() / "MRN1003", tmp_path / "first")
    with pytest.raises(InvalidInputError, match="another key"):
        deid_dataset(dicom_dir() / "MRN1003", tmp_path / "dask", tmp_path / "rows", key=KEY,
                     reid_map=ReidentificationMap(other.reid_map.frame), client=client)
    assert not (tmp_path / "dask").exists()


def test_deid_rows_are_not_written_inside_the_deidentified_output(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="separate folders"):
        deid_dataset(dicom_dir() / "MRN1003", tmp_path / "out", tmp_path / "out" / "rows", key=KEY)


# ----------------------------------------------------------------------------------------- hl7


@pytest.fixture(scope="module")
def hl7_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The sample feed, 3 generated files of 1,500 messages (fresh control ids) and a file with junk."""
    root = tmp_path_factory.mktemp("hl7")
    base = list(feed())
    files = [hl7_feed()]
    for k in range(3):
        path = root / f"archive-{k}.hl7"
        with path.open("w", encoding="utf-8", newline="") as out:
            for i in range(1500):
                head, _, rest = base[i % len(base)].partition("\r")
                fields = head.split("|")
                fields[9] = f"K{k}-{i:06d}" if i % 97 else "REUSED"  # reused control ids within a file
                out.write("|".join(fields) + "\r" + rest + "\n")
        files.append(path)
    junk = root / "junk.hl7"
    junk.write_bytes(b"garbage before the first MSH\n" + base[0].encode() + b"\nMSH|^~\\&|X\rPID|1\n"
                     + b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|9|P|2.5\rOBX|1|NM|x||1e999\n")
    files.append(junk)
    return files


def test_hl7_files_on_two_workers_give_the_tables_of_kit_hl7_parse(
        client: Any, hl7_files: list[Path], tmp_path: Path) -> None:
    got = hl7_dataset(hl7_files, tmp_path / "tables", client=client)
    local = [read_file(f) for f in hl7_files]
    assert got.partitions == len(hl7_files) and list(got.rows) == list(TABLES)
    for table in TABLES:
        expected = pl.concat([p[table] for p in local], how="vertical")
        assert_frame_equal(got.scan(table).collect(), expected)  # parts in name order = input order
        assert got.rows[table] == expected.height
    assert got.rows["messages"] > 4500 and got.rows["skipped"] >= 2
    assert got.scan("messages").filter(pl.col("reused_control_id")).collect().height > 0


def test_an_unreadable_hl7_file_raises_as_locally_and_leaves_no_dataset(
        client: Any, hl7_files: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "looks-like-a-file.hl7"
    folder.mkdir()  # exists, but reading it fails on the worker (IsADirectoryError)
    files = [str(hl7_files[0]), str(folder)]
    with pytest.raises(InvalidInputError) as local:  # what a worker does: read the file chunk by chunk
        for f in files:
            list(read_file_chunks(f))
    from kit.scale import frames as scale_frames

    real = scale_frames._files
    scale_frames._files = lambda fs: [os.fspath(f) for f in fs]  # let the folder through to the worker
    try:
        with pytest.raises(InvalidInputError) as remote:
            hl7_dataset(files, tmp_path / "tables", client=client)
    finally:
        scale_frames._files = real
    assert type(remote.value) is type(local.value)
    assert str(remote.value) == str(local.value) and remote.value.source == local.value.source
    assert not list((tmp_path / "tables").rglob("*.parquet"))


# ---------------------------------------------------------------------------------------- fhir


@pytest.fixture(scope="module")
def ndjson_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The sample bundle as Bulk Data export files (one per type), 40 copies with fresh ids,
    Observation split over two files."""
    root = tmp_path_factory.mktemp("ndjson")
    by_type: dict[str, list[str]] = {}
    resources = [json.dumps(e["resource"]) for e in build_bundle()["entry"]]
    for copy in range(40):
        for resource in resources:
            text = _UUID.sub(f"{copy:08x}" + r"\2", resource)
            by_type.setdefault(json.loads(text)["resourceType"], []).append(text)
    files = []
    for rtype, lines in sorted(by_type.items()):
        halves = [lines[: len(lines) // 2], lines[len(lines) // 2:]] if rtype == "Observation" else [lines]
        for k, part in enumerate(halves):
            path = root / f"{rtype}.{k}.ndjson"
            path.write_text("\n".join(part) + "\n")
            files.append(path)
    return files


def test_ndjson_files_on_two_workers_give_the_frames_of_to_frames(
        client: Any, ndjson_files: list[Path], tmp_path: Path) -> None:
    got = fhir_dataset(ndjson_files, tmp_path / "frames", client=client)
    local: dict[str, list[pl.DataFrame]] = {}
    for f in ndjson_files:
        for rtype, frame in to_frames(f).items():
            local.setdefault(rtype, []).append(frame)
    assert sorted(got.rows) == sorted(local) and got.rows["Observation"] == 18 * 40
    for rtype, frames in local.items():
        assert_frame_equal(got.scan(rtype).collect(), pl.concat(frames, how="vertical"))


def test_a_malformed_ndjson_line_raises_the_local_error(
        client: Any, ndjson_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "Observation.bad.ndjson"
    lines = ndjson_files[0].read_text().splitlines()
    bad.write_text("\n".join([*lines[:3], '{"resourceType": "Observation", "id": 5}', *lines[3:]]) + "\n")
    files = [*ndjson_files, bad]
    with pytest.raises(FhirValidationError) as local:
        for f in files:
            to_frames(f)
    with pytest.raises(FhirValidationError) as remote:
        fhir_dataset(files, tmp_path / "frames", client=client)
    assert str(remote.value) == str(local.value) and remote.value.source == local.value.source
    assert not list((tmp_path / "frames").rglob("*.parquet"))
