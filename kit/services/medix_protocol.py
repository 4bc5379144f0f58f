"""The Medix study-download protocol: status codes, job state machine, requests, webhook bodies (pure).

The image-sharing platform asks the PACS side (:mod:`kit.services.medix`) to
prepare a study (``POST /api/study/download`` with ``StudyInstanceUID``,
``WebhookUri``, ``WebhookHeaders``) and is told each step by webhook. The codes
(:class:`MedixStatus`) cover both sides of the exchange; who emits which:

==========================  =====  ==========================================================
status                      code   emitted by, and when
==========================  =====  ==========================================================
ProcessStarted              0      kit: the job is accepted and stored (before the 202 answer)
RequestSent                 1      kit: the retrieve (C-GET, C-MOVE or WADO-RS) goes to the PACS
ExportStarted               2      kit: the first instance of the study is on disk
CompressStarted             3      kit: every instance arrived; the zip is being written
CompressFinished            4      kit: the zip is complete, flushed and renamed into place
ExportCompleted             5      kit: the zip is served; the webhook carries ``File``
DownloadStarted             6      the platform: it started fetching ``File``
DownloadSaved               7      the platform: it stored the zip
MergeStarted                8      the platform: it merges the study into its archive
MergeCompleted              10     the platform: merged
RequestFailed               -4     kit: the retrieve failed before any instance arrived
                                   (no such study, PACS unreachable or refusing us)
ExportFailed                -3     kit: a failure after the first instance (the PACS went
                                   away mid-export, the disk bound, the zip could not be written)
DownloadFailed              -2     the platform: fetching ``File`` failed
MergeFailed                 -1     the platform: merging failed
==========================  =====  ==========================================================

The numbering is the order of the whole exchange: the export (2..5) finishes
before the platform's download (6, 7) starts, so Download* and Merge* are the
platform's own steps on its side of the wire; the kit never sends them
(:data:`SERVICE_STEPS` is what it sends, :data:`PLATFORM_STATUSES` the rest).
A job is a walk along :data:`SERVICE_STEPS` ending in ExportCompleted or in one
failure; :func:`transition` is that state machine. A job resumed after a restart
replays its steps from the start, and a step already reported is not reported
again, so the platform sees each status once, in order.

The webhook body (:func:`webhook_body`) is ``{"Status": "<code>", "headers":
{...the request's WebhookHeaders...}, "File": "<download address>"}`` (``File``
only with ExportCompleted); the WebhookHeaders are also sent as HTTP headers
(:func:`webhook_http_headers`).

Written by hand: the protocol is the platform's, with no library for it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import kit._checks as _checks
from kit.errors import InvalidInputError

__all__ = [
    "FAILURES",
    "MAX_HEADERS",
    "MAX_HEADER_VALUE",
    "MAX_URI",
    "PLATFORM_STATUSES",
    "SERVICE_STEPS",
    "TERMINAL",
    "DownloadRequest",
    "MedixStatus",
    "backoff_delay",
    "failure_for",
    "parse_download_request",
    "parse_report_request",
    "report_answer",
    "transition",
    "webhook_body",
    "webhook_http_headers",
]


class MedixStatus(enum.IntEnum):
    """The protocol's status codes (sent as strings in the webhook's ``Status``)."""

    PROCESS_STARTED = 0
    REQUEST_SENT = 1
    EXPORT_STARTED = 2
    COMPRESS_STARTED = 3
    COMPRESS_FINISHED = 4
    EXPORT_COMPLETED = 5
    DOWNLOAD_STARTED = 6
    DOWNLOAD_SAVED = 7
    MERGE_STARTED = 8
    MERGE_COMPLETED = 10
    REQUEST_FAILED = -4
    EXPORT_FAILED = -3
    DOWNLOAD_FAILED = -2
    MERGE_FAILED = -1

    @property
    def protocol_name(self) -> str:
        """The protocol's name of the code, e.g. ``ExportCompleted``."""
        return "".join(part.capitalize() for part in self.name.split("_"))


#: What the kit reports for a good study, in order.
SERVICE_STEPS: Final = (MedixStatus.PROCESS_STARTED, MedixStatus.REQUEST_SENT, MedixStatus.EXPORT_STARTED,
                        MedixStatus.COMPRESS_STARTED, MedixStatus.COMPRESS_FINISHED,
                        MedixStatus.EXPORT_COMPLETED)
#: The kit's failure codes.
FAILURES: Final = frozenset({MedixStatus.REQUEST_FAILED, MedixStatus.EXPORT_FAILED})
#: States a job never leaves.
TERMINAL: Final = frozenset({MedixStatus.EXPORT_COMPLETED, *FAILURES})
#: The platform's own steps: the kit never emits these.
PLATFORM_STATUSES: Final = frozenset(MedixStatus) - set(SERVICE_STEPS) - FAILURES

#: Longest WebhookUri accepted.
MAX_URI: Final = 2048
#: Most WebhookHeaders accepted.
MAX_HEADERS: Final = 32
#: Longest header name and value accepted.
MAX_HEADER_NAME: Final = 64
MAX_HEADER_VALUE: Final = 4096
#: Headers a request may not set: the HTTP client frames the request itself.
RESERVED_HEADERS: Final = frozenset({
    "host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "proxy-authorization", "proxy-connection",
})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(r"[\x20-\x7e\t]*")


def transition(current: MedixStatus | None, new: MedixStatus) -> MedixStatus | None:
    """The job's next state when it reaches ``new``; None when ``new`` was already reported.

    Parameters
    ----------
    current : MedixStatus or None
        The last status reported (None: nothing yet).
    new : MedixStatus
        The step or failure the job reached.

    Returns
    -------
    MedixStatus or None
        ``new`` when it is a step after ``current`` (or a failure of a running
        job); None when it is ``current`` or an earlier step (a resumed job
        replaying its way; nothing to report).

    Raises
    ------
    InvalidInputError
        ``new`` is a platform status, a step skipping ahead, or anything after
        a terminal state.
    """
    new = MedixStatus(new)
    if new in PLATFORM_STATUSES:
        raise InvalidInputError(f"{new.protocol_name} ({int(new)}) is the platform's status, not the kit's")
    if current is not None and current in TERMINAL:
        raise InvalidInputError(f"the job already ended with {current.protocol_name}; "
                                f"cannot move to {new.protocol_name}")
    if new in FAILURES:
        return new
    at = -1 if current is None else SERVICE_STEPS.index(current)
    index = SERVICE_STEPS.index(new)
    if index <= at:
        return None
    if index != at + 1:
        missing = SERVICE_STEPS[at + 1].protocol_name
        raise InvalidInputError(f"{new.protocol_name} cannot follow "
                                f"{current.protocol_name if current is not None else 'nothing'}: "
                                f"{missing} first")
    return new


def failure_for(reached: MedixStatus | None) -> MedixStatus:
    """The failure code of a job that failed after reaching ``reached``.

    Before any instance arrived (ProcessStarted, RequestSent) it is
    RequestFailed; from ExportStarted on it is ExportFailed.
    """
    if reached is None or reached < MedixStatus.EXPORT_STARTED:
        return MedixStatus.REQUEST_FAILED
    return MedixStatus.EXPORT_FAILED


@dataclasses.dataclass(frozen=True)
class DownloadRequest:
    """A validated ``POST /api/study/download`` body.

    Attributes
    ----------
    study_instance_uid : str
        The study (DICOM UID grammar, at most 64 characters).
    webhook_uri : str
        An absolute http(s) URL, at most :data:`MAX_URI` characters.
    webhook_headers : tuple of (str, str)
        Headers echoed in every webhook body and sent as HTTP headers.
    """

    study_instance_uid: str
    webhook_uri: str
    webhook_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "study_instance_uid", _checks.dicom_uid(self.study_instance_uid))
        except ValueError as exc:
            raise InvalidInputError(f"StudyInstanceUID: {exc}") from None
        object.__setattr__(self, "webhook_uri", _webhook_uri(self.webhook_uri))
        object.__setattr__(self, "webhook_headers", _headers(self.webhook_headers))

    @property
    def headers(self) -> dict[str, str]:
        """The WebhookHeaders as a dict."""
        return dict(self.webhook_headers)


def _webhook_uri(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInputError("WebhookUri must be a non-empty string")
    if len(value) > MAX_URI:
        raise InvalidInputError(f"WebhookUri is longer than {MAX_URI} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in value):
        raise InvalidInputError("WebhookUri holds spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise InvalidInputError(f"WebhookUri is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInputError("WebhookUri must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError("WebhookUri must not hold credentials (send them in WebhookHeaders)")
    return value


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    items: Iterable[Any]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, tuple):
        items = value
    else:
        raise InvalidInputError("WebhookHeaders must be an object of header names to string values")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for item in items:
        if len(out) >= MAX_HEADERS:
            raise InvalidInputError(f"WebhookHeaders: more than {MAX_HEADERS} headers")
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidInputError("WebhookHeaders must be an object of header names to string values")
        name, text = item
        if not isinstance(name, str) or not 0 < len(name) <= MAX_HEADER_NAME or not _TOKEN.fullmatch(name):
            raise InvalidInputError(f"WebhookHeaders: {str(name)[:40]!r} is not an HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidInputError(f"WebhookHeaders: {name} is set by the HTTP client, not the request")
        if name.lower() in seen:
            raise InvalidInputError(f"WebhookHeaders: {name} given twice")
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE or not _VALUE.fullmatch(text):
            raise InvalidInputError(f"WebhookHeaders: the value of {name} must be printable ASCII "
                                    f"text of at most {MAX_HEADER_VALUE} characters")
        seen.add(name.lower())
        out.append((name, text))
    return tuple(out)


def _object(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInputError(f"the {what} body must be a JSON object")
    folded: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"the {what} body has a non-string key")
        low = key.lower()
        if low in folded:
            raise InvalidInputError(f"the {what} body names {key} twice (keys are case-insensitive)")
        folded[low] = value
    return folded


def parse_download_request(data: object) -> DownloadRequest:
    """A :class:`DownloadRequest` from a decoded JSON body (keys case-insensitive).

    Raises
    ------
    InvalidInputError
        Not an object, a missing or bad ``StudyInstanceUID`` or ``WebhookUri``,
        bad ``WebhookHeaders``.
    """
    body = _object(data, "download request")
    for key in ("studyinstanceuid", "webhookuri"):
        if key not in body:
            raise InvalidInputError(f"the download request lacks "
                                    f"{'StudyInstanceUID' if key[0] == 's' else 'WebhookUri'}")
    uid = body["studyinstanceuid"]
    if not isinstance(uid, str):
        raise InvalidInputError("StudyInstanceUID must be a string")
    headers = body.get("webhookheaders")
    if headers is not None and not isinstance(headers, dict):
        raise InvalidInputError("WebhookHeaders must be an object of header names to string values")
    return DownloadRequest(uid, body["webhookuri"], tuple(headers.items()) if headers else ())


def parse_report_request(data: object, *, max_studies: int) -> tuple[str, ...]:
    """The study UIDs of a report-status body ``{"StudyInstanceUIDs": [...]}`` (or a bare list).

    Duplicates are dropped (first kept). At most ``max_studies`` UIDs.

    Raises
    ------
    InvalidInputError
        Not a list of UIDs, an empty list, over ``max_studies``, a bad UID.
    """
    items: object = data
    if isinstance(data, dict):
        body = _object(data, "report-status")
        if "studyinstanceuids" not in body:
            raise InvalidInputError("the report-status request lacks StudyInstanceUIDs")
        items = body["studyinstanceuids"]
    if not isinstance(items, list):
        raise InvalidInputError("StudyInstanceUIDs must be a list of study UIDs")
    if not items:
        raise InvalidInputError("StudyInstanceUIDs is empty")
    if len(items) > max_studies:
        raise InvalidInputError(f"StudyInstanceUIDs: {len(items)} studies, at most {max_studies} per request")
    out: dict[str, None] = {}
    for i, uid in enumerate(items):
        if not isinstance(uid, str):
            raise InvalidInputError(f"StudyInstanceUIDs[{i}] must be a string")
        try:
            out[_checks.dicom_uid(uid)] = None
        except ValueError as exc:
            raise InvalidInputError(f"StudyInstanceUIDs[{i}]: {exc}") from None
    return tuple(out)


def report_answer(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The report-status answer from :meth:`kit.hub.Hub.report_status` rows.

    ``HasReport`` is true (an SR in the PACS or a DiagnosticReport in the EHR),
    false (neither) or null (a source could not be asked; ``Error`` says which).
    """
    return {"Studies": [{
        "StudyInstanceUID": r["study_instance_uid"], "HasReport": r["has_report"], "HasSR": r["has_sr"],
        "HasDiagnosticReport": r["has_diagnostic_report"],
        "SRInstanceUIDs": list(r.get("sr_instance_uids") or []),
        "DiagnosticReportIds": list(r.get("diagnostic_report_ids") or []), "Error": r.get("error"),
    } for r in rows]}


def webhook_body(status: MedixStatus | int, headers: Mapping[str, str],
                 file_url: str | None = None) -> dict[str, Any]:
    """The webhook's JSON body: ``Status`` (the code as a string), ``headers``, and ``File`` when ready."""
    code = MedixStatus(status)
    body: dict[str, Any] = {"Status": str(int(code)), "headers": dict(headers)}
    if file_url is not None:
        if code is not MedixStatus.EXPORT_COMPLETED:
            raise InvalidInputError("File is sent with ExportCompleted only")
        body["File"] = file_url
    elif code is MedixStatus.EXPORT_COMPLETED:
        raise InvalidInputError("ExportCompleted must carry the File address")
    return body


def webhook_http_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The HTTP headers of a webhook POST: the request's WebhookHeaders plus the JSON content type."""
    return {**dict(headers), "Content-Type": "application/json"}


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before retry ``attempt`` (1 = the first): ``base * 2**(attempt-1)``, at most ``cap``."""
    if attempt < 1:
        return 0.0
    if not (base > 0 and cap > 0 and math.isfinite(base) and math.isfinite(cap)):
        raise InvalidInputError("backoff base and cap must be positive")
    return float(min(cap, base * 2.0 ** min(attempt - 1, 60)))
