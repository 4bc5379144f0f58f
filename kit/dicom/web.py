"""DICOMweb client: QIDO-RS find, WADO-RS get, STOW-RS store, over dicomweb-client.

:class:`DicomWebClient` wraps :class:`dicomweb_client.api.DICOMwebClient`
(a ``requests`` session) and gives the same frames as
:class:`kit.dicom.dimse.PacsClient`: :meth:`DicomWebClient.find` takes the
same filters and returns the same columns, so a notebook can switch
transports by changing one line.

QIDO-RS has no patient level: ``find("PATIENT")`` searches studies and
keeps one row per patient (``number_of_patient_related_studies`` counted).

Errors: an HTTP error answer -> :class:`~kit.errors.DicomWebError` (with
``status_code``), refused connection -> :class:`~kit.errors.PeerUnreachableError`,
no answer in time -> :class:`~kit.errors.PeerTimeoutError`.

Every answer's body is bounded as it arrives, never after it is in memory: an answer read whole
(QIDO-RS, STOW-RS) to ``max_response_bytes`` after decompression (default 256 MiB, as the FHIR
client's), each part of a streamed WADO-RS answer (one instance) to ``max_part_bytes`` (default
2 GiB), and each to ``total_timeout`` (default 10 times ``timeout``) from the request (a WADO-RS
part: from the previous part) to its last byte. Past a bound the connection is closed and
:class:`ResponseTooLargeError` (a :class:`~kit.errors.DicomWebError`) or
:class:`~kit.errors.PeerTimeoutError` raised; a part cut there is not written. An answer's status
line and headers come within ``total_timeout`` of the request being sent, or the connection is
shut (:mod:`kit.dicom._web_deadline`: requests bounds each read, not the wait for a head).

Every WADO-RS part is checked before it is written, as a C-GET's instances are: its bytes parse
whole (:func:`kit.dicom.received.check_received`: no element cut short, pixel data of its full
length, the file meta's SOP Instance UID the data set's), it is of the study (series) asked
for, and its SOP Instance UID, which names its file, is a UID (PS3.5 9.1: at most 64 characters,
digits and dots; never a path, nor a name too long for the file system); a part that is not is
never written, and the retrieve raises
:class:`~kit.errors.DicomWebError` naming how many were refused and why. A part cut short at
the end of the answer, or parts lost to a wrong multipart boundary (they then trail the first
part's bytes), fail that check. The number of instances a study has is not known here: an
answer that is well formed but leaves instances out cannot be told from a whole one.

A WADO-RS retrieve stops part-way as a C-GET does (:mod:`kit.dicom._cancel`): its
``cancel`` is checked and its ``on_instance`` hook called after each instance is
written; then, or on any other exception, the streamed answer's connection is
closed at once (the only way to stop an HTTP/1.1 answer; the next request opens
a new one) and :class:`~kit.dicom.dimse.RetrieveCancelledError` (with what had
arrived) or the hook's own exception is raised.

Wildcards go in the query as they are: ``PatientName=Moreau*``, not
``Moreau%2A`` (dicomweb-client percent-encodes ``*``, which RFC 3986 allows
literally in a query, and Orthanc's DICOMweb plugin then matches nothing).

Written by hand: the filter/field mapping onto QIDO parameters, the patient
level, the frames, the literal wildcards, the body bounds and error conversion; HTTP, multipart
and DICOM JSON are dicomweb-client's and pydicom's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import polars as pl
import requests
import urllib3
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from kit._files import atomic_write_bytes
from kit._truncate import check_bytes, check_limit, warn_truncated
from kit.config import DicomWebSettings, Secret, Settings
from kit.dicom._audit import web as _audited
from kit.dicom._cancel import RetrieveCancel
from kit.dicom._outgoing import read_for_store
from kit.dicom._web_deadline import head_too_slow, mount
from kit.dicom.dimse import RECEIVED_SCHEMA, STORED_SCHEMA, RetrieveCancelledError
from kit.dicom.query import (
    ATTRIBUTES,
    DEFAULT_RETURN_KEYS,
    QueryLevel,
    QueryModel,
    find_identifier,
    responses_to_frame,
)
from kit.dicom.received import check_received, is_uid
from kit.errors import (
    DicomFileError,
    DicomWebError,
    InvalidInputError,
    PeerTimeoutError,
    PeerUnreachableError,
    StoreError,
)

__all__ = ["DEFAULT_MAX_PART_BYTES", "DEFAULT_MAX_RESPONSE_BYTES", "TOTAL_TIMEOUT_FACTOR",
           "DicomWebClient", "ResponseTooLargeError"]

T = TypeVar("T")

#: Matches asked for per QIDO-RS request.
QIDO_PAGE = 1000
#: Instances sent per STOW-RS request.
STOW_BATCH = 50
#: Default ``max_response_bytes``: the largest answer body (decompressed) read into memory whole.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
#: Default ``max_part_bytes``: the largest part (one instance, decompressed) of a streamed WADO-RS answer.
DEFAULT_MAX_PART_BYTES = 2 * 1024 * 1024 * 1024
#: Default ``total_timeout`` as a multiple of ``timeout``.
TOTAL_TIMEOUT_FACTOR = 10


class ResponseTooLargeError(DicomWebError):
    """An answer body, or one part of a streamed WADO-RS answer, decompressed, is larger than the
    client's ``max_response_bytes`` (``max_part_bytes``)."""


@dataclasses.dataclass(frozen=True)
class _Bounds:
    max_response_bytes: int
    max_part_bytes: int
    total_timeout: float
    peer: str


class _BoundedBody:
    """An answer's body as ``requests`` reads it (``Response.raw``, in place of the urllib3
    response): decompressed bytes counted and the deadline checked as each read returns; past
    either, the connection is closed and :class:`ResponseTooLargeError` or
    :class:`~kit.errors.PeerTimeoutError` raised. ``part`` bounds count from :meth:`restart`.

    It has no ``stream()``, so ``Response.iter_content`` (and ``.content``) read it by
    ``read(chunk_size)`` until ``b""`` (requests' path for a ``raw`` that is a plain file). Each
    read is urllib3's ``read1``: at most one ``recv`` (``read``/``stream`` wait until the whole
    chunk came, so a body trickled a byte at a time would never reach a check) and at most
    ``amt`` decompressed bytes (a gzip bomb is inflated a read at a time). An older urllib3
    without ``read1`` is read with ``read``: bounded in size all the same, in time only per read.
    """

    def __init__(self, raw: Any, bounds: _Bounds, where: str, *, part: bool, start: float) -> None:
        self._raw = raw
        self._bounds = bounds
        self._where = where
        self._part = part
        self._limit = bounds.max_part_bytes if part else bounds.max_response_bytes
        self.size = 0
        self.deadline = start + bounds.total_timeout

    def restart(self) -> None:
        """The part read so far was taken: count the next one's bytes and time from now."""
        self.size = 0
        self.deadline = time.monotonic() + self._bounds.total_timeout

    def read(self, amt: int | None = None, **_: Any) -> bytes:
        """At most ``amt`` (else 1 MiB) decompressed bytes, ``b""`` at the end; always decompressed
        (requests asks for raw bytes only to drain an answer it could not decode)."""
        amt = amt if amt is not None and amt > 0 else 1 << 20  # never the whole body at once
        read = getattr(self._raw, "read1", None) or self._raw.read  # read1: urllib3 >= 2.3
        try:
            data = read(amt, decode_content=True) or b""
        except urllib3.exceptions.ReadTimeoutError as exc:  # iter_content's own: a ConnectionError
            raise requests.ReadTimeout(exc) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
        except urllib3.exceptions.ProtocolError as exc:  # cut short, reset: as iter_content has it
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        if data:
            self.size += len(data)
            what = f"a part of the answer to {self._where}" if self._part else f"the answer to {self._where}"
            if self.size > self._limit:
                self.close()
                name = "max_part_bytes" if self._part else "max_response_bytes"
                raise ResponseTooLargeError(f"{what} is larger than {name}={self._limit} (decompressed); "
                                            "stopped reading", status_code=self._raw.status,
                                            peer=self._bounds.peer)
            if time.monotonic() > self.deadline:
                self.close()
                raise PeerTimeoutError(f"{what} was not complete within total_timeout="
                                       f"{self._bounds.total_timeout:g} s ({self.size} bytes came)",
                                       peer=self._bounds.peer)
        return data

    def close(self) -> None:
        self._raw.close()  # closes the connection too: a body left unread is never reused

    def release_conn(self) -> None:
        self._raw.release_conn()  # back to the pool: requests calls it once the body was read

    @property
    def _original_response(self) -> Any:
        # Not public: requests' cookie handling (extract_cookies_to_jar) reads it off ``raw``.
        return getattr(self._raw, "_original_response", None)


class _LiteralWildcards(requests.Session):
    """A session that sends the QIDO-RS wildcard ``*`` literally in query strings, bounds every
    answer's body (:class:`_BoundedBody`, set up by a response hook, before requests or
    dicomweb-client read a byte of it, redirects included), and keeps the streamed answers opened
    inside :meth:`streaming` (on this thread) to close them there."""

    def __init__(self, bounds: _Bounds) -> None:
        super().__init__()
        self._streams = threading.local()
        self.bounds = bounds
        self.hooks["response"].append(self._bound)

    def _bound(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.raw is not None and not isinstance(response.raw, _BoundedBody):
            request = response.request
            where = f"{request.method} {urlsplit(request.url or '').path}"
            # from the request; for a request with a body (STOW-RS) from its answer, the upload's
            # time being the size of what the caller sends
            start = time.monotonic() - (response.elapsed.total_seconds() if request.body is None else 0.0)
            response.raw = _BoundedBody(response.raw, self.bounds, where, part=bool(kwargs.get("stream")),
                                        start=start)
        return response

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        opened: list[requests.Response] | None = getattr(self._streams, "opened", None)
        if kwargs.get("stream") and opened is not None:
            opened.append(response)
        return response

    @contextlib.contextmanager
    def streaming(self) -> Iterator[Callable[[], None]]:
        """Close every streamed answer this thread opens in the block when it ends, read to the end
        or not (dicomweb-client closes one only when its generator is finalized). Yields
        ``next_part()``: call it once a part is taken, so that the next part's bytes and time count
        from then (``max_part_bytes``, ``total_timeout``)."""
        opened: list[requests.Response] = []
        self._streams.opened = opened

        def next_part() -> None:
            for response in opened:
                if isinstance(response.raw, _BoundedBody):
                    response.raw.restart()

        try:
            yield next_part
        finally:
            self._streams.opened = None
            for response in opened:
                response.close()

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        url = prepared.url or ""
        if "?" in url:
            path, _, query = url.partition("?")
            prepared.url = path + "?" + query.replace("%2A", "*").replace("%2a", "*")
        return prepared


class DicomWebClient:
    """A DICOMweb (QIDO-RS, WADO-RS, STOW-RS) client.

    Parameters
    ----------
    base : str
        The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
    username, password : str, Secret, optional
        HTTP Basic credentials.
    token : str or Secret, optional
        Bearer token (instead of Basic).
    timeout : float
        Seconds for connecting and for each read.
    max_response_bytes : int
        The largest answer body read into memory whole (QIDO-RS JSON, a STOW-RS response, an
        error's body), counted after decompression as it arrives (default
        ``DEFAULT_MAX_RESPONSE_BYTES``, 256 MiB, as the FHIR client's: some hundred thousand
        QIDO-RS matches, far more than a page of ``QIDO_PAGE``; a gzip bomb of a few MB on the
        wire is stopped there). A larger body raises :class:`ResponseTooLargeError`.
    max_part_bytes : int
        The largest part of a WADO-RS answer, which is streamed part by part, one instance a
        part, counted after decompression (default ``DEFAULT_MAX_PART_BYTES``, 2 GiB: an
        enhanced multi-frame or a tomosynthesis instance can be 1 GB; raise it for whole-slide
        images). A study has no bound of its size, only each part (the parts of an endless
        answer are whole instances, written as they come: stop them with ``cancel`` or
        ``on_instance``). A part is held in memory a few times over while it is decoded and
        checked. A larger part raises :class:`ResponseTooLargeError` and is not written.
    total_timeout : float, optional
        Seconds from sending a request to the last byte of its answer's body (default
        ``TOTAL_TIMEOUT_FACTOR`` times ``timeout``: 300 s with the default ``timeout``).
        ``timeout`` bounds each wait for the network; this bounds a body that keeps coming too
        slowly (checked as each read returns, so it is overrun by at most ``timeout``), and
        raises :class:`~kit.errors.PeerTimeoutError`. For a STOW-RS it counts from the answer
        (the upload takes what the batch's size takes). For a WADO-RS retrieve it bounds each
        part, from the request (the first) or the previous part: a study's retrieve may rightly
        take hours, one instance should not (at the default, a part of 1 GB needs about 3.5 MB/s;
        raise it for large instances over a slow link).

    Raises
    ------
    InvalidInputError
        ``base`` is not an http(s) URL, or ``timeout``, ``total_timeout``,
        ``max_response_bytes`` or ``max_part_bytes`` is not positive (a bool is not a number here).
    """

    def __init__(self, base: str, *, username: str | None = None,
                 password: Secret | str | None = None, token: Secret | str | None = None,
                 timeout: float = 30.0, max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 max_part_bytes: int = DEFAULT_MAX_PART_BYTES, total_timeout: float | None = None) -> None:
        if not base.startswith(("http://", "https://")):
            raise InvalidInputError(f"DICOMweb base {base!r} must be an http(s) URL")
        timeout = _seconds("timeout", timeout)
        total_timeout = _seconds("total_timeout", TOTAL_TIMEOUT_FACTOR * timeout if total_timeout is None
                                 else total_timeout)
        self.max_response_bytes = check_bytes("max_response_bytes", max_response_bytes)
        self.max_part_bytes = check_bytes("max_part_bytes", max_part_bytes)
        self.base = base.rstrip("/")
        self.timeout = float(timeout)
        self.total_timeout = float(total_timeout)
        session = self._session = _LiteralWildcards(_Bounds(self.max_response_bytes, self.max_part_bytes,
                                                            self.total_timeout, self.base))
        mount(session, self.total_timeout)  # an answer's head, too (kit.dicom._web_deadline)
        if token is not None:
            value = token.reveal() if isinstance(token, Secret) else token
            session.headers["Authorization"] = f"Bearer {value}"
        elif username is not None:
            secret = password.reveal() if isinstance(password, Secret) else (password or "")
            session.auth = (username, secret)
        self._client = DICOMwebClient(self.base, session=session, timeout=self.timeout)
        self._client.set_http_retry_params(retry=False)

    @classmethod
    def from_settings(cls, settings: Settings | DicomWebSettings) -> DicomWebClient:
        """A client for the ``[dicomweb]`` settings."""
        web = settings.dicomweb if isinstance(settings, Settings) else settings
        return cls(web.base, username=web.username, password=web.password, token=web.token,
                   timeout=web.timeout)

    def __repr__(self) -> str:
        return f"DicomWebClient({self.base!r})"

    # -- errors ----------------------------------------------------------------------------------

    def _call(self, what: str, func: Callable[[], T]) -> T:
        try:
            return func()
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            raise DicomWebError(f"{what}: HTTP {code}", status_code=code, peer=self.base) from exc
        except (requests.ConnectionError, requests.ReadTimeout) as exc:  # ConnectTimeout is both
            if head_too_slow(exc):
                raise PeerTimeoutError(f"{what}: the answer's status line and headers did not come within "
                                       f"total_timeout={self.total_timeout:g} s", peer=self.base) from exc
            if isinstance(exc, requests.Timeout):
                raise PeerTimeoutError(f"{what}: no answer within {self.timeout:g}s", peer=self.base) from exc
            raise PeerUnreachableError(f"{what}: cannot connect", peer=self.base) from exc
        except requests.RequestException as exc:
            raise DicomWebError(f"{what}: {exc}", peer=self.base) from exc
        except (ValueError, KeyError, InvalidDicomError) as exc:
            raise DicomWebError(f"{what}: unusable answer: {exc}", peer=self.base) from exc

    # -- QIDO-RS ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """Ask for one study (QIDO-RS, ``limit=1``): does the server answer DICOMweb at all?

        Raises
        ------
        kit.errors.DicomWebError, kit.errors.PeerUnreachableError, kit.errors.PeerTimeoutError
        """
        self._call("QIDO-RS studies", lambda: self._client.search_for_studies(
            fields=["StudyInstanceUID"], limit=1))

    @_audited("dicomweb.qido")
    def find(self, level: QueryLevel | str = QueryLevel.STUDY, *,
             return_keys: Iterable[str] | None = None, limit: int | None = None,
             **filters: Any) -> pl.DataFrame:
        """QIDO-RS search; same filters and frame as :meth:`kit.dicom.dimse.PacsClient.find`.

        Parameters
        ----------
        level : QueryLevel or str
            PATIENT, STUDY, SERIES or IMAGE.
        return_keys : iterable of str, optional
            Columns (default :data:`kit.dicom.query.DEFAULT_RETURN_KEYS`).
        limit : int, optional
            At most this many results (QIDO-RS ``limit``; pages stop there), with a
            :class:`~kit.errors.TruncatedResultWarning` (and a log line) when the
            server had more. Default: every match.
        **filters
            See :func:`kit.dicom.query.find_identifier`.

        Returns
        -------
        polars.DataFrame

        Raises
        ------
        ResponseTooLargeError
            An answer, decompressed, is larger than ``max_response_bytes``.
        kit.errors.PeerTimeoutError
            No answer within ``timeout``, or an answer not complete within ``total_timeout``.
        kit.errors.DicomWebError, kit.errors.PeerUnreachableError
        """
        level = QueryLevel.of(level)
        keys = list(DEFAULT_RETURN_KEYS[level] if return_keys is None else return_keys)
        columns = keys + [f for f in filters if f not in keys]
        model = QueryModel.PATIENT_ROOT if level is QueryLevel.PATIENT else QueryModel.STUDY_ROOT
        identifier = find_identifier(level, model=model, return_keys=keys, **filters)
        search = {ATTRIBUTES[name].keyword: str(identifier[ATTRIBUTES[name].keyword].value)
                  for name, value in filters.items() if value is not None}
        fields = [ATTRIBUTES[c].keyword for c in columns
                  if ATTRIBUTES[c].keyword not in search and c != "number_of_patient_related_studies"]
        search_fn: Callable[..., list[dict[str, Any]]]
        if level in (QueryLevel.PATIENT, QueryLevel.STUDY):
            search_fn, what = self._client.search_for_studies, "QIDO-RS studies"
        elif level is QueryLevel.SERIES:
            search_fn, what = self._client.search_for_series, "QIDO-RS series"
        else:
            search_fn, what = self._client.search_for_instances, "QIDO-RS instances"
        found = self._search(what, search_fn, fields, search, check_limit(limit))
        try:
            datasets = [Dataset.from_json(item) for item in found]
        except (ValueError, KeyError, TypeError) as exc:
            raise DicomWebError(f"QIDO-RS: unusable answer: {exc}", peer=self.base) from exc
        if level is QueryLevel.PATIENT:
            datasets = _patients(datasets)
        return responses_to_frame(level, datasets, columns=columns)

    def _search(self, what: str, search_fn: Callable[..., list[dict[str, Any]]], fields: list[str],
                search: dict[str, str], limit: int | None = None) -> list[dict[str, Any]]:
        """QIDO-RS pages (``limit``/``offset``) up to ``limit`` results; stops on a short or repeated page.

        With ``limit``, one result more than that is asked for: its arrival is what
        says the server had more (the warning), and it is not returned.
        """
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        offset = 0
        while limit is None or len(found) <= limit:
            size = QIDO_PAGE if limit is None else min(QIDO_PAGE, limit + 1 - len(found))
            page = self._call(what, functools.partial(
                search_fn, fields=fields, search_filters=search, limit=size, offset=offset))
            fresh = [item for item in page if json.dumps(item, sort_keys=True) not in seen]
            seen.update(json.dumps(item, sort_keys=True) for item in fresh)
            found.extend(fresh)
            if len(page) < size or not fresh:
                break
            offset += len(page)
        if limit is not None and len(found) > limit:
            warn_truncated(what, limit)
            del found[limit:]
        return found

    # -- WADO-RS ---------------------------------------------------------------------------------

    @_audited("dicomweb.wado")
    def get(self, study_uid: str, series_uid: str | None = None, *, dest: str | os.PathLike[str],
            cancel: threading.Event | Callable[[], bool] | None = None,
            on_instance: Callable[[], None] | None = None) -> pl.DataFrame:
        """WADO-RS retrieve of a study or series into ``dest`` (``<SOPInstanceUID>.dcm``).

        Parameters
        ----------
        study_uid, series_uid : str
            What to retrieve.
        dest : path
            Folder for the files (created if missing); each is written to a
            temporary name, then renamed.
        cancel : threading.Event or callable, optional
            Checked after each instance: once set (or True), the answer's
            connection is closed and :class:`~kit.dicom.dimse.RetrieveCancelledError`
            raised; if it raises, that exception is raised instead.
        on_instance : callable, optional
            Called after each instance is written (progress, a rate limit); if it
            raises, the retrieve stops the same way and its exception is raised.

        Returns
        -------
        polars.DataFrame
            :data:`kit.dicom.dimse.RECEIVED_SCHEMA`, sorted by SOP Instance UID.

        Raises
        ------
        RetrieveCancelledError
            ``cancel`` was set; what had arrived (whole files) is in ``received``.
        DicomWebError
            HTTP failure, an unusable answer, or no instance at all; also after the answer
            is read when some parts were refused (not of the study or series asked for, cut
            short, not the instance their file meta names, a SOP Instance UID that is not a
            UID): those were not written, the others were.
        ResponseTooLargeError
            A part, decompressed, is larger than ``max_part_bytes``: it is not written (the
            parts before it were).
        kit.errors.PeerTimeoutError
            No answer within ``timeout``, or a part not complete within ``total_timeout`` of the
            request (the first) or of the previous part; it is not written either.
        StoreError
            An instance cannot be written under ``dest`` (the local disk: permission, space).
        """
        if not study_uid:
            raise InvalidInputError("a WADO-RS retrieve needs study_uid")
        folder = Path(dest)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"WADO-RS: cannot create {folder}: {exc.strerror or exc}") from exc
        rows: list[tuple[str, str, str, str, str, int]] = []
        refused: list[str] = []
        stop = RetrieveCancel(cancel, on_instance)

        def cancelled() -> RetrieveCancelledError:
            return RetrieveCancelledError(f"WADO-RS cancelled after {len(rows)} instance(s)", status=None,
                                          peer=self.base, received=_received(rows))

        with stop.raising(cancelled):
            stop.requested()  # already set: the server is not asked
        with stop.raising(cancelled), self._session.streaming() as next_part:
            if series_uid:
                answer = self._call("WADO-RS", lambda: self._client.iter_series(study_uid, series_uid))
            else:
                answer = self._call("WADO-RS", lambda: self._client.iter_study(study_uid))
            while not stop.fired:
                ds = self._call("WADO-RS", lambda: next(answer, None))
                if ds is None:
                    break
                try:
                    row = _write_instance(ds, folder, study_uid, series_uid)
                except OSError as exc:
                    raise StoreError(f"WADO-RS: cannot write an instance under {folder}: "
                                     f"{exc.strerror or exc}") from exc
                if isinstance(row, str):  # not written: not what was asked, or not whole
                    refused.append(row)
                else:
                    rows.append(row)
                    stop.tick()
                next_part()  # the next part's max_part_bytes and total_timeout count from here
        if refused:
            more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
            raise DicomWebError(f"WADO-RS: {len(refused)} instance(s) of the answer refused, not written "
                                f"({len(rows)} written): {refused[0]}{more}", peer=self.base)
        if not rows:
            raise DicomWebError(f"WADO-RS: study {study_uid} returned no instances", peer=self.base)
        return _received(rows).sort("sop_instance_uid")

    # -- STOW-RS ---------------------------------------------------------------------------------

    @_audited("dicomweb.stow")
    def store(self, items: Iterable[str | os.PathLike[str] | Dataset]) -> pl.DataFrame:
        """STOW-RS store of files or datasets (in batches of :data:`STOW_BATCH`).

        Returns
        -------
        polars.DataFrame
            :data:`kit.dicom.dimse.STORED_SCHEMA`: ``status`` 0 when the server
            lists the instance as stored, its FailureReason otherwise.

        Raises
        ------
        DicomFileError
            A file is not DICOM or is truncated (checked before anything is sent).
        DicomWebError
            HTTP failure, or the server reported failed instances.
        """
        loaded: list[tuple[Dataset, str | None]] = []
        for item in items:
            if isinstance(item, Dataset):
                loaded.append((item, None))
            else:
                loaded.append((read_for_store(Path(item)), str(item)))
        rows: list[tuple[str, str, str, str | None, int]] = []
        for start in range(0, len(loaded), STOW_BATCH):
            batch = loaded[start:start + STOW_BATCH]
            datasets = [ds for ds, _ in batch]
            try:
                answer: Dataset = self._call("STOW-RS", functools.partial(
                    self._client.store_instances, datasets))
            except DicomWebError as exc:  # 409: none stored; the answer still says why, per instance
                refused = _refusal(exc)
                if refused is None:
                    raise
                answer = refused
            ok = {str(item.get("ReferencedSOPInstanceUID", ""))
                  for item in answer.get("ReferencedSOPSequence", [])}
            failed = {str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0x0110))
                      for item in answer.get("FailedSOPSequence", [])}
            for ds, source in batch:
                sop = str(ds.SOPInstanceUID)
                status = 0 if sop in ok else failed.get(sop, 0x0110)
                ts = str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in getattr(
                    ds, "file_meta", {}) else ""
                rows.append((sop, str(ds.SOPClassUID), ts, source, status))
        frame = pl.DataFrame(rows, schema=STORED_SCHEMA, orient="row") if rows \
            else pl.DataFrame(schema=STORED_SCHEMA)
        bad = frame.filter(pl.col("status") != 0)
        if bad.height:
            raise DicomWebError(f"STOW-RS: {bad.height} of {frame.height} instance(s) not stored, "
                                f"first {bad['sop_instance_uid'][0]} (reason 0x{bad['status'][0]:04X})",
                                peer=self.base)
        return frame


def _seconds(name: str, value: Any) -> float:
    """``value`` as seconds if it is a positive number (a bool is not; NaN is not positive), else
    :class:`~kit.errors.InvalidInputError`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInputError(f"{name} must be a positive float, got {value!r}")
    return float(value)


def _refusal(exc: DicomWebError) -> Dataset | None:
    """The Store Instances Response of a STOW-RS answered 409 (none stored), if it has one."""
    response = getattr(exc.__cause__, "response", None)
    if exc.status_code != 409 or response is None:
        return None
    if response.headers.get("Content-Type", "").split(";")[0].strip() not in ("application/dicom+json",
                                                                                "application/json"):
        return None
    try:
        answer = Dataset.from_json(response.json())
    except (ValueError, KeyError, TypeError):
        return None
    return answer if "FailedSOPSequence" in answer else None


def _patients(studies: list[Dataset]) -> list[Dataset]:
    """One dataset per PatientID from study-level answers, with the study count."""
    by_id: dict[str, Dataset] = {}
    counts: dict[str, int] = {}
    for ds in studies:
        pid = str(ds.get("PatientID", ""))
        counts[pid] = counts.get(pid, 0) + 1
        by_id.setdefault(pid, ds)
    out = []
    for pid, ds in by_id.items():
        ds.NumberOfPatientRelatedStudies = str(counts[pid])
        out.append(ds)
    return out


def _received(rows: list[tuple[str, str, str, str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RECEIVED_SCHEMA, orient="row")


def _write_instance(ds: Dataset, folder: Path, study_uid: str,
                    series_uid: str | None = None) -> tuple[str, str, str, str, str, int] | str:
    """Write one WADO-RS part as ``<SOPInstanceUID>.dcm``: its row, or why it was refused (a str;
    nothing written): its SOP Instance UID not a UID, of another study or series than asked, or
    its bytes not whole (:func:`_part_problem`)."""
    sop = str(ds.get("SOPInstanceUID", "") or "")
    if not is_uid(sop):  # it names the file: a UID (PS3.5 9.1) is never a path nor too long a name
        return (f"SOP Instance UID {sop[:70]!r} is not a UID (at most 64 digits and dots), "
                "not used as a file name")
    for name, keyword, asked in (("study", "StudyInstanceUID", study_uid),
                                 ("series", "SeriesInstanceUID", series_uid)):
        value = str(ds.get(keyword, "") or "")
        if asked and value != asked:
            shown = value[:70] + ("..." if len(value) > 70 else "")
            return f"{sop} is of {name} {shown or '(none)'}, not {asked}"
    buffer = BytesIO()
    try:
        dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as exc:
        raise DicomFileError(f"cannot encode the received instance: {exc}", source=sop) from exc
    data = buffer.getvalue()
    problem = _part_problem(ds, data)
    if problem:
        return f"{sop}: {problem}"
    final = atomic_write_bytes(folder / f"{sop}.dcm", data)
    return (sop, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID), study_uid, str(final),
            len(data))


_LONG_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


def _part_problem(ds: Dataset, encoded: bytes) -> str:
    """Why the part ``ds`` was read from is not a whole instance ('' if it is).

    pydicom reads a part cut short without a word (the last element's value short, or dropped),
    so the part's own bytes (``ds.buffer``, kept by pydicom; else ``encoded``, the Part 10 file
    written from it) go through :func:`kit.dicom.received.check_received`: every element whole,
    the pixel data of its full length, the SOP Class/Instance UIDs the file meta's.
    """
    part = getattr(ds, "buffer", None)
    raw = part.getvalue() if isinstance(part, BytesIO) else encoded
    meta = ds.file_meta
    try:
        start = _dataset_start(raw)
    except ValueError as exc:
        return f"its file meta does not parse: {exc}"
    verdict = check_received(memoryview(raw)[start:], str(meta.get("TransferSyntaxUID", "") or ""),
                             str(meta.get("MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "")),
                             str(meta.get("MediaStorageSOPInstanceUID", "") or ds.get("SOPInstanceUID", "")))
    return "" if verdict.ok else verdict.reason


def _dataset_start(raw: bytes) -> int:
    """The offset of the data set in a Part 10 file: after the preamble, ``DICM`` and the
    (explicit VR little endian) group 0002 elements."""
    pos = 132 if raw[128:132] == b"DICM" else 4 if raw[:4] == b"DICM" else 0
    while pos + 8 <= len(raw) and raw[pos:pos + 2] == b"\x02\x00":
        if raw[pos + 4:pos + 6] in _LONG_VRS:
            if pos + 12 > len(raw):
                raise ValueError("cut short")
            pos += 12 + int.from_bytes(raw[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(raw[pos + 6:pos + 8], "little")
    if pos > len(raw):
        raise ValueError("cut short")
    return pos
