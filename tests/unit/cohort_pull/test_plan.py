"""The pure rules of a cohort pull: input validation, resolution filtering, failures, report."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.cohort.plan import (
    REPORT_SCHEMA,
    CohortItem,
    Failure,
    ItemState,
    Pause,
    RetryPolicy,
    StudyState,
    _in_range,
    after_failure,
    check_transition,
    classify,
    items_from_frame,
    matching_studies,
    report_frame,
)
from kit.dicom.dimse import RetrieveError
from kit.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DicomProtocolError,
    DicomWebError,
    DimseStatusError,
    InvalidInputError,
    KitError,
    NotFoundError,
    PeerTimeoutError,
    PeerUnreachableError,
    TLSError,
)

UID = "1.2.826.0.1.3680043.8.498.1"


def test_columns_aliases_dates_and_duplicates() -> None:
    frame = pl.DataFrame({
        "MRN": ["M1", None, None, "M1", None],
        "Accession Number": [None, "A1", " A1 ", None, None],
        "study_uid": [None, None, None, None, UID],
        "date_from": ["2024-01-01", None, None, "2024-01-01", None],
        "date_to": [None, None, None, None, None],
        "other": [1, 2, 3, 4, 5],
    })
    items = items_from_frame(frame)
    assert [i.key for i in items] == ["patient_id=M1 study_date=20240101-", "accession_number=A1",
                                      f"study_instance_uid={UID}"]
    assert [i.row for i in items] == [1, 2, 5]
    assert [i.kind for i in items] == ["patient_id", "accession_number", "study_instance_uid"]


def test_dates_are_dates_and_ranges() -> None:
    frame = pl.DataFrame({"patient_id": ["M1", "M2", "M3"],
                          "study_date": [dt.date(2024, 2, 29), dt.date(2024, 3, 1), None]})
    assert [i.study_date for i in items_from_frame(frame)] == ["20240229", "20240301", None]
    for text, want in [("20240101-20241231", "20240101-20241231"), ("-20241231", "-20241231"),
                       ("2024-01-01/2024-12-31", "20240101-20241231"), ("2024-01-01", "20240101")]:
        assert CohortItem(patient_id="M", study_date=text).study_date == want


@pytest.mark.parametrize(("frame", "message"), [
    (pl.DataFrame({"name": ["x"]}), "no accession_number, study_instance_uid or patient_id column"),
    (pl.DataFrame({"accession_number": []}, schema={"accession_number": pl.String}), "no rows"),
    (pl.DataFrame({"accession_number": ["A1", None]}), "row 2: no accession_number"),
    (pl.DataFrame({"accession_number": ["A*"]}), "row 1: accession_number 'A\\*' contains '\\*'"),
    (pl.DataFrame({"accession_number": ["A?1"]}), "contains '\\?'"),
    (pl.DataFrame({"patient_id": ["M\\2"]}), "contains"),
    (pl.DataFrame({"patient_id": ["M\x01"]}), "contains"),
    (pl.DataFrame({"accession_number": ["A" * 17]}), "longer than 16"),
    (pl.DataFrame({"patient_id": ["M" * 65]}), "longer than 64"),
    (pl.DataFrame({"study_instance_uid": ["1.2.abc"]}), "not a DICOM UID"),
    (pl.DataFrame({"patient_id": ["M"], "study_date": ["20240230"]}), "not a real date"),
    (pl.DataFrame({"patient_id": ["M"], "study_date": ["20241231-20240101"]}), "after its end"),
    (pl.DataFrame({"patient_id": ["M"], "study_date": ["2024"]}), "not a date or range"),
    (pl.DataFrame({"patient_id": ["M"], "study_date": ["x"], "date_to": ["20240101"]}), "not both"),
    (pl.DataFrame({"mrn": ["M"], "patient_id": ["N"]}), "both mean patient_id"),
    (pl.DataFrame({"study_date": ["20240101"]}), "no accession_number"),
])
def test_bad_cohorts_are_refused_naming_the_row(frame: pl.DataFrame, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        items_from_frame(frame)


def test_a_wildcard_never_reaches_a_query_even_after_stripping() -> None:
    # a stray "*" would turn a C-FIND for one study into one for the whole archive
    for value in ("*", " * ", "A1*", "?"):
        with pytest.raises(InvalidInputError):
            CohortItem(accession_number=value)


def test_matching_studies_drops_what_contradicts_the_item() -> None:
    item = CohortItem(patient_id="M1", study_date="20240101-20240131")
    jan5, feb5 = dt.date(2024, 1, 5), dt.date(2024, 2, 5)
    rows = [
        {"study_instance_uid": "1.2.3", "patient_id": "M1", "study_date": jan5,
         "accession_number": "A", "number_of_study_related_instances": 3},
        {"study_instance_uid": "1.2.3", "patient_id": "M1", "study_date": jan5},   # duplicate
        {"study_instance_uid": "1.2.4", "patient_id": "M2", "study_date": jan5},   # other patient
        {"study_instance_uid": "1.2.5", "patient_id": "M1", "study_date": feb5},   # out of range
        {"study_instance_uid": "../../etc", "patient_id": "M1"},                   # not a UID
        {"study_instance_uid": None, "patient_id": "M1"},
        {"study_instance_uid": "1.2.6", "patient_id": "M1", "study_date": None},   # no date: kept
    ]
    found, dropped = matching_studies(item, rows)
    assert [f.study_instance_uid for f in found] == ["1.2.3", "1.2.6"]
    assert found[0].instances == 3 and found[0].study_date == "20240105"
    assert dropped == 4


@pytest.mark.parametrize(("exc", "transient", "not_found"), [
    (PeerUnreachableError("x"), True, False),
    (PeerTimeoutError("x"), True, False),
    (AssociationAbortedError("x"), True, False),
    (DicomProtocolError("x"), False, False),  # the kit aborted for what the peer sent
    (AssociationRejectedError("x", result=2), True, False),
    (AssociationRejectedError("x", result=1), False, False),
    (TLSError("x"), False, False),
    (NotFoundError("x"), False, True),
    (DicomWebError("x", status_code=404), False, True),
    (DicomWebError("WADO-RS: study 1.2 returned no instances"), False, True),
    (DicomWebError("x", status_code=503), True, False),
    (DicomWebError("x", status_code=429), True, False),
    (DicomWebError("x", status_code=400), False, False),
    (DimseStatusError("x", status=0xA700), True, False),
    (DimseStatusError("x", status=0xC000), False, False),
    (DimseStatusError("x", status=None), True, False),
    (RetrieveError("x", status=0x0000), False, True),
    (RetrieveError("x", status=0xB000, completed=1, failed=2), True, False),
    (InvalidInputError("x"), False, False),
    (ValueError("x"), False, False),
])
def test_classify(exc: BaseException, transient: bool, not_found: bool) -> None:
    failure = classify(exc)
    assert (failure.transient, failure.not_found) == (transient, not_found)
    assert failure.reason.startswith(type(exc).__name__ + ": ")


def test_retries_back_off_and_give_up() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=1.0, max_backoff=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 3.0, 3.0]
    busy = Failure("PeerTimeoutError: x", transient=True)
    assert after_failure(1, busy, policy, 100.0) == after_failure(1, busy, policy, 100.0)
    assert after_failure(2, busy, policy, 100.0).next_at == 102.0
    last = after_failure(3, busy, policy, 100.0)
    assert not last.retry and last.transient and last.reason.startswith("gave up after 3 attempt(s)")
    final = after_failure(1, Failure("NotFoundError: x", transient=False, not_found=True), policy, 0.0)
    assert not final.retry and not final.transient and final.reason == "NotFoundError: x"


def test_the_whole_job_pauses_after_a_transient_failure() -> None:
    pause = Pause(RetryPolicy(backoff=1.0, max_backoff=10.0))
    assert pause.wait(0.0) == 0
    assert pause.failed(10.0) == 11.0
    assert pause.failed(10.5) == 12.5
    assert pause.wait(11.0) == 1.5
    pause.succeeded()
    assert pause.failed(20.0) == 21.0


def test_states_only_change_as_allowed() -> None:
    check_transition(StudyState.PENDING, StudyState.RETRIEVING)
    check_transition(StudyState.RETRIEVING, StudyState.PENDING)
    for old, new in [(StudyState.DONE, StudyState.RETRIEVING), (StudyState.DONE, StudyState.PENDING),
                     (StudyState.PENDING, StudyState.DONE), (ItemState.RESOLVED, ItemState.RESOLVING)]:
        with pytest.raises(ValueError, match="not allowed"):
            check_transition(old, new)


def test_report_frame_statuses_and_schema() -> None:
    rows = [
        {"row": 1, "item": "accession_number=A1", "item_state": "resolved", "study_instance_uid": "1.2",
         "study_date": "20240105", "state": "done", "attempts": 1, "instances": 3, "bytes": 10,
         "seconds": 0.5, "path": "/x/1.2"},
        {"row": 2, "item": "accession_number=A2", "item_state": "failed", "item_reason": "NotFoundError: x",
         "item_attempts": 1, "study_instance_uid": None},
        {"row": 3, "item": "patient_id=M", "item_state": "resolved", "study_instance_uid": "1.3",
         "state": "failed", "reason": "gave up", "attempts": 6, "instances": None},
        {"row": 3, "item": "patient_id=M", "item_state": "resolved", "study_instance_uid": "1.4",
         "state": "pending", "attempts": 0},
        {"row": 4, "item": "accession_number=A4", "item_state": "pending", "study_instance_uid": None},
    ]
    report = report_frame(rows)
    assert report.schema == pl.Schema(REPORT_SCHEMA)
    assert report["status"].to_list() == ["retrieved", "failed", "failed", "found", "pending"]
    assert report["reason"].to_list() == [None, "NotFoundError: x", "gave up", None, None]
    assert report["study_date"][0] == dt.date(2024, 1, 5)
    assert report_frame([]).schema == pl.Schema(REPORT_SCHEMA)


# -- fuzz ----------------------------------------------------------------------------------------

cells = st.one_of(st.none(), st.text(max_size=20), st.integers(-5, 10**12), st.dates())


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["accession_number", "mrn", "study_uid", "study_date", "date_from",
                                        "date_to", "x", "Accession"]),
                       st.lists(cells, min_size=1, max_size=4), min_size=1, max_size=4))
def test_any_frame_gives_items_or_an_invalid_input_error(columns: dict[str, list[object]]) -> None:
    n = min(len(v) for v in columns.values())
    frame = pl.DataFrame({k: [None if x is None else str(x) for x in v[:n]] for k, v in columns.items()},
                         schema={k: pl.String for k in columns})
    try:
        items = items_from_frame(frame)
    except KitError as exc:
        assert isinstance(exc, InvalidInputError)
        return
    for item in items:
        assert item.key and "*" not in item.key and "?" not in item.key and "\\" not in item.key
        again = CohortItem(**item.filters())  # the key's values are valid again: a fixed point
        assert again == item


@settings(max_examples=200, deadline=None)
@given(st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1)),
       st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1))),
       st.one_of(st.none(), st.dates(dt.date(1900, 1, 1), dt.date(2100, 1, 1))))
def test_date_range_matching_equals_comparing_dates(day: dt.date, start: dt.date | None,
                                                    end: dt.date | None) -> None:
    if start is None and end is None:
        return
    if start and end and start > end:
        start, end = end, start
    wanted = CohortItem(patient_id="M", study_date=f"{start.strftime('%Y%m%d') if start else ''}-"
                                                   f"{end.strftime('%Y%m%d') if end else ''}").study_date
    assert wanted is not None
    slow = (start is None or day >= start) and (end is None or day <= end)
    assert _in_range(day.strftime("%Y%m%d"), wanted) is slow
