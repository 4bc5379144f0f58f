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

Every WADO-RS part is checked before it is written, as a C-GET's instances are: its bytes parse
whole (:func:`kit.dicom.received.check_received`: no element cut short, pixel data of its full
length, the file meta's SOP Instance UID the data set's) and it is of the study (series) asked
for; a part that is not is never written, and the retrieve raises
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
level, the frames, the literal wildcards and error conversion; HTTP, multipart and DICOM JSON are
dicomweb-client's and pydicom's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

import polars as pl
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from kit._files import atomic_write_bytes
from kit._truncate import check_limit, warn_truncated
from kit.config import DicomWebSettings, Secret, Settings
from kit.dicom._audit import web as _audited
from kit.dicom._cancel import RetrieveCancel
from kit.dicom._outgoing import read_for_store
from kit.dicom.dimse import RECEIVED_SCHEMA, STORED_SCHEMA, RetrieveCancelledError
from kit.dicom.query import (
    ATTRIBUTES,
    DEFAULT_RETURN_KEYS,
    QueryLevel,
    QueryModel,
    find_identifier,
    responses_to_frame,
)
from kit.dicom.received import check_received
from kit.errors import (
    DicomFileError,
    DicomWebError,
    InvalidInputError,
    PeerTimeoutError,
    PeerUnreachableError,
    StoreError,
)

__all__ = ["DicomWebClient"]

T = TypeVar("T")

#: Matches asked for per QIDO-RS request.
QIDO_PAGE = 1000
#: Instances sent per STOW-RS request.
STOW_BATCH = 50


class _LiteralWildcards(requests.Session):
    """A session that sends the QIDO-RS wildcard ``*`` literally in query strings, and keeps the
    streamed answers opened inside :meth:`streaming` (on this thread) to close them there."""

    def __init__(self) -> None:
        super().__init__()
        self._streams = threading.local()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = super().send(request, **kwargs)
        opened: list[requests.Response] | None = getattr(self._streams, "opened", None)
        if kwargs.get("stream") and opened is not None:
            opened.append(response)
        return response

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Close every streamed answer this thread opens in the block when it ends, read to the end
        or not (dicomweb-client closes one only when its generator is finalized)."""
        opened: list[requests.Response] = []
        self._streams.opened = opened
        try:
            yield
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
    """

    def __init__(self, base: str, *, username: str | None = None,
                 password: Secret | str | None = None, token: Secret | str | None = None,
                 timeout: float = 30.0) -> None:
        if not base.startswith(("http://", "https://")):
            raise InvalidInputError(f"DICOMweb base {base!r} must be an http(s) URL")
        if timeout <= 0:
            raise InvalidInputError("timeout must be positive")
        self.base = base.rstrip("/")
        self.timeout = float(timeout)
        session = self._session = _LiteralWildcards()
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
        except (requests.ConnectTimeout, requests.ReadTimeout) as exc:
            raise PeerTimeoutError(f"{what}: no answer within {self.timeout:g}s", peer=self.base) from exc
        except requests.ConnectionError as exc:
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
            short, not the instance their file meta names): those were not written, the
            others were.
        StoreError
            An instance cannot be written under ``dest``.
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
        with stop.raising(cancelled), self._session.streaming():
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
                    continue
                rows.append(row)
                stop.tick()
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
    nothing written): of another study or series than asked, or its bytes not whole
    (:func:`_part_problem`)."""
    sop = str(ds.get("SOPInstanceUID", ""))
    if not sop or "/" in sop or sop.startswith("."):
        raise DicomFileError(f"WADO-RS answer has an unusable SOP Instance UID {sop!r}")
    for name, keyword, asked in (("study", "StudyInstanceUID", study_uid),
                                 ("series", "SeriesInstanceUID", series_uid)):
        value = str(ds.get(keyword, "") or "")
        if asked and value != asked:
            return f"{sop} is of {name} {value or '(none)'}, not {asked}"
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
