"""``--dask`` on ``kit index``, ``kit deid``, ``kit hl7 parse``, ``kit fhir frames``, run as users run them.

One command starts its own LocalCluster (``--dask local``); the others connect to
the package's running cluster by its scheduler address (``--dask tcp://...``),
and one takes it from ``[dask] scheduler`` in kit.toml. Each result is compared
with the same command without ``--dask``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from polars.testing import assert_frame_equal

from kit.examples import dicom_dir, hl7_feed
from kit.hl7.frames import TABLES

KIT = [sys.executable, "-m", "kit.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIT_")}
    env.update({"PYTHONUNBUFFERED": "1", **extra})
    return env


def kit(*args: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KIT, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_kit_index_dask_local_writes_the_index_of_the_local_run(tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(dicom_dir() / "MRN1001", src / "MRN1001")
    (src / "MRN1001" / "notes.txt").write_text("not DICOM")
    local = _ok(kit("index", str(src), "-o", "local.parquet", cwd=tmp_path))
    dask = _ok(kit("index", str(src), "--dask", "local", "--out-dir", "idx", cwd=tmp_path,
                   KIT_DASK_WORKERS="2"))
    assert_frame_equal(pl.read_parquet(tmp_path / "local.parquet").sort("path"),
                       pl.scan_parquet(tmp_path / "idx").collect().sort("path"))
    warning = [ln for ln in local.stderr.splitlines() if "skipped" in ln]
    assert warning and warning == [ln for ln in dask.stderr.splitlines() if "skipped" in ln], \
        (local.stderr, dask.stderr)
    assert str(tmp_path / "idx") in dask.stdout


def test_kit_hl7_parse_on_a_running_scheduler_writes_the_tables_of_the_local_run(
        client: Any, tmp_path: Path) -> None:
    feed = hl7_feed()
    _ok(kit("hl7", "parse", str(feed), str(feed), "--out-dir", "local", cwd=tmp_path))
    out = _ok(kit("hl7", "parse", str(feed), str(feed), "--dask", client.scheduler.address,
                  "--out-dir", "dask", cwd=tmp_path))
    for table in TABLES:
        assert_frame_equal(pl.scan_parquet(tmp_path / "dask" / table).collect(),
                           pl.read_parquet(tmp_path / "local" / f"{table}.parquet"))
        assert sorted(p.name for p in (tmp_path / "dask" / table).iterdir()) == \
            ["part-00000.parquet", "part-00001.parquet"]
    assert "messages" in out.stdout


def test_kit_deid_with_the_scheduler_from_kit_toml_writes_what_the_local_run_writes(
        client: Any, tmp_path: Path) -> None:
    (tmp_path / "kit.toml").write_text(f'[dask]\nscheduler = "{client.scheduler.address}"\n')
    src = dicom_dir() / "MRN1005"
    key = {"KIT_DEID_KEY": "cli-scale-test-key"}
    local = _ok(kit("deid", str(src), "local", "--dask", "", "-o", "local-rows.parquet", cwd=tmp_path, **key))
    dask = _ok(kit("deid", str(src), "dask", "--out-dir", "rows", cwd=tmp_path, **key))
    summary = [ln.replace("/dask ", "/X ").replace("dask.reid", "X.reid") for ln in dask.stderr.splitlines()
               if ln.startswith("kit: de-identified")]
    assert summary == [ln.replace("/local ", "/X ").replace("local.reid", "X.reid")
                       for ln in local.stderr.splitlines() if ln.startswith("kit: de-identified")]
    assert_frame_equal(pl.read_parquet(tmp_path / "local.reid-map.parquet"),
                       pl.read_parquet(tmp_path / "dask.reid-map.parquet"))
    rows = pl.scan_parquet(tmp_path / "rows").collect()
    assert rows.height == pl.read_parquet(tmp_path / "local-rows.parquet").height > 0
    for path_out in rows["path_out"]:
        twin = Path(path_out.replace(str(tmp_path / "dask"), str(tmp_path / "local")))
        assert Path(path_out).read_bytes() == twin.read_bytes()


def test_dask_misuse_is_a_usage_error_and_an_empty_result_a_failure(tmp_path: Path) -> None:
    no_out = kit("index", str(dicom_dir()), "--dask", "local", cwd=tmp_path)
    assert no_out.returncode == 2 and "--out-dir" in no_out.stderr
    bad = kit("hl7", "parse", str(hl7_feed()), "--dask", "my-cluster", "--out-dir", "t", cwd=tmp_path)
    assert bad.returncode == 2 and "scheduler address" in bad.stderr
    stray = kit("index", str(dicom_dir()), "--out-dir", "idx", cwd=tmp_path)
    assert stray.returncode == 2 and "--dask" in stray.stderr
    both = kit("index", str(dicom_dir()), "--dask", "local", "--workers", "2", "--out-dir", "idx",
               cwd=tmp_path)
    assert both.returncode == 2 and "--workers" in both.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("not DICOM")
    none = kit("index", str(tmp_path / "empty"), "--dask", "local", "--out-dir", "idx", cwd=tmp_path,
               KIT_DASK_WORKERS="1")
    assert none.returncode == 1 and "no DICOM found" in none.stderr and "Traceback" not in none.stderr
    assert not list((tmp_path / "idx").glob("*.parquet"))


def test_a_scheduler_that_dies_mid_job_is_one_error_line_not_a_hang(tmp_path: Path) -> None:
    from tests.conftest import free_port, spawned, wait_for_port

    port = free_port()
    log = tmp_path / "scheduler.log"
    dask = str(Path(sys.executable).parent / "dask")
    # a scheduler with no worker: the job waits on it until it is killed
    with spawned([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                  "--dashboard-address", "127.0.0.1:0"], env=_env(), log=log) as scheduler:
        wait_for_port(port)
        job = subprocess.Popen([*KIT, "hl7", "parse", str(hl7_feed()), "--dask", f"tcp://127.0.0.1:{port}",
                                "--out-dir", "t"], cwd=tmp_path, env=_env(KIT_DASK_TIMEOUT="10"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while "Receive client connection" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(3)  # connected; now submitting and waiting for a worker (up to 10 s)
            scheduler.kill()
            start = time.monotonic()
            out, err = job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    assert time.monotonic() - start < 30
    assert job.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kit: error: ServiceFailedError: "), err
    assert "lost the Dask scheduler" in lines[0]
    assert not list((tmp_path / "t").rglob("*.parquet"))


def test_kit_fhir_frames_on_a_running_scheduler_gives_the_frames_of_the_local_run(
        tmp_path: Path, client: Any) -> None:
    import orjson

    from kit.examples import fhir_bundle
    from kit.fhir.frames import to_frames

    resources = [e["resource"] for e in orjson.loads(fhir_bundle().read_bytes())["entry"]]
    files = []
    for i in range(3):  # an export in three files
        path = tmp_path / f"export-{i}.ndjson"
        path.write_bytes(b"\n".join(orjson.dumps(r) for r in resources[i::3]) + b"\n")
        files.append(str(path))
    _ok(kit("fhir", "frames", *files, "--out-dir", "local", cwd=tmp_path))
    out = _ok(kit("fhir", "frames", *files, "--dask", client.scheduler.address, "--out-dir", "dask",
                  cwd=tmp_path))
    want = {rt: pl.concat([to_frames(f)[rt] for f in files if rt in to_frames(f)], how="vertical_relaxed")
            for rt in {rt for f in files for rt in to_frames(f)}}
    assert sorted(p.stem for p in (tmp_path / "local").glob("*.parquet")) == sorted(want)
    for rt, frame in want.items():
        assert_frame_equal(pl.read_parquet(tmp_path / "local" / f"{rt}.parquet"), frame)
        assert_frame_equal(pl.scan_parquet(tmp_path / "dask" / rt).collect(), frame)
        assert rt in out.stdout
    misuse = kit("fhir", "frames", files[0], "--dask", "local", "--type", "Patient", "--out-dir", "x",
                 cwd=tmp_path)
    assert misuse.returncode == 2 and "--type" in misuse.stderr
    bundle = _ok(kit("fhir", "frames", str(fhir_bundle()), "--out-dir", "bundle", cwd=tmp_path))
    assert "Patient" in bundle.stdout  # a Bundle file is read whole, as on Dask
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff\x00 not FHIR")
    bad = kit("fhir", "frames", str(garbage), "--out-dir", "z", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("kit: error: FhirValidationError")
