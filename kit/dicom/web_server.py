"""The embedded DICOMweb server: QIDO-RS, WADO-RS and STOW-RS over the DIMSE PACS's store.

FastAPI on uvicorn, in the same process as :class:`kit.dicom.scp.EmbeddedPACS`
and over the same :class:`~kit.dicom.store.InstanceStore`, so an instance sent by
C-STORE is found by QIDO-RS and one sent by STOW-RS is found by C-FIND.

Resources (below ``base_path``, default ``/dicom-web``):

- QIDO-RS ``GET /studies``, ``/series``, ``/instances``, ``/studies/{study}/series``,
  ``/studies/{study}/instances``, ``/studies/{study}/series/{series}/instances``:
  parameters read by :func:`kit.dicom.web_query.parse_qido` into a C-FIND
  identifier, matched with the PACS's own rules (:mod:`kit.dicom.matching`,
  exact prefilters in SQL, a file header read only for keys the index lacks);
  ``limit``/``offset`` paging with the standard's ``Warning: 299`` when more
  matches remain; fuzzy matching is not performed (warned). ``application/dicom+json``.
- WADO-RS ``GET /studies/{study}[/series/{series}[/instances/{sop}]]``: a
  ``multipart/related; type="application/dicom"`` answer streamed from the
  stored files (as stored with ``transfer-syntax=*``, else Explicit VR Little
  Endian by default, decompressed or re-encoded by pydicom when needed);
  ``.../metadata`` (DICOM JSON without pixel data) and
  ``.../instances/{sop}/frames/{list}`` (``application/octet-stream`` frames).
- STOW-RS ``POST /studies[/{study}]`` with ``multipart/related;
  type="application/dicom"``: every part is checked by
  :func:`kit.dicom.received.check_received` and stored by
  :meth:`~kit.dicom.store.InstanceStore.store_encoded` (atomic write, fsync,
  index commit) before it is listed as stored; failures carry a FailureReason
  (0xA900 data set does not match, 0xC000 cannot understand, 0xA700 out of
  resources). 200 when all were stored, 202 when some, 409 when none.

Every peer is hostile: a request head must arrive within ``head_timeout`` and
connections are capped (uvicorn's protocol from :mod:`kit._http_serve`);
a declared body over ``max_body`` is refused (413) unread, a streamed one as soon
as it passes the limit; a body must arrive within ``body_timeout`` with no pause
over ``idle_timeout`` (408); at most ``max_parts`` parts and ``max_uploads``
uploads at once (503 beyond); a reader that takes nothing for ``send_timeout``
is dropped; an unexpected exception is a logged 500, never a dead service. Parts
are spooled (memory, then an anonymous file in the store's ``tmp/``) and nothing
is stored before the whole body has arrived: a client that goes away mid-upload
leaves nothing behind. A server thread that dies sets :attr:`EmbeddedDicomWeb.failure`.

Multipart parsing is python-multipart's (:mod:`kit.dicom.web_multipart`); HTTP
is FastAPI/uvicorn's; DICOM JSON and transcoding are pydicom's. Written by hand:
the routes, the mapping onto the store and the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from kit._http_serve import Served, ServingThread, bind, run_guarded
from kit.dicom.matching import COMPUTED_KEYS, LEVEL_KEYS, candidate_dataset, matches, response_identifier
from kit.dicom.query import QueryLevel
from kit.dicom.received import check_received
from kit.dicom.store import INDEX_TAGS, InstanceStore, StoredInstance, verdict_attributes
from kit.dicom.web_multipart import (
    MAX_PARTS,
    MultipartReader,
    Part,
    closing,
    new_boundary,
    parse_accept,
    parse_media_type,
    part_head,
)
from kit.dicom.web_query import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    MAX_LIMIT,
    NATIVE_SYNTAXES,
    OUT_OF_RESOURCES,
    QidoQuery,
    check_uid,
    negotiate,
    parse_frames,
    parse_qido,
    qido_json,
    split_part10,
    stow_response,
)
from kit.errors import DicomFileError, DicomWebRequestError, KitError, StoreError

__all__ = ["DEFAULT_MAX_BODY", "DICOM_JSON", "EmbeddedDicomWeb", "create_app"]

log = logging.getLogger("kit.dicom.web_server")

DICOM_JSON = "application/dicom+json"
#: Largest STOW-RS request body accepted (bytes); larger -> 413.
DEFAULT_MAX_BODY = 512 * 1024 * 1024
_CHUNK = 1024 * 1024
_SPOOL_IN_MEMORY = 4 * 1024 * 1024
_PROCESSING_FAILURE = 0x0110
_KNOWN_KEYS = frozenset(
    {k for keys in LEVEL_KEYS.values() for k in keys}
    | {k for keys in COMPUTED_KEYS.values() for k in keys}
    | {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"})
_UNIQUE = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def _error(status: int, message: str, *, close: bool = False) -> Response:
    headers = {"Connection": "close"} if close else {}
    return Response(message.encode("utf-8", "replace") + b"\n", status_code=status, media_type="text/plain",
                    headers=headers)


def _json(body: Any, status: int = 200, warnings: list[str] | None = None) -> Response:
    response = Response(orjson.dumps(body), status_code=status, media_type=DICOM_JSON)
    for text in warnings or []:
        response.headers.append("Warning", f'299 kit "{text}"')
    return response


# -- QIDO-RS (in a worker thread) -------------------------------------------------------------------

def _exact(identifier: Dataset, keyword: str) -> list[str] | None:
    """The identifier's values for a key if they can prefilter exactly (no wildcards), else None."""
    element = identifier[keyword] if keyword in identifier else None
    if element is None or element.value in (None, ""):
        return None
    raw = list(element.value) if isinstance(element.value, list) or type(element.value).__name__ == \
        "MultiValue" else [element.value]
    values = [str(v).strip() for v in raw if str(v).strip()]
    if not values or any("*" in v or "?" in v for v in values):
        return None
    return values


def _add_header_keys(candidate: Dataset, path: Path, keywords: list[str]) -> None:
    """Add keys the index lacks from a file's header (as the DIMSE PACS does for C-FIND)."""
    try:
        header = dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        log.warning("cannot read %s for extra keys: %s", path, exc)
        return
    for keyword in keywords:
        if keyword in header and keyword not in candidate:
            candidate.add(header[keyword])


def search(store: InstanceStore, query: QidoQuery, base_url: str) -> tuple[list[dict[str, Any]], int]:
    """QIDO-RS matches of ``query`` as DICOM JSON (the requested page) and how many matched in all."""
    identifier, level = query.identifier, query.level
    where: dict[str, list[str]] = {}
    for keyword in (*_UNIQUE[: level.depth + 1], *(("AccessionNumber",) if level.depth >= 1 else ())):
        values = _exact(identifier, keyword)
        if values is not None:
            where[keyword] = values
    extra = [e for e in identifier if e.keyword and e.keyword not in _KNOWN_KEYS and e.tag.group != 0x0002]
    match_extra = [e.keyword for e in extra if e.VR == "SQ" or e.value not in (None, "")]
    return_extra = [e.keyword for e in extra if e.keyword not in match_extra]
    below = [k for lv in QueryLevel if lv.depth > level.depth for k in (*LEVEL_KEYS[lv], *COMPUTED_KEYS[lv])]
    limit = min(query.limit if query.limit is not None else MAX_LIMIT, MAX_LIMIT)
    page: list[tuple[dict[str, Any], Dataset]] = []
    total = 0
    for record in store.records(level, where):
        candidate = candidate_dataset(record)
        if match_extra:
            _add_header_keys(candidate, record["_path"], match_extra)
        if not matches(identifier, candidate, ignore=below):
            continue
        if query.offset <= total < query.offset + limit:
            page.append((record, candidate))
        total += 1
    out = []
    for record, candidate in page:
        if return_extra:
            _add_header_keys(candidate, record["_path"], return_extra)
        url = f"{base_url}/studies/{record.get('StudyInstanceUID')}"
        if level.depth >= QueryLevel.SERIES.depth:
            url += f"/series/{record.get('SeriesInstanceUID')}"
        if level is QueryLevel.IMAGE:
            url += f"/instances/{record.get('SOPInstanceUID')}"
        out.append(qido_json(response_identifier(identifier, candidate, level=level), query, url))
    return out, total


# -- WADO-RS ------------------------------------------------------------------------------------------

def _instances(store: InstanceStore, study: str, series: str | None = None,
               sop: str | None = None) -> list[StoredInstance]:
    where = {"StudyInstanceUID": [check_uid(study, "StudyInstanceUID")]}
    if series is not None:
        where["SeriesInstanceUID"] = [check_uid(series, "SeriesInstanceUID")]
    if sop is not None:
        where["SOPInstanceUID"] = [check_uid(sop, "SOPInstanceUID")]
    found = store.instances(where)
    if not found:
        raise DicomWebRequestError("no such " + ("instance" if sop else "series" if series else "study"),
                                   status_code=404)
    return found


def _transcoded(path: Path, syntax: str) -> bytes:
    """A stored file re-encoded in a native transfer syntax (decompressed first if needed)."""
    ds = dcmread(path)
    if UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))).is_compressed:
        ds.decompress(generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _stream(instances: list[StoredInstance], boundary: str, syntax: str | None) -> Iterator[bytes]:
    """The multipart answer, one stored file after another (a file that vanished is skipped, logged)."""
    first = True
    for inst in instances:
        send = syntax if syntax is not None and inst.transfer_syntax_uid != syntax else None
        try:
            if send is None:
                fh: IO[bytes] | None = open(inst.path, "rb")  # noqa: SIM115 - closed below
                data = b""
            else:
                fh, data = None, _transcoded(inst.path, send)
        except Exception as exc:  # noqa: BLE001 - one unreadable file never ends the answer
            log.error("WADO-RS: cannot send %s: %s", inst.sop_instance_uid, exc)
            continue
        ts = send or inst.transfer_syntax_uid
        # the file is closed however the answer ends, a client gone after the part's head included
        with fh if fh is not None else contextlib.nullcontext():
            yield part_head(boundary, f"application/dicom; transfer-syntax={ts}", first=first)
            first = False
            if fh is None:
                yield data
                continue
            while chunk := fh.read(_CHUNK):
                yield chunk
    yield closing(boundary, empty=first)


def _metadata(instances: list[StoredInstance]) -> list[dict[str, Any]]:
    out = []
    for inst in instances:
        try:
            ds = dcmread(inst.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            log.error("WADO-RS metadata: cannot read %s: %s", inst.path, exc)
            continue
        out.append(ds.to_json_dict(bulk_data_threshold=1 << 20, suppress_invalid_tags=True))
    return out


def _frames(inst: StoredInstance, frame_list: str, syntax: str | None) -> tuple[list[bytes], str]:
    """The frames asked for and the transfer syntax they are in."""
    ds = dcmread(inst.path)
    if "PixelData" not in ds:
        raise DicomWebRequestError("the instance has no pixel data", status_code=404)
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    count = int(ds.get("NumberOfFrames") or 1)
    frames = parse_frames(frame_list, count)
    if stored.is_encapsulated:
        if syntax is not None and syntax != stored:
            raise DicomWebRequestError(f"frames are stored as {stored.name}; ask with transfer-syntax=* "
                                       f"or {stored}", status_code=406)
        return [get_frame(ds.PixelData, f - 1, number_of_frames=count) for f in frames], str(stored)
    if syntax is not None and syntax not in NATIVE_SYNTAXES:
        raise DicomWebRequestError(f"frames are stored uncompressed; cannot send them as {syntax}",
                                   status_code=406)
    bits = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * int(ds.BitsAllocated)
    if bits % 8:
        raise DicomWebRequestError("frames that do not fill whole bytes are not served", status_code=406)
    size = bits // 8
    pixels = ds.PixelData
    return [pixels[(f - 1) * size:f * size] for f in frames], str(ExplicitVRLittleEndian)


# -- STOW-RS ------------------------------------------------------------------------------------------

def _store_parts(store: InstanceStore, parts: list[Part], study: str | None, base_url: str
                 ) -> tuple[int, dict[str, Any]]:
    """Check and durably store every part; the Store Instances Response and its HTTP status."""
    stored: list[tuple[str, str, str]] = []
    failed: list[tuple[str, str, int]] = []
    studies: set[str] = set()
    for part in parts:
        sop_class = sop_uid = ""
        try:
            media = part.content_type
            if media is not None and media.type != "application/dicom":
                raise DicomFileError(f"a part of type {media.type}: only application/dicom is stored")
            part.body.seek(0)
            data = part.body.read()
            meta, offset = split_part10(data)
            sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
            encoded = data[offset:]
            verdict = check_received(encoded, str(meta.TransferSyntaxUID), sop_class, sop_uid,
                                     keep=INDEX_TAGS)
            if not verdict.ok:
                log.warning("STOW-RS of %s refused (0x%04X): %s", sop_uid, verdict.status, verdict.reason)
                failed.append((sop_class, sop_uid, verdict.status))
                continue
            attributes = verdict_attributes(verdict)
            if study is not None and attributes.get("StudyInstanceUID") != study:
                log.warning("STOW-RS of %s refused: not of study %s", sop_uid, study)
                failed.append((sop_class, sop_uid, DATASET_MISMATCH))
                continue
            done = store.store_encoded(meta, encoded, attributes)
        except DicomFileError as exc:
            log.warning("STOW-RS part refused: %s", exc)
            failed.append((sop_class, sop_uid, CANNOT_UNDERSTAND))
            continue
        except StoreError as exc:
            log.error("STOW-RS: could not store %s: %s", sop_uid, exc)
            failed.append((sop_class, sop_uid, OUT_OF_RESOURCES))
            continue
        except Exception as exc:  # noqa: BLE001 - one bad part never fails the others
            log.exception("STOW-RS: processing %s failed: %s", sop_uid, exc)
            failed.append((sop_class, sop_uid, _PROCESSING_FAILURE))
            continue
        studies.add(done.study_instance_uid)
        stored.append((done.sop_class_uid, done.sop_instance_uid,
                       f"{base_url}/studies/{done.study_instance_uid}/series/{done.series_instance_uid}"
                       f"/instances/{done.sop_instance_uid}"))
    one = study or (next(iter(studies)) if len(studies) == 1 else None)
    return stow_response(stored, failed, f"{base_url}/studies/{one}" if one else None)


class _Limits:
    """The request limits of one app (see :class:`EmbeddedDicomWeb`)."""

    def __init__(self, max_body: int, max_parts: int, max_uploads: int, body_timeout: float,
                 idle_timeout: float, spool_dir: Path) -> None:
        self.max_body, self.max_parts = max_body, max_parts
        self.body_timeout, self.idle_timeout = body_timeout, idle_timeout
        self.uploads = asyncio.Semaphore(max_uploads)
        self.spool_dir = spool_dir


async def _read_parts(request: Request, limits: _Limits, spools: list[IO[bytes]]) -> list[Part]:
    """The parts of a STOW-RS body, spooled; 413 over the limits, 408 when too slow, 400 if cut short."""
    def sink(_: Mapping[str, str]) -> IO[bytes]:
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY, mode="w+b",
                                              dir=str(limits.spool_dir))  # noqa: SIM115
        spools.append(spool)
        return spool

    reader = MultipartReader(request.headers.get("content-type", ""), sink, max_parts=limits.max_parts)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.body_timeout
    size = 0
    chunks = request.stream().__aiter__()
    while True:
        left = deadline - loop.time()
        try:
            async with asyncio.timeout(min(limits.idle_timeout, max(left, 0.0))):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise DicomWebRequestError(
                f"request body not received in time (at most {limits.body_timeout:g} s, pauses under "
                f"{limits.idle_timeout:g} s)", status_code=408) from None
        size += len(chunk)
        if size > limits.max_body:
            raise DicomWebRequestError(f"request body over {limits.max_body} bytes", status_code=413)
        reader.feed(chunk)
    return reader.finish()


# -- the app ------------------------------------------------------------------------------------------

def create_app(store: InstanceStore, *, base_path: str = "/dicom-web", max_body: int = DEFAULT_MAX_BODY,
               max_parts: int = MAX_PARTS, max_uploads: int = 4, body_timeout: float = 300.0,
               idle_timeout: float = 30.0, send_timeout: float = 30.0) -> FastAPI:
    """The FastAPI application of the embedded DICOMweb server (parameters: :class:`EmbeddedDicomWeb`)."""
    app = FastAPI(title="kit DICOMweb", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_Guard, max_body=max_body, send_timeout=send_timeout)
    limits = _Limits(max_body, max_parts, max_uploads, body_timeout, idle_timeout, store.tmp_dir)
    bp = "/" + base_path.strip("/") if base_path.strip("/") else ""

    def base_of(request: Request) -> str:
        return str(request.base_url).rstrip("/") + bp

    @app.exception_handler(DicomWebRequestError)
    async def _refused(_: Request, exc: DicomWebRequestError) -> Response:
        return _error(exc.status_code, str(exc), close=exc.status_code in (408, 413))

    @app.exception_handler(KitError)
    async def _failed(request: Request, exc: KitError) -> Response:
        log.error("DICOMweb: %s %s failed: %s", request.method, request.url.path, exc)
        return _error(503 if isinstance(exc, StoreError) else 500, str(exc))

    async def qido(request: Request, level: QueryLevel, study: str | None = None,
                   series: str | None = None) -> Response:
        query = parse_qido(level, list(request.query_params.multi_items()), study_uid=study,
                           series_uid=series)
        found, total = await run_in_threadpool(search, store, query, base_of(request))
        warnings = list(query.warnings)
        if total > query.offset + len(found):
            warnings.append(f"There are {total - query.offset - len(found)} additional results "
                            "that can be requested")
        return _json(found, 200, warnings)

    @app.get(bp + "/studies")
    async def studies(request: Request) -> Response:
        return await qido(request, QueryLevel.STUDY)

    @app.get(bp + "/series")
    async def all_series(request: Request) -> Response:
        return await qido(request, QueryLevel.SERIES)

    @app.get(bp + "/instances")
    async def all_instances(request: Request) -> Response:
        return await qido(request, QueryLevel.IMAGE)

    @app.get(bp + "/studies/{study}/series")
    async def study_series(request: Request, study: str) -> Response:
        return await qido(request, QueryLevel.SERIES, study)

    @app.get(bp + "/studies/{study}/instances")
    async def study_instances(request: Request, study: str) -> Response:
        return await qido(request, QueryLevel.IMAGE, study)

    @app.get(bp + "/studies/{study}/series/{series}/instances")
    async def series_instances(request: Request, study: str, series: str) -> Response:
        return await qido(request, QueryLevel.IMAGE, study, series)

    async def wado(request: Request, study: str, series: str | None = None,
                   sop: str | None = None) -> Response:
        syntax = negotiate(parse_accept(request.headers.get("accept")), "application/dicom",
                           str(ExplicitVRLittleEndian))
        found = await run_in_threadpool(_instances, store, study, series, sop)
        if syntax is not None and syntax not in NATIVE_SYNTAXES and any(
                i.transfer_syntax_uid != syntax for i in found):
            raise DicomWebRequestError(f"cannot send {syntax}: instances are re-encoded only into "
                                       f"{', '.join(NATIVE_SYNTAXES)}", status_code=406)
        boundary = new_boundary()
        media = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return StreamingResponse(_stream(found, boundary, syntax), media_type=media)

    @app.get(bp + "/studies/{study}")
    async def retrieve_study(request: Request, study: str) -> Response:
        return await wado(request, study)

    @app.get(bp + "/studies/{study}/series/{series}")
    async def retrieve_series(request: Request, study: str, series: str) -> Response:
        return await wado(request, study, series)

    @app.get(bp + "/studies/{study}/series/{series}/instances/{sop}")
    async def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return await wado(request, study, series, sop)

    async def metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
        found = await run_in_threadpool(_instances, store, study, series, sop)
        return _json(await run_in_threadpool(_metadata, found))

    @app.get(bp + "/studies/{study}/metadata")
    async def study_metadata(study: str) -> Response:
        return await metadata(study)

    @app.get(bp + "/studies/{study}/series/{series}/metadata")
    async def series_metadata(study: str, series: str) -> Response:
        return await metadata(study, series)

    @app.get(bp + "/studies/{study}/series/{series}/instances/{sop}/metadata")
    async def instance_metadata(study: str, series: str, sop: str) -> Response:
        return await metadata(study, series, sop)

    @app.get(bp + "/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
    async def frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        syntax = negotiate(parse_accept(request.headers.get("accept")), "application/octet-stream",
                           str(ExplicitVRLittleEndian))
        found = await run_in_threadpool(_instances, store, study, series, sop)
        data, ts = await run_in_threadpool(_frames, found[0], frame_list, syntax)
        boundary = new_boundary()
        body = b"".join(part_head(boundary, f"application/octet-stream; transfer-syntax={ts}",
                                  first=i == 0) + frame for i, frame in enumerate(data))
        return Response(body + closing(boundary, empty=not data), media_type=(
            f'multipart/related; type="application/octet-stream"; boundary={boundary}'))

    async def stow(request: Request, study: str | None) -> Response:
        if study is not None:
            check_uid(study, "StudyInstanceUID")
        media = parse_media_type(request.headers.get("content-type", ""))
        inner = media.params.get("type", "application/dicom").lower()
        if media.type != "multipart/related" or inner != "application/dicom":
            raise DicomWebRequestError('STOW-RS takes multipart/related; type="application/dicom"',
                                       status_code=415)
        if limits.uploads.locked():
            response = _error(503, "too many uploads at once; retry later", close=True)
            response.headers["Retry-After"] = "5"
            return response
        spools: list[IO[bytes]] = []
        async with limits.uploads:
            try:
                try:
                    parts = await _read_parts(request, limits, spools)
                except ClientDisconnect:
                    log.warning("STOW-RS: the client went away mid-upload; nothing stored")
                    return _error(400, "the client went away before sending the body", close=True)
                if not parts:
                    raise DicomWebRequestError("the request has no parts")
                status, body = await run_in_threadpool(_store_parts, store, parts, study, base_of(request))
            finally:
                for spool in spools:
                    spool.close()
        return _json(body, status)

    @app.post(bp + "/studies")
    async def store_instances(request: Request) -> Response:
        return await stow(request, None)

    @app.post(bp + "/studies/{study}")
    async def store_study_instances(request: Request, study: str) -> Response:
        return await stow(request, study)

    return app


class _Guard:
    """Outermost ASGI layer: early 413 on a declared body, slow-reader limit, last-resort 500."""

    def __init__(self, app: Any, *, max_body: int, send_timeout: float) -> None:
        self.app = app
        self.max_body = max_body
        self.send_timeout = send_timeout

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (len(declared) > 19 or not declared.isdigit()
                                     or int(declared) > self.max_body):
            await _error(413, f"request body over {self.max_body} bytes", close=True)(scope, receive, send)
            return
        await run_guarded(self.app, scope, receive, send, send_timeout=self.send_timeout, service="DICOMweb",
                          logger=log, reject=lambda status, message: _error(status, message, close=True)(
                              scope, receive, send))


class EmbeddedDicomWeb(Served):
    """The embedded DICOMweb server (QIDO-RS, WADO-RS, STOW-RS), run by uvicorn in a background thread.

    Parameters
    ----------
    store : InstanceStore or path-like
        The DIMSE PACS's store (shared: ``EmbeddedPACS(...).store``), or a folder
        whose store this server opens and closes itself.
    host : str
        Interface to bind.
    port : int
        Port to bind; 0 picks a free one (read :attr:`port` after :meth:`start`).
    base_path : str
        URL path of the DICOMweb root.
    max_body : int
        Largest STOW-RS body in bytes (413 above it).
    max_parts : int
        Most parts in one STOW-RS body (413 above it).
    max_uploads : int
        STOW-RS bodies read at once (503 with Retry-After beyond).
    body_timeout, idle_timeout : float
        Seconds a STOW-RS body may take in all, and the longest pause in it (408 after).
    head_timeout : float
        Seconds a connection may take to send a complete request head.
    send_timeout : float
        Seconds one answer chunk may wait for a client that reads nothing (dropped after).
    keep_alive : float
        Seconds an idle keep-alive connection stays open.
    max_connections : int
        Open connections above this are answered 503 and closed.
    """

    name = "dicomweb"

    def __init__(self, store: InstanceStore | str | os.PathLike[str], *, host: str = "127.0.0.1",
                 port: int = 0, base_path: str = "/dicom-web", max_body: int = DEFAULT_MAX_BODY,
                 max_parts: int = MAX_PARTS, max_uploads: int = 4, body_timeout: float = 300.0,
                 idle_timeout: float = 30.0, head_timeout: float = 10.0, send_timeout: float = 30.0,
                 keep_alive: float = 5.0, max_connections: int = 256) -> None:
        self._owns_store = not isinstance(store, InstanceStore)
        self.store = store if isinstance(store, InstanceStore) else InstanceStore(store)
        self.host, self.port = host, port
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.max_body, self.max_parts, self.max_uploads = max_body, max_parts, max_uploads
        self.body_timeout, self.idle_timeout = body_timeout, idle_timeout
        self.head_timeout, self.send_timeout, self.keep_alive = head_timeout, send_timeout, keep_alive
        self.max_connections = max_connections
        self._serving = ServingThread("dicomweb", "the embedded DICOMweb server")

    @property
    def base_url(self) -> str:
        """The DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.base_path}"

    @property
    def address(self) -> str:
        """Same as :attr:`base_url` (the stack's address convention)."""
        return self.base_url

    def start(self) -> None:
        """Bind and return once the server answers.

        Raises
        ------
        PeerError
            The port cannot be bound.
        ServiceFailedError
            The server did not start.
        """
        if self._serving.running:
            return
        sock = bind(self.host, self.port, what="the DICOMweb server")
        self.port = int(sock.getsockname()[1])
        app = create_app(self.store, base_path=self.base_path, max_body=self.max_body,
                         max_parts=self.max_parts, max_uploads=self.max_uploads,
                         body_timeout=self.body_timeout, idle_timeout=self.idle_timeout,
                         send_timeout=self.send_timeout)
        self._serving.start(app, sock, head_timeout=self.head_timeout, max_connections=self.max_connections,
                            keep_alive=self.keep_alive)
        log.info("embedded DICOMweb listening on %s", self.base_url)

    def stop(self) -> None:
        """Stop serving (idempotent); a store this server opened is closed."""
        self._serving.stop()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> EmbeddedDicomWeb:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedDicomWeb({self.base_url!r}, storage_dir={str(self.store.root)!r})"
