"""Small deterministic DICOM files for the index and de-identification tests."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)

from kit.examples.cohort import COHORT

PREFIX = "1.2.826.0.1.3680043.8.498."


def uid(*parts: object) -> str:
    return str(generate_uid(prefix=PREFIX, entropy_srcs=[str(p) for p in parts]))


def ct_dataset(patient: int = 0, series: int = 1, instance: int = 1, *, rows: int = 8,
               modality: str = "CT") -> Dataset:
    """A small CT image of cohort patient ``patient`` (index into COHORT)."""
    p = COHORT[patient]
    study = p.studies[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UltrasoundImageStorage if modality == "US" else CTImageStorage
    ds.SOPInstanceUID = uid(p.mrn, series, instance)
    ds.StudyDate = study.date.strftime("%Y%m%d")
    ds.StudyTime = study.time.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.StudyDescription = study.description
    ds.SeriesDescription = f"series {series}"
    ds.PatientName = p.dicom_name
    ds.PatientID = p.mrn
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.BodyPartExamined = study.body_part
    ds.SliceThickness = "2.5"
    ds.StudyInstanceUID = uid(p.mrn, "study")
    ds.SeriesInstanceUID = uid(p.mrn, series)
    ds.FrameOfReferenceUID = uid(p.mrn, "for")
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    ds.Rows = rows
    ds.Columns = rows
    ds.PixelSpacing = [0.703125, 0.703125]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(2 * rows * rows)
    return ds


def with_sequences(ds: Dataset, *, undefined: bool) -> Dataset:
    """Add sequences before the wanted tags (defined or undefined length, nested)."""
    inner = Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = uid("ref", 1)
    nested = Dataset()
    nested.CodeValue = "T-D3000"
    nested.CodingSchemeDesignator = "SRT"
    nested.CodeMeaning = "Chest"
    inner.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([Dataset(), inner])
    for kw in ("ReferencedImageSequence", "ReferencedStudySequence"):
        ds[kw].is_undefined_length = undefined
        for item in ds[kw].value:
            item.is_undefined_length_sequence_item = undefined
    nested_elem = inner["PurposeOfReferenceCodeSequence"]
    nested_elem.is_undefined_length = undefined
    return ds


def write(ds: Dataset, path: Path, *, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


IMPLICIT = ImplicitVRLittleEndian
