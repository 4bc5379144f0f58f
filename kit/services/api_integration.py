"""``/api/v1/integration``: the clinic seed's integration manager over :class:`kit.hub.Hub` (I/O).

Status and connections, one patient across every system, results sent and
verified (:func:`kit.results.deliver.deliver` through :meth:`Hub.send_results`),
and per system: PACS (C-ECHO, C-STORE of an uploaded image, C-FIND of
studies), endoscopy (the Modality ES worklist, and frames read from the
video stream: ``[endoscopy] stream_url``, which ``[api] endoscopy_stream``
overrides) and EHR (metadata, a patient, an Observation or a DiagnosticReport
created, read back and compared).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from kit.errors import InvalidInputError, KitError
from kit.services.api import READ, WRITE, ApiContext, context, hl7_turn, upstream, waited_turn
from kit.services.api_http import Json
from kit.services.api_models import (
    ID_PATTERN,
    UID_PATTERN,
    ApiProblem,
    DiagnosticReportIn,
    EndoscopyAnalysisIn,
    ObservationIn,
    ResultIn,
    build_endoscopy_result,
    build_result,
    json_differences,
    records,
)

__all__ = ["MAX_SOURCES", "MAX_STREAM_FRAMES", "router"]

router = APIRouter(prefix="/api/v1/integration", tags=["integration"])

#: Most instances a study may have for an SR to be made about it through the API.
MAX_SOURCES: Final = 2000
#: How long a delivery waits for the one before it (deliveries share the Hub's MLLP connection).
DELIVERY_WAIT: Final = 120.0

PatientId = Annotated[str, PathParam(pattern=ID_PATTERN, description="The patient id (MRN).")]
Ctx = Annotated[ApiContext, Depends(context)]
#: Most frames ``endoscopy/video-stream`` reads in one request.
MAX_STREAM_FRAMES: Final = 30


def _rows(frame: Any) -> dict[str, Any]:
    rows, cut = records(frame)
    return {"columns": list(frame.columns), "rows": rows, "truncated": cut}


# -- status and connections ---------------------------------------------------------------------------


@router.get("/status", dependencies=[READ], summary="Health of every configured connector (one probe each)")
def status(ctx: Ctx) -> Any:
    return {"connectors": records(ctx.hub.status())[0]}


@router.post("/connect-all", dependencies=[WRITE], summary="Build every adapter and open kept connections")
def connect_all(ctx: Ctx) -> Any:
    with hl7_turn(ctx):
        return {"connectors": records(ctx.hub.connect_all())[0]}


@router.post("/disconnect-all", dependencies=[WRITE], summary="Close every adapter's connections")
def disconnect_all(ctx: Ctx) -> Any:
    with hl7_turn(ctx):
        ctx.hub.disconnect_all()
    return {"disconnected": list(ctx.hub.connectors)}


def _probe(ctx: ApiContext, connector: str) -> dict[str, Any]:
    rows = records(ctx.hub.status(only=[connector]))[0]
    return rows[0]


# -- one patient --------------------------------------------------------------------------------------


@router.get(
    "/patient/{patient_id}/all-systems",
    dependencies=[READ],
    summary="One frame per source for the patient: PACS studies, FHIR resources, HL7 rows",
)
def all_systems(patient_id: PatientId, ctx: Ctx) -> Any:
    with upstream("a source"):
        view = ctx.hub.patient_view(patient_id)
    return {"patient_id": patient_id, "sources": {name: _rows(frame) for name, frame in view.items()}}


def _study(ctx: ApiContext, patient_id: str, study_uid: str) -> dict[str, Any]:
    """The PACS's row for a study, checked to be the patient's (404 / 422 otherwise)."""
    with upstream("PACS"):
        found = ctx.hub.pacs.find("STUDY", study_instance_uid=study_uid)
    if found.height == 0:
        raise ApiProblem(404, f"the PACS has no study {study_uid}")
    row: dict[str, Any] = found.row(0, named=True)
    if row.get("patient_id") != patient_id:
        raise ApiProblem(422, f"study {study_uid} belongs to another patient, not {patient_id}")
    return row


def _sources(ctx: ApiContext, study_uid: str, series_uid: str | None) -> list[Any]:
    """The study's (or series') instance headers, retrieved by C-GET (at most :data:`MAX_SOURCES`)."""
    from pydicom import dcmread

    with tempfile.TemporaryDirectory(prefix="kit-api-sources-") as tmp:
        with upstream("PACS"):
            ctx.hub.pacs.get(study_uid=study_uid, series_uid=series_uid, dest=tmp)
        files = sorted(Path(tmp).glob("*.dcm"))
        if len(files) > MAX_SOURCES:
            raise ApiProblem(
                413,
                f"the study has {len(files)} instances; an SR through the API is made "
                f"about at most {MAX_SOURCES} (name a series)",
            )
        with upstream("PACS"):
            try:
                return [dcmread(f, stop_before_pixels=True) for f in files]
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
                raise KitError(f"the PACS sent an unreadable instance: {type(exc).__name__}: {exc}") from exc


def _deliver(ctx: ApiContext, result: Any, targets: list[str] | None, sources: list[Any]) -> Any:
    busy = f"another delivery has run for over {DELIVERY_WAIT:g} s; retry later"
    with waited_turn(ctx.deliver_lock, DELIVERY_WAIT, busy), hl7_turn(ctx):
        report = ctx.hub.send_results(result, targets=targets, sources=sources)
    rows = records(report.frame)[0]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        names = ", ".join(f"{r['target']} ({r['reason']})" for r in failed)
        raise ApiProblem(
            502, f"delivery failed: {names}"[:2000], extra={"result_id": report.result_id, "deliveries": rows}
        )
    return {"result_id": report.result_id, "ok": report.ok, "deliveries": rows}


@router.post(
    "/patient/{patient_id}/send-results",
    dependencies=[WRITE],
    summary="Send an analysis result to PACS (SR), EHR (Observations, DiagnosticReport) and HL7 (ORU)",
    description="Each target is read back and compared before it counts as verified. A target "
    "that failed makes the answer a 502 problem with every target's row in `deliveries`.",
)
def send_results(patient_id: PatientId, body: ResultIn, ctx: Ctx) -> Any:
    build_result(patient_id, body)  # the body's own checks, before any peer is asked
    study = _study(ctx, patient_id, body.study_instance_uid)
    targets: list[str] | None = list(body.targets) if body.targets else None
    wanted = set(targets or ("sr", "seg"))
    sources = (
        _sources(ctx, body.study_instance_uid, body.series_instance_uid) if wanted & {"sr", "seg"} else []
    )
    result = build_result(patient_id, body, accession_number=study.get("accession_number") or None)
    return _deliver(ctx, result, targets, sources)


# -- PACS ---------------------------------------------------------------------------------------------


@router.post("/pacs/connect", dependencies=[WRITE], summary="C-ECHO the PACS")
def pacs_connect(ctx: Ctx) -> Any:
    return _probe(ctx, "pacs-dimse")


@router.post(
    "/pacs/store-image",
    dependencies=[WRITE],
    status_code=201,
    summary="C-STORE one DICOM file (the request body) and find it again",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def pacs_store_image(request: Request, ctx: Ctx) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/dicom", "application/octet-stream"):
        raise ApiProblem(415, "send the DICOM file as application/dicom")
    data = await request.body()
    if not data:
        raise ApiProblem(422, "the body is empty: send one DICOM file (Part 10)")
    return await run_in_threadpool(_store_image, ctx, data)


def _store_image(ctx: ApiContext, data: bytes) -> Any:
    from pydicom import dcmread

    with tempfile.TemporaryDirectory(prefix="kit-api-store-") as tmp:
        path = Path(tmp) / "upload.dcm"
        path.write_bytes(data)
        try:
            ds = dcmread(path, stop_before_pixels=True)
            uids = {
                k: str(getattr(ds, k)) for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
            }
            patient = str(getattr(ds, "PatientID", ""))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a bad file
            raise InvalidInputError(
                f"not a DICOM file with its UIDs: {type(exc).__name__}: {exc}"[:500]
            ) from None
        from kit.dicom._outgoing import Outgoing

        Outgoing.of(path)  # the file's own checks (Part 10 header, element lengths): 422 before sending
        with upstream("PACS"):
            stored = ctx.hub.pacs.store([path])
            found = ctx.hub.pacs.find(
                "IMAGE",
                study_instance_uid=uids["StudyInstanceUID"],
                series_instance_uid=uids["SeriesInstanceUID"],
                sop_instance_uid=uids["SOPInstanceUID"],
            )
    if found.height == 0:
        raise ApiProblem(502, f"the PACS accepted {uids['SOPInstanceUID']} but does not find it again")
    row = records(stored)[0][0]
    return {
        "sop_instance_uid": uids["SOPInstanceUID"],
        "series_instance_uid": uids["SeriesInstanceUID"],
        "study_instance_uid": uids["StudyInstanceUID"],
        "patient_id": patient,
        "status": row.get("status"),
        "verified": True,
    }


DicomText = Annotated[str, Query(pattern=r"^[^\\\x00-\x1f\x7f]{1,64}$")]


@router.get(
    "/pacs/find-studies", dependencies=[READ], summary="C-FIND studies (DICOM matching: * and ? wildcards)"
)
def pacs_find_studies(
    ctx: Ctx,
    patient_id: DicomText | None = None,
    patient_name: DicomText | None = None,
    accession_number: DicomText | None = None,
    study_date: Annotated[
        str | None, Query(pattern=r"^[0-9-]{8,21}$", description="20260203, 2026-02-03, 20260101-20260131")
    ] = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Z0-9]{1,16}$")] = None,
    study_instance_uid: Annotated[str | None, Query(pattern=UID_PATTERN, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    from kit.dicom.query import find_identifier

    filters = {
        k: v
        for k, v in {
            "patient_id": patient_id,
            "patient_name": patient_name,
            "accession_number": accession_number,
            "study_date": study_date,
            "modalities_in_study": modality,
            "study_instance_uid": study_instance_uid,
        }.items()
        if v is not None
    }
    find_identifier("STUDY", **filters)  # bad values (a date that is not one) are 422 before the PACS
    with upstream("PACS"):  # limit + 1: one more than asked tells a cut result (`truncated`)
        found = ctx.hub.pacs.find("STUDY", limit=limit + 1, **filters)
    rows, cut = records(found, limit)
    return {"studies": rows, "truncated": cut}


# -- endoscopy ----------------------------------------------------------------------------------------


def _stream_url(ctx: ApiContext) -> str:
    """``[api] endoscopy_stream`` if set, else ``[endoscopy] stream_url`` (default: the embedded stack's)."""
    return ctx.endoscopy_stream or ctx.settings.endoscopy.stream_url


def _stream(ctx: ApiContext) -> dict[str, Any]:
    """The stream (without credentials) and whether a frame can be read from it within the probe timeout."""
    from kit.endoscopy.probe import read_frames
    from kit.endoscopy.source import describe_source, display_url

    url = _stream_url(ctx)
    out: dict[str, Any] = {"url": display_url(url), "scheme": describe_source(url)[0], "reachable": False,
                           "latency_ms": None, "reason": None, "frame": None}
    try:
        sample = read_frames(url, 1, timeout=ctx.settings.api.probe_timeout)
    except KitError as exc:
        out["reason"] = f"{type(exc).__name__}: {exc}"
        return out
    out.update(reachable=True, latency_ms=sample.first_frame_ms, frame=sample.frames[0])
    return out


@router.post(
    "/endoscopy/connect",
    dependencies=[WRITE],
    summary="Check the endoscopy worklist (Modality ES) and the video stream (one frame read from it)",
)
def endoscopy_connect(ctx: Ctx) -> Any:
    stream = _stream(ctx)
    return {
        "worklist": _probe(ctx, "endoscopy"),
        "stream": stream,
        "capture": {"available": stream["reachable"], "reason": stream["reason"]},
    }


@router.get(
    "/endoscopy/video-stream",
    dependencies=[READ],
    summary="Frames read from the endoscopy video stream, and the procedures scheduled",
    description="Reads `frames` frames (1-30) from `[endoscopy] stream_url` (or `[api] endoscopy_stream`) "
    "through kit.endoscopy.source.FrameSource within `[endoscopy] timeout`: one record per frame (index, "
    "timestamp, shape, mean intensity, as `kit endoscopy frames --json`). 502/504 when the stream gives no "
    "frame.",
)
def endoscopy_video_stream(
    ctx: Ctx,
    patient_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    frames: Annotated[int, Query(ge=1, le=MAX_STREAM_FRAMES, description="Frames to read.")] = 5,
) -> Any:
    from kit.endoscopy.probe import read_frames

    with upstream("the endoscopy video stream"):
        sample = read_frames(_stream_url(ctx), frames, timeout=ctx.settings.endoscopy.timeout)
    filters = {"patient_id": patient_id} if patient_id else {}
    with upstream("PACS worklist"):
        worklist = ctx.hub.endoscopy_worklist(**filters)
    rows, cut = records(worklist)
    stream = sample.as_dict()
    return {
        "stream": {k: v for k, v in stream.items() if k != "frames"},
        "frames": stream["frames"],
        "procedures": rows,
        "truncated": cut,
    }


@router.post(
    "/endoscopy/send-analysis",
    dependencies=[WRITE],
    summary="Send an endoscopy analysis (findings with scores and boxes) as a result",
    description="Default targets: observation, diagnostic_report, oru; sr too when asked (the "
    "boxes' video instances must be in the PACS).",
)
def endoscopy_send_analysis(body: EndoscopyAnalysisIn, ctx: Ctx) -> Any:
    build_endoscopy_result(body)  # the body's own checks first
    study = _study(ctx, body.patient_id, body.study_instance_uid)
    sources = _sources(ctx, body.study_instance_uid, None) if {"sr", "seg"} & set(body.targets) else []
    result = build_endoscopy_result(body, accession_number=study.get("accession_number") or None)
    return _deliver(ctx, result, [str(t) for t in body.targets], sources)


# -- EHR ----------------------------------------------------------------------------------------------


@router.post("/ehr/connect", dependencies=[WRITE], summary="GET the EHR's metadata (CapabilityStatement)")
def ehr_connect(ctx: Ctx) -> Any:
    return _probe(ctx, "ehr-fhir")


def _token(ctx: ApiContext, value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
    system = getattr(ctx.hub, "mrn_system", None)
    return f"{system}|{escaped}" if system else escaped


def _patients(ctx: ApiContext, mrn: str) -> list[dict[str, Any]]:
    with upstream("EHR"):
        return list(
            ctx.hub.fhir.search("Patient", {"identifier": _token(ctx, mrn), "_count": "10"}, limit=10)
        )


@router.get(
    "/ehr/patient/{patient_id}",
    dependencies=[READ],
    summary="The EHR's Patient: by MRN (identifier search, default) or by its FHIR id",
)
def ehr_patient(patient_id: PatientId, ctx: Ctx, by: Literal["mrn", "id"] = "mrn") -> Any:
    if by == "id":
        with upstream("EHR"):
            return {"patients": [ctx.hub.fhir.read("Patient", patient_id)]}
    found = _patients(ctx, patient_id)
    if not found:
        raise ApiProblem(404, f"the EHR has no Patient with identifier {patient_id}")
    return {"patients": found}


def _patient_id(ctx: ApiContext, mrn: str | None, fhir_patient: str | None) -> str:
    """The FHIR id of the patient named by MRN or by id (exactly one of them)."""
    if (mrn is None) == (fhir_patient is None):
        raise ApiProblem(422, "name the patient by patient_id (MRN) or fhir_patient (FHIR id), one of them")
    if fhir_patient is not None:
        with upstream("EHR"):
            return str(ctx.hub.fhir.read("Patient", fhir_patient)["id"])
    assert mrn is not None
    found = _patients(ctx, mrn)
    if not found:
        raise ApiProblem(404, f"the EHR has no Patient with identifier {mrn}")
    if len(found) > 1:
        raise ApiProblem(422, f"{len(found)} Patients have identifier {mrn}; name one by fhir_patient")
    return str(found[0]["id"])


def _observation(patient: str, item: Any) -> dict[str, Any]:
    from kit.results.fhir import observation

    return observation(
        f"Patient/{patient}",
        item.code,
        item.value(),
        item.unit,
        system=item.system,
        display=item.display,
        effective=item.effective,
        study_instance_uid=item.study_instance_uid,
        status=item.status,
    )


@router.post(
    "/ehr/create-observation",
    dependencies=[WRITE],
    status_code=201,
    summary="Create an Observation in the EHR, read it back and compare",
)
def ehr_create_observation(body: ObservationIn, ctx: Ctx) -> Any:
    _observation("check", body)  # the body's own checks first
    patient = _patient_id(ctx, body.patient_id, body.fhir_patient)
    resource = _observation(patient, body)
    with upstream("EHR"):
        stored = ctx.hub.fhir.create(resource)
        version = str((stored.get("meta") or {}).get("versionId") or "")
        read = (
            ctx.hub.fhir.vread("Observation", stored["id"], version)
            if version
            else ctx.hub.fhir.read("Observation", stored["id"])
        )
    diffs = json_differences(resource, read)
    if diffs:
        raise ApiProblem(502, "the EHR stored a different Observation: " + "; ".join(diffs)[:1500])
    return Json(
        {
            "id": read["id"],
            "version": version or None,
            "reference": f"Observation/{read['id']}",
            "verified": True,
            "resource": read,
        },
        status_code=201,
    )


def _located(entry: dict[str, Any]) -> tuple[str, str, str | None]:
    location = str((entry.get("response") or {}).get("location") or "")
    bits = location.split("?")[0].strip("/").split("/")
    if "_history" in bits and bits.index("_history") >= 2:
        at = bits.index("_history")
        return bits[at - 2], bits[at - 1], bits[at + 1] if at + 1 < len(bits) else None
    if len(bits) >= 2:
        return bits[-2], bits[-1], None
    raise KitError(f"the transaction response names no location ({location!r})")


def _rewrite(value: Any, refs: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {
            k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, refs))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, refs) for v in value]
    return value


@router.post(
    "/ehr/create-diagnostic-report",
    dependencies=[WRITE],
    status_code=201,
    summary="Create a DiagnosticReport (and its new Observations) in one transaction; read back",
)
def ehr_create_diagnostic_report(body: DiagnosticReportIn, ctx: Ctx) -> Any:
    from kit.results.fhir import diagnostic_report, transaction_bundle

    for item in body.observations:  # the body's own checks first
        _observation("check", item)
    patient = _patient_id(ctx, body.patient_id, body.fhir_patient)
    existing = []
    for oid in dict.fromkeys(body.observation_ids):
        with upstream("EHR"):
            obs = ctx.hub.fhir.read("Observation", oid)
        if (obs.get("subject") or {}).get("reference") != f"Patient/{patient}":
            raise ApiProblem(422, f"Observation/{oid} is not about Patient/{patient}")
        existing.append(obs)
    new = [_observation(patient, item) for item in body.observations]
    report = diagnostic_report(
        f"Patient/{patient}",
        [*existing, *new],
        conclusion=body.conclusion,
        code=body.code,
        system=body.system,
        display=body.display,
        study_instance_uid=body.study_instance_uid,
        effective=body.effective,
        status=body.status,
    )
    bundle = transaction_bundle([*new, report])
    sent = bundle["entry"]
    with upstream("EHR"):
        answer = ctx.hub.fhir.transaction(bundle)
        entries = answer.get("entry") or []
        if len(entries) != len(sent):
            raise KitError(f"the transaction response has {len(entries)} entries for {len(sent)} sent")
        located = [_located(e) for e in entries]
        refs = {e["fullUrl"]: f"{t}/{i}" for e, (t, i, _) in zip(sent, located, strict=True)}
        reads = [ctx.hub.fhir.vread(t, i, v) if v else ctx.hub.fhir.read(t, i) for t, i, v in located]
    diffs = [
        f"{t}/{i}: {d}"
        for e, (t, i, _), read in zip(sent, located, reads, strict=True)
        for d in json_differences(_rewrite(e["resource"], refs), read)
    ]
    if diffs:
        raise ApiProblem(502, "the EHR stored something else: " + "; ".join(diffs)[:1500])
    items = [{"reference": f"{t}/{i}", "id": i, "version": v} for t, i, v in located]
    return Json(
        {"diagnostic_report": items[-1], "observations": items[:-1], "verified": True, "resource": reads[-1]},
        status_code=201,
    )
