"""FhirClient and `kit fhir` against small hostile servers (127.0.0.1, ephemeral port, one per test):
malformed OperationOutcomes, huge diagnostics, endless paging, bad next URLs, an overflowing
Retry-After and malformed CapabilityStatement / transaction-response shapes all end typed or are
read defensively."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kit.cli import cli
from kit.errors import FhirError, KitError, OperationOutcomeError
from kit.fhir import _paging
from kit.fhir.client import NO_RETRY, FhirClient, RetryPolicy
from tests.integration.http_peer import QuietHandler, running

#: Pages a hostile server serves before it answers 500: an unbounded search fails instead of hanging.
SAFETY = 300

Route = Callable[["_Handler"], None]


class _Handler(QuietHandler):
    server: _Server

    def _go(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with self.server.lock:
            self.server.hits += 1
        self.server.route(self)

    do_GET = do_POST = _go

    def send_json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    route: Route
    hits: int
    lock: threading.Lock


@contextmanager
def hostile(route: Route) -> Iterator[tuple[str, _Server]]:
    """Serve ``route`` on 127.0.0.1 (ephemeral port) in a thread; yield the FHIR base and the server."""
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.route, srv.hits, srv.lock = route, 0, threading.Lock()
    with running(srv, "hostile-fhir") as origin:
        yield origin + "/fhir", srv


def _endless_next(h: _Handler) -> None:
    if h.server.hits > SAFETY:
        return h.send_json({"resourceType": "OperationOutcome", "issue": [{"diagnostics": "safety stop"}]},
                           status=500)
    n = h.server.hits
    h.send_json({"resourceType": "Bundle", "type": "searchset",
                 "link": [{"relation": "next", "url": f"http://127.0.0.1:{h.server.server_address[1]}"
                                                      f"/fhir/Patient?page={n + 1}"}],
                 "entry": [{"resource": {"resourceType": "Patient", "id": f"p{n}-{i}"}} for i in range(5)]})


def _endless_offset(h: _Handler) -> None:
    if h.server.hits > SAFETY:
        return h.send_json({"resourceType": "OperationOutcome", "issue": [{"diagnostics": "safety stop"}]},
                           status=500)
    n = h.server.hits
    h.send_json({"resourceType": "Bundle", "type": "searchset", "total": 10**12,
                 "entry": [{"resource": {"resourceType": "Patient", "id": f"p{n}-{i}"}} for i in range(5)]})


@pytest.mark.parametrize("route", [_endless_next, _endless_offset], ids=["fresh-next-links", "offset"])
def test_a_search_that_never_ends_is_stopped_with_a_typed_error(route: Route) -> None:
    with hostile(route) as (base, srv), \
            FhirClient(base, retries=NO_RETRY, timeout=10, max_pages=20) as client:
        got: list[dict[str, Any]] = []
        with pytest.raises(_paging.PagingLimitError, match="20 pages") as info:
            got.extend(client.search("Patient"))
        assert srv.hits == 20 and len(got) == 100
        assert "max_pages" in str(info.value)  # the bound that stopped it, to raise if need be


def test_the_client_bounds_the_entries_too() -> None:
    with hostile(_endless_next) as (base, srv), \
            FhirClient(base, retries=NO_RETRY, timeout=10, max_resources=30) as client:
        got: list[dict[str, Any]] = []
        with pytest.raises(_paging.PagingLimitError, match="30 entries in 6 pages") as info:
            got.extend(client.search("Patient"))
        assert srv.hits == 7 and len(got) == 30  # the seventh page is read, none of it given
        assert "max_resources" in str(info.value) and "--max-resources" in str(info.value)


@pytest.mark.parametrize(("given", "hits"), [(["--max-pages", "20"], 20), (["--max-pages", "3"], 3),
                                             (["--max-resources", "12"], 3)])
def test_kit_fhir_search_that_never_ends_exits_1_with_one_line(given: list[str], hits: int) -> None:
    with hostile(_endless_next) as (base, srv):
        result = CliRunner().invoke(cli, ["fhir", "search", "Patient", "--base", base, "--retries", "0",
                                          *given], env={"KIT_CONFIG": ""})
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    bound = given[0][2:].replace("-", "_")  # the message names the bound that stopped the search
    assert last.startswith("kit: error: PagingLimitError: ") and f"raise {bound}" in last, last
    assert srv.hits == hits


MALFORMED = {
    "issue-null": {"resourceType": "OperationOutcome", "issue": None},
    "issue-int": {"resourceType": "OperationOutcome", "issue": 5},
    "details-str": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "details": "x"}]},
    "expression-ints": {"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "x", "expression": [1, 2]}]},
    "expression-int": {"resourceType": "OperationOutcome",
                       "issue": [{"severity": "error", "code": "x", "expression": 7}]},
}


def test_a_malformed_operation_outcome_is_still_an_operation_outcome_error() -> None:
    def route(h: _Handler) -> None:
        h.send_json(MALFORMED[h.path.rsplit("/", 1)[-1]], status=400)

    with hostile(route) as (base, _), FhirClient(base, retries=NO_RETRY, timeout=10) as client:
        for name in MALFORMED:
            with pytest.raises(OperationOutcomeError, match="HTTP 400") as info:
                client.read("Patient", name)
            assert info.value.status_code == 400


def test_a_search_outcome_entry_with_malformed_issues_is_no_crash() -> None:
    def route(h: _Handler) -> None:
        h.send_json({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": 3}, "search": {"mode": "outcome"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"details": "x", "expression": 1}]},
             "search": {"mode": "outcome"}}]})

    with hostile(route) as (base, _), FhirClient(base, retries=NO_RETRY, timeout=10) as client:
        assert [p["id"] for p in client.search("Patient")] == ["a"]


def test_huge_diagnostics_make_a_bounded_error_message() -> None:
    def route(h: _Handler) -> None:
        issues = [{"severity": "error", "code": "x", "diagnostics": "D" * (4 << 20)}]
        h.send_json({"resourceType": "OperationOutcome", "issue": issues}, status=500)

    with hostile(route) as (base, _), FhirClient(base, retries=NO_RETRY, timeout=10) as client:
        with pytest.raises(OperationOutcomeError, match="HTTP 500") as info:
            client.read("Patient", "a")
    assert len(str(info.value)) < 10_000 and "[cut: " in str(info.value)


@pytest.mark.parametrize("href", ["http://[::1/fhir/Patient?page=2", "http://127.0.0.1:notaport/fhir/x"])
def test_a_malformed_next_url_is_a_fhir_error(href: str) -> None:
    def route(h: _Handler) -> None:
        h.send_json({"resourceType": "Bundle", "type": "searchset",
                     "link": [{"relation": "next", "url": href}],
                     "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}]})

    with hostile(route) as (base, _), FhirClient(base, retries=NO_RETRY, timeout=10) as client:
        with pytest.raises(FhirError, match="next link"):
            list(client.search("Patient"))


def test_an_overflowing_retry_after_is_a_typed_error() -> None:
    def route(h: _Handler) -> None:
        h.send_json({}, status=429, headers={"Retry-After": "Fri, 31 Dec 9999999999 23:59:59 GMT"})

    policy = RetryPolicy(max_attempts=2, backoff=0.01, max_backoff=0.01, max_total_wait=1.0)
    with hostile(route) as (base, _), FhirClient(base, retries=policy, timeout=10) as client:
        with pytest.raises(FhirError, match="429"):
            client.read("Patient", "a")


CAPABILITIES = {
    "software-str": {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "software": "HAPI",
                     "rest": [{"resource": [{"type": "Patient", "interaction": [{"code": "read"}]}]}]},
    "rest-str": {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
                 "rest": ["x", 5, {"resource": "y"},
                          {"resource": ["z", {"type": "Patient", "interaction": [{"code": "read"}]}]}]},
    "codes-null": {"resourceType": "CapabilityStatement", "fhirVersion": 4, "software": {"name": ["x"]},
                   "rest": [{"resource": [{"type": "Patient",
                                           "interaction": [{"code": None}, "read?", {"code": "read"}],
                                           "searchParam": [{"name": 5}, None, {"name": "family"}]},
                                          {"type": 7, "interaction": 3, "searchParam": {"name": "x"}}]}]},
}


@pytest.mark.parametrize("shape", sorted(CAPABILITIES))
def test_kit_fhir_metadata_skips_what_is_malformed(shape: str) -> None:
    def route(h: _Handler) -> None:
        h.send_json(CAPABILITIES[shape])

    with hostile(route) as (base, _):
        result = CliRunner().invoke(cli, ["fhir", "metadata", "--base", base, "--retries", "0"],
                                    env={"KIT_CONFIG": ""})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.output
    assert "Patient" in result.stdout and "read" in result.stdout


def test_kit_fhir_create_skips_malformed_transaction_response_entries(tmp_path: Path) -> None:
    def route(h: _Handler) -> None:
        h.send_json({"resourceType": "Bundle", "type": "transaction-response",
                     "entry": ["oops", 5, {"response": "x"},
                               {"response": {"status": "201 Created", "location": "Patient/1/_history/1"}}]})

    bundle = tmp_path / "tx.json"
    bundle.write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}))
    args = ["fhir", "create", str(bundle), "--no-validate", "--base", "", "--retries", "0"]
    with hostile(route) as (base, _):
        args[args.index("--base") + 1] = base
        result = CliRunner().invoke(cli, args, env={"KIT_CONFIG": ""})
    # Either the client refuses the malformed response (a typed, one-line error) or the CLI skips it.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code == 0:
        assert result.stdout.strip().splitlines()[-1] == "201 Created  Patient/1/_history/1"
    else:
        assert result.exit_code == 1 and result.stderr.startswith("kit: error: "), result.output


@pytest.mark.parametrize("entries", [5, ["oops", {"response": "x"}]],
                         ids=["entry-a-number", "entries-not-objects"])
def test_a_malformed_batch_response_is_a_typed_error(entries: Any) -> None:
    """``entry: 5`` made a TypeError of ``batch()`` (an "internal error" of ``kit fhir create
    --batch``); entries that are not objects count as failed entries."""
    def route(h: _Handler) -> None:
        h.send_json({"resourceType": "Bundle", "type": "batch-response", "entry": entries})

    post = {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
    with hostile(route) as (base, _), FhirClient(base, retries=NO_RETRY, timeout=5) as client:
        with pytest.raises(KitError, match="entry is a int|2 batch entries failed"):
            client.batch([post, post])
