"""Benchmark: one analysis result to verified-at-all-targets on the embedded stack.

kit: :func:`kit.results.deliver.deliver` of a result of the shipped analysis
(:mod:`kit.results.analysis`, on the sample CT with a lesion) to the embedded
stack's PACS (SR and SEG: C-STORE, C-FIND, C-GET, parse back, compare element by
element), FHIR server (transaction, vread and read of every resource, compare) and
MLLP listener (ORU, ACK checked): encoding, sending and verifying, per result.

By hand: the same writes with the libraries called directly and NO
verification: the SR (TID 1500 measurement report) and the SEG built with
highdicom and C-STOREd with pynetdicom on one association, the FHIR
transaction Bundle POSTed with httpx, the ORU^R01 sent with python-hl7's
``MLLPClient``. (The Bundle and the ORU text come from kit's encoders in both
columns: writing FHIR JSON and ER7 by hand is not what is measured.)

Each iteration uses a fresh ``result_id`` (real creates, not de-duplicated
resends). Median of N (default 20) per column.

    python bench/roundtrip.py [N]

Ends with ``RATIO roundtrip kit/by-hand = <x>`` (by-hand seconds / kit seconds;
higher is better for kit).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import highdicom as hd  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
from hl7.client import MLLPClient  # noqa: E402
from pydicom import Dataset  # noqa: E402
from pydicom.sr.codedict import codes  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage  # noqa: E402

from kit.dicom.dimse import PacsClient  # noqa: E402
from kit.examples.cohort import studies  # noqa: E402
from kit.examples.dicom import ct_datasets  # noqa: E402
from kit.fhir.client import FhirClient  # noqa: E402
from kit.hl7.mllp import MLLPSender  # noqa: E402
from kit.results.analysis import analyse_ct  # noqa: E402
from kit.results.deliver import deliver  # noqa: E402
from kit.results.fhir import encode_bundle  # noqa: E402
from kit.results.model import AnalysisResult, Code  # noqa: E402
from kit.results.oru import encode_oru  # noqa: E402
from kit.stack import Stack  # noqa: E402


def _cc(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def by_hand_dicom(result: AnalysisResult, sources: Sequence[Dataset]) -> tuple[Dataset, Dataset]:
    """The SEG and a TID 1500 SR of ``result`` straight from highdicom."""
    region = result.regions[0]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    images = [by_uid[u] for u in region.source_instances]
    algorithm = hd.AlgorithmIdentificationSequence(name=result.algorithm.name,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   version=result.algorithm.version)
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=np.asarray(region.mask),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label=region.label,
            segmented_property_category=_cc(region.category), segmented_property_type=_cc(region.kind),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)],
        series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="bench", manufacturer_model_name="bench", software_versions="1",
        device_serial_number="1")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=region.label),
        measurements=[hd.sr.Measurement(name=_cc(m.name), value=m.value, unit=_cc(m.unit))
                      for m in result.measurements],
        finding_type=_cc(result.measurements[0].finding or region.kind))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=images, content=report, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="bench")
    return seg, sr


def by_hand(result: AnalysisResult, sources: Sequence[Dataset], addresses: dict[str, object]) -> None:
    seg, sr = by_hand_dicom(result, sources)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Comprehensive3DSRStorage)
    ae.add_requested_context(SegmentationStorage)
    host, port, called = addresses["pacs"]  # type: ignore[misc]
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("association failed")
    for ds in (sr, seg):
        status = assoc.send_c_store(ds)
        if status.Status != 0:
            raise RuntimeError(f"C-STORE status {status.Status:#06x}")
    assoc.release()
    response = httpx.post(str(addresses["fhir"]), content=orjson.dumps(encode_bundle(result)),
                          headers={"Content-Type": "application/fhir+json"})
    response.raise_for_status()
    with MLLPClient(*addresses["mllp"]) as client:  # type: ignore[misc]
        client.send_message(encode_oru(result))


def median(times: list[float]) -> float:
    return statistics.median(times)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    study = next(s for s in studies(modality="CT") if s.lesion is not None)
    sources = ct_datasets(study)
    base = analyse_ct(sources)
    with Stack.ephemeral() as stack:
        settings = stack.client_settings()
        pacs = PacsClient.from_settings(settings)
        addresses: dict[str, object] = {
            "pacs": (settings.pacs.host, settings.pacs.port, settings.pacs.called_aet),
            "fhir": settings.fhir.base, "mllp": (settings.hl7.host, settings.hl7.port)}
        kit_times, hand_times = [], []
        with FhirClient.from_settings(settings) as fhir, \
                MLLPSender(settings.hl7.host, settings.hl7.port) as hl7:
            for i in range(n + 1):  # the first of each is a warm-up
                result = dataclasses.replace(base, result_id=f"bench-kit-{i}")
                t = time.perf_counter()
                report = deliver(result, sources=sources, pacs=pacs, fhir=fhir, hl7=hl7)
                took = time.perf_counter() - t
                if not report.ok:
                    raise SystemExit(f"not verified:\n{report.frame}")
                if i:
                    kit_times.append(took)
                result = dataclasses.replace(base, result_id=f"bench-hand-{i}")
                t = time.perf_counter()
                by_hand(result, sources, addresses)
                if i:
                    hand_times.append(time.perf_counter() - t)
            last = report.frame
    print(last.select("target", "status", "seconds"))
    k, h = median(kit_times), median(hand_times)
    print(f"kit deliver + verify, 5 targets: median {k * 1000:.0f} ms of {n}")
    print(f"by hand (highdicom+pynetdicom, httpx, python-hl7), no verification: "
          f"median {h * 1000:.0f} ms of {n}")
    print(f"RATIO roundtrip kit/by-hand = {h / k:.2f}")


if __name__ == "__main__":
    main()
