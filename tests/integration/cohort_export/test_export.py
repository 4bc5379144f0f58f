"""``export_dataset`` / ``verify_dataset`` against the embedded stack holding the sample cohort
(PACS and FHIR preloaded, the HL7 feed stored by its MLLP listener).

Issue #13 Must-show: the exported DICOM index, FHIR frames and HL7 frames join on the
pseudonymised keys with the identified join's row counts, and no original MRN, name,
birth date (any common spelling) or accession number is in any output file (parquet,
DICOM, NDJSON, ER7, the datalist and the manifest), searched byte-wise.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import orjson
import polars as pl
import pytest

from kit.cohort.export import DATALIST_NAME, export_dataset, scan_folder, verify_dataset
from kit.cohort.manifest import MANIFEST_NAME, from_json
from kit.cohort.pull import pull
from kit.config import ApiSettings
from kit.deid.pseudonyms import Pseudonymiser
from kit.dicom.index import index_frame
from kit.errors import ConfigError, InvalidInputError, StoreError, VerificationError
from kit.examples import dicom_dir, fhir_bundle, hl7_feed
from kit.fhir.frames import to_frames
from kit.hl7.frames import read_file
from tests.integration.cohort_export.conftest import KEY, OTHER_KEY, Exported, Sources
from tests.integration.deid_cohort.test_cohort import _frames, _joins, _search

TABLES = ["appointments", "documents", "messages", "orders", "patients", "results", "skipped", "visits"]


def _read(out: Path) -> tuple[pl.DataFrame, dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
    fhir = {p.stem: pl.read_parquet(p) for p in sorted((out / "fhir").glob("*.parquet"))}
    hl7 = {p.stem: pl.read_parquet(p) for p in sorted((out / "hl7").glob("*.parquet"))}
    return pl.read_parquet(out / "index.parquet"), fhir, hl7


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and p.name != MANIFEST_NAME}


def test_the_folder_holds_the_three_systems_and_verifies(exported: Exported) -> None:
    out, manifest = exported.out, exported.manifest
    assert verify_dataset(out) == manifest == from_json((out / MANIFEST_NAME).read_bytes())
    assert [f for f in manifest.files] == scan_folder(out)
    dcm = sorted(out.glob("dicom/*/*/*.dcm"))
    index, fhir, hl7 = _read(out)
    assert len(dcm) == index.height == 132 == manifest.counts["instances"]
    assert sorted(index["path"].to_list()) == sorted(p.relative_to(out).as_posix() for p in dcm)
    assert all(p.parts[-3] == s and p.parts[-2] == r for p, s, r in zip(
        sorted(dcm), *index.sort("path").select("study_instance_uid", "series_instance_uid"), strict=True))
    assert set(fhir) == {"Appointment", "Condition", "Encounter", "ImagingStudy", "Observation", "Patient",
                         "Procedure", "ServiceRequest"}
    assert sorted(hl7) == TABLES and hl7["messages"].height == 63 == manifest.counts["hl7_messages"]
    assert manifest.counts["patients"] == 6 and manifest.counts["studies"] == 11
    assert manifest.request == "all" and manifest.key_fingerprint == exported.pseudonymiser.fingerprint
    assert set(manifest.sources) == {"pacs", "fhir", "hl7"} and manifest.notes == ()
    raw = (out / MANIFEST_NAME).read_bytes()
    assert KEY.encode() not in raw and KEY.encode() not in b"".join(_files(out).values())
    # the manifest was written last: no file is newer
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert (out / MANIFEST_NAME).stat().st_mtime_ns >= newest
    assert not list(out.parent.glob(".*kit-export-pull"))  # the identified working copy is gone


def test_the_modalities_join_on_pseudonyms_as_the_identified_data_did(exported: Exported) -> None:
    identified = _joins(*_frames(index_frame(dicom_dir(), workers=1), to_frames(fhir_bundle()),
                                 read_file(hl7_feed())))
    index, fhir, hl7 = _read(exported.out)
    deidentified = _joins(*_frames(index, fhir, hl7))
    assert identified["dicom-fhir"] == 11 and identified["all"] >= 22
    assert deidentified == identified
    # the keys are pseudonyms: none of the identified ones is left
    originals = set(index_frame(dicom_dir(), workers=1)["patient_id"].to_list())
    assert originals and not originals & set(index["patient_id"].to_list())
    assert not originals & (set(hl7["orders"]["patient_id"].to_list()) | set(fhir["Patient"]["patient_id"]))
    # every FHIR row naming a patient has the pseudonymised MRN filled from the Patient table
    for name, table in fhir.items():
        if "patient_ref" in table.columns and name != "Patient":
            assert table.filter(pl.col("patient_ref").is_not_null())["patient_id"].null_count() == 0, name


def test_no_original_identifier_in_any_output_file(exported: Exported) -> None:
    files = [p for p in exported.out.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".dcm", ".parquet", ".json", ".ndjson", ".hl7"} <= kinds and len(files) > 150
    found = _search(files)
    assert not found, found[:20]
    # the search finds every kind of value in the inputs
    inputs = [fhir_bundle(), hl7_feed(), next(dicom_dir().rglob("*.dcm"))]
    assert {kind for _, kind, _ in _search(inputs)} == {"MRN", "name", "birth date", "phone",
                                                        "accession number", "study UID"}


@pytest.mark.parametrize("change", ["tamper", "delete", "add", "hidden", "manifest", "symlink"])
def test_verify_names_what_is_missing_extra_or_changed(copy: Path, change: str) -> None:
    verify_dataset(copy)
    dcm = sorted(copy.glob("dicom/*/*/*.dcm"))[5]
    rel = dcm.relative_to(copy).as_posix()
    if change == "tamper":
        data = bytearray(dcm.read_bytes())
        data[len(data) // 2] ^= 0x01
        dcm.write_bytes(bytes(data))
        expect = f"1 changed ({rel})"
    elif change == "delete":
        (copy / "fhir" / "Patient.parquet").unlink()
        expect = "1 missing (fhir/Patient.parquet)"
    elif change == "add":
        (copy / "hl7" / "extra.csv").write_text("a\n1\n")
        expect = "1 extra (hl7/extra.csv)"
    elif change == "hidden":
        (copy / "dicom" / ".notes").write_text("x")
        expect = "1 extra (dicom/.notes)"
    elif change == "symlink":  # the same bytes, behind a link: not the file the manifest lists
        outside = copy.parent / "outside.dcm"
        outside.write_bytes(dcm.read_bytes())
        dcm.unlink()
        dcm.symlink_to(outside)
        expect = f"1 changed ({rel})"
    else:
        (copy / MANIFEST_NAME).unlink()
        expect = "has no manifest.json"
    with pytest.raises(VerificationError) as err:
        verify_dataset(copy)
    assert expect in str(err.value).splitlines()[0]


def test_same_key_same_bytes_other_key_other_pseudonyms(exported: Exported, sources: Sources,
                                                        tmp_path: Path) -> None:
    before = _files(exported.out)
    mtimes = {p: p.stat().st_mtime_ns for p in exported.out.rglob("*.dcm")}
    again = export_dataset(sources.settings, KEY, exported.out, hl7_store=sources.hl7_store, progress=False)
    assert again.files == exported.manifest.files and _files(exported.out) == before
    assert {p: p.stat().st_mtime_ns for p in exported.out.rglob("*.dcm")} == mtimes  # left alone
    verify_dataset(exported.out)
    # another key: other pseudonyms everywhere, and the same keys still join
    other = tmp_path / "other"
    manifest = export_dataset(sources.settings, Pseudonymiser(OTHER_KEY), other, hl7_store=sources.hl7_store,
                              progress=False)
    assert manifest.key_fingerprint != exported.manifest.key_fingerprint
    index, fhir, hl7 = _read(other)
    first, _, _ = _read(exported.out)
    for key in ("patient_id", "accession_number", "study_instance_uid", "sop_instance_uid"):
        assert not set(index[key].to_list()) & set(first[key].to_list()), key
    assert _joins(*_frames(index, fhir, hl7)) == _joins(*_frames(*_read(exported.out)))
    # the first key again, into the folder the other key wrote: its files are replaced, none left over
    export_dataset(sources.settings, KEY, other, hl7_store=sources.hl7_store, progress=False)
    assert _files(other) == before
    verify_dataset(other)


def test_the_datalist_reads_as_monai_reads_it(exported: Exported) -> None:
    """What monai.data.load_decathlon_datalist(path, is_segmentation=False) does (monai itself needs
    torch, not installed): "image" joined to the data list's folder; any other string value joined
    only when that path exists (none of the joined fields is a path)."""
    path = exported.out / DATALIST_NAME
    body = orjson.loads(path.read_bytes())
    items = body["training"]
    index, fhir, _ = _read(exported.out)
    assert body["numTraining"] == len(items) == index["series_instance_uid"].n_unique() == 11
    base = path.parent
    for item in items:
        image = os.path.normpath(os.path.join(base, item["image"]))
        assert os.path.isdir(image) and not os.path.isabs(item["image"])
        series = index.filter(pl.col("series_instance_uid") == item["series_instance_uid"])
        assert sorted(os.listdir(image)) == sorted(Path(p).name for p in series["path"]) \
            and len(series) == item["instances"]
        for key, value in item.items():
            if key != "image" and isinstance(value, str):
                assert not os.path.exists(os.path.join(base, value)), key
        assert set(series["patient_id"]) == {item["patient_id"]}
    conditions = fhir["Condition"].group_by("patient_id").agg(pl.col("code").unique().sort())
    labelled = {i["patient_id"]: i["label"] for i in items if i["label"]}
    assert labelled == {r[0]: list(r[1]) for r in conditions.iter_rows()}
    assert any(i["findings"] for i in items)
    # the same data list without kit: json + os only
    import json
    assert json.loads(path.read_text())["training"][0]["image"].startswith("dicom/")


def test_a_cohort_pulled_or_read_from_a_pull_gives_the_same_dataset(sources: Sources, tmp_path: Path) -> None:
    cohort = pl.DataFrame({"accession_number": ["ACC100101", "ACC100301"]})
    direct = export_dataset(sources.settings, KEY, tmp_path / "direct", cohort, hl7_store=sources.hl7_store,
                            progress=False)
    report = pull(cohort, tmp_path / "pull", settings=sources.settings, progress=False)
    assert report["status"].to_list() == ["retrieved", "retrieved"]
    pulled = export_dataset(sources.settings, KEY, tmp_path / "from-pull", cohort,
                            hl7_store=sources.hl7_store,
                            from_pull=tmp_path / "pull", progress=False)
    assert pulled.files == direct.files and pulled.counts == direct.counts
    assert direct.counts["studies"] == 2 and direct.counts["patients"] == 2
    assert direct.counts["hl7_messages"] < 63 and direct.counts["fhir:Patient"] == 2
    # the request is recorded, pseudonymised
    pseudo = Pseudonymiser(KEY)
    assert [dict(r) for r in direct.request] == [
        {"row": "1", "accession_number": pseudo.accession_number("ACC100101")},
        {"row": "2", "accession_number": pseudo.accession_number("ACC100301")}]
    assert b"ACC1003" not in (tmp_path / "direct" / MANIFEST_NAME).read_bytes()
    assert pulled.sources["pacs"].startswith("kit cohort pull folder")


def test_without_an_hl7_store_the_manifest_says_so(sources: Sources, tmp_path: Path) -> None:
    settings = dataclasses.replace(sources.settings, api=ApiSettings(hl7_store=None))
    notes: list[str] = []
    manifest = export_dataset(settings, KEY, tmp_path / "d", pl.DataFrame({"patient_id": ["MRN1002"]}),
                              progress=False, echo=notes.append)
    assert manifest.notes == tuple(notes) and "no HL7 store configured" in notes[0]
    assert manifest.counts["hl7_messages"] == 0 and "hl7" not in manifest.sources
    assert manifest.counts["patients"] == 1 and manifest.counts["studies"] >= 1
    verify_dataset(tmp_path / "d")
    # [api] hl7_store names it when no argument does
    named = dataclasses.replace(sources.settings, api=ApiSettings(hl7_store=str(sources.hl7_store)))
    again = export_dataset(named, KEY, tmp_path / "d", pl.DataFrame({"patient_id": ["MRN1002"]}),
                           progress=False)
    assert again.counts["hl7_messages"] > 0 and again.notes == ()


def test_a_folder_that_is_not_a_dataset_and_a_missing_store_are_refused(sources: Sources,
                                                                        tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.docx").write_text("mine")
    with pytest.raises(InvalidInputError, match="holds no dataset"):
        export_dataset(sources.settings, KEY, busy, progress=False)
    assert [p.name for p in busy.iterdir()] == ["thesis.docx"]
    with pytest.raises(ConfigError, match="not a file"):
        export_dataset(sources.settings, KEY, tmp_path / "new", hl7_store=tmp_path / "none.db",
                       progress=False)
    assert not (tmp_path / "new").exists()


def test_an_interrupted_export_is_no_dataset_until_run_again(sources: Sources, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while the files are written (a fault no real peer produces: patched in) leaves a
    folder without manifest, which verify refuses and the next run completes."""
    import kit.cohort.export as export

    out = tmp_path / "d"
    cohort = pl.DataFrame({"accession_number": ["ACC100401"]})
    export_dataset(sources.settings, KEY, out, cohort, hl7_store=sources.hl7_store, progress=False)
    first = _files(out)

    def crash(messages: object) -> object:
        raise StoreError("disk full (simulated)")

    monkeypatch.setattr(export, "_hl7_tables", crash)
    with pytest.raises(StoreError, match="simulated"):
        export_dataset(sources.settings, KEY, out, cohort, hl7_store=sources.hl7_store, progress=False)
    assert not (out / MANIFEST_NAME).exists() and (out / ".kit-export-in-progress").is_file()
    with pytest.raises(VerificationError, match="has no manifest.json"):
        verify_dataset(out)
    monkeypatch.undo()
    export_dataset(sources.settings, KEY, out, cohort, hl7_store=sources.hl7_store, progress=False)
    verify_dataset(out)
    assert _files(out) == first and not (out / ".kit-export-in-progress").exists()


def test_a_working_folder_left_by_another_cohort_adds_nothing(sources: Sources, tmp_path: Path) -> None:
    """The export pulls into DIR's working folder and resumes a pull there; studies of another
    cohort left in it (an export that crashed) are not exported."""
    work = tmp_path / ".d.kit-export-pull"
    pull(pl.DataFrame({"accession_number": ["ACC100601"]}), work, settings=sources.settings, progress=False)
    manifest = export_dataset(sources.settings, KEY, tmp_path / "d",
                              pl.DataFrame({"accession_number": ["ACC100501"]}), hl7_store=sources.hl7_store,
                              progress=False)
    assert manifest.counts["studies"] == 1 and manifest.counts["patients"] == 1
    assert not work.exists()  # identified copies do not outlive the export


def test_an_export_pulled_on_a_dask_cluster_is_the_same_dataset(sources: Sources, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    from kit.cohort.pull import CohortPull

    ran_on: list[object] = []
    run = CohortPull.run
    monkeypatch.setattr(CohortPull, "run", lambda self: (ran_on.append(self.dask), run(self))[1])
    cohort = pl.DataFrame({"accession_number": ["ACC100101", "ACC100301"]})
    here = export_dataset(sources.settings, KEY, tmp_path / "here", cohort, hl7_store=sources.hl7_store,
                          progress=False, dask="")
    on_dask = export_dataset(sources.settings, KEY, tmp_path / "dask", cohort, hl7_store=sources.hl7_store,
                             progress=False, dask="local")
    assert ran_on == ["", "local"]  # the pull went to the cluster
    assert on_dask.files == here.files and on_dask.counts == here.counts and here.counts["studies"] == 2
