"""Benchmark: `kit index` (kit.dicom.index.index_dicom) vs a plain pydicom loop.

    python bench/dicom_index.py [N | FOLDER] [--workers W]

Generates N (default 2,000) small CT files (half explicit, half implicit VR
little endian, a sequence before the indexed tags) into a temporary folder, or
indexes FOLDER, then times on the same files in the same run:

* the alternative: ``for f in files: pydicom.dcmread(f, stop_before_pixels=True)``
  (collecting the same attributes), single process;
* kit: ``index_dicom(files)`` with its worker processes, and with one worker.

The page cache is warmed first so both read from memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from kit.dicom.index import index_dicom, list_files

KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
            "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription", "SeriesInstanceUID",
            "SeriesNumber", "SeriesDescription", "Modality", "BodyPartExamined", "SOPInstanceUID",
            "SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames", "PixelSpacing",
            "SliceThickness")


def generate(n: int, folder: Path) -> None:
    """Write n small CT files (64x64, 16 bit) into folder."""
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bench", str(i)])
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if i % 2 else ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyDate, ds.StudyTime = "20260112", "091400"
        ds.AccessionNumber = f"ACC{i // 100:05d}"
        ds.Modality = "CT"
        ds.Manufacturer = "kit bench"
        ds.StudyDescription = "CT CHEST W/O CONTRAST"
        ds.SeriesDescription = "AXIAL 2.5"
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=["pps", str(i // 100)])
        ds.ReferencedPerformedProcedureStepSequence = Sequence([ref])
        ds.PatientName = f"Patient^{i // 100:04d}"
        ds.PatientID = f"MRN{i // 100:05d}"
        ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
        ds.BodyPartExamined = "CHEST"
        ds.SliceThickness = "2.5"
        ds.KVP = "120"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(i // 100)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(i // 100)])
        ds.SeriesNumber, ds.InstanceNumber = 1, i % 100 + 1
        ds.ImagePositionPatient = [0, 0, 2.5 * (i % 100)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["for", str(i // 100)])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 64
        ds.PixelSpacing = [0.7, 0.7]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = bytes(64 * 64 * 2)
        ds.save_as(folder / f"ct{i:06d}.dcm", enforce_file_format=True)


def pydicom_loop(files: list[str]) -> int:
    rows = 0
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        _ = [ds.get(k) for k in KEYWORDS]
        rows += 1
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="2000", help="N files to generate, or a folder")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kit-bench-index-") as tmp:
        if os.path.isdir(args.source):
            folder = Path(args.source)
        else:
            folder = Path(tmp)
            t = time.perf_counter()
            generate(int(args.source), folder)
            print(f"generated {args.source} files in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        files = list_files([folder])
        for f in files:  # warm the page cache for both contenders
            with open(f, "rb") as fh:
                fh.read()
        n = len(files)
        t = time.perf_counter()
        pydicom_loop(files)
        t_pydicom = time.perf_counter() - t
        t = time.perf_counter()
        serial = index_dicom(files, workers=1)
        t_serial = time.perf_counter() - t
        t = time.perf_counter()
        result = index_dicom(files, workers=args.workers)
        t_kit = time.perf_counter() - t
        assert result.frame.equals(serial.frame)
        workers = args.workers or os.cpu_count()
        print(f"files: {n} ({result.frame.height} indexed, {result.skipped.height} skipped)")
        print(f"pydicom dcmread(stop_before_pixels) loop : {n / t_pydicom:9.0f} files/s")
        print(f"kit index, 1 process                     : {n / t_serial:9.0f} files/s")
        print(f"{f'kit index, {workers} workers':41}: {n / t_kit:9.0f} files/s")
        print(f"RATIO dicom index files/s kit/pydicom = {t_pydicom / t_kit:.2f}")
        print(f"RATIO dicom index files/s kit-1-process/pydicom = {t_pydicom / t_serial:.2f}")


if __name__ == "__main__":
    main()
