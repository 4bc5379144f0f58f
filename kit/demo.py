"""The main job, end to end: ``kit demo`` (on the configured systems, else the embedded stack).

Each step uses the same public API a notebook would; the demo only strings
them together and reports what happened as a DataFrame: one row per step
(ingest, index, de-identify, EHR join, HL7 replay, analyse), then one row per
delivery target of the analysis result (``sr``, ``seg``, ``observation``,
``diagnostic_report``, ``oru``: sent to the same stack and read back).
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from kit.config import Settings, describe_source
from kit.errors import KitError

if TYPE_CHECKING:
    from kit.stack import Stack

__all__ = ["DEMO_KEY", "QUERY_LIMIT", "SCHEMA", "check_status", "configured_addresses", "run_demo",
           "uses_video"]

#: De-identification key used by the demo only. Real projects keep their own key secret.
DEMO_KEY = "kit-demo-key-not-secret"

#: Columns of :func:`run_demo`'s frame: a step row has ``target`` null; a delivery row has
#: ``step`` "deliver <target>", ``result`` its status, and ``target``, ``status``, ``reason``, ``identifier``.
SCHEMA = {"step": pl.String, "result": pl.String, "seconds": pl.Float64, "target": pl.String,
          "status": pl.String, "reason": pl.String, "identifier": pl.String}


#: Most studies, patients and imaging studies the demo lists from a configured (real) system.
QUERY_LIMIT = 500


def run_demo(work_dir: Path | None = None, *, settings: Settings | None = None,
             echo: Callable[[str], None] = print) -> pl.DataFrame:
    """Run ingest, index, de-identify, EHR join, HL7 replay, analyse and deliver.

    Parameters
    ----------
    work_dir : Path, optional
        Where retrieved and de-identified files go (default: a temporary folder,
        removed afterwards).
    settings : Settings, optional
        The systems to run against (a kit.toml's PACS, FHIR server and MLLP
        peer). Without them the demo starts the embedded stack on ephemeral
        ports. The first step names the systems used either way.
    echo : callable
        Receives one progress line per step.

    Returns
    -------
    polars.DataFrame
        :data:`SCHEMA`: one row per step, then one per delivery target
        (:data:`kit.results.deliver.TARGETS`, ``target`` not null).
    """
    from kit.stack import Stack

    rows: list[dict[str, object]] = []

    def step(name: str, started: float, result: str) -> None:
        rows.append({"step": name, "result": result, "seconds": round(time.perf_counter() - started, 3)})
        echo(f"[{len(rows)}] {name}: {result}")

    with tempfile.TemporaryDirectory(prefix="kit-demo-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        echo(f"work folder: {work}" + ("" if work_dir else " (temporary; --work-dir DIR keeps it)"))
        work.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        if settings is not None:
            step(describe_source(settings), t, ", ".join(
                f"{k} {v}" for k, v in configured_addresses(settings).items()))
            _pacs_steps(settings, work, step)
            _fhir_steps(settings, work, step)
            _hl7_steps(settings, step, None)
            rows += _result_steps(settings, work, step, echo)
            return pl.DataFrame(rows, schema=SCHEMA)
        with Stack.ephemeral() as stack:
            settings = stack.client_settings()
            step("start embedded stack", t, ", ".join(f"{k} {v}" for k, v in stack.addresses().items()))
            _pacs_steps(settings, work, step)
            _fhir_steps(settings, work, step)
            _hl7_steps(settings, step, stack)
            rows += _result_steps(settings, work, step, echo)
    return pl.DataFrame(rows, schema=SCHEMA)


def configured_addresses(settings: Settings) -> dict[str, str]:
    """The systems ``settings`` point at, as ``kit serve`` prints them (``pacs dicom://AET@host:port``)."""
    p, h = settings.pacs, settings.hl7
    out = {"pacs": f"dicom://{p.called_aet}@{p.host}:{p.port}", "fhir": settings.fhir.base,
           "mllp": f"mllp://{h.host}:{h.port}"}
    if settings.uses_dicomweb:
        out["dicomweb"] = settings.dicomweb.base
    if uses_video(settings):
        from kit.endoscopy.source import display_url

        out["video"] = display_url(settings.endoscopy.stream_url)
    return out


def _pacs_steps(settings: Settings, work: Path, step: Callable[[str, float, str], None]) -> None:
    from kit.dicom.deid import Deidentifier
    from kit.dicom.dimse import PacsClient
    from kit.dicom.index import index_dicom

    client = PacsClient.from_settings(settings)
    t = time.perf_counter()
    rtt = client.echo()
    step("C-ECHO", t, f"ok in {rtt * 1000:.1f} ms")

    t = time.perf_counter()
    studies = client.find("STUDY", limit=QUERY_LIMIT)
    step("C-FIND studies", t, f"{studies.height} studies of {studies['patient_id'].n_unique()} patients")
    (work / "studies.parquet").parent.mkdir(parents=True, exist_ok=True)
    studies.write_parquet(work / "studies.parquet")

    ct = studies.filter(pl.col("modalities_in_study").list.contains("CT"))
    if ct.is_empty():
        pacs = configured_addresses(settings)["pacs"]
        raise KitError(f"the PACS at {pacs} has no CT study among the {studies.height} it listed: "
                       "load the sample cohort (kit pacs store data/samples/dicom)")
    study_uid = str(ct.sort("study_date")["study_instance_uid"][0])
    t = time.perf_counter()
    got = client.get(study_uid=study_uid, dest=work / "retrieved")
    step("C-GET one CT study", t, f"{got.height} instances")

    t = time.perf_counter()
    idx = index_dicom(work / "retrieved")
    frame = idx.frame
    step("index headers", t, f"{frame.height} instances, {frame['series_instance_uid'].n_unique()} series, "
                            f"{idx.skipped.height} skipped")

    t = time.perf_counter()
    deid = Deidentifier(DEMO_KEY)
    result = deid.files(frame["path"].to_list(), work / "deidentified")
    out = result.frame
    pseudonyms = out["patient_id"].unique().to_list() if "patient_id" in out.columns else []
    step("de-identify (PS3.15 Basic Profile)", t,
         f"{out.height} files, patient -> {', '.join(map(str, pseudonyms))}")


def _fhir_steps(settings: Settings, work: Path, step: Callable[[str, float, str], None]) -> None:
    from kit.fhir.client import FhirClient

    client = FhirClient.from_settings(settings)
    t = time.perf_counter()
    patients = client.search_frame("Patient", limit=QUERY_LIMIT)
    studies = client.search_frame("ImagingStudy", limit=QUERY_LIMIT)
    step("FHIR search", t, f"{patients.height} patients, {studies.height} imaging studies")

    t = time.perf_counter()
    pacs = pl.read_parquet(work / "studies.parquet")
    joined = pacs.join(studies.select("study_instance_uid", "id"), on="study_instance_uid", how="inner")
    step("join PACS x FHIR on study_instance_uid", t,
         f"{joined.height} of {pacs.height} PACS studies have an ImagingStudy in the EHR")


def _hl7_steps(settings: Settings, step: Callable[[str, float, str], None], stack: Stack | None) -> None:
    from kit import examples
    from kit.hl7.message import split_messages
    from kit.hl7.mllp import MLLPSender

    messages = list(split_messages(examples.hl7_feed().read_text()))
    t = time.perf_counter()
    with MLLPSender(settings.hl7.host, settings.hl7.port, timeout=settings.hl7.timeout) as sender:
        acks = sender.send_many(messages)
    accepted = acks.filter(pl.col("ack_code") == "AA").height
    step("HL7 feed over MLLP", t, f"{accepted} of {len(messages)} messages acknowledged AA")

    t = time.perf_counter()
    if stack is None:  # another system's listener: read the feed we sent instead of its store
        from kit.hl7 import read_file

        frames = read_file(examples.hl7_feed())
        name = "HL7 feed sent -> frames"
    else:
        store = getattr(stack.services["mllp"], "store", None)
        if store is None:
            raise KitError("the MLLP listener has no message store")
        frames = store.frames()
        name = "HL7 store -> frames"
    patients = frames["patients"]["patient_id"].n_unique()
    step(name, t, f"{patients} patients, " + ", ".join(
        f"{frames[name].height} {name}" for name in ("orders", "results", "appointments")))


def _result_steps(settings: Settings, work: Path, step: Callable[[str, float, str], None],
                  echo: Callable[[str], None]) -> list[dict[str, object]]:
    """Analyse the retrieved CT, deliver the result to the stack's PACS, FHIR server and MLLP listener."""
    from pydicom import dcmread

    from kit.dicom.dimse import PacsClient
    from kit.fhir.client import FhirClient
    from kit.hl7.mllp import MLLPSender
    from kit.results.analysis import analyse_ct
    from kit.results.deliver import deliver

    t = time.perf_counter()
    images = [dcmread(p) for p in sorted((work / "retrieved").rglob("*.dcm"))]
    ct = [ds for ds in images if getattr(ds, "Modality", "") == "CT"]
    series = sorted({str(ds.SeriesInstanceUID) for ds in ct})
    if not series:
        raise KitError("the retrieved study has no CT series to analyse")
    sources = [ds for ds in ct if str(ds.SeriesInstanceUID) == series[0]]
    result = analyse_ct(sources)
    step("analyse CT (kit.results.analysis)", t, result.conclusion or "")

    with FhirClient.from_settings(settings) as fhir, \
            MLLPSender(settings.hl7.host, settings.hl7.port, timeout=settings.hl7.timeout) as hl7:
        report = deliver(result, sources=sources, pacs=PacsClient.from_settings(settings), fhir=fhir, hl7=hl7)
    out: list[dict[str, object]] = []
    for d in report.deliveries:
        echo(f"    {d.target:<18} {d.status:<9} {d.seconds:7.3f} s  {d.identifier or ''}"
             + (f"  ({d.reason})" if d.reason else ""))
        out.append({"step": f"deliver {d.target}", "result": d.status, "seconds": d.seconds,
                    "target": d.target, "status": d.status, "reason": d.reason, "identifier": d.identifier})
    return out


def uses_video(settings: Settings) -> bool:
    """Whether the endoscopy video stream is one of the systems to probe.

    When ``[endoscopy]`` is set (a kit.toml or ``KIT_ENDOSCOPY_*``), when its
    ``stream_url`` is not the default address (e.g. a running stack's, or one
    derived from ``[stack] video_port``), and when nothing at all is configured
    (the embedded stack on its default ports serves one). Settings that name
    other systems only do not make the default address a system to probe.
    """
    from kit.config import EndoscopySettings

    return ("endoscopy" in settings.given or not settings.given
            or settings.endoscopy.stream_url != EndoscopySettings().stream_url)


def check_status(settings: Settings) -> pl.DataFrame:
    """Probe the configured PACS (C-ECHO), DICOMweb (QIDO-RS), FHIR server (metadata), MLLP peer
    and endoscopy video stream.

    DICOMweb is probed when it is one of the systems
    (:attr:`kit.config.Settings.uses_dicomweb`: always on the embedded stack, with
    a kit.toml when it sets ``[dicomweb]``). The MLLP peer is probed with a TCP connect.
    The video stream (:func:`uses_video`) is opened and two frames are read within
    ``[endoscopy] timeout`` (a connect proves nothing for video, and a UDP stream
    has no connection to make).

    Returns
    -------
    polars.DataFrame
        Columns ``service``, ``address``, ``ok`` (Boolean), ``detail``, ``seconds``.
    """
    rows: list[dict[str, object]] = []

    def probe(service: str, address: str, fn: Callable[[], str]) -> None:
        t = time.perf_counter()
        try:
            detail, ok = fn(), True
        except (KitError, OSError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        rows.append({"service": service, "address": address, "ok": ok, "detail": detail,
                     "seconds": round(time.perf_counter() - t, 3)})

    def pacs() -> str:
        from kit.dicom.dimse import PacsClient

        return f"C-ECHO {PacsClient.from_settings(settings).echo() * 1000:.1f} ms"

    def fhir() -> str:
        from kit.fhir.client import FhirClient, RetryPolicy

        with FhirClient.from_settings(settings, retries=RetryPolicy(max_attempts=1)) as client:
            cap = client.capabilities()
        return f"FHIR {cap.get('fhirVersion', '?')} {cap.get('software', {}).get('name', '')}".strip()

    def dicomweb() -> str:
        from kit.dicom.web import DicomWebClient

        t = time.perf_counter()
        DicomWebClient.from_settings(settings).ping()
        return f"QIDO-RS {(time.perf_counter() - t) * 1000:.1f} ms"

    def mllp() -> str:
        with socket.create_connection((settings.hl7.host, settings.hl7.port), timeout=5):
            return "accepts connections"

    def video() -> str:
        from kit.endoscopy.probe import read_frames

        sample = read_frames(settings.endoscopy.stream_url, 2, timeout=settings.endoscopy.timeout)
        height, width = sample.frames[0]["shape"][:2]
        return (f"streams ({sample.nominal_fps:g} fps declared, {width}x{height}, first frame in "
                f"{sample.first_frame_ms:.0f} ms)")

    p = settings.pacs
    probe("pacs", f"dicom://{p.called_aet}@{p.host}:{p.port}", pacs)
    if settings.uses_dicomweb:
        probe("dicomweb", settings.dicomweb.base, dicomweb)
    probe("fhir", settings.fhir.base, fhir)
    probe("mllp", f"mllp://{settings.hl7.host}:{settings.hl7.port}", mllp)
    if uses_video(settings):
        from kit.endoscopy.source import display_url

        probe("video", display_url(settings.endoscopy.stream_url), video)
    return pl.DataFrame(rows, schema={"service": pl.String, "address": pl.String, "ok": pl.Boolean,
                                      "detail": pl.String, "seconds": pl.Float64})
