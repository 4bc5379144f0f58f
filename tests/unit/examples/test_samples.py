"""The sample cohort files: deterministic, faithful to the cohort, findable lesions, decodable media."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.uid import CTImageStorage, JPEGBaseline8Bit, MRImageStorage, VLEndoscopicImageStorage

from kit import examples
from kit.cli.samples import samples as samples_command
from kit.dicom.pixels import load_series
from kit.errors import InvalidInputError, StoreError
from kit.examples import endoscopy
from kit.examples.cohort import COHORT, Study, studies

Regenerated = tuple[Path, dict[str, list[Path]]]
REPO_SAMPLES = Path(__file__).resolve().parents[3] / "data" / "samples"
SOP = {"CT": CTImageStorage, "MR": MRImageStorage, "ES": VLEndoscopicImageStorage}
COUNT = {"CT": 16, "MR": 12, "ES": 4}


def _study(key: str) -> Study:
    return next(s for s in studies(scheduled=None) if s.key == key)


def test_regeneration_matches_committed_manifest(regenerated: Regenerated) -> None:
    root, _ = regenerated
    if not (REPO_SAMPLES / examples.MANIFEST).is_file():
        pytest.skip("no committed data/samples/MANIFEST.json (not a source checkout)")
    committed = examples.load_manifest(REPO_SAMPLES)["files"]
    fresh = examples.load_manifest(root)["files"]
    mine = {k: v for k, v in committed.items() if k.startswith(("dicom/", "endoscopy/"))}
    assert set(fresh) == set(mine)
    for rel, want in mine.items():
        got = fresh[rel]
        if rel.endswith(".mp4") and got["sha256"] != want["sha256"]:
            # another PyAV/x264 build may pack the same pictures differently: compare decoded frames
            assert {k: got[k] for k in ("frames", "width", "height", "frames_sha256")} == \
                {k: want[k] for k in ("frames", "width", "height", "frames_sha256")}, rel
        else:
            assert got == want, rel


def test_regeneration_is_byte_identical(regenerated: Regenerated, tmp_path: Path) -> None:
    root, _ = regenerated
    again = endoscopy.generate(tmp_path)  # the clip encoder is where nondeterminism would creep in
    assert again
    for path in again:
        rel = path.relative_to(tmp_path)
        assert path.read_bytes() == (root / rel).read_bytes(), rel
    assert examples.check(root) == []


def test_every_dicom_file_carries_the_cohort_identifiers(regenerated: Regenerated) -> None:
    root, written = regenerated
    files = sorted((root / "dicom").rglob("*.dcm"))
    assert sorted(written["dicom"] + [p for p in written["endoscopy"] if p.suffix == ".dcm"]) == files
    per_study: dict[str, int] = {}
    for path in files:
        mrn, key, series, name = path.relative_to(root / "dicom").parts
        study, person = _study(key), next(p for p in COHORT if p.mrn == mrn)
        ds = pydicom.dcmread(path)
        assert study.mrn == mrn and not study.scheduled
        assert ds.PatientID == mrn
        assert str(ds.PatientName) == person.dicom_name
        assert ds.PatientBirthDate == person.birth_date.strftime("%Y%m%d")
        assert ds.PatientSex == person.sex
        assert ds.AccessionNumber == study.accession
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.SeriesInstanceUID == study.series_uid(int(series))
        assert ds.SOPInstanceUID == study.instance_uid(int(series), int(name[:4]))
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.InstanceNumber == int(name[:4])
        assert ds.StudyDate == study.date.strftime("%Y%m%d")
        assert ds.StudyTime == study.time.strftime("%H%M%S")
        assert ds.StudyDescription == study.description
        assert ds.Modality == study.modality
        assert ds.SOPClassUID == SOP[study.modality]
        assert ds.Manufacturer == "kit synthetic"
        per_study[key] = per_study.get(key, 0) + 1
    expected = {s.key: COUNT[s.modality] for s in studies(scheduled=False)}
    assert per_study == expected
    assert not any((root / "dicom" / s.mrn / s.key).exists() for s in studies(scheduled=True))


def _reach(seed: np.ndarray, passable: np.ndarray) -> np.ndarray:
    """In-plane 4-connected flood fill from ``seed`` through ``passable`` (per slice)."""
    reached = seed & passable
    while True:
        grown = reached.copy()
        grown[:, 1:, :] |= reached[:, :-1, :]
        grown[:, :-1, :] |= reached[:, 1:, :]
        grown[:, :, 1:] |= reached[:, :, :-1]
        grown[:, :, :-1] |= reached[:, :, 1:]
        grown &= passable
        if (grown == reached).all():
            return reached
        reached = grown


def _find_nodules(hu: np.ndarray) -> np.ndarray:
    """A simple threshold analysis: voxels above 0 HU enclosed by lung (< -400 HU, inside the body)."""
    border = np.zeros(hu.shape, dtype=bool)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    low = hu < -400
    lung = low & ~_reach(border, low)
    enclosed = ~_reach(border, ~lung)  # lung plus what it surrounds
    return enclosed & (hu > 0)


@pytest.mark.parametrize("study", studies(modality="CT", scheduled=False), ids=lambda s: s.key)
def test_lesion_findable_exactly_where_the_cohort_has_one(regenerated: Regenerated, study: Study) -> None:
    root, _ = regenerated
    volume = load_series((root / "dicom" / study.mrn / study.key).rglob("*.dcm"))
    assert volume.spacing == (5.0, 2.5, 2.5)
    found = _find_nodules(volume.array)
    if study.lesion is None:
        assert not found.any()
        return
    assert found.any()
    centroid = np.argwhere(found).mean(axis=0)
    assert np.abs(centroid - np.asarray(study.lesion.center)).max() < 1.0
    expected_voxels = 4 / 3 * np.pi * study.lesion.radius_mm ** 3 / (5.0 * 2.5 * 2.5)
    assert 0.6 * expected_voxels < found.sum() < 1.4 * expected_voxels
    assert abs(float(np.median(volume.array[found])) - study.lesion.hu) < 10


@pytest.mark.parametrize("study", studies(modality="ES", scheduled=False), ids=lambda s: s.key)
def test_vl_stills_are_jpeg_and_decode(regenerated: Regenerated, study: Study) -> None:
    root, _ = regenerated
    paths = sorted((root / "dicom" / study.mrn / study.key / "1").glob("*.dcm"))
    assert len(paths) == 4
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert path.stat().st_size < 40_000
        rgb = ds.pixel_array
        assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
        source = endoscopy.frame(study, (0.0, 0.8, 1.6, 2.4)[k])
        assert np.abs(rgb.astype(int) - source).mean() < 6


@pytest.mark.parametrize("study", studies(modality="ES", scheduled=False), ids=lambda s: s.key)
def test_clip_decodes_and_sidecar_names_the_study(regenerated: Regenerated, study: Study) -> None:
    root, _ = regenerated
    clip = root / "endoscopy" / f"{study.key}.mp4"
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == endoscopy.CLIP_FPS * endoscopy.CLIP_SECONDS
    assert frames[0].shape == (240, 320, 3)
    for i in (0, len(frames) - 1):
        source = endoscopy.frame(study, i / endoscopy.CLIP_FPS)
        assert np.abs(frames[i].astype(int) - source).mean() < 10
    meta = json.loads(clip.with_suffix(".json").read_text())
    assert meta["patient_id"] == study.mrn
    assert meta["accession_number"] == study.accession
    assert meta["study_instance_uid"] == study.study_uid
    assert meta["frames"] == len(frames)


def test_check_and_cli_report_changed_and_missing_files(regenerated: Regenerated, tmp_path: Path) -> None:
    root, _ = regenerated
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    runner = CliRunner()
    ok = runner.invoke(samples_command, ["--out", str(copy), "--check", "--json"])
    assert ok.exit_code == 0, ok.output
    assert {r["kind"]: r["files"] for r in json.loads(ok.stdout)}["dicom CT"] == 16 * len(
        studies(modality="CT", scheduled=False))

    changed = copy / "dicom/MRN1001/MRN1001-CT1/1/0003.dcm"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    (copy / "dicom/MRN1002/MRN1002-MR2/1/0001.dcm").unlink()
    assert sorted(examples.check(copy)) == [
        "content: dicom/MRN1001/MRN1001-CT1/1/0003.dcm (sha256 differs)",
        "missing: dicom/MRN1002/MRN1002-MR2/1/0001.dcm"]
    bad = runner.invoke(samples_command, ["--out", str(copy), "--check"])
    assert bad.exit_code == 1
    assert "0003.dcm" in bad.stderr and "MRN1002-MR2/1/0001.dcm" in bad.stderr


def test_accessors_under_an_override_folder(regenerated: Regenerated,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = regenerated
    monkeypatch.setenv("KIT_SAMPLES_DIR", str(root))
    assert examples.samples_dir() == root
    assert examples.dicom_dir() == root / "dicom"
    assert examples.study_dir("MRN1002", "MR") == root / "dicom/MRN1002/MRN1002-MR2"
    assert examples.endoscopy_clip() == root / "endoscopy/MRN1001-ES2.mp4"
    assert examples.endoscopy_clip("MRN1006") == root / "endoscopy/MRN1006-ES2.mp4"
    with pytest.raises(InvalidInputError):
        examples.study_dir("MRN1001", "MR")
    with pytest.raises(InvalidInputError):
        examples.study_dir("MRN9999")
    if not (root / "fhir/bundle.json").exists():
        with pytest.raises(StoreError):
            examples.fhir_bundle()


def test_samples_dir_generates_the_cache_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KIT_SAMPLES_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(examples, "_REPO_SAMPLES", tmp_path / "no-repo" / "data" / "samples")
    monkeypatch.setattr(examples, "available_generators", lambda: ["dicom"])  # keep it quick
    root = examples.samples_dir()
    assert root == tmp_path / "cache" / "kit" / "samples"
    assert examples.check(root) == []
    stamp = (root / examples.MANIFEST).stat().st_mtime_ns
    assert examples.samples_dir() == root
    assert (root / examples.MANIFEST).stat().st_mtime_ns == stamp  # not generated again
    assert not list(root.parent.glob(".samples-*"))


def test_summary_counts(regenerated: Regenerated) -> None:
    root, _ = regenerated
    rows = {r["kind"]: r for r in examples.summary(root).to_dicts()}
    for modality in ("CT", "MR", "ES"):
        performed = studies(modality=modality, scheduled=False)
        assert rows[f"dicom {modality}"]["files"] == COUNT[modality] * len(performed)
        assert rows[f"dicom {modality}"]["studies"] == len(performed)
    assert rows["clip"]["files"] == len(studies(modality="ES", scheduled=False))
    total = sum(r["size_bytes"] for r in rows.values())
    assert total < 8_000_000
