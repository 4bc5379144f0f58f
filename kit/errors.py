"""The one exception tree of kit.

Every failure the kit reports is a :class:`KitError`. Errors raised by the
libraries underneath (pydicom, pynetdicom, httpx, hl7apy, sqlite3, ...) are
converted at the boundary with ``raise ... from exc`` so the original stays on
``__cause__``. A failure is never reported as an empty result.

::

    KitError
    ├── ConfigError                 a setting is missing or wrong (``.key``)
    ├── InvalidInputError           bad data handed to the kit (``.source``)
    │   ├── DicomFileError          not DICOM, truncated, unreadable
    │   ├── DicomWebRequestError    a DICOMweb request the embedded server refuses (``.status_code``)
    │   ├── FhirValidationError     not FHIR, or an invalid resource (``.issues``)
    │   ├── HL7ParseError           not an HL7 v2 message (``.segment``, ``.field``)
    │   └── VideoFileError          not a video file, truncated, undecodable
    ├── PeerError                   talking to another system failed (``.peer``)
    │   ├── PeerUnreachableError    connection refused, DNS, closed port
    │   ├── PeerTimeoutError        no answer within the timeout
    │   ├── PeerDisconnectedError   the peer went away mid-exchange
    │   ├── TLSError                TLS handshake or certificate problem
    │   ├── NotFoundError           the peer has nothing matching what was asked (``.query``)
    │   ├── VideoSourceError        a video stream or capture device failed (no video, protocol error)
    │   ├── DicomError              DICOM-level failures
    │   │   ├── AssociationRejectedError   (``.result``, ``.source_``, ``.reason``)
    │   │   ├── AssociationAbortedError
    │   │   │   └── DicomProtocolError   the peer broke the protocol or a bound: the kit aborted
    │   │   ├── DimseStatusError    non-success DIMSE status (``.status``)
    │   │   └── DicomWebError       DICOMweb HTTP failure (``.status_code``)
    │   ├── FhirError               FHIR HTTP failure (``.status_code``)
    │   │   ├── OperationOutcomeError  server said no (``.issues``)
    │   │   ├── AuthError          token or credentials refused
    │   │   └── BulkExportError    a $export job failed
    │   └── HL7Error
    │       ├── MLLPFramingError    bytes on the wire are not MLLP
    │       └── NakError            the peer answered AE/AR (``.ack_code``)
    ├── StoreError                  a local store could not durably write
    │   └── AuditLogError           the audit log's hash chain is broken (``.problems``)
    ├── AccessDeniedError           a service refused a caller: no/unknown key (401) or role (403)
    ├── RecordNotFoundError         a named record does not exist (``.what``)
    ├── ServiceFailedError          a service the kit runs stopped: a worker died (``.service``)
    ├── CohortError                 a cohort job did not get every study (``.failed``), or cannot run
    └── VerificationError           a write-back read back differently (``.differences``)

    TruncatedResultWarning (a UserWarning, not an error): a ``limit`` cut a query's result

Secrets never show: every message, ``args`` and attribute of a :class:`KitError`
(``issues``, ``text``, ...) has the values of :mod:`kit._redact`'s registry (every
:class:`kit.config.Secret`, every access token received) and any ``Bearer``/``Basic``
credential masked, when set and again when shown; importing this module also
installs the redaction of the ``kit`` loggers' records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kit._redact import install_logging, redact, redact_value

__all__ = [
    "AccessDeniedError",
    "AssociationAbortedError",
    "AssociationRejectedError",
    "AuditLogError",
    "AuthError",
    "BulkExportError",
    "CohortError",
    "ConfigError",
    "DicomError",
    "DicomProtocolError",
    "DicomFileError",
    "DicomWebError",
    "DicomWebRequestError",
    "DimseStatusError",
    "FhirError",
    "FhirValidationError",
    "HL7Error",
    "HL7ParseError",
    "InvalidInputError",
    "KitError",
    "MLLPFramingError",
    "NakError",
    "NotFoundError",
    "OperationOutcomeError",
    "PeerDisconnectedError",
    "PeerError",
    "PeerTimeoutError",
    "PeerUnreachableError",
    "RecordNotFoundError",
    "ServiceFailedError",
    "StoreError",
    "TLSError",
    "TruncatedResultWarning",
    "VerificationError",
    "VideoFileError",
    "VideoSourceError",
]


class KitError(Exception):
    """Root of every error the kit raises (messages and attributes come with secrets masked)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*redact_value(args))

    def __setattr__(self, name: str, value: Any) -> None:
        if not (name.startswith("__") and name.endswith("__")):
            value = redact_value(value)
        super().__setattr__(name, value)

    def __str__(self) -> str:
        return redact(super().__str__())

    def __repr__(self) -> str:
        return redact(super().__repr__())


install_logging()


class ConfigError(KitError):
    """A setting is missing or has the wrong type or value.

    Parameters
    ----------
    key : str
        Dotted name of the setting, e.g. ``"pacs.port"``.
    message : str
        What is wrong with it.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class InvalidInputError(KitError):
    """Data handed to the kit is malformed.

    Parameters
    ----------
    message : str
        What is wrong.
    source : str or None
        Where the data came from (a path, a peer, a message id), if known.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class DicomFileError(InvalidInputError):
    """A file is not DICOM, is truncated, or cannot be decoded."""


class DicomWebRequestError(InvalidInputError):
    """A DICOMweb request the embedded server refuses, with the HTTP status to answer.

    Parameters
    ----------
    message : str
        What is wrong with the request.
    status_code : int
        400 (malformed), 404 (no such resource), 406 (no acceptable media type),
        413 (too large), 415 (unsupported media type), ...
    """

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        self.status_code = status_code
        super().__init__(message)


class FhirValidationError(InvalidInputError):
    """JSON that is not FHIR, or a resource that fails R4 validation.

    ``issues`` holds one dict per problem (``severity``, ``code``,
    ``diagnostics``, ``expression``), shaped like OperationOutcome.issue.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        issues: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.issues = list(issues)
        super().__init__(message, source=source)


class HL7ParseError(InvalidInputError):
    """Bytes that are not a parseable HL7 v2 message."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        segment: str | None = None,
        field: int | None = None,
    ) -> None:
        self.segment = segment
        self.field = field
        super().__init__(message, source=source)


class VideoFileError(InvalidInputError):
    """A video file is missing, not a video, truncated, or cannot be decoded."""


class PeerError(KitError):
    """Talking to another system failed.

    Parameters
    ----------
    message : str
        What went wrong.
    peer : str or None
        The peer's address, e.g. ``"dicom://ORTHANC@127.0.0.1:4242"``.
    """

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        self.peer = peer
        super().__init__(f"{message} ({peer})" if peer else message)


class PeerUnreachableError(PeerError):
    """The peer could not be reached (connection refused, closed port, DNS)."""


class PeerTimeoutError(PeerError):
    """The peer did not answer within the timeout."""


class PeerDisconnectedError(PeerError):
    """The peer closed or reset the connection in the middle of an exchange."""


class TLSError(PeerError):
    """TLS handshake or certificate verification failed."""


class NotFoundError(PeerError):
    """The peer answered, and has nothing matching what was asked (e.g. no worklist item for an accession).

    Parameters
    ----------
    message : str
        What was looked for and where.
    query : dict, optional
        The filters that matched nothing.
    """

    def __init__(self, message: str, *, query: dict[str, Any] | None = None, peer: str | None = None) -> None:
        self.query = dict(query or {})
        super().__init__(message, peer=peer)

class VideoSourceError(PeerError):
    """A video stream or capture device failed other than by being unreachable or silent.

    Unreachable, silent and dropped streams raise :class:`PeerUnreachableError`,
    :class:`PeerTimeoutError` and :class:`PeerDisconnectedError` like every other peer.
    """


class DicomError(PeerError):
    """A DICOM peer refused or failed a request."""


class AssociationRejectedError(DicomError):
    """The peer rejected the association (e.g. wrong called AE title).

    Attributes ``result``, ``source_`` and ``reason`` carry the A-ASSOCIATE-RJ
    fields when the peer sent them.
    """

    def __init__(
        self,
        message: str,
        *,
        peer: str | None = None,
        result: int | None = None,
        source_: int | None = None,
        reason: int | None = None,
    ) -> None:
        self.result = result
        self.source_ = source_
        self.reason = reason
        super().__init__(message, peer=peer)


class AssociationAbortedError(DicomError):
    """The association was aborted (A-ABORT or A-P-ABORT) before the request finished."""


class DicomProtocolError(AssociationAbortedError):
    """The kit aborted the association because of what the peer sent: a PDU or identifier past
    its bound, an answer to another message, a DIMSE message out of place.

    Unlike a connection lost or an abort by the peer, asking again meets the same peer: retrying
    does not help (:func:`kit.cohort.plan.classify` calls it final).
    """


class DimseStatusError(DicomError):
    """A DIMSE service answered with a failure (or no) status.

    Parameters
    ----------
    message : str
        What was asked.
    status : int or None
        The DICOM status (e.g. ``0xA700``); ``None`` if no response arrived.
    """

    def __init__(self, message: str, *, status: int | None, peer: str | None = None) -> None:
        self.status = status
        text = f"{message}: status 0x{status:04X}" if status is not None else f"{message}: no response"
        super().__init__(text, peer=peer)


class DicomWebError(DicomError):
    """A DICOMweb (QIDO/WADO/STOW) request failed with an HTTP error."""

    def __init__(self, message: str, *, status_code: int | None = None, peer: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message, peer=peer)


class FhirError(PeerError):
    """A FHIR server answered with an error."""

    def __init__(self, message: str, *, status_code: int | None = None, peer: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message, peer=peer)


class OperationOutcomeError(FhirError):
    """The server returned an OperationOutcome describing the failure.

    ``issues`` holds the OperationOutcome.issue entries as dicts.
    """

    def __init__(
        self,
        message: str,
        *,
        issues: Sequence[dict[str, Any]] = (),
        status_code: int | None = None,
        peer: str | None = None,
    ) -> None:
        self.issues = list(issues)
        super().__init__(message, status_code=status_code, peer=peer)


class AuthError(FhirError):
    """Authentication failed: token endpoint refused, token expired and not renewable."""


class BulkExportError(FhirError):
    """A Bulk Data ``$export`` job failed or returned something unusable."""


class HL7Error(PeerError):
    """An HL7 v2 exchange failed."""


class MLLPFramingError(HL7Error):
    """Bytes on an MLLP connection are not a valid frame (or exceed the size limit)."""


class NakError(HL7Error):
    """The peer answered with a negative acknowledgement (AE or AR).

    Attributes ``ack_code`` (``"AE"``/``"AR"``/``"CE"``/``"CR"``), ``control_id``
    (MSA-2) and ``text`` (MSA-3 / ERR) describe the refusal.
    """

    def __init__(
        self,
        message: str,
        *,
        ack_code: str,
        control_id: str | None = None,
        text: str | None = None,
        peer: str | None = None,
    ) -> None:
        self.ack_code = ack_code
        self.control_id = control_id
        self.text = text
        super().__init__(message, peer=peer)


class StoreError(KitError):
    """A local store (file store, SQLite) could not durably write or read."""


class AuditLogError(StoreError):
    """The audit log was changed behind its back: a row edited, removed or inserted.

    ``problems`` lists what :func:`kit.services.audit.verify` found, first break first.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message)


class AccessDeniedError(KitError):
    """A service the kit runs refused a caller.

    Parameters
    ----------
    message : str
        Why (never the credential itself).
    status : int
        401: no credential, or one the service does not know; 403: a known
        caller whose role may not do this.
    """

    def __init__(self, message: str, *, status: int = 401) -> None:
        if status not in (401, 403):
            raise ValueError("status is 401 or 403")
        self.status = status
        super().__init__(message)


class RecordNotFoundError(KitError):
    """A record named by the caller does not exist (an integration, a key, a job, a patient).

    Parameters
    ----------
    message : str
        What was looked for.
    what : str
        The kind of record (``integration``, ``key``, ...).
    """

    def __init__(self, message: str, *, what: str = "") -> None:
        self.what = what
        super().__init__(message)


class ServiceFailedError(KitError):
    """A service the kit runs (``kit serve``, a listener) stopped working: a worker died.

    Parameters
    ----------
    message : str
        What failed and why.
    service : str
        The service's name (``pacs``, ``fhir``, ``mllp``).
    """

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        self.service = service


class CohortError(KitError):
    """A cohort job (:mod:`kit.cohort`) could not get every study, or cannot run at all
    (its folder is held by another job, or belongs to a pull from another PACS).

    Parameters
    ----------
    message : str
        What failed (the report frame holds each study's reason).
    failed : int
        Requested items or studies that failed (0 when the job could not run).
    """

    def __init__(self, message: str, *, failed: int = 0) -> None:
        super().__init__(message)
        self.failed = failed


class VerificationError(KitError):
    """A write-back was read back and differs from what was sent.

    ``differences`` lists human-readable descriptions of each mismatch.
    """

    def __init__(self, message: str, *, differences: Sequence[str] = ()) -> None:
        self.differences = list(differences)
        super().__init__(message + ("".join(f"\n  - {d}" for d in self.differences)))


class TruncatedResultWarning(UserWarning):
    """A query stopped at the ``limit`` it was given while the peer had more matches.

    Not an error: the caller asked for at most ``limit`` results. Issued with
    :func:`warnings.warn` (and logged) so a cut result is never silent.
    """
