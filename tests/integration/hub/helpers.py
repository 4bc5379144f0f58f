"""Shared helpers of the Hub integration tests: the sample cohort's studies and a tiny TID 1500 SR."""

from __future__ import annotations

import highdicom as hd
import polars as pl
import pydicom
from pydicom.sr.codedict import codes

from kit import examples


def studies() -> pl.DataFrame:
    """One row per sample study: patient_id, study_instance_uid, accession_number, modality, path."""
    rows = {}
    for f in sorted(examples.dicom_dir().rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rows[ds.StudyInstanceUID] = {"patient_id": ds.PatientID, "study_instance_uid": ds.StudyInstanceUID,
                                     "accession_number": ds.AccessionNumber, "modality": ds.Modality,
                                     "path": str(f)}
    return pl.DataFrame(list(rows.values()))


def sample_study(mrn: str, modality: str) -> dict[str, str]:
    """The sample study of this patient with this modality."""
    wanted = (pl.col("patient_id") == mrn) & (pl.col("modality") == modality)
    return studies().filter(wanted).row(0, named=True)


def sr_for(path: str) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Comprehensive 3D SR (one diameter) about the image at ``path``, new UIDs."""
    src = pydicom.dcmread(path)
    ctx = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Kit^Test")))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=12.5, unit=codes.UCUM.Millimeter)])
    report = hd.sr.MeasurementReport(observation_context=ctx, imaging_measurements=[group],
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion)
    return hd.sr.Comprehensive3DSR(evidence=[src], content=report, series_number=99,
                                   series_instance_uid=hd.UID(), sop_instance_uid=hd.UID(), instance_number=1,
                                   manufacturer="kit")
