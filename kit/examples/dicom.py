"""Synthetic CT and MR series for the sample cohort (:mod:`kit.examples.cohort`).

For every performed CT study: one CT Image Storage series of :data:`CT_SLICES`
axial 128x128 int16 slices (a chest phantom: body, lungs, heart, spine; noise
seeded from the MRN; the cohort's :class:`~kit.examples.cohort.Lesion` as a
sphere in a lung). For every performed MR study: one MR Image Storage series
of :data:`MR_SLICES` 128x128 uint16 slices (a head phantom). Scheduled studies
have no images.

Files go to ``<out>/dicom/<MRN>/<study key>/<series number>/<instance:04d>.dcm``,
Explicit VR Little Endian, with a fixed implementation UID so the bytes do not
depend on the pydicom version. Slice ``k`` of a volume (InstanceNumber ``k+1``)
lies at z = ``z0 + k * thickness``, so after sorting by position (what
:func:`kit.dicom.pixels.load_series` does) ``volume[k]`` is cohort slice ``k``.

Datasets are built with pydicom; the phantoms are drawn by hand with numpy
(no library makes a small anatomical phantom with a lesion at a given place).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from kit.examples.cohort import UID_PREFIX, Patient, Study, derived_uid, patient, studies

__all__ = [
    "CT_PIXEL_MM",
    "CT_SIZE",
    "CT_SLICES",
    "CT_SLICE_MM",
    "IMPLEMENTATION_CLASS_UID",
    "MR_PIXEL_MM",
    "MR_SLICES",
    "MR_SLICE_MM",
    "base_dataset",
    "ct_datasets",
    "ct_hu",
    "generate",
    "instance_path",
    "mr_datasets",
    "mr_signal",
    "random_ct_files",
    "rng_for",
    "write_dataset",
]

CT_SLICES = 16
CT_SIZE = 128
CT_PIXEL_MM = 2.5
CT_SLICE_MM = 5.0
MR_SLICES = 12
MR_SIZE = 128
MR_PIXEL_MM = 1.8
MR_SLICE_MM = 5.0

#: Implementation Class UID written in every sample's file meta (fixed, so
#: regenerated files are byte-identical whatever the pydicom version).
IMPLEMENTATION_CLASS_UID = UID(UID_PREFIX + "1.1")
IMPLEMENTATION_VERSION_NAME = "KIT_SAMPLES_1"
_MANUFACTURER = "kit synthetic"
_INSTITUTION = "kit synthetic hospital"


def rng_for(*parts: str) -> np.random.Generator:
    """A numpy generator seeded deterministically from ``parts`` (e.g. the MRN)."""
    digest = hashlib.sha256("|".join(("kit-samples", *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def instance_path(out_dir: Path, study: Study, series: int, instance: int) -> Path:
    """``<out>/dicom/<MRN>/<study key>/<series>/<instance:04d>.dcm``."""
    return Path(out_dir) / "dicom" / study.mrn / study.key / str(series) / f"{instance:04d}.dcm"


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.time) -> str:
    return t.strftime("%H%M%S")


def _age(p: Patient, on: dt.date) -> str:
    years = on.year - p.birth_date.year - ((on.month, on.day) < (p.birth_date.month, p.birth_date.day))
    return f"{years:03d}Y"


def base_dataset(study: Study, *, sop_class_uid: str, series_number: int, instance_number: int,
                 series_description: str, transfer_syntax: str = ExplicitVRLittleEndian,
                 content_time: dt.time | None = None) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes of one sample image.

    Parameters
    ----------
    study : Study
        The cohort study the image belongs to.
    sop_class_uid : str
        SOP Class UID (CT, MR, VL Endoscopic, ...).
    series_number, instance_number : int
        Series and instance numbers; the UIDs derive from them.
    series_description : str
        SeriesDescription.
    transfer_syntax : str
        Transfer syntax written in the file meta.
    content_time : datetime.time or None
        ContentTime (defaults to the study time).

    Returns
    -------
    pydicom.Dataset
        With ``file_meta`` set; pixel attributes are the caller's.
    """
    p = patient(study.mrn)
    sop_uid = study.instance_uid(series_number, instance_number)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if study.modality in ("CT", "MR") else [
        "ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = _da(study.date)
    ds.InstanceCreationTime = _tm(study.time)
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _da(study.date)
    ds.StudyTime = ds.SeriesTime = _tm(study.time)
    ds.ContentTime = _tm(content_time or study.time)
    ds.AccessionNumber = study.accession
    ds.Modality = study.modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = _INSTITUTION
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = f"kit phantom {study.modality}"
    ds.PatientName = p.dicom_name
    ds.PatientID = p.mrn
    ds.PatientBirthDate = _da(p.birth_date)
    ds.PatientSex = p.sex
    ds.PatientAge = _age(p, study.date)
    ds.BodyPartExamined = study.body_part
    ds.DeviceSerialNumber = "KIT-0001"
    ds.SoftwareVersions = IMPLEMENTATION_VERSION_NAME
    ds.StudyInstanceUID = UID(study.study_uid)
    ds.SeriesInstanceUID = UID(study.series_uid(series_number))
    ds.StudyID = study.key.rsplit("-", 1)[-1]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM Part 10 file (128-byte zero preamble, file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- CT ------------------------------------------------------------------------------------------

def _grid(n_slices: int, size: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    z = np.arange(n_slices, dtype=float)[:, None, None]
    r = np.arange(size, dtype=float)[None, :, None]
    c = np.arange(size, dtype=float)[None, None, :]
    return z, r, c


def _ellipse(r: NDArray[np.float64], c: NDArray[np.float64], cr: float, cc: float,
             ar: NDArray[np.float64] | float, ac: NDArray[np.float64] | float) -> NDArray[np.bool_]:
    return np.asarray(((r - cr) / ar) ** 2 + ((c - cc) / ac) ** 2 <= 1.0)


def ct_hu(study: Study) -> NDArray[np.int16]:
    """The chest phantom of a CT study in HU, ``int16 [slices, rows, cols]``.

    Air -1000, fat -90, soft tissue 40, lungs -850, heart 45, spine 400-700,
    Gaussian noise (sigma 10 HU) seeded from the MRN; the cohort's lesion (if
    any) as a sphere of ``lesion.hu`` HU centred on ``lesion.center`` (voxels).
    """
    z, r, c = _grid(CT_SLICES, CT_SIZE)
    shape = (CT_SLICES, CT_SIZE, CT_SIZE)
    hu = np.full(shape, -1000.0)
    taper = 1.0 - 0.35 * ((z - (CT_SLICES - 1) / 2) / (CT_SLICES / 2)) ** 2
    hu = np.where(_ellipse(r, c, 64, 64, 46, 58), -90.0, hu)
    hu = np.where(_ellipse(r, c, 64, 64, 42, 54), 40.0, hu)
    lungs = _ellipse(r, c, 60, 42, 32 * taper, 18 * taper) | _ellipse(r, c, 60, 86, 32 * taper, 18 * taper)
    hu = np.where(lungs, -850.0, hu)
    hu = np.where(_ellipse(r, c, 66, 64, 16, 12), 45.0, hu)
    hu = np.where(_ellipse(r, c, 98, 64, 8, 8), 700.0, hu)
    hu = np.where(_ellipse(r, c, 98, 64, 5, 5), 400.0, hu)
    lesion = study.lesion
    if lesion is not None:
        lz, lr, lc = lesion.center
        inside = ((z - lz) * CT_SLICE_MM) ** 2 + ((r - lr) * CT_PIXEL_MM) ** 2 \
            + ((c - lc) * CT_PIXEL_MM) ** 2 <= lesion.radius_mm ** 2
        hu = np.where(inside, float(lesion.hu), hu)
    hu = hu + rng_for(study.mrn, "ct").normal(0.0, 10.0, size=shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _plane(ds: Dataset, k: int, size: int, pixel_mm: float, slice_mm: float, n_slices: int) -> None:
    origin = -(size - 1) / 2 * pixel_mm
    z = (k - (n_slices - 1) / 2) * slice_mm
    ds.PatientPosition = "HFS"
    ds.ImagePositionPatient = [f"{origin:.2f}", f"{origin:.2f}", f"{z:.2f}"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{z:.2f}"
    ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.SliceThickness = slice_mm
    ds.SpacingBetweenSlices = slice_mm


def ct_datasets(study: Study) -> list[Dataset]:
    """The CT Image Storage datasets of one performed CT study (series 1)."""
    if study.modality != "CT" or study.scheduled:
        raise ValueError(f"{study.key} is not a performed CT study")
    volume = ct_hu(study).astype(np.int32) + 1024  # stored values; RescaleIntercept -1024
    frame_uid = derived_uid(study.key, "frame-of-reference")
    out = []
    for k in range(CT_SLICES):
        ds = base_dataset(study, sop_class_uid=CTImageStorage, series_number=1, instance_number=k + 1,
                          series_description="AXIAL 5MM")
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        _plane(ds, k, CT_SIZE, CT_PIXEL_MM, CT_SLICE_MM, CT_SLICES)
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.ConvolutionKernel = "STANDARD"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = CT_SIZE
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.WindowCenter = [40, -600]
        ds.WindowWidth = [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PixelData = volume[k].astype("<i2").tobytes()
        out.append(ds)
    return out


# -- MR ------------------------------------------------------------------------------------------

def mr_signal(study: Study) -> NDArray[np.uint16]:
    """The head phantom of an MR study (T1-like signal), ``uint16 [slices, rows, cols]``, 12 bits."""
    z, r, c = _grid(MR_SLICES, MR_SIZE)
    shape = (MR_SLICES, MR_SIZE, MR_SIZE)
    t = np.sqrt(np.clip(1.0 - ((z - (MR_SLICES - 1) / 2) / (MR_SLICES * 0.75)) ** 2, 0.05, 1.0))
    s = np.zeros(shape)
    s = np.where(_ellipse(r, c, 64, 64, 58 * t, 47 * t), 500.0, s)   # scalp
    s = np.where(_ellipse(r, c, 64, 64, 54 * t, 43 * t), 60.0, s)    # skull
    s = np.where(_ellipse(r, c, 64, 64, 50 * t, 39 * t), 700.0, s)   # grey matter
    s = np.where(_ellipse(r, c, 64, 64, 38 * t, 29 * t), 950.0, s)   # white matter
    middle = np.abs(z - (MR_SLICES - 1) / 2) < MR_SLICES / 4
    ventricles = (_ellipse(r, c, 58, 56, 11, 4) | _ellipse(r, c, 58, 72, 11, 4)) & middle
    s = np.where(ventricles, 250.0, s)
    if "WITH CONTRAST" in study.description:
        s = np.where(_ellipse(r, c, 50, 46, 3, 3) & middle, 1600.0, s)  # an enhancing focus
    rng = rng_for(study.mrn, "mr")
    noise = rng.normal(0.0, 20.0, size=(2, *shape))
    s = np.sqrt((s + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude noise
    return np.clip(np.rint(s), 0, 4095).astype(np.uint16)


def mr_datasets(study: Study) -> list[Dataset]:
    """The MR Image Storage datasets of one performed MR study (series 1, axial T1 SE)."""
    if study.modality != "MR" or study.scheduled:
        raise ValueError(f"{study.key} is not a performed MR study")
    volume = mr_signal(study)
    frame_uid = derived_uid(study.key, "frame-of-reference")
    out = []
    for k in range(MR_SLICES):
        ds = base_dataset(study, sop_class_uid=MRImageStorage, series_number=1, instance_number=k + 1,
                          series_description="AX T1 SE")
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        _plane(ds, k, MR_SIZE, MR_PIXEL_MM, MR_SLICE_MM, MR_SLICES)
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500
        ds.EchoTime = 12
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 1.5
        ds.ImagedNucleus = "1H"
        ds.AcquisitionNumber = 1
        if "WITH CONTRAST" in study.description:
            ds.ContrastBolusAgent = "GADOLINIUM"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = MR_SIZE
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = 700
        ds.WindowWidth = 1400
        ds.PixelData = volume[k].astype("<u2").tobytes()
        out.append(ds)
    return out


def generate(out_dir: Path) -> list[Path]:
    """Write the CT and MR series of every performed study under ``out_dir/dicom``.

    Parameters
    ----------
    out_dir : Path
        The samples root.

    Returns
    -------
    list of Path
        The files written, in cohort order.
    """
    written: list[Path] = []
    for study in studies(scheduled=False):
        if study.modality == "CT":
            datasets = ct_datasets(study)
        elif study.modality == "MR":
            datasets = mr_datasets(study)
        else:
            continue
        for ds in datasets:
            written.append(write_dataset(ds, instance_path(out_dir, study, 1, int(ds.InstanceNumber))))
    return written


def random_ct_files(folder: str | Path, count: int, *, patient_id: str = "MRN9001",
                    patient_name: str = "Test^Patient", study_uid: str | None = None,
                    accession_number: str | None = None, study_date: dt.date = dt.date(2026, 4, 1),
                    size: int = 32, seed: int = 0, name: str = "{i:05d}.dcm") -> list[Path]:
    """``count`` small CT files of one new study and series, random pixels, fresh UIDs.

    Test and benchmark data of any size, outside the sample cohort: a study the
    cohort does not hold (``patient_id`` ``MRN9…``), files ``folder/<name>``
    (``name`` formatted with the instance index ``i``), Explicit VR Little Endian,
    16-bit signed pixels of ``size`` x ``size`` drawn from a generator seeded by ``seed``.

    Returns
    -------
    list of Path
        The files, in instance order.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    series = generate_uid()
    rng = np.random.default_rng(seed)
    accession = accession_number if accession_number is not None else f"ACC{patient_id[-4:]}99"
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.PatientID, ds.PatientName = patient_id, patient_name
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate, ds.StudyTime = study_date.strftime("%Y%m%d"), "101500"
        ds.AccessionNumber, ds.StudyID = accession, "1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = rng.integers(-1000, 1000, (size, size), dtype=np.int16).tobytes()
        path = out / name.format(i=i)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
