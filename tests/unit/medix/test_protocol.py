"""The Medix protocol (pure): codes, the job state machine, request validation, webhook bodies."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit.errors import InvalidInputError, KitError
from kit.services.medix_protocol import (
    PLATFORM_STATUSES,
    SERVICE_STEPS,
    DownloadRequest,
    MedixStatus,
    backoff_delay,
    failure_for,
    parse_download_request,
    parse_report_request,
    report_answer,
    transition,
    webhook_body,
    webhook_http_headers,
)

S = MedixStatus
UID = "1.2.826.0.1.3680043.8.498.1"


def test_codes_are_the_protocols() -> None:
    assert {s.protocol_name: int(s) for s in S} == {
        "ProcessStarted": 0, "RequestSent": 1, "ExportStarted": 2, "CompressStarted": 3,
        "CompressFinished": 4, "ExportCompleted": 5, "DownloadStarted": 6, "DownloadSaved": 7,
        "MergeStarted": 8, "MergeCompleted": 10, "RequestFailed": -4, "ExportFailed": -3,
        "DownloadFailed": -2, "MergeFailed": -1}
    assert [int(s) for s in SERVICE_STEPS] == [0, 1, 2, 3, 4, 5]
    assert {int(s) for s in PLATFORM_STATUSES} == {6, 7, 8, 10, -2, -1}


def test_a_good_job_walks_every_step_once() -> None:
    current = None
    for step in SERVICE_STEPS:
        current = transition(current, step)
        assert current is step
    with pytest.raises(InvalidInputError, match="already ended"):
        transition(current, S.EXPORT_FAILED)


def test_a_resumed_job_replays_without_reporting_again() -> None:
    assert transition(S.EXPORT_STARTED, S.REQUEST_SENT) is None
    assert transition(S.EXPORT_STARTED, S.EXPORT_STARTED) is None
    assert transition(S.EXPORT_STARTED, S.COMPRESS_STARTED) is S.COMPRESS_STARTED


@pytest.mark.parametrize(("current", "new", "match"), [
    (None, S.REQUEST_SENT, "ProcessStarted first"),
    (S.REQUEST_SENT, S.EXPORT_COMPLETED, "ExportStarted first"),
    (S.EXPORT_COMPLETED, S.REQUEST_SENT, "already ended"),
    (S.REQUEST_FAILED, S.EXPORT_FAILED, "already ended"),
    (S.EXPORT_COMPLETED, S.DOWNLOAD_STARTED, "platform"),
    (S.COMPRESS_FINISHED, S.MERGE_FAILED, "platform"),
])
def test_illegal_transitions_are_refused(current: MedixStatus | None, new: MedixStatus, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        transition(current, new)


@pytest.mark.parametrize(("reached", "code"), [
    (None, S.REQUEST_FAILED), (S.PROCESS_STARTED, S.REQUEST_FAILED), (S.REQUEST_SENT, S.REQUEST_FAILED),
    (S.EXPORT_STARTED, S.EXPORT_FAILED), (S.COMPRESS_STARTED, S.EXPORT_FAILED),
    (S.COMPRESS_FINISHED, S.EXPORT_FAILED),
])
def test_failure_code_follows_the_step_reached(reached: MedixStatus | None, code: MedixStatus) -> None:
    assert failure_for(reached) is code
    assert transition(reached, code) is code


def test_download_request_is_parsed_with_case_insensitive_keys() -> None:
    req = parse_download_request({"studyInstanceUID": UID, "webhookUri": "https://platform.example/hook?x=1",
                                  "WebhookHeaders": {"Authorization": "Bearer p", "X-Id": "7"}})
    assert req == DownloadRequest(UID, "https://platform.example/hook?x=1",
                                  (("Authorization", "Bearer p"), ("X-Id", "7")))
    assert req.headers == {"Authorization": "Bearer p", "X-Id": "7"}
    assert parse_download_request({"StudyInstanceUID": UID, "WebhookUri": "http://h/",
                                   "WebhookHeaders": None}).webhook_headers == ()


@pytest.mark.parametrize(("body", "match"), [
    ({"StudyInstanceUID": UID, "studyinstanceuid": UID, "WebhookUri": "http://h/"}, "twice"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": {"X": 1}}, "printable"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": {"X": "é"}}, "printable"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": {"X Y": "v"}}, "header name"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": {"Host": "evil"}}, "HTTP client"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": {"a": "1", "A": "2"}}, "twice"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/", "WebhookHeaders": ["X", "v"]}, "object"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/" + "a" * 3000}, "longer"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h:99999/"}, "not a URL"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http:///nohost"}, "http"),
    ({"StudyInstanceUID": UID, "WebhookUri": "http://h/a b"}, "spaces"),
    ({"StudyInstanceUID": UID, "WebhookUri": "javascript:alert(1)"}, "http"),
    ({"StudyInstanceUID": "", "WebhookUri": "http://h/"}, "empty"),
    ({"StudyInstanceUID": "1.2.3.", "WebhookUri": "http://h/"}, "DICOM UID"),
    ("not an object", "object"),
])
def test_bad_download_requests_are_refused(body: object, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        parse_download_request(body)


def test_report_request_is_bounded_and_deduplicated() -> None:
    assert parse_report_request({"StudyInstanceUIDs": [UID, "1.2", UID]}, max_studies=3) == (UID, "1.2")
    assert parse_report_request(["1.2"], max_studies=1) == ("1.2",)
    for body, match in [({"StudyInstanceUIDs": []}, "empty"), ({"x": []}, "lacks"),
                        ({"StudyInstanceUIDs": ["1"] * 4}, "at most 3"),
                        ({"StudyInstanceUIDs": [1]}, "string"), ({"StudyInstanceUIDs": "1.2"}, "list")]:
        with pytest.raises(InvalidInputError, match=match):
            parse_report_request(body, max_studies=3)


def test_webhook_body_and_headers() -> None:
    assert webhook_body(S.REQUEST_SENT, {"K": "v"}) == {"Status": "1", "headers": {"K": "v"}}
    assert webhook_body(S.EXPORT_COMPLETED, {}, "http://x/f") == {"Status": "5", "headers": {}, "File": "http://x/f"}
    assert webhook_body(-4, {})["Status"] == "-4"
    with pytest.raises(InvalidInputError):
        webhook_body(S.EXPORT_COMPLETED, {})
    with pytest.raises(InvalidInputError):
        webhook_body(S.EXPORT_STARTED, {}, "http://x/f")
    assert webhook_http_headers({"K": "v"}) == {"K": "v", "Content-Type": "application/json"}


def test_report_answer() -> None:
    row = {"study_instance_uid": UID, "has_report": None, "has_sr": False, "has_diagnostic_report": None,
           "sr_instance_uids": [], "diagnostic_report_ids": None, "error": "fhir: down"}
    assert report_answer([row]) == {"Studies": [{
        "StudyInstanceUID": UID, "HasReport": None, "HasSR": False, "HasDiagnosticReport": None,
        "SRInstanceUIDs": [], "DiagnosticReportIds": [], "Error": "fhir: down"}]}


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_delay(a, base=0.5, cap=3) for a in range(0, 6)] == [0, 0.5, 1, 2, 3, 3]
    assert backoff_delay(10_000, base=1, cap=30) == 30
    with pytest.raises(InvalidInputError):
        backoff_delay(1, base=0, cap=1)


# -- fuzz: only KitError, and the parser agrees with a slow reference ------------------------------

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_uidish = st.from_regex(r"[0-9.]{1,70}", fullmatch=True) | st.text(max_size=70)
_bodies = st.fixed_dictionaries({"StudyInstanceUID": _uidish,
                                 "WebhookUri": st.sampled_from(["http://h/x", "https://a.b:8443/p?q",
                                                                "ftp://h/", "http://u:p@h/", ""])
                                 | st.text(max_size=30)},
                                optional={"WebhookHeaders": st.dictionaries(st.text(max_size=10),
                                                                            st.text(max_size=10), max_size=5)
                                          | _json})
_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@settings(max_examples=300, deadline=None)
@given(st.one_of(_bodies, _json))
def test_fuzz_download_request_raises_only_kit_errors(body: Any) -> None:
    try:
        req = parse_download_request(body)
    except KitError:
        return
    assert _UID_RE.fullmatch(req.study_instance_uid) and len(req.study_instance_uid) <= 64
    assert req.webhook_uri.lower().startswith(("http://", "https://"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_uidish, max_size=8), st.integers(min_value=1, max_value=6))
def test_fuzz_report_request_matches_the_slow_path(uids: list[str], cap: int) -> None:
    def slow() -> tuple[str, ...]:
        if not uids or len(uids) > cap:
            raise InvalidInputError("bounds")
        out: list[str] = []
        for u in uids:
            text = u.strip().rstrip("\x00")
            if not text or len(text) > 64 or not _UID_RE.fullmatch(text):
                raise InvalidInputError("uid")
            if text not in out:
                out.append(text)
        return tuple(out)

    try:
        want: tuple[str, ...] | None = slow()
    except InvalidInputError:
        want = None
    try:
        got: tuple[str, ...] | None = parse_report_request({"StudyInstanceUIDs": uids}, max_studies=cap)
    except KitError:
        got = None
    assert got == want
