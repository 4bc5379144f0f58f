"""Issue #13 Must-show: the sample cohort from all three systems, de-identified with one key.

DICOM files (through kit.dicom.deid), the FHIR bundle and the HL7 feed are de-identified
with kit.deid.cohort, written to an output folder with their frames, and then:

* DICOM <-> FHIR <-> HL7 join on the pseudonymised keys (patient_id, accession_number,
  study_instance_uid) with the same row counts as the identified join;
* no original MRN, name, birth date, phone, accession number or study UID of the cohort is
  in any output file, searched byte-wise (ASCII/UTF-8, UTF-16 LE/BE, percent-encoded,
  case-insensitive);
* intervals between the DICOM study time, the FHIR ImagingStudy start and the HL7 OBR-7
  of each study are what they were.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from urllib.parse import quote, quote_plus

import orjson
import polars as pl
import pytest
from pydicom import dcmread

from kit.deid.cohort import CohortDeid, deidentify_cohort
from kit.deid.pseudonyms import Pseudonymiser, PseudonymKind
from kit.dicom.index import index_frame
from kit.errors import InvalidInputError
from kit.examples import dicom_dir, fhir_bundle, hl7_feed
from kit.examples.cohort import COHORT
from kit.fhir.frames import to_frames, with_patient_id
from kit.hl7.frames import read_file
from kit.hl7.message import split_messages

KEY = "cohort-test-key-0123456789"
KEYS = ["patient_id", "accession_number", "study_instance_uid"]
Made = tuple[Path, Path, CohortDeid, Pseudonymiser]


def _frames(dicom: pl.DataFrame, fhir: dict[str, pl.DataFrame], hl7: dict[str, pl.DataFrame]
            ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    studies = (dicom.group_by(KEYS).agg(pl.col("study_date").first(), pl.col("study_time").first(),
                                         pl.len().alias("instances")))
    imaging = with_patient_id(fhir["ImagingStudy"], fhir["Patient"]).select(*KEYS, "started")
    orders = hl7["orders"].filter(pl.col("study_instance_uid").is_not_null()).select(
        *KEYS, "observation_time", "message_type")
    return studies, imaging, orders


def _joins(studies: pl.DataFrame, imaging: pl.DataFrame, orders: pl.DataFrame) -> dict[str, int]:
    three = studies.join(imaging, on=KEYS).join(orders, on=KEYS)
    return {"dicom-fhir": studies.join(imaging, on=KEYS).height,
            "dicom-hl7": studies.join(orders, on=KEYS).height,
            "fhir-hl7": imaging.join(orders, on=KEYS).height, "all": three.height}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, CohortDeid, Pseudonymiser]:
    root = tmp_path_factory.mktemp("deid")
    out = root / "out"
    pseudo = Pseudonymiser(KEY)
    files = sorted(dicom_dir().rglob("*.dcm"))
    bundle = orjson.loads(fhir_bundle().read_bytes())
    result = deidentify_cohort(pseudo, dicom=[dcmread(f) for f in files], fhir=[bundle],
                               hl7=list(split_messages(hl7_feed().read_bytes())), scrub=None)
    for ds in result.dicom:  # the hierarchy the export writes: pseudonyms only
        target = out / "dicom" / ds.PatientID / ds.StudyInstanceUID / ds.SeriesInstanceUID
        target.mkdir(parents=True, exist_ok=True)
        ds.save_as(target / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    (out / "fhir").mkdir()
    (out / "fhir" / "bundle.json").write_bytes(orjson.dumps(result.fhir[0]))
    (out / "fhir" / "resources.ndjson").write_bytes(
        b"".join(orjson.dumps(e["resource"]) + b"\n" for e in result.fhir[0]["entry"]))
    (out / "hl7").mkdir()
    (out / "hl7" / "feed.hl7").write_text("".join(m.to_er7() + "\n" for m in result.hl7), newline="")
    frames = out / "frames"
    frames.mkdir()
    for name, frame in [("dicom", index_frame(out / "dicom", workers=1)),
                        *((f"fhir_{k}", v) for k, v in to_frames(out / "fhir" / "bundle.json").items()),
                        *((f"hl7_{k}", v) for k, v in read_file(out / "hl7" / "feed.hl7").items())]:
        # uncompressed, so a byte search sees every value; CSV beside it
        frame.write_parquet(frames / f"{name}.parquet", compression="uncompressed")
        flat = frame.select([c for c, t in frame.schema.items() if not isinstance(t, pl.List | pl.Struct)])
        flat.write_csv(frames / f"{name}.csv")
    reid = pseudo.reid_map.save(root / "reid-map.csv", output_dir=out)
    return out, reid, result, pseudo


def test_joins_on_pseudonyms_have_the_identified_row_counts(cohort: tuple[Path, Path, CohortDeid,
                                                                          Pseudonymiser]) -> None:
    out, _, _, _ = cohort
    identified = _joins(*_frames(index_frame(dicom_dir(), workers=1), to_frames(fhir_bundle()),
                                 read_file(hl7_feed())))
    deidentified = _joins(*_frames(index_frame(out / "dicom", workers=1),
                                   to_frames(out / "fhir" / "bundle.json"),
                                   read_file(out / "hl7" / "feed.hl7")))
    performed = sum(1 for p in COHORT for s in p.studies if not s.scheduled)
    assert identified["dicom-fhir"] == performed == 11
    assert identified["all"] >= 2 * performed  # an ORM and an ORU per study
    assert deidentified == identified
    # the NDJSON output joins the same way
    ndjson = to_frames(out / "fhir" / "resources.ndjson")
    assert with_patient_id(ndjson["ImagingStudy"], ndjson["Patient"])["patient_id"].null_count() == 0


def _needles() -> dict[str, str]:
    needles: dict[str, str] = {}
    for p in COHORT:
        needles[p.mrn] = "MRN"
        for name in (p.family, p.given, p.dicom_name, f"{p.given} {p.family}"):
            needles[name] = "name"
        b = p.birth_date
        for spelled in (b.strftime("%Y%m%d"), b.isoformat(), b.strftime("%d.%m.%Y"),
                        b.strftime("%d/%m/%Y"), b.strftime("%m/%d/%Y")):
            needles[spelled] = "birth date"
        needles[p.phone] = "phone"
        for s in p.studies:
            needles[s.accession] = "accession number"
            needles[s.study_uid] = "study UID"
    return needles


def _forms(needle: str) -> set[bytes]:
    forms = {needle.encode("utf-8"), needle.encode("utf-16-le"), needle.encode("utf-16-be"),
             quote(needle, safe="").encode(), quote_plus(needle).encode()}
    return {f.lower() for f in forms}


def _search(files: list[Path]) -> list[tuple[str, str, bytes]]:
    """(file, kind, form found) for every form of every original value in every file."""
    needles = {form: kind for needle, kind in _needles().items() for form in _forms(needle)}
    found = []
    for path in files:
        data = path.read_bytes().lower()
        found += [(path.name, kind, form) for form, kind in needles.items() if form in data]
    return found


def test_no_original_identifier_in_any_output_file(cohort: tuple[Path, Path, CohortDeid,
                                                                 Pseudonymiser]) -> None:
    out, reid, _, _ = cohort
    files = [Path(d) / f for d, _, names in os.walk(out) for f in names]
    assert len(files) > 140
    found = _search(files)
    assert not found, found[:20]
    # the search can fail: on the inputs and on the re-identification map (outside the output)
    # it finds every kind of value
    inputs = [fhir_bundle(), hl7_feed(), next(dicom_dir().rglob("*.dcm")), reid]
    kinds = {kind for _, kind, _ in _search(inputs)}
    assert kinds == {"MRN", "name", "birth date", "phone", "accession number", "study UID"}
    assert not reid.is_relative_to(out)


def test_reid_map_is_refused_inside_the_output(cohort: tuple[Path, Path, CohortDeid, Pseudonymiser],
                                               tmp_path: Path) -> None:
    out, _, _, pseudo = cohort
    with pytest.raises(InvalidInputError, match="inside"):
        pseudo.reid_map.save(out / "frames" / "map.parquet", output_dir=out)
    link = tmp_path / "link"
    link.symlink_to(out / "fhir", target_is_directory=True)
    with pytest.raises(InvalidInputError, match="inside"):
        pseudo.reid_map.save(link / "map.csv", output_dir=out)
    assert not (out / "frames" / "map.parquet").exists() and not (out / "fhir" / "map.csv").exists()


def test_intervals_between_systems_are_preserved(cohort: Made) -> None:
    out, _, _, pseudo = cohort

    def moments(dicom: pl.DataFrame, fhir: dict[str, pl.DataFrame], hl7: dict[str, pl.DataFrame]
                ) -> dict[str, tuple[dt.datetime, dt.datetime, dt.datetime]]:
        studies, imaging, orders = _frames(dicom, fhir, hl7)
        results = orders.filter(pl.col("message_type") == "ORU^R01")
        rows = studies.join(imaging, on=KEYS).join(results, on=KEYS)
        return {r["study_instance_uid"]: (dt.datetime.combine(r["study_date"], r["study_time"]),
                                          r["started"].replace(tzinfo=None) + dt.timedelta(hours=1),
                                          r["observation_time"]) for r in rows.iter_rows(named=True)}

    before = moments(index_frame(dicom_dir(), workers=1), to_frames(fhir_bundle()), read_file(hl7_feed()))
    after = moments(index_frame(out / "dicom", workers=1), to_frames(out / "fhir" / "bundle.json"),
                    read_file(out / "hl7" / "feed.hl7"))
    assert len(after) == len(before) == 11
    shifts = set()
    for uid, (d, f, h) in after.items():
        original = pseudo.reid_map.original(PseudonymKind.UID, uid)
        assert original in before
        d0, f0, h0 = before[original]
        assert (f - d, h - d) == (f0 - d0, h0 - d0)  # intervals between the systems kept
        assert d != d0 and (d - d0).seconds == 0 and -1095 <= (d - d0).days <= -31
        shifts.add(d - d0)
    assert len(shifts) > 1  # per patient, not one shift for everyone


def test_outputs_read_back_and_say_what_they_did(cohort: Made) -> None:
    out, _, result, pseudo = cohort
    assert result.key_fingerprint == pseudo.fingerprint and KEY not in repr(result)
    assert not result.text_scrubbed and result.counts["fhir:text_unscrubbed"] > 0
    assert read_file(out / "hl7" / "feed.hl7", vectorised=False)["skipped"].height == 0
    for ds in result.dicom:
        assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
        assert ds.PatientBirthDate in ("", None)
