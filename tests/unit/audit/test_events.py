"""kit.audit: events valid by construction, dispatch that never breaks the caller, who is acting."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kit import audit
from kit.audit import AuditEvent
from kit.fhir._audit import action_of, identifiers
from kit.hl7._audit import message_fields
from kit.services._audit_http import json_identifiers


class Collect:
    """A sink keeping what it gets."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def __call__(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)


@pytest.fixture
def sink() -> Iterator[Collect]:
    collect = Collect()
    audit.add_sink(collect)
    try:
        yield collect
    finally:
        audit.remove_sink(collect)


def test_event_is_valid_by_construction() -> None:
    event = AuditEvent("pacs.find", who="user:alice", target="https://bob:s3cret@ehr.example.org:8443/r4?q=x",
                       patient_ids=("MRN1", "MRN1", "", "MRN2"), count=3,
                       when=dt.datetime(2026, 1, 31, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))))
    assert event.target == "https://ehr.example.org:8443/r4"  # no credentials, no query text
    assert event.patient_ids == ("MRN1", "MRN2")
    assert event.when == dt.datetime(2026, 1, 31, 8, 0, tzinfo=dt.UTC)
    assert AuditEvent.from_dict(event.to_dict()) == event
    assert AuditEvent("pacs.get", target="dicom://KIT@127.0.0.1:104").target == "dicom://KIT@127.0.0.1:104"
    for bad in ({"action": "drop table"}, {"action": "smtp.send"}, {"outcome": "maybe"},
                {"side": "both"}, {"error": "Boom"}, {"outcome": "failed", "error": "not a class"},
                {"count": -1}, {"when": dt.datetime(2026, 1, 1)}):
        with pytest.raises(ValueError):
            AuditEvent(**{"action": "fhir.read", **bad})


def test_identifiers_are_bounded(sink: Collect) -> None:
    many = [f"UID{i}" for i in range(audit.MAX_IDS + 5)]
    event = AuditEvent("pacs.find", study_uids=many, patient_ids=["x" * 1000])
    assert len(event.study_uids) == audit.MAX_IDS and "5 more study_uids" in event.detail
    assert event.patient_ids == ("x" * 128,)


def test_no_sink_no_event_built() -> None:
    calls = []

    @audit.audited("pacs.find", lambda *a: calls.append(a) or {})
    def access() -> int:
        return 1

    assert audit.sinks() == () and access() == 1 and calls == []


def test_a_sink_that_raises_never_breaks_the_caller(sink: Collect, caplog: pytest.LogCaptureFixture) -> None:
    def broken(events: Sequence[AuditEvent]) -> None:
        raise RuntimeError("disk on fire")

    audit.add_sink(broken)
    try:
        @audit.audited("fhir.read", lambda args, kwargs, result, error: {"patient_ids": [args[0]]})
        def read(pid: str) -> str:
            return pid

        before = audit.sink_failures().get(broken.__qualname__, 0)
        assert [read("p1"), read("p2"), read("p3")] == ["p1", "p2", "p3"]
        assert audit.sink_failures()[broken.__qualname__] == before + 3
        # the other sinks still get every event
        assert [e.patient_ids for e in sink.events] == [("p1",), ("p2",), ("p3",)]
        logged = [r for r in caplog.records if "disk on fire" in r.getMessage()]
        assert len(logged) <= 1  # once per sink, then counted
    finally:
        audit.remove_sink(broken)


def test_a_bad_description_never_breaks_the_caller(sink: Collect) -> None:
    @audit.audited("fhir.read", lambda *a: 1 / 0)  # type: ignore[arg-type,return-value]
    def read() -> str:
        return "ok"

    @audit.audited("fhir.read", lambda *a: {"count": -5})
    def read2() -> str:
        return "ok"

    assert read() == "ok" and read2() == "ok" and sink.events == []
    audit.record("not an action")  # counted, not raised
    assert audit.sink_failures()["event not an action"] >= 1


def test_failures_are_recorded_with_their_class_and_reraised(sink: Collect) -> None:
    @audit.audited("hl7.send", lambda *a: {"target": "mllp://h:1"})
    def send() -> None:
        raise TimeoutError("late")

    with pytest.raises(TimeoutError):
        send()
    assert (sink.events[-1].outcome, sink.events[-1].error) == ("failed", "TimeoutError")


def test_who_is_the_innermost_actor_and_follows_threads_given_the_context(sink: Collect) -> None:
    assert audit.current_actor().startswith("user:")
    state: dict[str, Any] = {}
    with audit.acting_as(lambda: state.get("key")):
        assert audit.current_actor().startswith("user:")  # not known yet: the local user
        state["key"] = "key:abc"
        assert audit.current_actor() == "key:abc"
        with audit.acting_as("token:123"):
            audit.record("medix.study/download")
        import contextvars

        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(audit.record, "api.status"))
        worker.start()
        worker.join()
    assert [e.who for e in sink.events] == ["token:123", "key:abc"]


def test_fhir_actions() -> None:
    cases = {("GET", "/Patient/p1"): "fhir.read", ("GET", "/Patient/p1/_history/2"): "fhir.read",
             ("GET", "/Observation"): "fhir.search", ("GET", ""): "fhir.search",
             ("POST", "/Observation/_search"): "fhir.search", ("POST", "/Observation"): "fhir.create",
             ("PUT", "/Observation/o1"): "fhir.update", ("DELETE", "/Observation/o1"): "fhir.delete",
             ("POST", ""): "fhir.transaction", ("GET", "/$export"): "fhir.export",
             ("GET", "/Group/g/$export"): "fhir.export", ("GET", "/$export-status/1"): None,
             ("GET", "/metadata"): None}
    assert {k: action_of(*k) for k in cases} == cases


def test_fhir_identifiers_keep_ids_only() -> None:
    patient = (b'{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"p1",'
               b'"name":[{"family":"Moreau"}],"birthDate":"1958-03-14","identifier":[{"value":"MRN1001",'
               b'"type":{"coding":[{"code":"MR"}]}},{"value":"756.1234","type":{"coding":[{"code":"SS"}]}}]}},'
               b'{"resource":{"resourceType":"ImagingStudy","subject":{"reference":"Patient/p1"},'
               b'"identifier":[{"value":"urn:oid:1.2.3"},{"value":"ACC1","type":{"coding":[{"code":"ACSN"}]}}]}}]}')
    ids, count = identifiers([patient], [("subject", "Patient/p9"), ("code", "1234-5")], "/ImagingStudy")
    assert ids == {"patient_ids": ["Patient/p9", "Patient/p1", "MRN1001", "Patient/p1"],
                   "study_uids": ["1.2.3"], "accessions": ["ACC1"]}
    assert count == 2


def test_hl7_fields_are_identifiers_and_type() -> None:
    text = ("MSH|^~\\&|LIS|H|KIT|R|20260112081400||ORU^R01^ORU_R01|C1|P|2.5.1\r"
            "PID|1||MRN1001^^^H^MR||Moreau^Alice||19580314|F\r"
            + "|".join(["OBR", "1", "P1", "F1", "code", *[""] * 13, "ACC1"])
            + "\rZDS|1.2.3^^Application^DICOM\r")
    assert message_fields(text) == {"patient_ids": ["MRN1001"], "accessions": ["ACC1"],
                                    "study_uids": ["1.2.3"], "detail": "ORU^R01"}
    assert message_fields(b"\xff not hl7") == {}


def test_json_identifiers_by_key_only() -> None:
    ids: dict[str, list[str]] = {"patient_ids": [], "study_uids": [], "accessions": []}
    json_identifiers(b'{"PatientID":"MRN1","name":"Moreau","nested":[{"StudyInstanceUIDs":["1.2","1.3"]}],'
                     b'"accession_number":"A1","WebhookHeaders":{"Authorization":"Bearer secret"}}', ids)
    assert ids == {"patient_ids": ["MRN1"], "study_uids": ["1.2", "1.3"], "accessions": ["A1"]}
    json_identifiers(b'["1.9"]', ids, bare_list="study_uids")
    assert ids["study_uids"][-1] == "1.9"


_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(body=_json, raw=st.binary(max_size=200), params=st.lists(st.tuples(st.text(max_size=10),
                                                                           st.text(max_size=20)), max_size=3),
       path=st.text(max_size=30))
def test_describers_never_raise_on_any_input(body: Any, raw: bytes, params: list[tuple[str, str]],
                                             path: str) -> None:
    import orjson

    encoded = orjson.dumps(body)
    for data in (encoded, raw):
        identifiers([data], params, path)
        ids: dict[str, list[str]] = {"patient_ids": [], "study_uids": [], "accessions": []}
        json_identifiers(data, ids)
        json_identifiers(data, ids, bare_list="study_uids")
        message_fields(data)


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from(["who", "target", "side", "outcome", "error", "patient_ids",
                                               "count", "detail"]),
                              st.none() | st.text(max_size=30) | st.integers(-3, 3)
                              | st.lists(st.text(max_size=5))),
       action=st.text(max_size=20))
def test_record_never_raises(fields: dict[str, Any], action: str) -> None:
    collect = Collect()
    audit.add_sink(collect)
    try:
        audit.record(action, **fields)
        audit.record("pacs.find", **fields)
    finally:
        audit.remove_sink(collect)
    for event in collect.events:  # whatever got through is a valid event that round-trips
        assert AuditEvent.from_dict(event.to_dict()) == event
