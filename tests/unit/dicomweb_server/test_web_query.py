"""kit.dicom.web_query: QIDO-RS parameters as C-FIND identifiers, negotiation, frames, Part 10,
STOW-RS answers (pure)."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset

from kit import examples
from kit.dicom.matching import LEVEL_KEYS, candidate_dataset, matches
from kit.dicom.query import ATTRIBUTES, QueryLevel, find_identifier
from kit.dicom.store import index_attributes
from kit.dicom.web_multipart import parse_accept
from kit.dicom.web_query import negotiate, parse_frames, parse_qido, split_part10, stow_response
from kit.errors import DicomFileError, DicomWebRequestError, KitError

EXPLICIT = "1.2.840.10008.1.2.1"


@cache
def _candidates() -> tuple[Dataset, ...]:
    """The sample cohort's instances as C-FIND candidates (image level: every indexed key)."""
    files = sorted(examples.dicom_dir().rglob("*.dcm"))
    return tuple(candidate_dataset(index_attributes(dcmread(f, stop_before_pixels=True))) for f in files)


FILTERS = st.fixed_dictionaries({}, optional={
    "patient_id": st.sampled_from(["MRN1001", "MRN100*", "MRN10?2", "*", "MRN9999"]),
    "patient_name": st.sampled_from(["Moreau*", "moreau^alice", "*a*", "R?ssi*"]),
    "study_date": st.sampled_from(["20260101-20260301", "-20260115", "20260201-", "20260112"]),
    "modality": st.sampled_from(["CT", "MR", "C*", "CT\\MR"]),
    "accession_number": st.sampled_from(["ACC*", "*1*"]),
    "series_number": st.sampled_from(["1", "2"]),
})


@settings(max_examples=80, deadline=None)
@given(FILTERS)
def test_qido_parameters_match_as_the_cfind_identifier(filters: dict[str, str]) -> None:
    """The QIDO-RS path (parameters by keyword) selects exactly what the C-FIND identifier does."""
    cfind = find_identifier("IMAGE", **filters)
    qido = parse_qido(QueryLevel.IMAGE, [(ATTRIBUTES[k].keyword, v) for k, v in filters.items()]).identifier
    for candidate in _candidates():
        assert matches(qido, candidate) == matches(cfind, candidate)


NAMES = st.one_of(st.sampled_from(["PatientID", "StudyDate", "00100010", "0020000D", "limit", "offset",
                                   "includefield", "fuzzymatching", "Modality", "ModalitiesInStudy",
                                   "RequestAttributesSequence.ScheduledProcedureStepID", "PixelData",
                                   "00091010", "SOPInstanceUID", "RetrieveURL"]),
                  st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(NAMES, st.text(max_size=20)), max_size=6),
       st.sampled_from([QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.IMAGE]))
def test_any_parameters_give_a_query_or_a_400(params: list[tuple[str, str]], level: QueryLevel) -> None:
    try:
        query = parse_qido(level, params)
    except KitError as exc:
        assert isinstance(exc, DicomWebRequestError) and exc.status_code == 400
        return
    assert query.identifier.QueryRetrieveLevel == level.value


@pytest.mark.parametrize("name", ["SliceThickness", "00180050", "InstanceNumber", "FrameIncrementPointer"])
@pytest.mark.parametrize("value", [":", "x", "q\\r"])
def test_a_value_its_vr_cannot_hold_is_a_400(name: str, value: str) -> None:
    """DS ':' (found by the test above) was pydicom's ValueError: an internal error, not a 400."""
    with pytest.raises(DicomWebRequestError, match="is not a value of VR") as caught:
        parse_qido(QueryLevel.IMAGE, [(name, value)])
    assert caught.value.status_code == 400


def test_defaults_paths_includefield_and_warnings() -> None:
    q = parse_qido(QueryLevel.SERIES, [("includefield", "BodyPartExamined,00080080"), ("limit", "5"),
                                       ("offset", "2"), ("fuzzymatching", "true")], study_uid="1.2.3")
    assert q.identifier.StudyInstanceUID == "1.2.3"
    assert {"Modality", "SeriesInstanceUID", "BodyPartExamined", "InstitutionName"} <= set(q.identifier.dir())
    assert "StudyDate" not in q.identifier  # scoped to a study: its fields are not repeated
    assert (q.limit, q.offset, q.server_fields) == (5, 2, ("RetrieveURL",))
    assert q.warnings and "fuzzymatching" in q.warnings[0]
    everything = parse_qido(QueryLevel.STUDY, [("includefield", "all")]).identifier
    assert set(LEVEL_KEYS[QueryLevel.STUDY]) <= set(everything.dir())
    seq = parse_qido(QueryLevel.SERIES, [("RequestAttributesSequence.ScheduledProcedureStepID", "S1")])
    assert seq.identifier.RequestAttributesSequence[0].ScheduledProcedureStepID == "S1"
    uids = parse_qido(QueryLevel.IMAGE, [("SOPInstanceUID", "1.2,1.3")]).identifier
    assert list(uids.SOPInstanceUID) == ["1.2", "1.3"]


@pytest.mark.parametrize("params,kwargs", [
    ([("StudyInstanceUID", "1.2.4")], {"study_uid": "1.2.3"}),
    ([("SeriesInstanceUID", "1.2")], {}),
    ([("StudyDate", "2026-13-45")], {}),
    ([("PatientID", "a"), ("PatientID", "b")], {}),
    ([("RequestAttributesSequence", "x")], {}),
    ([("PixelData", "")], {}),
    ([("offset", "1" * 11)], {}),
    ([("limit", "\u00b2")], {}),  # a Unicode digit is not a number here
    ([], {"study_uid": "not-a-uid"}),
])
def test_refused_queries(params: list[tuple[str, str]], kwargs: dict[str, str]) -> None:
    with pytest.raises(DicomWebRequestError) as info:
        parse_qido(QueryLevel.STUDY, params, **kwargs)
    assert info.value.status_code == 400


def test_negotiation() -> None:
    def pick(accept: str | None, part: str = "application/dicom") -> str | None:
        return negotiate(parse_accept(accept), part, EXPLICIT)

    assert pick('multipart/related; type="application/dicom"') == EXPLICIT
    assert pick('multipart/related; type="application/dicom"; transfer-syntax=*') is None
    assert pick('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2') == \
        "1.2.840.10008.1.2"
    assert pick(None) is None and pick("*/*") is None
    assert pick('multipart/related; type="*/*"', "application/octet-stream") is None
    assert pick('multipart/related; type="application/octet-stream"', "application/octet-stream") == EXPLICIT
    for refused in ("application/dicom+json", 'multipart/related; type="image/jpeg"', "application/dicom"):
        with pytest.raises(DicomWebRequestError) as info:
            pick(refused)
        assert info.value.status_code == 406


def test_frames() -> None:
    assert parse_frames("1,3,2", 3) == [1, 3, 2]
    for text, code in (("0", 404), ("4", 404), ("1,,2", 400), ("a", 400), ("-1", 400), ("\u00b2", 400),
                       ("1,1", 400), ("2,3,2", 400), (",".join(["1"] * 1000), 400)):  # a frame repeated
        with pytest.raises(DicomWebRequestError) as info:
            parse_frames(text, 3)
        assert info.value.status_code == code


def test_part10_split() -> None:
    path = next(iter(sorted(examples.dicom_dir().rglob("*.dcm"))))
    data = path.read_bytes()
    meta, offset = split_part10(data)
    assert str(meta.TransferSyntaxUID) and dcmread(path).file_meta == meta
    assert data[offset:offset + 2] == b"\x08\x00"  # the data set starts with group 0008
    for bad in (b"", data[:140], b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff" * 4,
                data[:132] + b"\x02\x00\x01\x00OB" + data[140:]):
        with pytest.raises(DicomFileError):
            split_part10(bad)


@settings(max_examples=200, deadline=None)
@given(st.integers(128, 400), st.binary(min_size=1, max_size=8))
def test_part10_split_of_damaged_files_raises_only_dicom_file_errors(at: int, junk: bytes) -> None:
    data = bytearray(next(iter(sorted(examples.dicom_dir().rglob("*.dcm")))).read_bytes()[:600])
    data[at:at + len(junk)] = junk
    try:
        split_part10(bytes(data))
    except KitError as exc:
        assert isinstance(exc, DicomFileError)


def test_stow_statuses_and_body() -> None:
    ok = [("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "http://x/studies/1/series/2/instances/1.2.3")]
    bad = [("1.2.840.10008.5.1.4.1.1.2", "1.2.4", 0xC000)]
    assert stow_response(ok, [], "http://x/studies/1")[0] == 200
    assert stow_response(ok, bad, None)[0] == 202
    status, body = stow_response([], bad + [("", "", 0xA900)], "http://x/studies/1")
    answer = Dataset.from_json(body)
    assert status == 409 and "RetrieveURL" not in answer
    assert [int(i.FailureReason) for i in answer.FailedSOPSequence] == [0xC000, 0xA900]
    assert "ReferencedSOPInstanceUID" not in answer.FailedSOPSequence[1]
