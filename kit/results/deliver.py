"""Deliver one analysis result to every target, then read it back and say, per target, that it arrived.

:func:`deliver` sends an :class:`~kit.results.model.AnalysisResult` where
clinicians and other systems see it and verifies each copy:

* ``sr`` and ``seg``: the DICOM SR (TID 1500) and SEG are C-STOREd to the PACS,
  found again by C-FIND at IMAGE level on their SOP Instance UID, retrieved by
  C-GET and parsed back; the instance retrieved must hold every element sent,
  unchanged (:func:`kit.results.readback.stored_differences`; Pixel Data is
  compared decoded), and what it reads as must equal the result
  (:func:`kit.results.readback.differences`).
* ``observation`` and ``diagnostic_report``: the transaction Bundle of
  conditional creates (:func:`kit.results.fhir.encode_bundle`) is POSTed; each
  entry of the response must have a 2xx status and locate a resource of the
  type sent on the same server. Every resource the server created (or found)
  is read back by id AND version (``vread``), and as the record holds it now
  (``read``), and both are compared with what was sent, ignoring ``id``,
  ``meta``, ``text`` and the references the server rewrote (``urn:uuid:`` to
  ``Type/id``).
* ``oru``: the ORU^R01 (:func:`kit.results.oru.encode_oru`) goes over MLLP;
  the ACK must be AA or CA, acknowledge the message's MSH-10
  (:func:`kit.results.oru.control_id`), which is recorded, and carry no error
  of severity E or F. HL7 v2 offers no read-back: for the ORU, ``verified``
  means that the receiving application accepted this very message, not that
  it was read back (a peer that acknowledges AA and then drops the message
  cannot be told apart).

Targets are independent and run concurrently (one thread each): one that
fails (a DICOM failure status, a FHIR 422 OperationOutcome, an HL7 AE) is a
``failed`` row with the error's one-line reason and the others still run.
A target without a client is ``skipped``.
Re-delivering the same result duplicates nothing: the DICOM UIDs, the FHIR
identifiers (conditional create) and the MSH-10 all derive from ``result_id``.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from pydicom import Dataset, dcmread, dcmwrite

from kit.errors import InvalidInputError, KitError
from kit.results.fhir import encode_bundle
from kit.results.model import AnalysisResult
from kit.results.oru import control_id, encode_oru

if TYPE_CHECKING:
    from kit.dicom.dimse import PacsClient
    from kit.fhir.client import FhirClient
    from kit.hl7.sender import MLLPSender

__all__ = ["STATUSES", "TARGETS", "Delivery", "DeliveryReport", "deliver"]

#: Every target, in delivery order.
TARGETS: Final = ("sr", "seg", "observation", "diagnostic_report", "oru")
#: Every status a delivery row can have.
STATUSES: Final = ("verified", "sent", "failed", "skipped")

_SCHEMA: Final = {"result_id": pl.String, "target": pl.String, "status": pl.String, "reason": pl.String,
                  "identifier": pl.String, "seconds": pl.Float64}


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What happened to one target.

    Parameters
    ----------
    target : str
        One of :data:`TARGETS`.
    status : str
        ``verified`` (sent and read back equal; for the ORU, which HL7 v2 cannot
        read back, accepted by the receiving application: see :func:`deliver`),
        ``sent`` (accepted, not verifiable), ``failed`` or ``skipped`` (no
        client, or nothing to send).
    reason : str, optional
        Why it failed or was skipped (one line); for ``failed``, the typed
        error's message or the differences read back.
    identifier : str, optional
        The SOP Instance UID (``sr``, ``seg``), ``Type/<id>/_history/<v>``
        (FHIR, space-separated when several) or the MSH-10 (``oru``); on a
        failed row too, where it was known before sending (not for FHIR
        resources the server never created, nor an object that did not encode).
    seconds : float
        Time spent on this target (encoding, sending, verifying).
    """

    target: str
    status: str
    reason: str | None = None
    identifier: str | None = None
    seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """The deliveries of one result, one per target asked for, in :data:`TARGETS` order."""

    result_id: str
    deliveries: tuple[Delivery, ...]

    @property
    def frame(self) -> pl.DataFrame:
        """One row per target: result_id, target, status, reason, identifier, seconds."""
        rows = [{"result_id": self.result_id, **dataclasses.asdict(d)} for d in self.deliveries]
        return pl.DataFrame(rows, schema=_SCHEMA)

    @property
    def ok(self) -> bool:
        """True when every target asked for is verified."""
        return bool(self.deliveries) and all(d.status == "verified" for d in self.deliveries)

    def __getitem__(self, target: str) -> Delivery:
        for d in self.deliveries:
            if d.target == target:
                return d
        raise KeyError(target)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:500]


def _timed(target: str, fn: Callable[[], Delivery], identifier: str | None = None) -> Delivery:
    """Run one target's delivery; any error is that target's failed row (naming ``identifier``, what
    was being sent: the SOP Instance UID, the MSH-10), never the others' problem."""
    t = time.perf_counter()
    try:
        out = fn()
    except KitError as exc:
        out = Delivery(target, "failed", _reason(exc), identifier)
    except Exception as exc:  # noqa: BLE001 - one target's bug must not stop the other targets
        out = Delivery(target, "failed", "unexpected " + _reason(exc), identifier)
    return dataclasses.replace(out, seconds=round(time.perf_counter() - t, 4))


# -- DICOM: the adapter to kit.results.sr / seg / readback ----------------------------------------
class _Dicom:
    """The SR/SEG encoders and readers, imported when first needed (they pull in highdicom)."""

    @staticmethod
    def encode_seg(result: AnalysisResult, sources: Sequence[Dataset]) -> Dataset | None:
        from kit.results.seg import encode_seg

        return encode_seg(result, sources)

    @staticmethod
    def encode_sr(result: AnalysisResult, sources: Sequence[Dataset], seg: Dataset | None) -> Dataset:
        from kit.results.sr import encode_sr

        return encode_sr(result, sources, seg)

    @staticmethod
    def differences_sr(result: AnalysisResult, sr: Dataset, seg: Dataset | None) -> list[str]:
        from kit.results.readback import differences, read_sr

        return differences(result, read_sr(sr, seg))

    @staticmethod
    def stored_differences(sent: Dataset, stored: Dataset) -> list[str]:
        from kit.results.readback import stored_differences

        return stored_differences(sent, stored)

    @staticmethod
    def differences_seg(result: AnalysisResult, seg: Dataset) -> list[str]:
        from kit.results.readback import differences, read_seg

        read = dataclasses.replace(result, regions=read_seg(seg))
        return differences(result, read)


def _retrieve(pacs: PacsClient, ds: Dataset) -> Dataset:
    """C-FIND the instance at IMAGE level, C-GET it into a temporary folder, read it."""
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    found = pacs.find("IMAGE", study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop)
    if "sop_instance_uid" not in found.columns or sop not in found["sop_instance_uid"].to_list():
        raise KitError(f"C-FIND at IMAGE level does not find {sop} after it was stored")
    with tempfile.TemporaryDirectory(prefix="kit-deliver-") as tmp:
        pacs.get(study_uid=study, series_uid=series, sop_uid=sop, dest=tmp)
        files = sorted(Path(tmp).glob("*.dcm"))
        if len(files) != 1:
            raise KitError(f"C-GET of {sop} gave {len(files)} files, not 1")
        return dcmread(files[0])


def _store_and_verify(target: str, pacs: PacsClient, ds: Dataset,
                      compare: Callable[[Dataset], list[str]]) -> Delivery:
    uid = str(ds.SOPInstanceUID)
    pacs.store([ds])
    read = _retrieve(pacs, ds)
    if str(read.SOPInstanceUID) != uid:
        return Delivery(target, "failed", f"retrieved {read.SOPInstanceUID}, not {uid}", uid)
    diffs = _Dicom.stored_differences(ds, read) + compare(read)
    if diffs:
        return Delivery(target, "failed", "read back differs: " + "; ".join(diffs)[:480], uid)
    return Delivery(target, "verified", None, uid)


def _plain(ds: Dataset) -> Dataset:
    """``ds`` written and read back as a plain pydicom Dataset.

    highdicom's Segmentation keeps an SQLite index bound to the thread that made
    it; its plain copy can be read in any thread.
    """
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def _dicom_job(target: str, result: AnalysisResult, pacs: PacsClient, ds: Dataset,
               seg: Dataset | None) -> Callable[[], Delivery]:
    def compare(read: Dataset) -> list[str]:
        if target == "sr":
            return _Dicom.differences_sr(result, read, seg)
        return _Dicom.differences_seg(result, read)

    return lambda: _store_and_verify(target, pacs, ds, compare)


# -- FHIR -----------------------------------------------------------------------------------------
_IGNORED: Final = ("id", "meta", "text")


def _rewrite(value: Any, refs: Mapping[str, str]) -> Any:
    """``value`` with ``reference`` strings that are fullUrls of the Bundle replaced by the server's."""
    if isinstance(value, dict):
        return {k: (refs.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, refs))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, refs) for v in value]
    return value


def _strip(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in _IGNORED}


def _diff(sent: Any, read: Any, path: str = "") -> list[str]:
    """Where two JSON values differ (numbers compared as numbers), as ``path: sent ..., read ...``."""
    if isinstance(sent, dict) and isinstance(read, dict):
        out: list[str] = []
        for key in sorted(set(sent) | set(read)):
            out += _diff(sent.get(key), read.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(sent, list) and isinstance(read, list) and len(sent) == len(read):
        pairs = enumerate(zip(sent, read, strict=True))
        return [d for i, (a, b) in pairs for d in _diff(a, b, f"{path}[{i}]")]
    numbers = (int, float)
    if isinstance(sent, numbers) and isinstance(read, numbers) and not isinstance(sent, bool) \
            and not isinstance(read, bool) and float(sent) == float(read):
        return []
    return [] if sent == read else [f"{path}: sent {sent!r}, read {read!r}"[:200]]


def _location(entry: Mapping[str, Any], sent_type: str, base: str) -> tuple[str, str, str]:
    """(type, id, version) of a transaction-response entry's ``response.location``: a 2xx status, the
    type sent, on the client's own server (a location elsewhere is not where kit reads back)."""
    response = entry.get("response") if isinstance(entry, Mapping) else None
    response = response if isinstance(response, Mapping) else {}
    status = str(response.get("status") or "")
    if not status[:1] == "2":
        from kit.fhir.resources import outcome_message

        raise KitError(f"the server answered {status or 'no status'!r} for the {sent_type}"
                       + (f": {outcome_message(response.get('outcome'))}" if response.get("outcome") else ""))
    location = str(response.get("location") or "")
    if "://" in location:
        from kit.fhir.policy import origin

        if origin(location) is None or origin(location) != origin(base):
            raise KitError(f"the server located the {sent_type} on another server: {location[:200]!r}")
    bits = location.split("?")[0].rstrip("/").split("/")
    found: tuple[str, str, str] | None = None
    if "_history" in bits:
        at = len(bits) - 1 - bits[::-1].index("_history")
        if at >= 2 and at + 1 < len(bits):
            found = bits[at - 2], bits[at - 1], bits[at + 1]
    elif len(bits) >= 2 and response.get("etag"):
        found = bits[-2], bits[-1], str(response["etag"]).removeprefix("W/").strip('"')
    if found is None:
        raise KitError(f"the transaction response names no versioned location ({location[:200]!r}, "
                       f"status {status!r})")
    if found[0] != sent_type:
        raise KitError(f"the server located the {sent_type} as a {found[0][:64]}")
    return found


def _fhir(result: AnalysisResult, fhir: FhirClient, sr_uid: str | None, seg_uid: str | None,
          wanted: set[str]) -> list[Delivery]:
    t = time.perf_counter()
    bundle = encode_bundle(result, sr_instance_uid=sr_uid, seg_instance_uid=seg_uid)
    sent_entries = bundle["entry"]
    try:
        response = fhir.transaction(bundle)
        entries = response.get("entry") or []
        if len(entries) != len(sent_entries):
            raise KitError(f"the transaction response has {len(entries)} entries for "
                           f"{len(sent_entries)} sent")
        located = [_location(e, sent["resource"]["resourceType"], fhir.base)
                   for e, sent in zip(entries, sent_entries, strict=True)]
    except KitError as exc:
        took = round(time.perf_counter() - t, 4)
        return [Delivery(target, "failed", _reason(exc), None, took)
                for target in ("observation", "diagnostic_report") if target in wanted]
    refs = {e["fullUrl"]: f"{rtype}/{rid}" for e, (rtype, rid, _) in zip(sent_entries, located, strict=True)}
    verdicts: dict[str, list[tuple[str, list[str]]]] = {"Observation": [], "DiagnosticReport": []}
    for sent, (rtype, rid, version) in zip(sent_entries, located, strict=True):
        name = f"{rtype}/{rid}/_history/{version}"
        try:
            expected = _strip(_rewrite(sent["resource"], refs))
            diffs = _diff(expected, _strip(fhir.vread(rtype, rid, version)))
            # the version named may no longer be what the record holds (a later version, entered in
            # error, say): what a reader of the record sees now must be what was sent as well
            diffs += [f"now: {d}" for d in _diff(expected, _strip(fhir.read(rtype, rid)))]
        except KitError as exc:
            diffs = [_reason(exc)]
        verdicts.setdefault(rtype, []).append((name, diffs))
    took = round(time.perf_counter() - t, 4)
    out = []
    for target, rtype in (("observation", "Observation"), ("diagnostic_report", "DiagnosticReport")):
        if target not in wanted:
            continue
        items = verdicts.get(rtype) or []
        if not items:
            out.append(Delivery(target, "skipped", "the result has no measurements or labels", None, took))
            continue
        ident = " ".join(name for name, _ in items)
        bad = [f"{name}: {d}" for name, diffs in items for d in diffs]
        out.append(Delivery(target, "failed" if bad else "verified",
                            ("read back differs: " + "; ".join(bad))[:500] if bad else None, ident, took))
    return out


# -- HL7 ------------------------------------------------------------------------------------------
def _oru(result: AnalysisResult, hl7: MLLPSender) -> Delivery:
    msh10 = control_id(result)
    ack = hl7.send(encode_oru(result))
    code = str(getattr(ack.code, "value", ack.code))
    if code not in ("AA", "CA"):
        return Delivery("oru", "failed", f"ACK {code}: {ack.text or ack.error_text}", msh10)
    if ack.control_id != msh10:
        return Delivery("oru", "failed", f"the ACK acknowledges {ack.control_id!r}, not {msh10!r}", msh10)
    if ack.error_severity in ("E", "F"):  # accepted, yet an error of severity E or F: not a clean accept
        return Delivery("oru", "failed", f"ACK {code} with an error of severity {ack.error_severity}: "
                        f"{ack.error_text or ack.text or 'no reason given'}"[:500], msh10)
    return Delivery("oru", "verified", None, msh10)


# -- the entry point ------------------------------------------------------------------------------
def deliver(result: AnalysisResult, *, sources: Sequence[Dataset] = (), pacs: PacsClient | None = None,
            fhir: FhirClient | None = None, hl7: MLLPSender | None = None,
            targets: Iterable[str] | None = None) -> DeliveryReport:
    """Send ``result`` to every target asked for, read each copy back, report per target.

    Parameters
    ----------
    result : AnalysisResult
        The result.
    sources : sequence of pydicom.Dataset
        The images the result is about (headers are enough; the SR and SEG
        reference them). Needed for ``sr`` and ``seg``.
    pacs : PacsClient, optional
        Where the SR and SEG go (C-STORE, C-FIND, C-GET).
    fhir : FhirClient, optional
        Where the Observations and the DiagnosticReport go (transaction, vread).
    hl7 : MLLPSender, optional
        Where the ORU^R01 goes.
    targets : iterable of str, optional
        A subset of :data:`TARGETS` (default all).

    Returns
    -------
    DeliveryReport
        One :class:`Delivery` per target asked for, in :data:`TARGETS` order.
        A target's failure never raises: it is a ``failed`` row with the reason.

    Raises
    ------
    kit.errors.InvalidInputError
        ``result`` is not an AnalysisResult or a target is unknown.
    """
    if not isinstance(result, AnalysisResult):
        raise InvalidInputError(f"deliver needs an AnalysisResult, not {type(result).__name__}")
    wanted = set(TARGETS if targets is None else targets)
    unknown = sorted(wanted - set(TARGETS))
    if unknown:
        raise InvalidInputError(f"unknown target(s) {unknown}; choose from {list(TARGETS)}", source="targets")
    sources = list(sources)
    rows: dict[str, Delivery] = {}
    # The targets are independent: each runs in its own thread (their time is mostly waiting on a peer).
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kit-deliver")
    jobs: dict[str, Future[Delivery]] = {}
    fhir_job: Future[list[Delivery]] | None = None
    if "oru" in wanted:
        if hl7 is None:
            rows["oru"] = Delivery("oru", "skipped", "no MLLP sender", control_id(result))
        else:
            jobs["oru"] = pool.submit(_timed, "oru", lambda: _oru(result, hl7), control_id(result))

    # Encode SEG, then SR (which references the SEG): pure, and needed for the FHIR report's identifiers.
    seg: Dataset | None = None
    sr: Dataset | None = None
    errors: dict[str, Delivery] = {}
    spent = {"seg": 0.0, "sr": 0.0, "oru": 0.0}  # encoding time, added to the target's row
    if wanted & {"sr", "seg", "diagnostic_report"}:
        t = time.perf_counter()
        try:
            seg = _Dicom.encode_seg(result, sources)
        except Exception as exc:  # noqa: BLE001 - recorded as the target's failure
            errors["seg"] = Delivery("seg", "failed", "cannot encode the SEG: " + _reason(exc))
        spent["seg"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            sr = _Dicom.encode_sr(result, sources, seg)
        except Exception as exc:  # noqa: BLE001 - recorded as the target's failure
            errors["sr"] = Delivery("sr", "failed", "cannot encode the SR: " + _reason(exc))
        spent["sr"] = time.perf_counter() - t

    for target, ds in (("sr", sr), ("seg", seg)):
        if target not in wanted:
            continue
        if target in errors:
            row = errors[target]
        elif ds is None:
            row = Delivery(target, "skipped", "the result has no regions")
        elif pacs is None:
            row = Delivery(target, "skipped", "no PACS client", str(ds.SOPInstanceUID))
        else:
            # plain copies: the threads must not touch highdicom's thread-bound objects
            plain_seg = _plain(seg) if seg is not None and target == "sr" else None
            work = _dicom_job(target, result, pacs, _plain(ds), plain_seg)
            jobs[target] = pool.submit(_timed, target, work, str(ds.SOPInstanceUID))
            continue
        rows[target] = dataclasses.replace(row, seconds=round(row.seconds + spent[target], 4))

    fhir_targets = wanted & {"observation", "diagnostic_report"}
    if fhir_targets:
        if fhir is None:
            for target in fhir_targets:
                rows[target] = Delivery(target, "skipped", "no FHIR client")
        else:
            sr_uid = str(sr.SOPInstanceUID) if sr is not None else None
            seg_uid = str(seg.SOPInstanceUID) if seg is not None else None
            fhir_job = pool.submit(_fhir, result, fhir, sr_uid, seg_uid, fhir_targets)
    try:
        for target, job in jobs.items():
            row = job.result()  # _timed never raises
            rows[target] = dataclasses.replace(row, seconds=round(row.seconds + spent.get(target, 0.0), 4))
        if fhir_job is not None:
            try:
                for d in fhir_job.result():
                    rows[d.target] = d
            except Exception as exc:  # noqa: BLE001 - e.g. an encoder error: both FHIR rows fail
                for target in fhir_targets:
                    rows[target] = Delivery(target, "failed", _reason(exc))
    finally:
        pool.shutdown(wait=True)
    return DeliveryReport(result.result_id, tuple(rows[t] for t in TARGETS if t in rows))
