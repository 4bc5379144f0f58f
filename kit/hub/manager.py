"""The Hub: one object over the hospital's PACS, EHR, HL7 engine and endoscopy suite (I/O).

:meth:`Hub.from_settings` builds one adapter per configured connector (see
:mod:`kit.hub.registry` for what each can do):

=============== ============================================ ==========================
connector       adapter                                      health probe
=============== ============================================ ==========================
pacs-dimse      :class:`kit.dicom.dimse.PacsClient`          C-ECHO
pacs-dicomweb   :class:`kit.dicom.web.DicomWebClient`        QIDO-RS studies, limit 1
ehr-fhir        :class:`kit.fhir.client.FhirClient`          GET metadata
hl7-mllp        :class:`kit.hl7.mllp.MLLPSender`             MLLP (TCP/TLS) connect
endoscopy       the PACS worklist, Modality ES               worklist C-FIND, Modality ES
=============== ============================================ ==========================

``pacs-dicomweb`` is used on the embedded stack (it serves DICOMweb), with a
kit.toml when it sets ``[dicomweb]``, or when ``dicomweb=True`` is passed.

:meth:`Hub.status` runs the probes in parallel, each with a bounded timeout
(``probe_timeout``, no retries), and returns one row per connector: a dead
peer is a ``failed`` row with the typed error's reason, never an exception and
never a hang. :meth:`Hub.patient_view` gathers one frame per source for a
patient; :meth:`Hub.report_status` says per study whether a report exists (an SR
in the PACS or a DiagnosticReport in the EHR); :meth:`Hub.send_results` hands a
result to :func:`kit.results.deliver.deliver`.

Written by hand: the orchestration over the kit's own clients.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from kit.config import Settings, load_settings
from kit.errors import ConfigError, InvalidInputError, KitError
from kit.hub.registry import REGISTRY

if TYPE_CHECKING:
    from kit.dicom.dimse import PacsClient
    from kit.dicom.web import DicomWebClient
    from kit.fhir.client import FhirClient
    from kit.hl7.mllp import MLLPSender

__all__ = ["JOIN_COLUMNS", "REPORT_COLUMNS", "SR_SOP_CLASSES", "STATUS_COLUMNS", "Hub"]

#: Identifier columns every frame of :meth:`Hub.patient_view` carries (null where unknown).
JOIN_COLUMNS: Final = ("patient_id", "study_instance_uid", "accession_number")

#: Columns of :meth:`Hub.status`.
STATUS_COLUMNS: Final[Mapping[str, pl.DataType]] = {
    "connector": pl.String(), "address": pl.String(), "probe": pl.String(), "status": pl.String(),
    "reason": pl.String(), "latency_ms": pl.Float64(),
}

#: Columns of :meth:`Hub.report_status`.
REPORT_COLUMNS: Final[Mapping[str, pl.DataType]] = {
    "study_instance_uid": pl.String(), "patient_id": pl.String(), "accession_number": pl.String(),
    "has_sr": pl.Boolean(), "has_diagnostic_report": pl.Boolean(), "has_report": pl.Boolean(),
    "sr_instance_uids": pl.List(pl.String()), "diagnostic_report_ids": pl.List(pl.String()),
    "error": pl.String(),
}

#: SOP Classes that are structured reports (PS3.4 B.5): Basic/Enhanced/Comprehensive/3D SR,
#: Key Object Selection excluded (it selects images, it reports nothing).
SR_SOP_CLASSES: Final = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.35", "1.2.840.10008.5.1.4.1.1.88.40",
    "1.2.840.10008.5.1.4.1.1.88.50", "1.2.840.10008.5.1.4.1.1.88.65", "1.2.840.10008.5.1.4.1.1.88.67",
    "1.2.840.10008.5.1.4.1.1.88.68", "1.2.840.10008.5.1.4.1.1.88.69", "1.2.840.10008.5.1.4.1.1.88.70",
    "1.2.840.10008.5.1.4.1.1.88.71", "1.2.840.10008.5.1.4.1.1.88.72", "1.2.840.10008.5.1.4.1.1.88.73",
    "1.2.840.10008.5.1.4.1.1.88.74", "1.2.840.10008.5.1.4.1.1.88.75", "1.2.840.10008.5.1.4.1.1.88.76",
})

#: ``Identifier.system`` of DICOM UIDs (values ``urn:oid:UID``), as kit.results.fhir writes them.
DICOM_UID_SYSTEM: Final = "urn:dicom:uid"
#: FHIR resource types in :meth:`Hub.patient_view`.
FHIR_TYPES: Final = ("Patient", "Observation", "ImagingStudy", "DiagnosticReport")
#: Values OR-ed in one token search.
_CHUNK: Final = 40


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no detail'}"


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _escape(value: str) -> str:
    """Escape FHIR search special characters in a token value."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _with_join_columns(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(None, dtype=pl.String).alias(c) for c in JOIN_COLUMNS if c not in frame.columns]
    return frame.with_columns(missing) if missing else frame


class Hub:
    """Adapters for PACS (DIMSE, DICOMweb), EHR (FHIR), HL7 (MLLP) and endoscopy, from Settings.

    Adapters are built on first use and kept; :meth:`disconnect_all` closes
    them (the next use builds them again).

    Parameters
    ----------
    settings : Settings, optional
        Where the peers are (default :func:`kit.load_settings`).
    dicomweb : bool, optional
        Use DICOMweb too. Default: :attr:`kit.config.Settings.uses_dicomweb`.
    hl7_store : path, optional
        The SQLite store of an MLLP listener (:class:`kit.hl7.store.MessageStore`)
        whose messages :meth:`patient_view` reads.
    probe_timeout : float
        Seconds each health probe of :meth:`status` may take.
    mrn_system : str, optional
        The EHR's MRN identifier system (default: any system, value only).
    accession_system : str, optional
        The EHR's accession number system (default: any system, value only).
    """

    def __init__(self, settings: Settings | None = None, *, dicomweb: bool | None = None,
                 hl7_store: str | Path | None = None, probe_timeout: float = 5.0,
                 mrn_system: str | None = None, accession_system: str | None = None) -> None:
        self.settings = settings if settings is not None else load_settings()
        if not isinstance(self.settings, Settings):
            raise InvalidInputError(f"settings must be kit.config.Settings, not {type(settings).__name__}")
        if not probe_timeout > 0:
            raise InvalidInputError("probe_timeout must be positive")
        self.use_dicomweb = self.settings.uses_dicomweb if dicomweb is None else bool(dicomweb)
        self.hl7_store = Path(hl7_store).expanduser() if hl7_store is not None else None
        self.probe_timeout = float(probe_timeout)
        self.mrn_system = mrn_system
        self.accession_system = accession_system
        self._pacs: PacsClient | None = None
        self._dicomweb: DicomWebClient | None = None
        self._fhir: FhirClient | None = None
        self._hl7: MLLPSender | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **options: Any) -> Hub:
        """A Hub for ``settings`` (default :func:`kit.load_settings`); options as for :class:`Hub`."""
        return cls(settings, **options)

    def __repr__(self) -> str:
        return f"Hub(connectors={list(self.connectors)})"

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect_all()

    # -- adapters ------------------------------------------------------------------------------

    @property
    def connectors(self) -> tuple[str, ...]:
        """Registry names of the configured connectors, in registry order."""
        return tuple(n for n in REGISTRY if n != "pacs-dicomweb" or self.use_dicomweb)

    @property
    def pacs(self) -> PacsClient:
        """The DIMSE client (``[pacs]``)."""
        if self._pacs is None:
            from kit.dicom.dimse import PacsClient

            self._pacs = PacsClient.from_settings(self.settings)
        return self._pacs

    @property
    def dicomweb(self) -> DicomWebClient | None:
        """The DICOMweb client (``[dicomweb]``), or None when DICOMweb is not configured."""
        if not self.use_dicomweb:
            return None
        if self._dicomweb is None:
            from kit.dicom.web import DicomWebClient

            self._dicomweb = DicomWebClient.from_settings(self.settings)
        return self._dicomweb

    @property
    def fhir(self) -> FhirClient:
        """The FHIR client (``[fhir]``)."""
        if self._fhir is None:
            from kit.fhir.client import FhirClient

            self._fhir = FhirClient.from_settings(self.settings)
        return self._fhir

    @property
    def hl7(self) -> MLLPSender:
        """The MLLP sender (``[hl7]``)."""
        if self._hl7 is None:
            from kit.hl7.mllp import MLLPSender

            h = self.settings.hl7
            self._hl7 = MLLPSender(h.host, h.port, timeout=h.timeout, ssl_context=_hl7_tls(self.settings))
        return self._hl7

    def endoscopy_worklist(self, **filters: Any) -> pl.DataFrame:
        """The PACS Modality Worklist for endoscopy (Modality ES); filters as for ``PacsClient.worklist``."""
        return self.pacs.worklist(**{**filters, "modality": "ES"})

    def connect_all(self) -> pl.DataFrame:
        """Build every adapter and open the kept connections (MLLP); one row per connector.

        Returns
        -------
        polars.DataFrame
            ``connector``, ``status`` (``ok``/``failed``), ``reason``: a peer
            that cannot be reached is a failed row, not an exception.
        """
        rows: list[dict[str, Any]] = []
        for name in self.connectors:
            try:
                if name == "pacs-dimse" or name == "endoscopy":
                    _ = self.pacs  # DIMSE opens one association per operation
                elif name == "pacs-dicomweb":
                    _ = self.dicomweb
                elif name == "ehr-fhir":
                    _ = self.fhir
                elif name == "hl7-mllp":
                    self.hl7.connect()
                rows.append({"connector": name, "status": "ok", "reason": None})
            except KitError as exc:
                rows.append({"connector": name, "status": "failed", "reason": _reason(exc)})
        return pl.DataFrame(rows, schema={"connector": pl.String, "status": pl.String, "reason": pl.String})

    def disconnect_all(self) -> None:
        """Close every adapter's connections (idempotent); the next use reconnects."""
        if self._hl7 is not None:
            self._hl7.close()
        if self._fhir is not None:
            self._fhir.close()
        self._pacs = self._dicomweb = self._fhir = self._hl7 = None

    # -- health --------------------------------------------------------------------------------

    def _probes(self) -> list[tuple[str, str, str, Callable[[], object]]]:
        """(connector, address, probe name, call) for each configured connector, bounded by probe_timeout."""
        t = self.probe_timeout
        s = self.settings
        out: list[tuple[str, str, str, Callable[[], object]]] = []
        _import_clients(self.connectors)

        def pacs_probe() -> PacsClient:
            from kit.dicom.dimse import PacsClient

            client = PacsClient.from_settings(s)  # inside the probe: a bad TLS setting is a failed row
            client.timeout = min(client.timeout, t)
            return client

        pacs_address = f"dicom://{s.pacs.called_aet}@{s.pacs.host}:{s.pacs.port}"
        for name in self.connectors:
            if name == "pacs-dimse":
                out.append((name, pacs_address, "C-ECHO", lambda: pacs_probe().echo()))
            elif name == "endoscopy":
                out.append((name, pacs_address, "worklist C-FIND Modality=ES",
                            lambda: pacs_probe().worklist(modality="ES")))
            elif name == "pacs-dicomweb":
                out.append((name, s.dicomweb.base, "QIDO-RS studies limit=1", self._qido_ping))
            elif name == "ehr-fhir":
                out.append((name, s.fhir.base, "GET metadata", self._fhir_ping))
            elif name == "hl7-mllp":
                out.append((name, f"mllp://{s.hl7.host}:{s.hl7.port}", "MLLP connect", self._mllp_ping))
        return out

    def _qido_ping(self) -> object:
        from kit.dicom.web import DicomWebClient

        web = self.settings.dicomweb
        client = DicomWebClient(web.base, username=web.username, password=web.password, token=web.token,
                                timeout=min(web.timeout, self.probe_timeout))
        client.ping()  # one study, not DicomWebClient.find's whole archive
        return None

    def _fhir_ping(self) -> object:
        from kit.fhir.client import FhirClient
        from kit.fhir.policy import NO_RETRY

        timeout = min(self.settings.fhir.timeout, self.probe_timeout)
        with FhirClient.from_settings(self.settings, timeout=timeout, retries=NO_RETRY) as client:
            return client.capabilities()

    def _mllp_ping(self) -> object:
        from kit.hl7.mllp import MLLPSender

        h = self.settings.hl7
        t = min(h.timeout, self.probe_timeout)
        with MLLPSender(h.host, h.port, timeout=t, connect_timeout=t,
                        ssl_context=_hl7_tls(self.settings)) as sender:
            sender.connect()  # TCP (and TLS) only: no message is sent
        return None

    def status(self, only: Iterable[str] | None = None) -> pl.DataFrame:
        """Probe every configured connector, in parallel, each within ``probe_timeout`` seconds.

        Parameters
        ----------
        only : iterable of str, optional
            Probe just these connectors (registry names; one not configured
            raises InvalidInputError). Default: all.

        Returns
        -------
        polars.DataFrame
            One row per connector, columns :data:`STATUS_COLUMNS`: ``status``
            ``ok`` or ``failed``, ``reason`` (the typed error's class and
            message) and ``latency_ms`` of the probe. Never raises for a peer.
        """
        probes = self._probes()
        if only is not None:
            wanted = set(only)
            unknown = sorted(wanted - set(self.connectors))
            if unknown:
                raise InvalidInputError(f"connector(s) {unknown} are not configured; "
                                        f"configured: {', '.join(self.connectors)}")
            probes = [p for p in probes if p[0] in wanted]

        def run(call: Callable[[], object]) -> tuple[str | None, float]:
            start = time.perf_counter()
            try:
                call()
                reason = None
            except Exception as exc:  # noqa: BLE001 - a health check reports every failure as a row
                reason = _reason(exc)
            return reason, (time.perf_counter() - start) * 1000.0

        pool = cf.ThreadPoolExecutor(max_workers=max(1, len(probes)), thread_name_prefix="kit-hub-probe")
        started = time.perf_counter()
        futures = [pool.submit(run, call) for *_, call in probes]
        # Each probe is bounded by its own timeouts; this bound catches a library that ignores them.
        cf.wait(futures, timeout=2 * self.probe_timeout + 1.0)
        pool.shutdown(wait=False, cancel_futures=True)
        rows = []
        for (name, address, probe, _), fut in zip(probes, futures, strict=True):
            if fut.done() and not fut.cancelled():
                reason, ms = fut.result()
            else:
                reason = f"PeerTimeoutError: no answer within {2 * self.probe_timeout + 1.0:g}s"
                ms = (time.perf_counter() - started) * 1000.0
            rows.append({"connector": name, "address": address, "probe": probe,
                         "status": "ok" if reason is None else "failed", "reason": reason, "latency_ms": ms})
        return pl.DataFrame(rows, schema=dict(STATUS_COLUMNS))

    # -- one patient across sources ------------------------------------------------------------

    def _token(self, system: str | None, value: str) -> str:
        return f"{system}|{_escape(value)}" if system else _escape(value)

    def _fhir_search(self, resource_type: str, param: str, values: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for part in _chunks(list(dict.fromkeys(values))):
            found.extend(self.fhir.search(resource_type, {param: ",".join(part)}))
        return found

    def patient_view(self, mrn: str) -> dict[str, pl.DataFrame]:
        """One frame per source for the patient with this MRN, joinable on identifiers.

        Parameters
        ----------
        mrn : str
            The patient id (DICOM PatientID, FHIR MRN identifier, HL7 PID-3).

        Returns
        -------
        dict of str to polars.DataFrame
            ``pacs`` (studies by PatientID), ``fhir.Patient``,
            ``fhir.Observation``, ``fhir.ImagingStudy``, ``fhir.DiagnosticReport``
            (by the Patient's id, resolved from the MRN identifier; reports also by
            the studies' accession numbers and StudyInstanceUIDs, for reports whose
            subject is a logical reference), and with an ``hl7_store`` one
            ``hl7.TABLE`` per :func:`kit.hl7.frames.to_frames` table with a
            ``patient_id``. Every frame has the columns :data:`JOIN_COLUMNS`
            (``patient_id`` filled with the MRN where a row belongs to it).

        Raises
        ------
        kit.errors.PeerError
            A source could not be read (a failure is never an empty frame).
        """
        from kit.fhir.frames import to_frame, with_patient_id

        if not isinstance(mrn, str) or not mrn.strip():
            raise InvalidInputError("mrn must be a non-empty string")
        view: dict[str, pl.DataFrame] = {}
        pacs = self.pacs.find("STUDY", patient_id=mrn)
        view["pacs"] = _with_join_columns(pacs)

        patients = list(self.fhir.search("Patient", {"identifier": self._token(self.mrn_system, mrn)}))
        patient_frame = to_frame(patients, "Patient")
        view["fhir.Patient"] = _with_join_columns(patient_frame)
        refs = [f"Patient/{p['id']}" for p in patients if p.get("id")]
        by_type: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in FHIR_TYPES[1:]}
        if refs:
            for rtype in by_type:
                for r in self._fhir_search(rtype, "patient", refs):
                    by_type[rtype][str(r.get("id"))] = r
        studies = [u for u in pacs["study_instance_uid"].drop_nulls().to_list() if u]
        accessions = [a for a in pacs["accession_number"].drop_nulls().to_list() if a]
        for study in by_type["ImagingStudy"].values():
            for ident in study.get("identifier") or []:
                value = ident.get("value") if isinstance(ident, dict) else None
                if isinstance(value, str) and ident.get("system") == DICOM_UID_SYSTEM:
                    studies.append(value.removeprefix("urn:oid:"))
        tokens = [self._token(DICOM_UID_SYSTEM, f"urn:oid:{u}") for u in studies]
        tokens += [self._token(self.accession_system, a) for a in accessions]
        for r in self._fhir_search("DiagnosticReport", "identifier", tokens) if tokens else []:
            by_type["DiagnosticReport"][str(r.get("id"))] = r

        pairs = zip(pacs["accession_number"].to_list(), pacs["study_instance_uid"].to_list(), strict=True)
        uid_of_accession = {a: u for a, u in pairs if a and u}
        for rtype, found in by_type.items():
            frame = _with_join_columns(to_frame(list(found.values()), rtype))
            if "patient_ref" in frame.columns:
                frame = with_patient_id(frame, patient_frame)
            frame = frame.with_columns(pl.coalesce(
                "study_instance_uid",
                pl.col("accession_number").replace_strict(uid_of_accession, default=None,
                                                          return_dtype=pl.String)).alias("study_instance_uid"))
            view[f"fhir.{rtype}"] = frame
        if self.hl7_store is not None:
            view.update(self._hl7_view(mrn))
        return view

    def _hl7_view(self, mrn: str) -> dict[str, pl.DataFrame]:
        from kit.hl7.store import MessageStore

        if not self.hl7_store or not self.hl7_store.is_file():
            raise ConfigError("hl7_store", f"{self.hl7_store} is not a file")
        with MessageStore(self.hl7_store) as store:
            tables = store.frames()
        return {f"hl7.{name}": _with_join_columns(frame.filter(pl.col("patient_id") == mrn))
                for name, frame in tables.items() if "patient_id" in frame.columns}

    # -- reports -------------------------------------------------------------------------------

    def _pacs_reports(self, uid: str) -> tuple[str | None, str | None, list[str]]:
        """(patient_id, accession_number, SR SOP Instance UIDs) of one study in the PACS."""
        study = self.pacs.find("STUDY", study_instance_uid=uid)
        patient = study["patient_id"][0] if study.height else None
        accession = study["accession_number"][0] if study.height else None
        series = self.pacs.find("SERIES", study_instance_uid=uid)
        srs: list[str] = []
        for row in series.iter_rows(named=True):
            if row["modality"] == "SR":
                images = self.pacs.find("IMAGE", study_instance_uid=uid,
                                        series_instance_uid=row["series_instance_uid"])
                srs += [r["sop_instance_uid"] for r in images.iter_rows(named=True)
                        if r["sop_class_uid"] in SR_SOP_CLASSES or not r["sop_class_uid"]]
        return patient, accession, srs

    def _fhir_reports(self, uid: str, accession: str | None, srs: Sequence[str]) -> list[str]:
        tokens = [self._token(DICOM_UID_SYSTEM, f"urn:oid:{u}") for u in (uid, *srs)]
        if accession:
            tokens.append(self._token(self.accession_system, accession))
        return sorted({str(r.get("id")) for r in self._fhir_search("DiagnosticReport", "identifier", tokens)})

    def report_status(self, study_uids: Iterable[str]) -> pl.DataFrame:
        """Per study: is there a report, as a DICOM SR in the PACS or a DiagnosticReport in the EHR?

        ``has_sr``: a series of Modality SR holding instances of an SR SOP Class
        (:data:`SR_SOP_CLASSES`). ``has_diagnostic_report``: a DiagnosticReport
        whose identifier is the study's UID, one of its SRs' UIDs
        (``urn:dicom:uid|urn:oid:UID``, as :mod:`kit.results.fhir` writes them)
        or its accession number. ``has_report``: either.

        Returns
        -------
        polars.DataFrame
            One row per study, columns :data:`REPORT_COLUMNS`. A source that
            cannot be asked leaves its column null (unknown, not False) with the
            reason in ``error``; ``has_report`` is True when either is True,
            False only when both are False.
        """
        uids = list(dict.fromkeys(study_uids))
        if any(not isinstance(u, str) or not u for u in uids):
            raise InvalidInputError("study_uids must be non-empty strings")
        rows = []
        for uid in uids:
            errors: list[str] = []
            patient = accession = None
            srs: list[str] = []
            has_sr: bool | None = None
            try:
                patient, accession, srs = self._pacs_reports(uid)
                has_sr = bool(srs)
            except KitError as exc:
                errors.append(f"pacs: {_reason(exc)}")
            reports: list[str] = []
            has_dr: bool | None = None
            try:
                reports = self._fhir_reports(uid, accession, srs)
                has_dr = bool(reports)
            except KitError as exc:
                errors.append(f"fhir: {_reason(exc)}")
            has_report = True if (has_sr or has_dr) else (None if None in (has_sr, has_dr) else False)
            rows.append({"study_instance_uid": uid, "patient_id": patient, "accession_number": accession,
                         "has_sr": has_sr, "has_diagnostic_report": has_dr, "has_report": has_report,
                         "sr_instance_uids": srs, "diagnostic_report_ids": reports,
                         "error": "; ".join(errors) or None})
        return pl.DataFrame(rows, schema=dict(REPORT_COLUMNS))

    # -- results -------------------------------------------------------------------------------

    def send_results(self, result: Any, targets: Iterable[str] | None = None,
                     sources: Sequence[Any] = ()) -> Any:
        """Send an analysis result to all (or the chosen) targets and verify each.

        Parameters
        ----------
        result : kit.results.AnalysisResult
        targets : iterable of str, optional
            A subset of ``kit.results.deliver.TARGETS`` (default all).
        sources : sequence of pydicom.Dataset
            The images the result is about (needed for the SR and SEG).

        Returns
        -------
        kit.results.deliver.DeliveryReport
            Per target: sent, verified or failed with the reason (``.frame``).
        """
        try:
            from kit.results.deliver import deliver
        except ModuleNotFoundError as exc:  # the delivery module lands separately
            raise KitError("kit.results.deliver is not available in this build") from exc
        return deliver(result, sources=sources, pacs=self.pacs, fhir=self.fhir, hl7=self.hl7,
                       targets=targets)


def _hl7_tls(settings: Settings) -> Any:
    """The client TLS context for ``[hl7]`` (None without TLS)."""
    h = settings.hl7
    if not h.tls:
        return None
    import ssl

    from kit.errors import TLSError

    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=h.tls_ca)
        if h.tls_cert:
            context.load_cert_chain(h.tls_cert, h.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot build the HL7 TLS context: {exc}") from exc
    return context



#: the client modules each connector's probe uses
_PROBE_MODULES: dict[str, tuple[str, ...]] = {
    "pacs-dimse": ("kit.dicom.dimse",), "endoscopy": ("kit.dicom.dimse",),
    "pacs-dicomweb": ("kit.dicom.web",), "ehr-fhir": ("kit.fhir.client", "kit.fhir.policy"),
    "hl7-mllp": ("kit.hl7.mllp",),
}


def _import_clients(connectors: Iterable[str]) -> None:
    """Import the probes' client modules on the calling thread, before the probe threads start.

    The clients import pynetdicom and pydicom lazily (``kit pacs echo`` stays fast); two probe
    threads importing them at once hit pynetdicom's circular imports half-way ("partially
    initialized module") and both probes failed.
    """
    import importlib

    for name in connectors:
        for module in _PROBE_MODULES.get(name, ()):
            importlib.import_module(module)
