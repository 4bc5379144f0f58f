"""kit.fhir.frames: typed columns, lists kept, contained/extension handling, schema stability."""

from __future__ import annotations

import datetime as dt
import json

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import FhirValidationError, InvalidInputError
from kit.fhir.frames import (
    RESOURCE_TYPES,
    ColumnSpec,
    read_resources,
    schema,
    to_frame,
    to_frames,
    with_patient_id,
)

UTC = dt.UTC
MR = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"lastUpdated": "2024-01-02T03:04:05.123+01:00"},
    "identifier": [
        {"system": "urn:x:ssn", "value": "999"},
        {"type": MR, "system": "urn:hosp", "value": "MRN001"},
    ],
    "name": [
        {"use": "nickname", "given": ["Jo"]},
        {"use": "official", "family": "Doe", "given": ["Jane", "Q"], "prefix": ["Dr"]},
    ],
    "gender": "female",
    "birthDate": "1970-05",
    "deceasedDateTime": "2020-02-03T04:05:06Z",
    "telecom": [{"system": "email", "value": "j@x"}, {"system": "phone", "value": "+1 555"}],
    "address": [{"line": ["1 Main", "Apt 2"], "city": "Boston", "postalCode": "02110"}],
    "extension": [
        {"url": "http://x/race", "valueString": "A"},
        {"url": "http://x/coded", "valueCoding": {"code": "1"}},
        {"url": "http://x/nested", "extension": [{"url": "a", "valueInteger": 1}]},
    ],
}
OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [{"coding": [{"code": "vital-signs"}]}, {"coding": [{"code": "survey"}]}],
    "code": {
        "coding": [
            {"system": "http://loinc.org", "code": "85354-9", "display": "BP panel"},
            {"system": "http://snomed.info/sct", "code": "75367002", "display": "BP"},
        ]
    },
    "subject": {"reference": "http://h/fhir/Patient/p1/_history/3"},
    "effectiveDateTime": "2024-01-01T10:00:00+02:00",
    "issued": "2024-01-01T09:00:00.5Z",
    "valueQuantity": {"value": 72, "unit": "/min"},
    "interpretation": [{"coding": [{"code": "H"}]}],
    "referenceRange": [{"low": {"value": 60}, "high": {"value": 100.5}}],
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg"},
        },
        {"code": {"coding": [{"code": "8462-4"}]}, "valueQuantity": {"value": 80.5, "unit": "mmHg"}},
    ],
}
OBS_CONTAINED = {
    "resourceType": "Observation",
    "id": "o2",
    "status": "preliminary",
    "code": {"text": "free text"},
    "contained": [
        {"resourceType": "Patient", "id": "pt", "identifier": [{"system": "urn:mrn", "value": "M9"}]}
    ],
    "subject": {"reference": "#pt"},
    "effectivePeriod": {"start": "2024", "end": "2024-02-03"},
    "valueString": "neg",
}
STUDY = {
    "resourceType": "ImagingStudy",
    "id": "s1",
    "status": "available",
    "identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"},
        {"type": ACSN, "system": "urn:acc", "value": "ACC1"},
    ],
    "subject": {"reference": "Patient/p1"},
    "started": "2023-05-06T07:08:09-04:00",
    "numberOfSeries": 2,
    "numberOfInstances": 10,
    "series": [
        {"uid": "1.2.3.4.1", "modality": {"code": "CT"}},
        {"uid": "1.2.3.4.2", "modality": {"code": "SR"}},
    ],
}
SR = {
    "resourceType": "ServiceRequest",
    "id": "sr1",
    "status": "active",
    "intent": "order",
    "identifier": [{"type": ACSN, "value": "ACC1"}],
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"code": "CT-CHEST"}]},
    "authoredOn": "2023-05-01",
}
MED = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "contained": [
        {
            "resourceType": "Medication",
            "id": "med",
            "code": {"coding": [{"system": "http://rxnorm", "code": "1191", "display": "Aspirin"}]},
        }
    ],
    "medicationReference": {"reference": "#med"},
    "subject": {"reference": "Patient/p1"},
    "dosageInstruction": [
        {
            "text": "1/day",
            "doseAndRate": [{"doseQuantity": {"value": 81, "unit": "mg"}}],
            "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
        }
    ],
}


def bundle(*resources: dict) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def test_patient_columns() -> None:
    df = to_frame([PATIENT], "Patient")
    row = df.row(0, named=True)
    assert row["patient_id"] == "MRN001" and row["mrn_system"] == "urn:hosp"
    assert (row["family"], row["given"], row["prefix"]) == ("Doe", "Jane Q", "Dr")
    assert row["birth_date"] == dt.date(1970, 5, 1)
    assert row["deceased"] is True
    assert row["deceased_datetime"] == dt.datetime(2020, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert row["last_updated"] == dt.datetime(2024, 1, 2, 2, 4, 5, 123000, tzinfo=UTC)
    assert (row["phone"], row["email"], row["city"]) == ("+1 555", "j@x", "Boston")
    assert row["address_line"] == "1 Main, Apt 2"
    assert [i["value"] for i in row["identifiers"]] == ["999", "MRN001"]
    assert row["identifiers"][1]["type"] == "MR"
    exts = {e["url"]: e["value"] for e in row["extensions"]}
    assert exts["http://x/race"] == "A"
    assert json.loads(exts["http://x/coded"]) == {"code": "1"}
    assert json.loads(exts["http://x/nested"]) == [{"url": "a", "valueInteger": 1}]


def test_mrn_fallbacks() -> None:
    by_system = dict(
        PATIENT, identifier=[{"system": "urn:a", "value": "A"}, {"system": "urn:MRN", "value": "B"}]
    )
    first = dict(PATIENT, identifier=[{"system": "urn:a", "value": "A"}])
    none = {"resourceType": "Patient", "id": "x"}
    df = to_frame([by_system, first, none], "Patient")
    assert df["patient_id"].to_list() == ["B", "A", None]


def test_observation_columns_keep_every_coding_and_component() -> None:
    df = to_frame(bundle(PATIENT, OBS, OBS_CONTAINED), "Observation")
    assert df.height == 2
    o1, o2 = df.rows(named=True)
    assert (o1["code"], o1["code_system"], o1["code_display"]) == ("85354-9", "http://loinc.org", "BP panel")
    assert [c["code"] for c in o1["codings"]] == ["85354-9", "75367002"]
    assert o1["categories"] == ["vital-signs", "survey"] and o1["category"] == "vital-signs"
    assert o1["patient_ref"] == "p1" and o1["patient_id"] is None
    assert o1["effective"] == dt.datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    assert o1["issued"] == dt.datetime(2024, 1, 1, 9, 0, 0, 500000, tzinfo=UTC)
    assert o1["value_quantity"] == 72.0 and o1["value_unit"] == "/min"
    assert (o1["interpretation"], o1["reference_range_low"], o1["reference_range_high"]) == ("H", 60.0, 100.5)
    assert [(c["code"], c["value_quantity"]) for c in o1["components"]] == [
        ("8480-6", 120.0),
        ("8462-4", 80.5),
    ]
    # contained patient: reference kept as written, MRN resolved
    assert o2["subject"] == "#pt" and o2["patient_ref"] is None and o2["patient_id"] == "M9"
    assert o2["code_display"] == "free text" and o2["codings"] is None
    assert o2["effective"] == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert o2["effective_end"] == dt.datetime(2024, 2, 3, tzinfo=UTC)
    assert o2["value_string"] == "neg" and o2["value_quantity"] is None
    assert df.schema == schema("Observation")


def test_imaging_study_and_service_request_join_columns() -> None:
    frames = to_frames([STUDY, SR, PATIENT])
    s = frames["ImagingStudy"].row(0, named=True)
    assert s["study_instance_uid"] == "1.2.3.4" and s["accession_number"] == "ACC1"
    assert s["modalities"] == ["CT", "SR"] and s["series_instance_uids"] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert (s["number_of_series"], s["number_of_instances"]) == (2, 10)
    assert s["started"] == dt.datetime(2023, 5, 6, 11, 8, 9, tzinfo=UTC)
    sr = frames["ServiceRequest"].row(0, named=True)
    assert sr["accession_number"] == "ACC1"
    joined = frames["ImagingStudy"].join(frames["ServiceRequest"], on="accession_number")
    assert joined.height == 1
    filled = with_patient_id(frames["ImagingStudy"], frames["Patient"])
    assert filled["patient_id"].to_list() == ["MRN001"]
    assert filled.columns == frames["ImagingStudy"].columns


def test_medication_from_contained() -> None:
    row = to_frame([MED], "MedicationRequest").row(0, named=True)
    assert (row["medication_code"], row["medication_display"]) == ("1191", "Aspirin")
    assert row["medication_reference"] == "#med"
    assert (row["dose_value"], row["dose_unit"], row["frequency"], row["period_unit"]) == (81.0, "mg", 1, "d")


def test_bundle_urn_references_resolve_to_ids() -> None:
    obs = dict(OBS, subject={"reference": "urn:uuid:p1"})
    df = to_frame(bundle(PATIENT, obs), "Observation")
    assert df["patient_ref"].to_list() == ["p1"]


@pytest.mark.parametrize("rtype", [*RESOURCE_TYPES, "Basic"])
def test_empty_input_gives_full_schema(rtype: str) -> None:
    df = to_frame([], rtype)
    assert df.height == 0 and df.schema == schema(rtype)
    assert df.schema["id"] == pl.Utf8 and df.schema["last_updated"] == pl.Datetime("us", "UTC")


@pytest.mark.parametrize("rtype", RESOURCE_TYPES)
def test_minimal_resource_all_null(rtype: str) -> None:
    df = to_frame([{"resourceType": rtype, "id": "x"}], rtype)
    assert df.schema == schema(rtype)
    assert df.row(0)[0] == "x" and all(v is None for v in df.row(0)[1:])


def test_unknown_type_keeps_whole_resource() -> None:
    basic = {
        "resourceType": "Basic",
        "id": "b",
        "subject": {"reference": "Patient/p1"},
        "code": {"text": "t"},
    }
    row = to_frame([basic], "Basic").row(0, named=True)
    assert orjson.loads(row["resource"]) == basic and row["patient_ref"] == "p1"


def test_not_a_resource_type() -> None:
    with pytest.raises(InvalidInputError):
        to_frame([], "Patinet")


def test_ndjson_and_json_files(tmp_path) -> None:
    nd = tmp_path / "Observation.ndjson"
    nd.write_bytes(b"\n".join(orjson.dumps(r) for r in (OBS, OBS_CONTAINED)) + b"\n\n")
    js = tmp_path / "b.json"
    js.write_bytes(orjson.dumps(bundle(PATIENT, OBS)))
    assert to_frame(nd, "Observation")["id"].to_list() == ["o1", "o2"]
    assert set(to_frames(str(js))) == {"Patient", "Observation"}
    assert to_frame(orjson.dumps(OBS), "Observation").height == 1
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(orjson.dumps(OBS) + b"\n{not json\n")
    with pytest.raises(FhirValidationError, match="bad.ndjson:2"):
        to_frame(bad, "Observation")


def test_invalid_input_is_loud() -> None:
    with pytest.raises(FhirValidationError):
        read_resources([{"id": "no type"}])
    with pytest.raises(FhirValidationError):
        read_resources(["not a dict"])  # type: ignore[list-item]
    bad_date = dict(OBS, effectiveDateTime="yesterday")
    with pytest.raises(FhirValidationError, match="effective"):
        to_frame([bad_date], "Observation")
    assert to_frame([bad_date], "Observation", strict=False)["effective"].to_list() == [None]
    bad_num = dict(OBS, valueQuantity={"value": "lots"})
    with pytest.raises(FhirValidationError, match="value_quantity"):
        to_frame([bad_num], "Observation")
    with pytest.raises(FhirValidationError):
        to_frame([dict(OBS, code="not a CodeableConcept")], "Observation")


def test_column_specs() -> None:
    specs = [
        ColumnSpec("value", "Observation.value.ofType(Quantity).value", pl.Float64),
        ColumnSpec("all_codes", "code.coding.code", pl.List(pl.Utf8)),
        ColumnSpec("when", "issued", pl.Datetime("us", "UTC")),
        ColumnSpec("status", "status.upper()", pl.Utf8),
    ]
    df = to_frame([OBS, OBS_CONTAINED], "Observation", columns=specs)
    assert df["value"].to_list() == [72.0, None]
    assert df["all_codes"].to_list() == [["85354-9", "75367002"], None]
    assert df["when"].to_list() == [dt.datetime(2024, 1, 1, 9, 0, 0, 500000, tzinfo=UTC), None]
    assert df["status"].to_list() == ["FINAL", "PRELIMINARY"]  # replaced the built-in column
    assert df.columns[-4:] == ["value", "all_codes", "when", "status"]
    assert df.schema == schema("Observation", specs)
    frames = to_frames(
        [OBS, PATIENT],
        columns={"Patient": [ColumnSpec("race", "extension.where(url='http://x/race').valueString")]},
    )
    assert frames["Patient"]["race"].to_list() == ["A"]
    with pytest.raises(InvalidInputError):
        ColumnSpec("bad name!", "id")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.builds(
                lambda y, m, d, h, mi, s, off: f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{off}",
                st.integers(1900, 2100),
                st.integers(1, 12),
                st.integers(1, 28),
                st.integers(0, 23),
                st.integers(0, 59),
                st.integers(0, 59),
                st.sampled_from(["Z", "+00:00", "+05:30", "-11:00"]),
            ),
            st.builds(lambda y, m: f"{y:04d}-{m:02d}", st.integers(1900, 2100), st.integers(1, 12)),
        ),
        max_size=20,
    )
)
def test_datetimes_match_python(values: list[str | None]) -> None:
    resources = [
        {"resourceType": "Observation", "id": str(i), **({"effectiveDateTime": v} if v else {})}
        for i, v in enumerate(values)
    ]
    got = to_frame(resources, "Observation")["effective"].to_list()
    want = []
    for v in values:
        if v is None:
            want.append(None)
            continue
        if len(v) == 7:
            v = v + "-01T00:00:00+00:00"
        want.append(dt.datetime.fromisoformat(v.replace("Z", "+00:00")).astimezone(UTC))
    assert got == want


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.fixed_dictionaries(
                {"code": st.text(max_size=5)},
                optional={"system": st.text(max_size=5), "display": st.none() | st.text(max_size=5)},
            ),
            max_size=4,
        ),
        max_size=15,
    )
)
def test_codings_roundtrip(codings: list[list[dict]]) -> None:
    resources = [
        {"resourceType": "Observation", "id": str(i), **({"code": {"coding": c}} if c else {})}
        for i, c in enumerate(codings)
    ]
    got = to_frame(resources, "Observation")["codings"].to_list()
    want = [
        [{"system": x.get("system"), "code": x["code"], "display": x.get("display")} for x in c] or None
        for c in codings
    ]
    assert got == want
